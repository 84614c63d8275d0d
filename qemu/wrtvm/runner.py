"""One VM under QEMU (TCG): the firmware disk, the kernel and initramfs, the serial console on QEMU's
stdio and the JSON log channel (the guest's ttyS1, ``wrt.log=/dev/ttyS1``) on a pipe.

A ``reboot(2)`` in the guest ends QEMU (``-no-reboot``); booting again is a new ``VM`` on the same disk.
QEMU dies with the process that started it (PR_SET_PDEATHSIG) and is killed, by its pid, by ``close()``.
Nothing here sleeps for a fixed time: every wait is on console output, a log record or QEMU's exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.channel import tee_json_lines

Record = dict[str, Any]
QEMU = "qemu-system-x86_64"
PR_SET_PDEATHSIG = 1


class VMError(RuntimeError):
    pass


_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def qemu_binary() -> str | None:
    return shutil.which(QEMU)


class VM:
    """A running QEMU. ``console`` is everything the guest wrote on ttyS0 so far, ``records`` the JSON
    records of its log channel."""

    def __init__(self, *, kernel: Path, initrd: Path, disk: Path, workdir: Path, name: str = "vm",
                 extra_disks: tuple[Path, ...] = (), cmdline_extra: str = "", memory: str = "512M") -> None:
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.console_path = workdir / f"{name}-console.log"
        self.log_path = workdir / f"{name}-log.jsonl"
        self.console = ""
        self.records: list[Record] = []
        self.returncode: int | None = None
        self.started = time.monotonic()
        self._pos = 0
        self._cond = threading.Condition()
        log_r, log_w = os.pipe()
        cmdline = ("console=ttyS0 root=/dev/vda2 rootfstype=squashfs wrt.log=/dev/ttyS1 quiet panic=-1 "
                   + cmdline_extra).strip()
        drives: list[str] = []
        for path in (disk, *extra_disks):
            drives += ["-drive", f"file={path},if=virtio,format=raw,cache=unsafe"]
        self.argv = [
            qemu_binary() or QEMU, "-accel", "tcg,tb-size=512", "-cpu", "max", "-m", memory, "-smp", "1",
            "-nographic", "-no-reboot", "-net", "none", "-monitor", "none",
            "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
            "-chardev", f"file,id=log,path=/dev/fd/{log_w}", "-serial", "chardev:log",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            *drives, "-device", "i6300esb",
        ]
        self._stderr = open(workdir / f"{name}-qemu.stderr", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, pass_fds=(log_w,), preexec_fn=_die_with_parent)
        os.close(log_w)
        self._threads = [
            threading.Thread(target=self._read_console, name=f"{name}-console", daemon=True),
            threading.Thread(target=self._read_log, args=(log_r,), name=f"{name}-log", daemon=True),
            threading.Thread(target=self._wait_proc, name=f"{name}-wait", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- readers ---------------------------------------------------------------------------------------
    def _read_console(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with open(self.console_path, "ab") as out:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                with self._cond:
                    self.console += chunk.decode(errors="replace").replace("\r", "")
                    self._cond.notify_all()

    def _read_log(self, fd: int) -> None:
        tee_json_lines(fd, self.log_path, self._add_record)

    def _add_record(self, record: Record) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def _wait_proc(self) -> None:
        code = self.proc.wait()
        with self._cond:
            self.returncode = code
            self._cond.notify_all()

    @property
    def position(self) -> int:
        """Where the next ``expect`` starts searching the console output."""
        return self._pos

    # -- waiting -----------------------------------------------------------------------------------------
    def _tail(self) -> str:
        return "\n".join(self.console.splitlines()[-25:])

    def _wait(self, check: Callable[[], Any], timeout: float, what: str, *, until_exit: bool = False) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = check()
                if found is not None:
                    return found
                if self.returncode is not None and not until_exit:
                    # the readers may still hold the last output: give them the chance to finish
                    self._cond.release()
                    try:
                        for t in self._threads[:2]:
                            t.join(timeout=5)
                    finally:
                        self._cond.acquire()
                    found = check()
                    if found is not None:
                        return found
                    raise VMError(f"{self.name}: QEMU exited ({self.returncode}) while waiting for {what}\n"
                                  + self._tail())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: timed out after {timeout:.0f} s waiting for {what}\n"
                                       + self._tail())
                self._cond.wait(left)

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        """The next match of ``pattern`` in the console output after the previous match."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern

        def check() -> re.Match[str] | None:
            m = rx.search(self.console, self._pos)
            if m:
                self._pos = m.end()
            return m

        result: re.Match[str] = self._wait(check, timeout, f"console {rx.pattern!r}")
        return result

    def wait_record(self, match: Callable[[Record], bool], timeout: float = 60.0, what: str = "") -> Record:
        def check() -> Record | None:
            return next((r for r in self.records if match(r)), None)

        result: Record = self._wait(check, timeout, what or "a log record")
        return result

    def wait_event(self, event: str, timeout: float = 60.0, **fields: Any) -> Record:
        return self.wait_record(
            lambda r: r.get("event") == event and all(r.get(k) == v for k, v in fields.items()),
            timeout, f"event {event!r} {fields or ''}")

    def wait_exit(self, timeout: float = 120.0) -> int:
        code: int = self._wait(lambda: self.returncode, timeout, "QEMU to exit", until_exit=True)
        for t in self._threads[:2]:
            t.join(timeout=10)
        return code

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise VMError(f"{self.name}: console closed (QEMU exited: {self.returncode})") from exc

    # -- the end -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill QEMU (the process this object started, by its pid) if it still runs; close our files."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Shell:
    """Commands on the guest's console shell, framed by unique markers (labgrid's ShellDriver way): the
    markers are written split by quotes, so the echo of the command line never matches them."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def wait_ready(self, timeout: float = 60.0, attempt: float = 3.0) -> None:
        """Until the shell answers (the console service may still be starting)."""
        deadline = time.monotonic() + timeout
        cancel = ""
        while True:
            tok = uuid.uuid4().hex[:8]
            self.vm.send(f"{cancel}\necho '__RE''ADY_{tok}__'\n")
            cancel = "\x03"  # a retry first cancels whatever half line the shell may hold (Ctrl-C)
            try:
                left = max(0.1, deadline - time.monotonic())
                self.vm.expect(f"__READY_{tok}__", timeout=min(attempt, left))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
        self.run("stty -echo 2>/dev/null; PS1=''; export PS1")

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``command`` (one line); its exit code and output (console noise included, \\r dropped)."""
        tok = uuid.uuid4().hex[:8]
        self.vm.send(f"echo '__BE''GIN_{tok}__'; {command}; echo \"__E\"\"ND_{tok}_$?__\"\n")
        self.vm.expect(rf"__BEGIN_{tok}__\n", timeout)
        start = self.vm.position
        m = self.vm.expect(rf"__END_{tok}_(\d+)__", timeout)
        return int(m.group(1)), self.vm.console[start:m.start()]

    def check(self, command: str, timeout: float = 60.0) -> str:
        code, out = self.run(command, timeout)
        if code != 0:
            raise VMError(f"`{command}` failed with {code}:\n{out}")
        return out
