"""Does this boot enter failsafe? (OpenWrt's ``30_failsafe_wait``)

Triggers: ``failsafe=`` on the kernel command line (at once, no wait); within the wait (default 4 s),
a line ``f`` typed on any active console (the prompt is printed on every one), SIGUSR1 or SIGINT to
preinit, or the button file ``/tmp/failsafe_button`` (checked every second of the wait and once after
it; OpenWrt only looks after). A line ``1``..``4`` writes the debug level to ``/tmp/debug_level``.

The wait is one ``select`` over the consoles and the signal wake-up pipe, in ticks of at most a second
(the button file has no event of its own). Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from wrtcore import log
from wrtcore.namespaces import in_initial_pid_namespace

PROMPT_FAILSAFE = "Press the [f] key and hit [enter] to enter failsafe mode"
PROMPT_DEBUG = "Press the [1], [2], [3] or [4] key and hit [enter] to select the debug level"
BUTTON_FILE = "/tmp/failsafe_button"
DEBUG_LEVEL = "/tmp/debug_level"
FAILSAFE_MARK = "/tmp/failsafe"
SIGNALS = (signal.SIGUSR1, signal.SIGINT)


@dataclass(frozen=True)
class Trigger:
    how: str  # cmdline | console | button | signal
    detail: str = ""

    def describe(self) -> str:
        return f"{self.how} ({self.detail})" if self.detail else self.how


def from_cmdline(cmdline: Mapping[str, str]) -> Trigger | None:
    return Trigger("cmdline", "failsafe=" + cmdline["failsafe"]) if "failsafe" in cmdline else None


def console_choice(line: str) -> str | None:
    """``"failsafe"``, a debug level ``"1"``..``"4"``, or None for anything else."""
    word = line.strip()
    if word == "f":
        return "failsafe"
    if word in ("1", "2", "3", "4"):
        return word
    return None


def active_consoles(sys_root: str = "/", initial_ns: bool | None = None) -> list[str]:
    """The consoles to prompt on: ``/sys/class/tty/console/active`` on a real machine or VM (each name
    as /dev/<name>, ``/dev/console`` when the list is empty). Inside a PID namespace (the sandbox
    device) that file and those devices are the host's: only our own stdin, when it is a terminal."""
    if initial_ns is None:
        initial_ns = in_initial_pid_namespace()
    if not initial_ns:
        return ["/proc/self/fd/0"] if os.isatty(0) else []
    try:
        with open(os.path.join(sys_root, "sys/class/tty/console/active")) as f:
            names = f.read().split()
    except OSError:
        names = []
    return [f"/dev/{n}" for n in names] or ["/dev/console"]


def button_pressed(path: str = BUTTON_FILE) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or "button"
    except OSError:
        return None


class Wait:
    """One failsafe wait over ``consoles`` (paths), ``seconds`` long."""

    def __init__(self, consoles: Sequence[str], seconds: int, *, button_file: str = BUTTON_FILE,
                 debug_file: str = DEBUG_LEVEL) -> None:
        self.consoles = list(consoles)
        self.seconds = seconds
        self.button_file = button_file
        self.debug_file = debug_file
        self._signalled: str | None = None

    def _on_signal(self, signo: int, _frame: FrameType | None) -> None:
        self._signalled = signal.Signals(signo).name

    def _open(self) -> dict[int, str]:
        fds: dict[int, str] = {}
        for path in self.consoles:
            try:
                fds[os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)] = path
            except OSError as exc:
                log.get().warning("console not usable", console=path, error=exc.strerror)
        return fds

    def _say(self, fds: Mapping[int, str], text: str) -> None:
        data = (text + "\n").encode()
        if not fds:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.write(fd, data)

    def run(self) -> Trigger | None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        fds = self._open()
        try:
            self._say(fds, PROMPT_FAILSAFE)
            self._say(fds, PROMPT_DEBUG)
            return self._loop(fds, wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            for fd in (*fds, wake_r, wake_w):
                os.close(fd)

    def _loop(self, fds: dict[int, str], wake_r: int) -> Trigger | None:
        import select

        buffers = dict.fromkeys(fds, b"")
        deadline = time.monotonic() + self.seconds
        while True:
            if self._signalled:
                return Trigger("signal", self._signalled)
            pressed = button_pressed(self.button_file)
            if pressed:
                return Trigger("button", pressed)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                ready, _, _ = select.select([wake_r, *fds], [], [], min(1.0, left))
            except InterruptedError:
                continue
            for fd in ready:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 64)
                    continue
                try:
                    chunk = os.read(fd, 256)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:  # hung up: stop watching it
                    del fds[fd]
                    os.close(fd)
                    continue
                buffers[fd] += chunk.replace(b"\r", b"\n")
                *lines, buffers[fd] = buffers[fd].split(b"\n")
                for line in lines:
                    found = self._choice(line.decode(errors="replace"), fds)
                    if found is not None:
                        return Trigger("console", fds.get(fd, ""))

    def _choice(self, line: str, fds: Mapping[int, str]) -> str | None:
        choice = console_choice(line)
        if choice is None or choice == "failsafe":
            return choice
        with open(self.debug_file, "w") as f:
            f.write(choice + "\n")
        self._say(fds, f"- debug level {choice} -")
        return None


def decide(cmdline: Mapping[str, str], *, no_failsafe: bool, seconds: int, consoles: Sequence[str],
           button_file: str = BUTTON_FILE, debug_file: str = DEBUG_LEVEL) -> Trigger | None:
    """The whole of 30_failsafe_wait: the command line first, then the wait (skipped when failsafe is
    disabled in the settings)."""
    found = from_cmdline(cmdline)
    if found is not None or no_failsafe:
        return found
    return Wait(consoles, seconds, button_file=button_file, debug_file=debug_file).run()
