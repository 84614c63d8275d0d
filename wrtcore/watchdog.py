"""Keeping a hardware watchdog fed from a thread no other work can block.

The fd is procd's (``WDTFD``) or ``/dev/watchdog``; like OpenWrt's upgraded it gets a 30 s driver
timeout (``WDIOC_SETTIMEOUT``) and a ping (a write of ``"X"``) every 5 s. The pinging thread only waits
on an Event with a timeout and writes one byte: the init's work (services, the bus, stage2) runs on
other threads, and the blocking calls they make release the GIL. The fd stays open (and inheritable)
across stage2's re-exec, so the process after the pivot keeps feeding it until reboot(2).

``configure`` is the ``system watchdog`` method of procd (reference 1.5): ``frequency`` is clamped to at
most half the timeout, a ``timeout`` not above the frequency is raised to twice it; ``magicclose``
makes ``stop`` write ``"V"`` before closing the device (the driver then disarms it); ``stop`` without
magic close only stops the pings, so the device resets the machine when the timeout runs out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

from wrtcore import log
from wrtcore.namespaces import in_initial_pid_namespace

WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
DEFAULT_TIMEOUT = 30
DEFAULT_FREQUENCY = 5
DEVICE = "/dev/watchdog"


def clamp(frequency: int, timeout: int) -> tuple[int, int]:
    """procd's rules for a (frequency, timeout) request: frequency ≤ timeout/2, timeout > frequency."""
    frequency = max(1, frequency)
    timeout = max(1, timeout)
    if timeout <= frequency:
        timeout = frequency * 2
    if frequency > timeout // 2:
        frequency = max(1, timeout // 2)
    return frequency, timeout


class Keeper:
    def __init__(self, fd: int, timeout: int = DEFAULT_TIMEOUT, interval: float = DEFAULT_FREQUENCY) -> None:
        self.fd: int | None = fd
        self.interval = interval
        self.timeout = timeout
        self.magicclose = False
        self.pings = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.set_timeout(timeout)
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def set_timeout(self, timeout: int) -> None:
        """Ask the driver for ``timeout`` s; keeps what the driver really took (it may round it)."""
        if self.fd is None:
            return
        buf = bytearray(struct.pack("i", timeout))
        try:
            fcntl.ioctl(self.fd, WDIOC_SETTIMEOUT, buf, True)
            self.timeout = struct.unpack("i", buf)[0] or timeout
        except OSError:
            self.timeout = timeout  # not a watchdog driver (a test's file): pings still go out

    def start(self) -> Keeper:
        self.ping()
        self._thread.start()
        return self

    def ping(self) -> None:
        with self._lock:
            if self.fd is None or self._stop.is_set():
                return
            with contextlib.suppress(OSError):
                os.write(self.fd, b"X")
                self.pings += 1

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.ping()

    @property
    def status(self) -> str:
        if self.fd is None:
            return "offline"
        return "stopped" if self._stop.is_set() else "running"

    def describe(self) -> dict[str, Any]:
        return {"status": self.status, "timeout": self.timeout, "frequency": int(self.interval),
                "magicclose": self.magicclose}

    def configure(self, *, frequency: int | None = None, timeout: int | None = None,
                  magicclose: bool | None = None, stop: bool | None = None) -> dict[str, Any]:
        """``system watchdog``: change what was asked, ping at once, reply with the state."""
        if magicclose is not None:
            self.magicclose = magicclose
        if frequency is not None or timeout is not None:
            freq, tmo = clamp(frequency if frequency is not None else int(self.interval),
                              timeout if timeout is not None else self.timeout)
            if tmo != self.timeout:
                self.set_timeout(tmo)
            self.interval = freq
            self._wake.set()  # the new frequency applies from now
        if stop:
            self.stop()
        return self.describe()

    def stop(self) -> None:
        """No more pings; with magic close, ``"V"`` and close (the driver disarms the device)."""
        with self._lock:
            self._stop.set()
            self._wake.set()
            if self.magicclose and self.fd is not None:
                with contextlib.suppress(OSError):
                    os.write(self.fd, b"V")
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = None
                os.environ.pop("WDTFD", None)


def driver_timeout(fd: int) -> int | None:
    """The timeout the driver runs with now (``WDIOC_GETTIMEOUT``); None when ``fd`` is no watchdog."""
    buf = bytearray(struct.pack("i", 0))
    try:
        fcntl.ioctl(fd, WDIOC_GETTIMEOUT, buf, True)
    except OSError:
        return None
    value: int = struct.unpack("i", buf)[0]
    return value if value > 0 else None


EXEC_TIMEOUT = 60  # s: the driver timeout across an exec (a new interpreter starting, even under emulation)
ENV_TIMEOUT, ENV_FREQUENCY = "WDT_TIMEOUT", "WDT_FREQUENCY"
_current: Keeper | None = None


def prepare_exec(environ: MutableMapping[str, str] = os.environ) -> None:
    """Before an exec that hands ``WDTFD`` on: nothing pings until the new process adopts the device, and
    an interpreter's start-up takes seconds on a slow CPU (4 to 8 s measured under QEMU's TCG) - longer
    than a short timeout set through ``system watchdog``. So the driver timeout is raised to
    ``EXEC_TIMEOUT`` for the exec, with a ping, and the timeout and frequency in force are passed on in
    ``WDT_TIMEOUT``/``WDT_FREQUENCY``: ``adopt`` restores them."""
    wdt = environ.get("WDTFD", "")
    if not wdt.isdigit():
        return
    fd = int(wdt)
    timeout = _current.timeout if _current is not None else driver_timeout(fd)
    if timeout is None:
        return
    environ[ENV_TIMEOUT] = str(timeout)
    if _current is not None:
        environ[ENV_FREQUENCY] = str(max(1, int(_current.interval)))
    buf = bytearray(struct.pack("i", max(timeout, EXEC_TIMEOUT)))
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, WDIOC_SETTIMEOUT, buf, True)
        os.write(fd, b"X")


