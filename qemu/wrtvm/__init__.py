"""The vm tier: the firmware chain booted by a real kernel in QEMU (TCG), driven over its serial ports."""
