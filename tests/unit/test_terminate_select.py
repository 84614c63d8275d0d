"""Pure victim selection on process snapshots (plain data), plus /proc parsing on a fake /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stage2.processes import (
    PF_KTHREAD,
    ProcessInfo,
    is_kernel_thread,
    parse_stat,
    select_victims,
    snapshot,
    spared_closure,
)
from wrtcore.errors import NotPid1


def P(pid: int, ppid: int, name: str = "proc", state: str = "S", kthread: bool = False) -> ProcessInfo:
    return ProcessInfo(pid, ppid, name, state, () if kthread else (f"/bin/{name}",), kthread)


def pids(victims: list[ProcessInfo]) -> list[int]:
    return [v.pid for v in victims]


# A device-like table: init, kthreadd and kernel threads, a shell session, daemons, a zombie,
# the stage2 helper chain.
TABLE = [
    P(1, 0, "upgraded"),
    P(2, 0, "kthreadd", kthread=True),
    P(3, 2, "rcu_gp", kthread=True),
    P(9, 2, "ksoftirqd/0", kthread=True),
    P(40, 1, "ubusd"),
    P(41, 1, "dropbear"),
    P(42, 41, "dropbear"),
    P(43, 42, "ash"),
    P(50, 1, "hostapd", state="D"),
    P(51, 1, "dnsmasq", state="T"),
    P(60, 43, "defunct", state="Z"),
    P(70, 1, "watchdog-helper"),
    P(71, 70, "feeder"),
    P(80, 1, "stage2"),
    P(81, 80, "stage2-child"),
]


def test_pid1_kthreads_zombies_excluded_everything_else_selected() -> None:
    victims = select_victims(TABLE, spare=set())
    assert pids(victims) == [40, 41, 42, 43, 50, 51, 70, 71, 80, 81]
    assert 1 not in pids(victims)


def test_kernel_thread_by_flag_even_without_kthreadd_parent() -> None:
    table = [P(1, 0), P(500, 1, "kworker/u8:1", kthread=True), P(501, 1, "real")]
    assert pids(select_victims(table, set())) == [501]


def test_kthreadd_and_its_children_excluded_even_if_flag_missing() -> None:
    # a snapshot that lost the flags (e.g. built by hand): pid 2 and ppid 2 still mark kernel threads
    table = [P(1, 0), P(2, 0, "kthreadd"), P(7, 2, "kworker"), P(8, 1, "sh")]
    assert pids(select_victims(table, set())) == [8]


def test_in_a_pid_namespace_pid_2_is_an_ordinary_process() -> None:
    # inside a PID namespace kernel threads are invisible: pid 2 is whatever the init started second
    table = [P(1, 0, "init"), P(2, 1, "daemon"), P(3, 2, "worker"), P(4, 1, "kworker", kthread=True)]
    assert pids(select_victims(table, set(), kthreadd_pid=None)) == [2, 3]
    assert pids(select_victims(table, set())) == []


def test_zombies_and_dead_excluded_stopped_and_D_state_included() -> None:
    table = [P(1, 0), P(10, 1, state="Z"), P(11, 1, state="X"), P(12, 1, state="T"),
             P(13, 1, state="D"), P(14, 1, state="R")]
    assert pids(select_victims(table, set())) == [12, 13, 14]


def test_spared_pid_and_all_its_ancestors_excluded_but_not_its_children_or_siblings() -> None:
    victims = pids(select_victims(TABLE, spare={71}))
    assert 71 not in victims and 70 not in victims  # the helper and its parent
    assert 80 in victims and 81 in victims


def test_spare_deep_chain() -> None:
    victims = pids(select_victims(TABLE, spare={43}))
    for kept in (43, 42, 41):
        assert kept not in victims
    assert 60 not in victims  # a zombie anyway
    assert 40 in victims


def test_spare_of_unknown_pid_is_harmless_and_cycles_terminate() -> None:
    table = [P(1, 0), P(20, 21), P(21, 20), P(22, 1)]  # an impossible cycle must not hang
    assert pids(select_victims(table, spare={20, 9999})) == [22]
    assert spared_closure(table, {20}) == {20, 21}


def test_spare_never_makes_pid1_or_kthreads_victims_and_result_sorted() -> None:
    shuffled = list(reversed(TABLE))
    victims = select_victims(shuffled, spare={1, 2})
    assert pids(victims) == sorted(pids(victims))
    assert all(not v.is_kernel_thread for v in victims)


def test_empty_snapshot() -> None:
    assert select_victims([], set()) == []


def test_parse_stat_comm_with_spaces_and_parens() -> None:
    line = "123 (we (ird) name) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 42 1000 10\n"
    assert parse_stat(line) == (123, "we (ird) name", "S", 1, 4194560)


def test_is_kernel_thread_flag() -> None:
    assert is_kernel_thread(PF_KTHREAD | 0x40)
    assert not is_kernel_thread(0x400100)


def _fake_proc(root: Path, pid: int, comm: str, state: str, ppid: int, flags: int, cmdline: bytes) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(f"{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0\n")
    (d / "cmdline").write_bytes(cmdline)


def test_snapshot_reads_a_proc_tree_and_tolerates_vanished_entries(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 1, "init", "S", 0, 0x400100, b"/sbin/init\0")
    _fake_proc(tmp_path, 2, "kthreadd", "S", 0, PF_KTHREAD, b"")
    _fake_proc(tmp_path, 15, "kworker/0:1", "I", 2, PF_KTHREAD | 0x8000, b"")
    _fake_proc(tmp_path, 30, "sh", "S", 1, 0x400000, b"/bin/sh\0-c\0sleep 1\0")
    _fake_proc(tmp_path, 31, "gone", "Z", 30, 0x400004, b"")
    (tmp_path / "32").mkdir()  # vanished between listing and reading
    (tmp_path / "self").mkdir()
    snap = snapshot(str(tmp_path))
    by_pid = {p.pid: p for p in snap}
    assert sorted(by_pid) == [1, 2, 15, 30, 31]
    assert by_pid[30].cmdline == ("/bin/sh", "-c", "sleep 1")
    assert by_pid[15].is_kernel_thread and by_pid[2].is_kernel_thread
    assert not by_pid[30].is_kernel_thread
    assert pids(select_victims(snap, set())) == [30]


def test_executor_refuses_outside_pid1() -> None:
    from stage2.terminate import terminate_all

    assert os.getpid() != 1
    with pytest.raises(NotPid1):
        terminate_all(set(), term_timeout=0.1)
