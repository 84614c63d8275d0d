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
