"""preinit: the boot path after the kernel hands over (mount_root, config restore, done)."""
