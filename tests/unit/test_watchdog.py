"""The watchdog keeper on a pipe standing in for /dev/watchdog (every ping is a byte to read), and the
``system watchdog`` bus method (reference 1.5). The real device (i6300esb): tests/vm/test_watchdog_vm.py."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from upgraded.bus import Bus, Caller
from upgraded.rpc import Status
from upgraded.system import SystemObject
from wrtcore import watchdog
from wrtcore.watchdog import Keeper

ROOT = Caller(pid=1, uid=0, gid=0)


def read_byte(fd: int, timeout: float = 20.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "nothing written to the watchdog"
    return os.read(fd, 1)


@pytest.fixture
def wdt() -> Iterator[tuple[Keeper, int]]:
    r, w = os.pipe()
    keeper = Keeper(w, timeout=30, interval=0.05)
    try:
        yield keeper, r
    finally:
        keeper.stop()
        os.close(r)
        if keeper.fd is not None:
            os.close(w)


@pytest.mark.parametrize(("asked", "got"), [
    ((5, 30), (5, 30)),     # procd's defaults
    ((5, 8), (4, 8)),       # frequency at most half the timeout
    ((10, 10), (10, 20)),   # a timeout not above the frequency is raised to twice it
    ((20, 5), (20, 40)),
    ((1, 1), (1, 2)),
    ((0, 0), (1, 2)),
])
def test_clamp_follows_procd(asked: tuple[int, int], got: tuple[int, int]) -> None:
    assert watchdog.clamp(*asked) == got


def test_pings_at_once_and_then_on_the_timer(wdt: tuple[Keeper, int]) -> None:
    keeper, r = wdt
    keeper.start()
    assert [read_byte(r) for _ in range(3)] == [b"X"] * 3
    assert keeper.pings >= 3 and keeper.status == "running"


def test_pings_go_on_while_the_main_thread_is_blocked(wdt: tuple[Keeper, int]) -> None:
    """The main thread blocks on a pipe that only a watcher writes to after it has seen five pings:
    returning at all proves the pings went on while the main thread was blocked."""
    keeper, r = wdt
    done_r, done_w = os.pipe()

    def watcher() -> None:
        for _ in range(5):
            read_byte(r)
        os.write(done_w, b"!")

    threading.Thread(target=watcher, daemon=True).start()
    keeper.start()
    try:
        assert read_byte(done_r, timeout=30) == b"!"
    finally:
        os.close(done_r)
        os.close(done_w)


def test_stop_without_magic_close_only_stops_the_pings(wdt: tuple[Keeper, int]) -> None:
    keeper, r = wdt
    keeper.start()
    read_byte(r)
    reply = keeper.configure(stop=True)
    assert reply == {"status": "stopped", "timeout": 30, "frequency": 0, "magicclose": False}
    os.set_blocking(r, False)
    leftovers = b""
    try:
        while True:
            leftovers += os.read(r, 64)
    except BlockingIOError:
        pass
    assert set(leftovers) <= {ord("X")}
    assert keeper.fd is not None, "the device stays open: it will reset the machine"
    ready, _, _ = select.select([r], [], [], 0.3)  # an upper bound on silence, not a pacing sleep
    assert not ready, "no ping after stop"


def test_stop_with_magic_close_writes_v_and_closes(wdt: tuple[Keeper, int]) -> None:
    keeper, r = wdt
    keeper.start()
    keeper.configure(magicclose=True)
    reply = keeper.configure(stop=True)
    assert reply["status"] == "offline" and reply["magicclose"] is True
    data = b""
    while True:
        chunk = os.read(r, 64)  # ends with EOF: the keeper closed its end
        if not chunk:
            break
        data += chunk
    assert data.endswith(b"V") and set(data[:-1]) <= {ord("X")}


def test_frequency_change_applies_at_once(wdt: tuple[Keeper, int]) -> None:
    keeper, r = wdt
    keeper.interval = 3600  # would never ping again on its own
    keeper.start()
    assert read_byte(r) == b"X"  # the first ping, at start
    reply = keeper.configure(frequency=1, timeout=10)
    assert reply == {"status": "running", "timeout": 10, "frequency": 1, "magicclose": False}
    assert read_byte(r, timeout=10) == b"X"


# --- the bus method ---------------------------------------------------------------------------------


class Host:
    def board(self) -> dict[str, Any]:
        return {}

    def info(self) -> dict[str, Any]:
        return {}

    def start_upgrade(self, req: object) -> None:
        raise AssertionError("not here")

    def reboot(self) -> None:
        raise AssertionError("not here")


def call(system: SystemObject, args: dict[str, Any], caller: Caller = ROOT) -> tuple[Status, Any]:
    bus = Bus(path="/nonexistent/unused.sock")
    system.register(bus)
    reply = bus.call("system", "watchdog", args, caller)
    return reply.status, reply.body


def test_system_watchdog_reply_fields(wdt: tuple[Keeper, int]) -> None:
    keeper, _r = wdt
    keeper.start()
    system = SystemObject(Host(), watchdog=lambda: keeper)  # type: ignore[arg-type]
    assert call(system, {}) == (Status.OK, {"status": "running", "timeout": 30, "frequency": 0,
                                            "magicclose": False})
    status, body = call(system, {"frequency": 5, "timeout": 8, "magicclose": True})
    assert status == Status.OK and body == {"status": "running", "timeout": 8, "frequency": 4,
                                            "magicclose": True}


@pytest.mark.parametrize("args", [{"frequency": "5"}, {"timeout": 0}, {"timeout": True}, {"stop": 1},
                                  {"frequency": 2**31}, {"magicclose": "yes"}])
def test_system_watchdog_refuses_wrong_types(wdt: tuple[Keeper, int], args: dict[str, Any]) -> None:
    keeper, _ = wdt
    system = SystemObject(Host(), watchdog=lambda: keeper)  # type: ignore[arg-type]
    status, _ = call(system, args)
    assert status == Status.INVALID_ARGUMENT
    assert keeper.describe()["timeout"] == 30 and keeper.status == "running"


def test_system_watchdog_offline_and_root_only() -> None:
    system = SystemObject(Host())  # type: ignore[arg-type]
    assert call(system, {}) == (Status.OK, {"status": "offline", "timeout": 0, "frequency": 0,
                                            "magicclose": False})
    status, _ = call(system, {"stop": True}, Caller(pid=2, uid=1000, gid=1000))
    assert status == Status.PERMISSION_DENIED
