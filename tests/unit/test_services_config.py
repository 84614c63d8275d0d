"""Service declarations (validation of a whole directory) and the respawn rules, without processes.

The supervisor's timers and respawn decisions run here on a fake reaper and a fake clock; nothing is
spawned or signalled (stop_all is exercised in tests/sandbox/test_services_ns.py, inside a namespace).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from upgraded import service_config
from upgraded.service_config import ServiceConfigError, ServiceSpec
from upgraded.services import Supervisor


def write(d: Path, name: str, content: Any) -> None:
    (d / name).write_text(content if isinstance(content, str) else json.dumps(content))


def test_defaults_are_procds(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"name": "a", "command": ["/bin/true"]})
    [spec] = service_config.load_dir(tmp_path)
    assert spec == ServiceSpec(name="a", command=("/bin/true",), term_timeout=5.0, respawn=True,
                               respawn_threshold=3600.0, respawn_timeout=5.0, respawn_retry=5,
                               source=str(tmp_path / "a.json"))


def test_full_declaration(tmp_path: Path) -> None:
    write(tmp_path, "dnsmasq.json", {
        "name": "dnsmasq", "command": ["/usr/sbin/dnsmasq", "-k"], "term_timeout": 2.5, "respawn": False,
        "respawn_threshold": 60, "respawn_timeout": 1, "respawn_retry": 0, "env": {"A": "b"},
        "stdout": "/var/log/d.log", "stderr": "/var/log/d.err"})
    write(tmp_path, "README", "not a service")
    [spec] = service_config.load_dir(tmp_path)
    assert spec.command == ("/usr/sbin/dnsmasq", "-k")
    assert (spec.term_timeout, spec.respawn, spec.respawn_threshold, spec.respawn_timeout,
            spec.respawn_retry) == (2.5, False, 60.0, 1.0, 0)
    assert dict(spec.env) == {"A": "b"} and spec.stdout == "/var/log/d.log"


def test_every_error_reported_with_file_and_key(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"name": "ok", "command": ["/bin/true"]})
    write(tmp_path, "b.json", {"name": "ok", "command": ["/bin/false"]})  # duplicate name
    write(tmp_path, "c.json", "{not json")
    write(tmp_path, "d.json", [1, 2])
    write(tmp_path, "e.json", {"name": "bad name!", "command": [], "term_timeout": "5", "respawn": 1,
                               "respawn_retry": -1, "env": {"X": 1}, "stdout": "rel/path", "bogus": 1})
    write(tmp_path, "f.json", {"command": ["x"]})
    write(tmp_path, "g.json", {"name": "g", "command": ["x"], "respawn_timeout": True,
                               "term_timeout": 1e9})
    (tmp_path / "h.json").write_bytes(b"\xff\xfe")
    write(tmp_path, "i.json", " " * (service_config.MAX_FILE_BYTES + 1))
    with pytest.raises(ServiceConfigError) as info:
        service_config.load_dir(tmp_path)
    got = {(Path(i.file).name, i.key) for i in info.value.issues}
    assert got == {
        ("b.json", "name"),
        ("c.json", None),
        ("d.json", None),
        ("e.json", "name"), ("e.json", "command"), ("e.json", "term_timeout"), ("e.json", "respawn"),
        ("e.json", "respawn_retry"), ("e.json", "env.X"), ("e.json", "stdout"), ("e.json", "bogus"),
        ("f.json", "name"),
        ("g.json", "respawn_timeout"), ("g.json", "term_timeout"),
        ("h.json", None),
        ("i.json", None),
    }
    text = str(info.value)
    assert "b.json: name: duplicate service 'ok'" in text
    assert info.value.exit_code == 2


def test_missing_directory_declares_nothing(tmp_path: Path) -> None:
    assert service_config.load_dir(tmp_path / "absent") == []


# ---- respawn rules on a fake reaper and clock (no process is started or signalled)


class FakeReaper:
    def __init__(self) -> None:
        self.next_pid = 1000
        self.callbacks: dict[int, Callable[[int, int], None]] = {}
        self.spawned: list[tuple[int, tuple[str, ...], dict[str, str] | None]] = []
        self.fail = False

    def spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = None, stdin: int | None = None,
              stdout: int | None = None, stderr: int | None = None, setsid: bool = False,
              on_exit: Callable[[int, int], None] | None = None) -> int:
        assert setsid and on_exit is not None
        assert stdin is not None and stdout is not None and stderr is not None
        if self.fail:
            raise FileNotFoundError(2, "No such file or directory")
        self.next_pid += 1
        self.callbacks[self.next_pid] = on_exit
        self.spawned.append((self.next_pid, tuple(argv), env))
        return self.next_pid

    def exit(self, pid: int, code: int = 1) -> None:
        self.callbacks.pop(pid)(pid, code << 8)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(specs: list[ServiceSpec]) -> tuple[Supervisor, FakeReaper, Clock]:
    reaper = FakeReaper()
    clock = Clock()
    return Supervisor(specs, reaper, clock=clock), reaper, clock  # type: ignore[arg-type]


def test_respawn_after_timeout_then_crashloop_after_retries() -> None:
    sup, reaper, clock = make([ServiceSpec("s", ("/bin/s",), respawn_threshold=10, respawn_timeout=2,
                                           respawn_retry=2, env={"K": "v"})])
    sup.start_all()
    assert len(reaper.spawned) == 1 and reaper.spawned[0][2] is not None
    assert reaper.spawned[0][2]["K"] == "v" and "PATH" in reaper.spawned[0][2]
    assert sup.next_deadline() is None
    for crash in (1, 2):
        clock.now += 1
        reaper.exit(reaper.spawned[-1][0])
        assert sup.status()["s"]["state"] == "waiting" and sup.status()["s"]["crashes"] == crash
        assert sup.next_deadline() == clock.now + 2
        sup.tick(clock.now + 1.9)
        assert len(reaper.spawned) == crash  # not yet
        clock.now += 2
        sup.tick()
        assert len(reaper.spawned) == crash + 1
    clock.now += 1
    reaper.exit(reaper.spawned[-1][0])
    st = sup.status()["s"]
    assert st["state"] == "crashloop" and st["crashes"] == 3 and st["starts"] == 3
    assert sup.next_deadline() is None


def test_a_long_run_resets_the_crash_count() -> None:
    sup, reaper, clock = make([ServiceSpec("s", ("/bin/s",), respawn_threshold=10, respawn_timeout=0,
                                           respawn_retry=1)])
    sup.start_all()
    clock.now += 1
    reaper.exit(reaper.spawned[-1][0])
    sup.tick()
    assert sup.status()["s"]["crashes"] == 1
    clock.now += 50  # ran longer than the threshold
    reaper.exit(reaper.spawned[-1][0])
    assert sup.status()["s"]["crashes"] == 0 and sup.status()["s"]["state"] == "waiting"


def test_retry_zero_respawns_forever_and_respawn_false_stays_down() -> None:
    sup, reaper, _clock = make([ServiceSpec("forever", ("/bin/f",), respawn_timeout=0, respawn_retry=0),
                               ServiceSpec("once", ("/bin/o",), respawn=False)])
    sup.start_all()
    once_pid = reaper.spawned[1][0]
    reaper.exit(once_pid, 0)
    assert sup.status()["once"]["state"] == "exited" and sup.status()["once"]["last_exit"] == "exit status 0"
    for _ in range(20):
        [live] = reaper.callbacks  # only "forever" is left running
        reaper.exit(live)
        sup.tick()
    assert sup.status()["forever"]["state"] == "running"
    assert sup.status()["forever"]["starts"] == 21


def test_spawn_failure_counts_as_crash() -> None:
    sup, reaper, clock = make([ServiceSpec("s", ("/nonexistent",), respawn_timeout=1, respawn_retry=1)])
    reaper.fail = True
    sup.start_all()
    st = sup.status()["s"]
    assert st["state"] == "waiting" and st["last_error"] == "/nonexistent: No such file or directory"
    clock.now += 1
    sup.tick()
    assert sup.status()["s"]["state"] == "crashloop"


def test_exit_of_a_stale_pid_is_ignored() -> None:
    sup, reaper, _clock = make([ServiceSpec("s", ("/bin/s",), respawn_timeout=0)])
    sup.start_all()
    first = reaper.spawned[-1][0]
    cb = reaper.callbacks[first]
    reaper.exit(first)
    sup.tick()
    cb(first, 0)  # a late duplicate for the old pid must not touch the new instance
    assert sup.status()["s"]["state"] == "running" and sup.status()["s"]["pid"] != first


def test_no_leaked_descriptors_per_spawn(tmp_path: Path) -> None:
    log = str(tmp_path / "out.log")
    sup, reaper, _clock = make([ServiceSpec("s", ("/bin/s",), respawn_timeout=0, stdout=log, stderr=log)])
    before = len(os.listdir("/proc/self/fd"))
    sup.start_all()
    for _ in range(5):
        reaper.exit(reaper.spawned[-1][0])
        sup.tick()
    assert len(os.listdir("/proc/self/fd")) == before
    assert os.path.exists(log)