def _env_int(environ: Mapping[str, str], key: str) -> int | None:
    value = environ.get(key, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def adopt(environ: dict[str, str]) -> Keeper | None:
    """Take the watchdog handed over in ``WDTFD`` (kept inheritable), else open /dev/watchdog.

    A handed-over device keeps the timeout and frequency it ran with before the exec (``WDT_TIMEOUT``,
    ``WDT_FREQUENCY`` from ``prepare_exec``; else the driver's current timeout, pinged every 5 s or half
    the timeout when that is shorter): what ``system watchdog`` set stays in force until the reboot. A
    device opened here gets the 30 s default. /dev/watchdog is opened only by the init of the initial
    PID namespace (a real machine or a VM): inside a PID namespace (the sandbox device) it is the host's
    watchdog, not ours to arm.
    """
    global _current
    wdt = environ.get("WDTFD", "")
    timeout = DEFAULT_TIMEOUT
    frequency: float = DEFAULT_FREQUENCY
    if wdt.isdigit():
        fd = int(wdt)
        timeout = _env_int(environ, ENV_TIMEOUT) or driver_timeout(fd) or DEFAULT_TIMEOUT
        frequency = _env_int(environ, ENV_FREQUENCY) or min(DEFAULT_FREQUENCY, max(1, timeout // 2))
    else:
        if not in_initial_pid_namespace():
            return None
        try:
            fd = os.open(DEVICE, os.O_WRONLY)
        except OSError:
            return None
    os.set_inheritable(fd, True)
    os.environ["WDTFD"] = str(fd)
    for key in (ENV_TIMEOUT, ENV_FREQUENCY):
        os.environ.pop(key, None)
    _current = Keeper(fd, timeout, frequency).start()
    log.get().info("watchdog fed", fd=fd, handed_over=wdt.isdigit(), **_current.describe())
    return _current
