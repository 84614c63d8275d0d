"""The watchdog across stage2's re-exec: ``prepare_exec`` passes the timeout and frequency in force on
(WDT_TIMEOUT, WDT_FREQUENCY) and ``adopt`` in the new process restores them; without them a handed-over
fd keeps the driver's timeout (here a plain file: no driver, the 30 s default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrtcore import watchdog


@pytest.fixture
def wdt_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    fd = os.open(tmp_path / "watchdog", os.O_WRONLY | os.O_CREAT)
    for key in ("WDTFD", watchdog.ENV_TIMEOUT, watchdog.ENV_FREQUENCY):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(watchdog, "_current", None)
    yield fd
    if watchdog._current is not None:
        watchdog._current.stop()
    os.close(fd)


def test_adopt_restores_what_prepare_exec_passed_on(wdt_file: int) -> None:
    env = {"WDTFD": str(wdt_file), watchdog.ENV_TIMEOUT: "8", watchdog.ENV_FREQUENCY: "1"}
    keeper = watchdog.adopt(env)
    assert keeper is not None
    assert (keeper.timeout, keeper.interval, keeper.status) == (8, 1, "running")
    assert watchdog.ENV_TIMEOUT not in os.environ and os.environ["WDTFD"] == str(wdt_file)

    keeper.configure(timeout=12, frequency=3)
    handed: dict[str, str] = {"WDTFD": str(wdt_file)}
    watchdog.prepare_exec(handed)
    assert handed[watchdog.ENV_TIMEOUT] == "12" and handed[watchdog.ENV_FREQUENCY] == "3"
    assert Path(f"/proc/self/fd/{wdt_file}").read_bytes().endswith(b"X")  # and pinged


def test_adopt_without_the_variables_keeps_a_safe_frequency(wdt_file: int) -> None:
    keeper = watchdog.adopt({"WDTFD": str(wdt_file)})
    assert keeper is not None
    assert (keeper.timeout, keeper.interval) == (watchdog.DEFAULT_TIMEOUT, watchdog.DEFAULT_FREQUENCY)


def test_prepare_exec_without_a_handed_fd_changes_nothing() -> None:
    env: dict[str, str] = {}
    watchdog.prepare_exec(env)
    assert env == {}
