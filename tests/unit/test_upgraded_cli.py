"""upgraded's command line outside a PID 1: it refuses, with procd's message, and touches nothing."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "upgraded", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_exec_contract_refused_when_not_pid1() -> None:
    res = run("/tmp/sysupgrade.img", "/lib/upgrade/do_stage2")
    assert res.returncode == 1
    assert res.stderr.strip() == "this tool needs to run as pid 1"


def test_init_mode_refused_when_not_pid1() -> None:
    res = run()
    assert res.returncode == 1
    assert "pid 1" in res.stderr


def test_help_lists_the_modes() -> None:
    res = run("--help")
    assert res.returncode == 0
    assert "upgraded <path> <command>" in res.stdout and "upgraded call" in res.stdout
