"""Run a scenario as PID 1 of fresh PID + mount namespaces, and get its JSON result back.

Everything that sends signals in the test suite runs through ``run_in_pid_ns``: inside, the scenario
sees only its own processes (a fresh ``/proc``), and pids outside the namespace are not even
addressable, so kill logic cannot reach the machine's processes.

Process tree::

    pytest (parent) ── fork ──▶ A: unshare(NEWPID|NEWNS), fork ──▶ B: PID 1 of the new namespace
                                 (enforces the timeout: SIGKILL to B,       mounts private, fresh /proc,
                                  a pid it started)                         installs a Reaper, runs fn,
                                                                            writes JSON, os._exit

When B exits, the kernel kills whatever is left in its namespace.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from wrtcore import children, syscalls

_EXIT_TIMEOUT = 124


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _ns_init(fn: Callable[[], dict[str, Any]], w: int) -> None:
    """Body of B (PID 1 of the namespace). Never returns."""
    code = 1
    try:
        try:
            if os.getpid() != 1:
                raise RuntimeError(f"namespace init is pid {os.getpid()}, not 1")
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            syscalls.mount("proc", "/proc", "proc",
                           syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
            faulthandler.register(signal.SIGUSR1, all_threads=True)  # the timeout path asks for a trace
            reaper = children.Reaper()
            children.install(reaper)
            result = fn()
            payload = {"ok": True, "result": result}
            code = 0
        except BaseException as exc:
            payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()}
        _write_all(w, json.dumps(payload, default=str).encode())
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _intermediate(fn: Callable[[], dict[str, Any]], w: int, timeout: float) -> None:
    """Body of A: create the namespaces, start B, bound its life. Never returns."""
    code = 70
    try:
        syscalls.unshare(syscalls.CLONE_NEWPID | syscalls.CLONE_NEWNS)
        b = os.fork()
        if b == 0:
            _ns_init(fn, w)
        os.close(w)
        pidfd = os.pidfd_open(b)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            print(f"nsutil: namespace init {b} still running after {timeout}s: traceback, then SIGKILL",
                  file=sys.stderr)
            signal.pidfd_send_signal(pidfd, signal.SIGUSR1)
            poller.poll(1000)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            # the init only becomes waitable once everything in its namespace has died
            if not poller.poll(10_000):
                print("nsutil: namespace did not die within 10 s after SIGKILL", file=sys.stderr)
                os._exit(_EXIT_TIMEOUT)
            os.waitpid(b, 0)
            code = _EXIT_TIMEOUT
        else:
            _, status = os.waitpid(b, 0)
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def run_in_pid_ns(fn: Callable[[], dict[str, Any]], timeout: float = 60.0) -> dict[str, Any]:
    """Run ``fn`` as PID 1 of new PID + mount namespaces with a fresh /proc; return its JSON result.

    ``fn`` runs in a forked child (with a ``wrtcore.children.Reaper`` installed) and must return a
    JSON-serialisable dict. An exception inside becomes an ``AssertionError`` here carrying the inner
    traceback. The namespace is killed after ``timeout`` seconds; this call never hangs.
    """
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    a = os.fork()
    if a == 0:
        os.close(r)
        _intermediate(fn, w, timeout)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout + 15.0
    try:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"namespace helper {a} gave no result within {timeout + 15.0}s")
            if not poller.poll(int(remaining * 1000) + 1):
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        pidfd = os.pidfd_open(a)
        try:
            waiter = select.poll()
            waiter.register(pidfd, select.POLLIN)
            if not waiter.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                waiter.poll(5_000)
            _, status = os.waitpid(a, os.WNOHANG)
        finally:
            os.close(pidfd)
    raw = b"".join(chunks)
    if not raw:
        raise AssertionError(f"namespace init produced no result (helper wait status {status})")
    payload = json.loads(raw)
    if not payload["ok"]:
        raise AssertionError(f"inside the namespace: {payload['error']}\n{payload['traceback']}")
    result: dict[str, Any] = payload["result"]
    return result


class NsLoop:
    """A minimal init loop for scenarios: wake on SIGCHLD, reap, drive a supervisor's timers.

    Other threads call ``wake()`` when a condition the loop waits for may have changed.
    """

    def __init__(self, reaper: children.Reaper, supervisor: Any = None) -> None:
        self.reaper = reaper
        self.supervisor = supervisor
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda _signo, _frame: None)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"\0")

    def run(self, until: Callable[[], bool], timeout: float) -> bool:
        """Loop until ``until()`` is true (returns True) or ``timeout`` seconds pass (returns False)."""
        end = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        while True:
            self.reaper.reap()
            now = time.monotonic()
            if self.supervisor is not None:
                self.supervisor.tick(now)
            if until():
                return True
            if now >= end:
                return False
            wait = end - now
            if self.supervisor is not None:
                deadline = self.supervisor.next_deadline()
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - now))
            # the condition may also change without an event (a file appearing): re-check at 20 ms
            wait = min(wait, 0.02)
            if poller.poll(max(1, int(wait * 1000))):
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._r, 512):
                        pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._r)
        os.close(self._w)


def python_argv(code: str, *tags: str) -> list[str]:
    """argv running ``code`` in this interpreter; ``tags`` land in the cmdline to recognise it."""
    return [sys.executable, "-c", code, *tags]


def cmdline_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


def pids_tagged(tag: str) -> list[int]:
    """Live (non-zombie) pids in this namespace whose cmdline contains ``tag``."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and tag in cmdline_of(int(entry)):
            found.append(int(entry))
    return sorted(found)
