"""The end of every PID-1 path: sync and reboot(2), and never return.

If the kernel refuses the reboot, PID 1 must still not exit (that would panic a real kernel): it logs
and waits for signals forever.
"""

from __future__ import annotations

import os
import signal
from typing import NoReturn

from wrtcore import log, syscalls


def reboot(reason: str, cmd: int = syscalls.LINUX_REBOOT_CMD_RESTART) -> NoReturn:
    log.get().info("rebooting", reason=reason)
    syscalls.sync()
    if os.getpid() == 1:
        try:
            syscalls.reboot(cmd)
        except OSError as exc:
            log.get().critical("reboot(2) failed", error=str(exc))
    else:
        log.get().critical("not PID 1: refusing to reboot this machine", reason=reason)
    while True:  # pragma: no cover - only reached when reboot(2) did not end us
        signal.pause()
