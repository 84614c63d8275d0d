"""Keeping a hardware watchdog fed from a thread no other work can block.

The fd is procd's (``WDTFD``) or ``/dev/watchdog``; OpenWrt's upgraded sets a 30 s timeout and pings
every 5 s. The thread waits on an Event with a timeout, so stopping it is immediate. The fd stays
open (and inheritable) across stage2's re-exec so the process after the pivot keeps feeding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading

from wrtcore.namespaces import in_initial_pid_namespace

WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_KEEPALIVE = 0x80045705


class Keeper:
    def __init__(self, fd: int, timeout: int = 30, interval: float = 5.0) -> None:
        self.fd = fd
        self.interval = interval
        self.pings = 0
        self._stop = threading.Event()
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("I", timeout))
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> Keeper:
        self.ping()
        self._thread.start()
        return self

    def ping(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, b"X")
            self.pings += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.ping()

    def stop(self) -> None:
        self._stop.set()


def adopt(environ: dict[str, str]) -> Keeper | None:
    """Take the watchdog handed over in ``WDTFD`` (kept inheritable), else open /dev/watchdog.

    /dev/watchdog is opened only by the init of the initial PID namespace (a real machine or a VM):
    inside a PID namespace (the sandbox device) it is the host's watchdog, not ours to arm.
    """
    wdt = environ.get("WDTFD", "")
    if wdt.isdigit():
        fd = int(wdt)
    else:
        if not in_initial_pid_namespace():
            return None
        try:
            fd = os.open("/dev/watchdog", os.O_WRONLY)
        except OSError:
            return None
    os.set_inheritable(fd, True)
    os.environ["WDTFD"] = str(fd)
    return Keeper(fd).start()
