"""One VM under QEMU (TCG): the firmware disk, the kernel and initramfs, the serial console (ttyS0) on a
unix socket the harness owns, QMP (power, reset, throttling) on another, and the JSON log channel (the
guest's ttyS1, ``wrt.log=/dev/ttyS1``) on a pipe.

The harness listens on both sockets in the VM's workdir before QEMU starts; QEMU connects to them at
start-up (``server=off``) with its CPU stopped (``-S``), so no console byte and no QMP greeting can be
lost, and nothing polls for a socket file. Once both are connected, QMP ``cont`` starts the guest
(``paused=True`` leaves that to the caller: ``resume()``).

A ``reboot(2)`` in the guest ends QEMU (``-no-reboot``); booting again is a new ``VM`` on the same disk.
``power_cut()`` is QMP ``quit``: QEMU stops at once, what the guest wrote so far is in the disk file.
QEMU dies with the process that started it (PR_SET_PDEATHSIG) and is killed, by its pid, by ``close()``.
Nothing here sleeps for a fixed time: every wait is on console output, a log record or QEMU's exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.channel import tee_json_lines
from wrtvm.machine import QEMU, Drive, Machine, qemu_argv, qemu_binary
from wrtvm.qmp import QMP

__all__ = ["QEMU", "VM", "Shell", "VMError", "qemu_binary"]

Record = dict[str, Any]
PR_SET_PDEATHSIG = 1
SUN_PATH_MAX = 107  # sockaddr_un.sun_path, without the terminating NUL


class VMError(RuntimeError):
    pass


_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it


def die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    sock.listen(1)
    return sock


class VM:
    """A running QEMU. ``console`` is everything the guest wrote on ttyS0 so far, ``records`` the JSON
    records of its log channel, ``qmp`` the QMP connection."""

    def __init__(self, *, kernel: Path, initrd: Path, disk: Path, workdir: Path, name: str = "vm",
                 extra_disks: tuple[Path, ...] = (), cmdline_extra: str = "", memory: str = "512M",
                 blkdebug: Path | None = None, stop_on_error: bool = False, paused: bool = False) -> None:
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
        self.machine = Machine(kernel=kernel, initrd=initrd, cmdline_extra=cmdline_extra, memory=memory,
                               drives=(Drive(disk, blkdebug, "stop" if stop_on_error else "report"),
                                       *(Drive(p) for p in extra_disks)))
        self._stack = contextlib.ExitStack()
        try:
            self._start(paused)
        except BaseException:
            self.close()
            raise

    def _socket_dir(self) -> Path:
        """The workdir, or a short directory under /tmp when its paths are too long for a socket."""
        if len(str(self.workdir / f"{self.name}-console.sock")) <= SUN_PATH_MAX:
            return self.workdir
        short = Path(tempfile.mkdtemp(prefix="wrtvm-"))
        self._stack.callback(os.rmdir, short)
        return short

    def _start(self, paused: bool) -> None:
        where = self._socket_dir()
        self.console_socket = where / f"{self.name}-console.sock"
        self.qmp_socket = where / f"{self.name}-qmp.sock"
        listeners = []
        for path in (self.console_socket, self.qmp_socket):
            sock = self._stack.enter_context(_listen(path))
            self._stack.callback(path.unlink, missing_ok=True)
            listeners.append(sock)
        log_r, log_w = os.pipe()
        self.argv = qemu_argv(self.machine, console=f"socket,path={self.console_socket},server=off",
                              log=f"file,path=/dev/fd/{log_w}",
                              qmp=f"socket,path={self.qmp_socket},server=off", paused=True)
        stderr = self._stack.enter_context(open(self.workdir / f"{self.name}-qemu.stderr", "wb"))  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                         pass_fds=(log_w,), preexec_fn=die_with_parent)
        finally:
            os.close(log_w)
        self._log_thread = threading.Thread(target=self._read_log, args=(log_r,), name=f"{self.name}-log",
                                            daemon=True)
        self._log_thread.start()
        self._con = self._stack.enter_context(self._accept(listeners[0]))
        self.qmp = QMP(self._accept(listeners[1]), f"{self.name}-qmp")
        self._stack.callback(self.qmp.close)
        self._threads = [
            threading.Thread(target=self._read_console, name=f"{self.name}-console", daemon=True),
            self._log_thread,
            threading.Thread(target=self._wait_proc, name=f"{self.name}-wait", daemon=True),
        ]
        for t in (self._threads[0], self._threads[2]):
            t.start()
        if not paused:
            self.resume()

    def _accept(self, listener: socket.socket, timeout: float = 30.0) -> socket.socket:
        """QEMU's connection to ``listener`` (it connects while starting up; it may also die first)."""
        deadline = time.monotonic() + timeout
        listener.settimeout(0.5)
        while True:
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return conn
            except TimeoutError:
                pass
            if self.proc.poll() is not None:
                err = (self.workdir / f"{self.name}-qemu.stderr").read_text(errors="replace")
                raise VMError(f"{self.name}: QEMU exited ({self.proc.returncode}) before connecting: "
                              f"{err.strip()}")
            if time.monotonic() > deadline:
                raise VMError(f"{self.name}: QEMU did not connect to {listener.getsockname()}")

    def _kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    # -- readers ---------------------------------------------------------------------------------------
    def _read_console(self) -> None:
        with open(self.console_path, "ab") as out:
            while True:
                try:
                    chunk = self._con.recv(65536)
                except OSError:
                    chunk = b""
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
        try:
            self._con.sendall(text.encode())
        except OSError as exc:
            raise VMError(f"{self.name}: console closed (QEMU exited: {self.returncode})") from exc

    # -- power (QMP) -------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Start (or continue) the guest's CPU."""
        self.qmp.execute("cont")

    def pause(self) -> None:
        self.qmp.execute("stop")

    def reset(self) -> None:
        """The reset button: the guest restarts at once, in this QEMU (no reboot(2), no sync)."""
        self.qmp.execute("system_reset")

    def power_cut(self, timeout: float = 30.0) -> int:
        """Pull the plug: QMP ``quit`` stops QEMU at once. Returns QEMU's exit status."""
        self.qmp.quit()
        return self.wait_exit(timeout)

    def throttle(self, disk: int = 0, write_bytes_per_second: int = 0) -> None:
        """Limit the guest's writes to ``disk`` (0: no limit), QEMU's I/O throttling."""
        self.qmp.execute("block_set_io_throttle", device=f"disk{disk}", bps=0, bps_rd=0,
                         bps_wr=write_bytes_per_second, iops=0, iops_rd=0, iops_wr=0)

    # -- the end -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill QEMU (the process this object started, by its pid) if it still runs; close our sockets
        and files, remove the socket files."""
        if hasattr(self, "proc"):
            self._kill()
        for t in getattr(self, "_threads", ()):
            if t.ident is not None:
                t.join(timeout=10)
        self._stack.close()

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
