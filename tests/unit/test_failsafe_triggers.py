"""Each failsafe trigger on the real wait (preinit.trigger), in a child process with pseudo-terminals
as its consoles: the prompt on every console, ``f`` + Enter on any one of them, a debug level, SIGUSR1
and SIGINT to preinit, the button file, and the kernel command line (no wait at all)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from preinit import trigger

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import json, signal, sys
from preinit import trigger
for s in (signal.SIGUSR1, signal.SIGINT):
    signal.signal(s, signal.SIG_IGN)   # as preinit's cli: outside the wait they do nothing
args = json.loads(sys.argv[1])
found = trigger.decide(args["cmdline"], no_failsafe=False, seconds=args["seconds"], consoles=args["consoles"],
                       button_file=args["button"], debug_file=args["debug"])
print(json.dumps(None if found is None else [found.how, found.detail]), flush=True)
"""


@dataclass
class Run:
    proc: subprocess.Popen[str]
    masters: list[int]
    paths: list[str]
    tmp: Path

    def read_until(self, index: int, text: str, timeout: float = 20.0) -> str:
        seen = b""
        deadline = time.monotonic() + timeout
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"console {index}: no {text!r} in {seen!r}"
            ready, _, _ = select.select([self.masters[index]], [], [], left)
            if ready:
                seen += os.read(self.masters[index], 4096)
        return seen.decode()

    def result(self, timeout: float = 20.0) -> object:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    runs: list[Run] = []
    slaves: list[int] = []

    def _start(consoles: int = 2, seconds: int = 60, cmdline: dict[str, str] | None = None) -> Run:
        masters: list[int] = []
        paths: list[str] = []
        for _ in range(consoles):
            m, s = os.openpty()
            masters.append(m)
            paths.append(os.ttyname(s))
            slaves.append(s)  # kept open here (a master reads EIO with no slave open); the child
            # opens the slave by its path, as preinit opens /dev/ttyS0
        args = {"cmdline": cmdline or {}, "seconds": seconds, "consoles": paths,
                "button": str(tmp_path / "failsafe_button"), "debug": str(tmp_path / "debug_level")}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        run = Run(proc, masters, paths, tmp_path)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for m in run.masters:
            os.close(m)
    for s in slaves:
        os.close(s)


def test_prompt_on_every_console_and_f_on_the_second_one(start) -> None:  # type: ignore[no-untyped-def]
    run = start(consoles=2)
    for i in (0, 1):
        out = run.read_until(i, trigger.PROMPT_DEBUG)
        assert trigger.PROMPT_FAILSAFE in out
    os.write(run.masters[1], b"f\n")
    assert run.result() == ["console", run.paths[1]]


def test_debug_level_then_f(start) -> None:  # type: ignore[no-untyped-def]
    run = start(consoles=1)
    run.read_until(0, trigger.PROMPT_DEBUG)
    os.write(run.masters[0], b"x\n3\n")
    run.read_until(0, "- debug level 3 -")
    assert (run.tmp / "debug_level").read_text() == "3\n"
    os.write(run.masters[0], b"f\r")  # a terminal in raw mode sends CR
    assert run.result() == ["console", run.paths[0]]


def test_nothing_typed_the_wait_ends_without_failsafe(start) -> None:  # type: ignore[no-untyped-def]
    run = start(consoles=1, seconds=1)
    run.read_until(0, trigger.PROMPT_FAILSAFE)
    os.write(run.masters[0], b"g\n")
    assert run.result() is None
    assert not (run.tmp / "debug_level").exists()


@pytest.mark.parametrize("signo", [signal.SIGUSR1, signal.SIGINT], ids=["SIGUSR1", "SIGINT"])
def test_a_signal_to_preinit_during_the_wait(start, signo: int) -> None:  # type: ignore[no-untyped-def]
    run = start(consoles=1)
    run.read_until(0, trigger.PROMPT_DEBUG)  # handlers are installed before the prompt is written
    run.proc.send_signal(signo)
    assert run.result() == ["signal", signal.Signals(signo).name]


def test_the_button_file(start) -> None:  # type: ignore[no-untyped-def]
    run = start(consoles=1)
    run.read_until(0, trigger.PROMPT_DEBUG)
    (run.tmp / "failsafe_button.new").write_text("reset\n")  # renamed: the child never sees it empty
    (run.tmp / "failsafe_button.new").rename(run.tmp / "failsafe_button")
    assert run.result() == ["button", "reset"]


def test_failsafe_on_the_command_line_needs_no_wait(start) -> None:  # type: ignore[no-untyped-def]
    run = start(consoles=1, cmdline={"failsafe": "1", "root": "/dev/sda2"})
    assert run.result() == ["cmdline", "failsafe=1"]
    ready, _, _ = select.select([run.masters[0]], [], [], 0)
    assert not ready, "no prompt when the command line already decided"


def test_no_failsafe_setting_skips_the_wait() -> None:
    assert trigger.decide({}, no_failsafe=True, seconds=60, consoles=["/nonexistent"]) is None
    assert trigger.decide({"failsafe": ""}, no_failsafe=True, seconds=60, consoles=[]) == \
        trigger.Trigger("cmdline", "failsafe=")


@pytest.mark.parametrize(("line", "choice"), [("f", "failsafe"), (" f ", "failsafe"), ("F", None),
                                              ("ff", None), ("1", "1"), ("4", "4"), ("5", None), ("", None)])
def test_console_choice(line: str, choice: str | None) -> None:
    assert trigger.console_choice(line) == choice


def test_active_consoles_on_a_machine(tmp_path: Path) -> None:
    active = tmp_path / "sys/class/tty/console/active"
    active.parent.mkdir(parents=True)
    active.write_text("tty0 ttyS0\n")
    assert trigger.active_consoles(str(tmp_path), initial_ns=True) == ["/dev/tty0", "/dev/ttyS0"]
    active.write_text("\n")
    assert trigger.active_consoles(str(tmp_path), initial_ns=True) == ["/dev/console"]


def test_active_consoles_in_a_pid_namespace_never_name_the_hosts(tmp_path: Path) -> None:
    active = tmp_path / "sys/class/tty/console/active"
    active.parent.mkdir(parents=True)
    active.write_text("ttyS0\n")
    got = trigger.active_consoles(str(tmp_path), initial_ns=False)
    assert got == (["/proc/self/fd/0"] if os.isatty(0) else [])
