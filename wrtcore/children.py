"""Child processes of a PID 1: one reaper owns every wait, callers wait on events.

A PID 1 inherits every orphan, so it must call ``waitpid(-1)``; that would steal the exit status
from ``subprocess`` (which then reports 0 on ECHILD). So in a PID 1 all children are started through
``Reaper.spawn`` and waited for with ``Reaper.wait``, and the reaper's ``reap()`` (run on SIGCHLD by
the init's loop) hands each status to whoever asked. Outside a PID 1 no reaper is installed and
``wrtcore.run`` uses ``subprocess`` as usual.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ExitCallback = Callable[[int, int], None]


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    status: int | None = None


class Reaper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._callbacks: dict[int, ExitCallback] = {}
        self.orphans_reaped = 0

    def spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
              setsid: bool = False, on_exit: ExitCallback | None = None) -> int:
        """posix_spawn ``argv`` (PATH searched) and register it before the reaper can see it exit."""
        actions: list[tuple[int, int, int]] = []
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            if fd is not None:
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        with self._lock:
            pid = os.posix_spawnp(argv[0], list(argv), env if env is not None else dict(os.environ),
                                  file_actions=actions, setsid=setsid)
            if on_exit is not None:
                self._callbacks[pid] = on_exit
            else:
                self._waiters[pid] = _Waiter()
        return pid

    def watch(self, pid: int, on_exit: ExitCallback) -> None:
        with self._lock:
            self._callbacks[pid] = on_exit

    def wait(self, pid: int, timeout: float | None = None) -> int | None:
        """Raw wait status of ``pid``, or None if it is still running after ``timeout`` seconds."""
        with self._lock:
            waiter = self._waiters.get(pid)
        if waiter is None:
            raise ChildProcessError(f"pid {pid} was not spawned by this reaper")
        if not waiter.done.wait(timeout):
            return None
        with self._lock:
            self._waiters.pop(pid, None)
        return waiter.status

    def reap(self) -> list[tuple[int, int]]:
        """Collect every exited child; dispatch statuses. Returns what was reaped."""
        reaped: list[tuple[int, int]] = []
        while True:
            with self._lock:
                got = _waitpid_any()
                if got is None:
                    break
                pid, status = got
                reaped.append(got)
                waiter = self._waiters.get(pid)
                callback = self._callbacks.pop(pid, None)
                if waiter is not None:
                    waiter.status = status
                    waiter.done.set()
                elif callback is None:
                    self.orphans_reaped += 1
            if callback is not None:
                with contextlib.suppress(Exception):
                    callback(pid, status)
        return reaped


def _waitpid_any() -> tuple[int, int] | None:
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return None
    return None if pid == 0 else (pid, status)


def reap_exited() -> list[tuple[int, int]]:
    """Collect every exited child, for a PID 1 without a Reaper (nobody else waits for them)."""
    reaped: list[tuple[int, int]] = []
    while (got := _waitpid_any()) is not None:
        reaped.append(got)
    return reaped


_installed: Reaper | None = None


def install(reaper: Reaper) -> None:
    global _installed
    _installed = reaper


def installed() -> Reaper | None:
    return _installed
