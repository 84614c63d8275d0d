"""preinit's hook lists: OpenWrt's order, each hook at most once, failsafe stopping preinit_main."""

from __future__ import annotations

from pathlib import Path

import pytest

from preinit import boot, failsafe, trigger
from preinit.boot import State
from preinit.settings import Settings


def new_state() -> State:
    return State(settings=Settings(), cmdline={})


def test_main_is_in_openwrts_order_and_glob_order() -> None:
    names = [n for n, _ in boot.MAIN]
    assert names == ["02_sysinfo", "10_indicate_preinit", "30_failsafe_wait", "40_run_failsafe_hook",
                     "50_indicate_regular_preinit", "80_mount_root", "90_last_upgrade_report"]
    assert names == sorted(names)  # /lib/preinit/* sourced in glob order
    assert [n for n, _ in boot.MOUNT_ROOT] == ["79_move_config", "80_config_restore"]
    assert [n for n, _ in boot.FAILSAFE] == ["indicate_failsafe", "failsafe_network", "failsafe_shell",
                                             "failsafe_dropbear"]


def test_each_hook_runs_once_even_when_lists_share_it() -> None:
    calls: list[str] = []

    def rec(name: str) -> boot.Hook:
        return lambda s: calls.append(name)

    inner = (("b", rec("b")), ("c", rec("c")))

    def a(s: State) -> None:
        calls.append("a")
        s.run((("a", a), *inner))  # a list naming the running hook and others

    state = new_state()
    state.run((("a", a), ("b", rec("b")), ("d", rec("d"))))
    state.run((("d", rec("d")), ("c", rec("c")), ("e", rec("e"))))
    assert calls == ["a", "b", "c", "d", "e"]
    assert state.ran == ["a", "b", "c", "d", "e"]


def test_a_failing_hook_is_logged_and_the_next_runs() -> None:
    calls: list[str] = []

    def bad(s: State) -> None:
        raise OSError(5, "no disk")

    state = new_state()
    state.run((("01_bad", bad), ("02_good", lambda s: calls.append("good"))))
    assert calls == ["good"] and state.failed == ["01_bad"] and state.ran == ["01_bad", "02_good"]


def test_failsafe_runs_its_hooks_waits_for_the_upgrade_and_ends_preinit_main(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(boot, "FAILSAFE", (("indicate_failsafe", lambda s: calls.append("indicate")),
                                           ("failsafe_network", lambda s: calls.append("net"))))
    monkeypatch.setattr(failsafe, "wait_for_upgrade", lambda: calls.append("wait") or "/tmp/sysupgrade")

    def chosen(s: State) -> None:
        s.failsafe = trigger.Trigger("console", "/dev/ttyS0")

    state = new_state()
    state.run((("30_failsafe_wait", chosen), ("40_run_failsafe_hook", boot.hook_run_failsafe),
               ("50_indicate_regular_preinit", lambda s: calls.append("regular")),
               ("80_mount_root", lambda s: calls.append("mount_root"))))
    assert calls == ["indicate", "net", "wait"]
    assert state.handover == "/tmp/sysupgrade" and state.stopped
    assert "80_mount_root" not in state.ran


def test_without_failsafe_the_regular_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(boot, "FAILSAFE", (("indicate_failsafe", lambda s: calls.append("failsafe")),))
    state = new_state()
    state.run((("30_failsafe_wait", lambda s: None), ("40_run_failsafe_hook", boot.hook_run_failsafe),
               ("80_mount_root", lambda s: calls.append("mount_root"))))
    assert calls == ["mount_root"] and not state.stopped


def test_done_marks_the_overlay_ready_before_deleting_the_archives(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    from preinit import mount_root

    archives = (tmp_path / "sysupgrade.tgz", tmp_path / "sysupgrade.tar")
    for a in archives:
        a.write_bytes(b"archive")
    order: list[str] = []

    def ready() -> None:
        order.append("ready")
        assert all(a.exists() for a in archives), "the archives must outlive a power cut before done"

    monkeypatch.setattr(mount_root, "done", ready)
    monkeypatch.setattr(boot, "ARCHIVES", tuple(str(a) for a in archives))
    boot.done()
    assert order == ["ready"] and not any(a.exists() for a in archives)


def test_restore_hook_applies_every_archive_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from preinit import restore

    tgz = tmp_path / "sysupgrade.tgz"
    tgz.write_bytes(b"x")
    seen: list[str] = []
    monkeypatch.setattr(boot, "ARCHIVES", (str(tgz), str(tmp_path / "absent.tar")))
    result = {"restored": ["etc/x"], "refused": []}
    monkeypatch.setattr(restore, "extract", lambda a, r: seen.append(a) or result)
    state = new_state()
    boot.hook_restore_config(state)
    assert seen == [str(tgz)] and state.restored == ["etc/x"]
