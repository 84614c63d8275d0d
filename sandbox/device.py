"""A sandbox device: its disk on loop devices, its boots in namespaces, its console and JSON log.

Everything made here is undone by ``close()`` (also when a test fails): the device's processes (ended
by pid, only the ones this object started), swap areas on its devices, loop devices over its disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox import disk as diskmod
from sandbox.channel import tee_json_lines
from wrtcore import blockdev, loop, mounts, partitions

Record = dict[str, Any]


class BootFailed(RuntimeError):
    pass


class Boot:
    """One boot of the device: a PID namespace whose init is our ``upgraded``."""

    def __init__(self, device: Device, number: int, root_dev: str, cmdline: str,
                 env: dict[str, str] | None = None) -> None:
        self.number = number
        self.records: list[Record] = []
        self.console: list[str] = []
        self.ended: Record | None = None
        self._cond = threading.Condition()
        log_r, log_w = os.pipe()
        con_r, con_w = os.pipe()
        self.log_path = device.workdir / f"boot-{number}.jsonl"
        self.console_path = device.workdir / f"console-{number}.log"
        child_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.nsboot", root_dev, cmdline, str(log_w), str(con_w)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=child_env, text=True,
            pass_fds=(log_w, con_w),
        )
        os.close(log_w)
        os.close(con_w)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise BootFailed("nsboot ended before starting the device")
        self.pid = int(json.loads(first)["pid"])
        self._threads = [
            threading.Thread(target=self._read_log, args=(log_r,), daemon=True),
            threading.Thread(target=self._read_console, args=(con_r,), daemon=True),
            threading.Thread(target=self._read_status, daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- readers -----------------------------------------------------------------------------------
    def _read_log(self, fd: int) -> None:
        tee_json_lines(fd, self.log_path, self._add_record)

    def _add_record(self, record: Record) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def _read_console(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f, open(self.console_path, "ab") as out:
            for line in f:
                out.write(line)
                out.flush()
                with self._cond:
                    self.console.append(line.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()

    def _read_status(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.ended = json.loads(line)
                self._cond.notify_all()
        self.proc.wait()
        with self._cond:
            if self.ended is None:
                self.ended = {"ended": "lost", "code": self.proc.returncode}
            self._cond.notify_all()

    # -- waiting -----------------------------------------------------------------------------------
    def wait_for(self, match: Callable[[Record], bool], timeout: float = 60.0, what: str = "") -> Record:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for record in self.records[seen:]:
                    if match(record):
                        return record
                seen = len(self.records)
                if self.ended is not None and not self._threads[0].is_alive():
                    raise BootFailed(f"boot {self.number} ended ({self.ended}) before: {what}\n"
                                     + "\n".join(self.console[-30:]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"boot {self.number}: timed out waiting for {what}\n"
                                       + "\n".join(self.console[-30:]))
                self._cond.wait(left)

    def wait_console(self, text: str, timeout: float = 60.0) -> str:
        """A console line containing ``text``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.console[seen:]:
                    if text in line:
                        return line
                seen = len(self.console)
                left = deadline - time.monotonic()
                if self.ended is not None or left <= 0:
                    raise TimeoutError(f"boot {self.number}: no console line with {text!r}\n"
                                       + "\n".join(self.console[-30:]))
                self._cond.wait(left)

    def wait_event(self, event: str, timeout: float = 60.0, **fields: Any) -> Record:
        def match(r: Record) -> bool:
            return r.get("event") == event and all(r.get(k) == v for k, v in fields.items())

        return self.wait_for(match, timeout, what=f"{event} {fields}")

    def wait_ready(self, timeout: float = 60.0) -> Record:
        return self.wait_event("- init complete -", timeout)

    def wait_done(self, timeout: float = 60.0) -> Record:
        """The boot completed: the overlay is marked ready (changes now survive a reboot)."""
        return self.wait_event("- done -", timeout)

    def wait_end(self, timeout: float = 120.0) -> Record:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.ended is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"boot {self.number} did not end\n" + "\n".join(self.console[-30:]))
                self._cond.wait(left)
        for t in self._threads[:2]:
            t.join(timeout=10)
        return self.ended

    def alive(self) -> bool:
        return self.ended is None

    # -- reaching into the device --------------------------------------------------------------------
    def path(self, inside: str) -> Path:
        """A path inside the running device, through /proc/<pid>/root."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def socket_path(self) -> str:
        return str(self.path("/var/run/upgraded.sock"))

    def wait_socket(self, timeout: float = 30.0) -> str:
        self.wait_event("bus ready", timeout)
        return self.socket_path()

    def run(self, argv: list[str], timeout: float = 120.0, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside the device (its mount and PID namespaces, its root)."""
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-n", "-r", "-w", "--",
               "/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
               *(f"{k}={v}" for k, v in (env or {}).items()), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)

    def call(self, obj: str, method: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        """One JSON-RPC call over the device's bus socket, from the host."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.socket_path())
            msg = {"jsonrpc": "2.0", "id": 1, "method": "call",
                   "params": ["00000000000000000000000000000000", obj, method, args or {}]}
            s.sendall(json.dumps(msg).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def kill(self) -> None:
        """Power cut: SIGKILL the device's PID 1 (a process this object started)."""
        if self.ended is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            self.wait_end(timeout=30)


class Device:
    """An x86 "combined" disk image on a loop device, with loop views for its two partitions."""

    def __init__(self, workdir: Path, image: Path, disk_size: int | None = None,
                 disk_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.disk_file = (disk_dir or workdir) / "disk.img"
        payload = diskmod.payload_size(image)
        diskmod.sparse_copy(image, self.disk_file, disk_size)
        with open(self.disk_file, "r+b") as f:  # the trailer is not part of what a flash writes
            f.truncate(max(payload, disk_size or 0))
        self.boots: list[Boot] = []
        self._loops: list[str] = []
        self.disk = loop.attach(str(self.disk_file))
        self._loops.append(self.disk)
        self.boot_part = partitions.device(self.disk, 1)
        self._loops.append(self.boot_part)
        self.root_part = partitions.device(self.disk, 2)
        self._loops.append(self.root_part)

    def boot(self, cmdline_extra: str = "", env: dict[str, str] | None = None) -> Boot:
        cmdline = f"root={self.root_part} rootfstype=squashfs {cmdline_extra}".strip()
        b = Boot(self, len(self.boots) + 1, self.root_part, cmdline, env)
        self.boots.append(b)
        return b

    def devices(self) -> set[int]:
        nums: set[int] = set()
        for path in self._loops:  # each on its own: one may already be gone
            with contextlib.suppress(OSError):
                nums.add(os.stat(path).st_rdev)
        return blockdev.with_stacked_loops(nums)

    def close(self) -> None:
        for b in self.boots:
            b.kill()
        nums = self.devices()
        for swap in mounts.read_swaps():  # swap areas the device left active on its own disk
            with contextlib.suppress(OSError):
                st = os.stat(swap.path)
                if st.st_dev in nums or st.st_rdev in nums:
                    subprocess.run(["swapoff", swap.path], check=False)
        # views stacked on ours, also those attached inside the device's namespaces, whose backing path
        # (``/loop1``, as seen from there) cannot be looked up from here
        ours = {os.path.basename(p) for p in self._loops}
        stacked = [f"/dev/{lo.name}" for lo in loop.list_loops()
                   if (lo.backing_dev in nums
                       or (lo.backing_dev == -1 and os.path.basename(lo.backing_file) in ours))
                   and f"/dev/{lo.name}" not in self._loops]
        for dev in [*stacked, *reversed(self._loops)]:
            with contextlib.suppress(OSError):
                loop.detach(dev)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
