"""Failsafe's root shells: a login shell on each console, respawned when it exits (OpenWrt's
``failsafe_shell``: ``ash --login`` per console, no login prompt, a clean environment).

A shell that ends within ``QUICK`` seconds ``GIVE_UP`` times in a row is not started again on that
console (a console that cannot be read would otherwise spin). ``FAILSAFE=1`` is in each shell's
environment, so ``sysupgrade`` run there takes the failsafe hand-over path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Sequence

from wrtcore import log

SHELL = ("/bin/sh", "-l")
QUICK = 1.0
GIVE_UP = 3
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "linux", "SHELL": "/bin/sh",
       "USER": "root", "LOGNAME": "root", "FAILSAFE": "1"}


def _make_controlling_tty() -> None:
    """In the child, after setsid: the console on fd 0 becomes its controlling terminal."""
    with contextlib.suppress(OSError):  # not a terminal (a pipe): the shell still runs
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    for signo in (signal.SIGINT, signal.SIGUSR1, signal.SIGQUIT):  # preinit ignores them; a shell must not
        signal.signal(signo, signal.SIG_DFL)


class Shells:
    def __init__(self, consoles: Sequence[str], argv: Sequence[str] = SHELL,
                 env: dict[str, str] | None = None) -> None:
        self.consoles = list(consoles)
        self.argv = list(argv)
        self.env = dict(ENV if env is None else env)
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.gave_up: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._keep, args=(c,), name=f"shell {c}", daemon=True)
                         for c in self.consoles]

    def start(self) -> Shells:
        for t in self._threads:
            t.start()
        return self

    def _spawn(self, console: str) -> subprocess.Popen[bytes]:
        fd = os.open(console, os.O_RDWR | os.O_NOCTTY)
        try:
            return subprocess.Popen(self.argv, stdin=fd, stdout=fd, stderr=fd, env=self.env, cwd="/",
                                    start_new_session=True, preexec_fn=_make_controlling_tty,
                                    close_fds=True)
        finally:
            os.close(fd)

    def _keep(self, console: str) -> None:
        quick = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                proc = self._spawn(console)
            except OSError as exc:
                log.get().warning("failsafe shell not started", console=console, error=exc.strerror)
                proc = None
            if proc is not None:
                with self._lock:
                    self.running[console] = proc
                if self._stop.is_set():
                    proc.kill()
                log.get().info("failsafe shell", console=console, pid=proc.pid)
                proc.wait()
                with self._lock:
                    self.running.pop(console, None)
            quick = quick + 1 if time.monotonic() - started < QUICK else 0
            if quick >= GIVE_UP:
                log.get().warning("failsafe shell keeps ending at once; not respawned", console=console)
                self.gave_up.append(console)
                return

    def stop(self) -> None:
        """End the shells (the ones started here, by pid) and their respawning (used by tests)."""
        self._stop.set()
        with self._lock:
            procs = list(self.running.values())
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for t in self._threads:
            t.join(timeout=10)
