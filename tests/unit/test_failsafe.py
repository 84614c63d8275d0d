"""preinit's failsafe wait and sysupgrade's wake-up, on a FIFO in a temp dir (no polling, no root)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from preinit import failsafe
from sysupgrade import cli


def test_wait_returns_only_once_the_handover_file_exists(tmp_path: Path) -> None:
    lock, handover = tmp_path / ".failsafe", tmp_path / "sysupgrade"
    done = threading.Event()
    result: list[str] = []

    def waiter() -> None:
        result.append(failsafe.wait_for_upgrade(str(lock), str(handover)))
        done.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    while not lock.exists():  # the waiter makes the FIFO
        threading.Event().wait(0.01)
    # a wake-up without the hand-over file: it keeps waiting
    fd = os.open(lock, os.O_WRONLY)
    os.write(fd, b"x\n")
    os.close(fd)
    assert not done.wait(0.3)
    handover.write_bytes(b"/tmp/root\0/tmp/sysupgrade.img\0/lib/upgrade/do_stage2")
    fd = os.open(lock, os.O_WRONLY)
    os.write(fd, b"sysupgrade\n")
    os.close(fd)
    assert done.wait(10)
    assert result == [str(handover)]


def test_wake_without_a_waiter_is_harmless(tmp_path: Path) -> None:
    assert cli.wake_failsafe(str(tmp_path)) is False  # no /tmp/.failsafe at all
    (tmp_path / "tmp").mkdir()
    os.mkfifo(tmp_path / "tmp/.failsafe")
    assert cli.wake_failsafe(str(tmp_path)) is False  # a FIFO nobody reads: ENXIO, no block


# --- failsafe's shells ------------------------------------------------------------------------------


def _read_until(master: int, text: bytes, timeout: float = 20.0) -> bytes:
    import select
    import time

    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} in {seen!r}"
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            seen += os.read(master, 4096)
    return seen


def test_a_root_shell_on_a_console_with_failsafe_set_respawned_after_exit() -> None:
    from preinit import shells

    master, slave = os.openpty()
    path = os.ttyname(slave)
    sh = shells.Shells([path], argv=["/bin/sh"]).start()
    try:
        os.write(master, b"echo fs=$FAILSAFE pid=$$ sum=$((6*7)) tty=$(tty)\n")
        out = _read_until(master, b"sum=42 tty=" + path.encode()).decode()
        assert "fs=1" in out
        first_pid = out.split("pid=")[-1].split()[0]
        os.write(master, b"exit\n")
        os.write(master, b"echo again pid=$$ sum=$((7*8))\n")  # read by the respawned shell
        out = _read_until(master, b"sum=56").decode()
        second_pid = out.split("again pid=")[-1].split()[0]
        assert second_pid != first_pid
        assert sh.gave_up == []
    finally:
        sh.stop()
        os.close(master)
        os.close(slave)


def test_a_shell_that_ends_at_once_is_given_up_after_three_tries() -> None:
    from preinit import shells

    sh = shells.Shells(["/dev/null"], argv=["/bin/sh", "-c", "exit 0"]).start()
    for t in sh._threads:
        t.join(timeout=20)
    assert sh.gave_up == ["/dev/null"]
    sh.stop()
