"""Failsafe, minimal for now: entered with ``failsafe=`` on the kernel command line, it skips the
overlay (the root stays the read-only squashfs with the firmware's defaults), names the host
``OpenWrt-failsafe`` and waits until ``sysupgrade`` (run with FAILSAFE set) has written the hand-over
file /tmp/sysupgrade; then preinit ends and the init runs the upgrade from that file.

OpenWrt waits with busybox ``lock -w /tmp/.failsafe``; here /tmp/.failsafe is a FIFO, so the wait is
a blocking read that ``sysupgrade`` ends by writing a line: no polling. (The console trigger, the
button, the failsafe network and shells belong to the boot-side issue.)
"""

from __future__ import annotations

import contextlib
import os
import socket

from wrtcore import cmdline, log

LOCK = "/tmp/.failsafe"
HANDOVER = "/tmp/sysupgrade"
HOSTNAME = "OpenWrt-failsafe"


def requested() -> bool:
    return "failsafe" in cmdline.read()


def wait_for_upgrade(lock: str = LOCK, handover: str = HANDOVER) -> str:
    """Block until the hand-over file exists; returns its path."""
    print("- failsafe -", flush=True)
    log.get().info("- failsafe -", waiting_on=lock)
    with contextlib.suppress(OSError):
        socket.sethostname(HOSTNAME)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(lock, 0o600)
    while not os.path.exists(handover):
        with open(lock, "rb") as fifo:  # blocks until a writer opens it
            fifo.read()
    log.get().info("failsafe upgrade handed over", file=handover)
    return handover
