"""An upgrade cut short (power lost, reset) leaves in-progress records; the next boot turns them into an
``interrupted`` report (``preinit.lastupgrade.decide``), and a final report wins over them. On flash
boards the final report is found in the overlay alone (stage2 put it into the new rootfs_data: appended
to the jffs2 of ``mtd -j`` on NOR, checked here on a flash in a file and read back by jefferson)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from preinit import lastupgrade
from preinit.lastupgrade import decide
from stage2.formats import jffs2
from stage2.report import OVERLAY_RECORD, REPORT_NAME, Report, save_in_jffs2, write_json
from stage2.writers import mtd as mtdwriter
from tests.unit.test_mtd_writer import E, FakeFlash

T0 = 1_700_000_000.0


def record(state: str | None = "releasing_root", *, written: bool = False, started: float = T0,
           outcome: str = "running") -> dict[str, Any]:
    """A record as stage2 saves it (``Report.to_dict``): the same fields, whatever the outcome."""
    rep = Report(outcome=outcome, image="/tmp/sysupgrade.img", from_version="1.0", to_version="2.0",
                 started_at=started, written=written, recorded_in=state)
    return rep.to_dict()


def test_nothing_found_says_nothing() -> None:
    verdict = decide(None, None)
    assert verdict.report is None and verdict.source is None
    assert not verdict.rewrite and not verdict.remove_overlay


@pytest.mark.parametrize("outcome", ["success", "aborted", "failed_after_write", "interrupted"])
def test_a_final_report_is_published_as_it_is(outcome: str) -> None:
    final = record("saving_config", written=True, outcome=outcome)
    verdict = decide(final, None)
    assert verdict.report == final and verdict.source == "boot"
    assert not verdict.rewrite and not verdict.remove_overlay


@pytest.mark.parametrize("outcome", ["success", "aborted", "failed_after_write"])
def test_a_final_report_of_the_same_upgrade_wins_over_the_overlay_record(outcome: str) -> None:
    final = record("releasing_root", outcome=outcome)
    verdict = decide(final, record())
    assert verdict.report == final and verdict.source == "boot"
    assert verdict.remove_overlay and not verdict.rewrite


@pytest.mark.parametrize(("state", "written", "extent"), [
    ("releasing_root", False, "nothing"),  # cut before the write: the old boot partition kept its record
    ("flashing", True, "partly"),  # the new boot partition written, the root being written
    ("saving_config", True, "all"),  # written in full and verified; config archive and report to come
])
def test_an_in_progress_record_in_the_boot_partition_becomes_interrupted(state: str, written: bool,
                                                                          extent: str) -> None:
    verdict = decide(record(state, written=written), None)
    report = verdict.report
    assert report is not None and verdict.source == "boot" and verdict.rewrite
    assert report["outcome"] == "interrupted"
    assert report["failed_state"] == state
    assert report["details"]["written"] == extent
    assert report["written"] is (extent != "nothing")
    assert (report["from_version"], report["to_version"]) == ("1.0", "2.0")
    assert report["error"] == f"power lost or reset; {extent} written"


@pytest.mark.parametrize("outcome", ["success", "aborted", "failed_after_write"])
def test_a_final_report_found_only_in_the_overlay_is_published_as_it_is(outcome: str) -> None:
    """NOR and NAND: no boot partition; stage2 put the final report into the new rootfs_data."""
    final = record("finalizing", written=outcome != "aborted", outcome=outcome)
    verdict = decide(None, final)
    assert verdict.report == final and verdict.source == "overlay"
    assert not verdict.rewrite and not verdict.remove_overlay


def test_a_final_overlay_report_wins_over_an_older_boot_report() -> None:
    final = record("finalizing", written=True, outcome="success", started=T0 + 3600)
    verdict = decide(record(outcome="aborted", started=T0), final)
    assert verdict.report == final and verdict.source == "overlay" and not verdict.rewrite


def test_same_upgrade_in_both_places_the_boot_partition_tells_and_the_overlay_goes() -> None:
    verdict = decide(record("releasing_root"), record("releasing_root"))
    assert verdict.source == "boot" and verdict.rewrite and verdict.remove_overlay
    assert verdict.report is not None and verdict.report["details"]["written"] == "nothing"


def test_the_overlay_record_alone_means_the_write_had_begun() -> None:
    """Cut while the boot partition was being overwritten: its record is gone, the overlay's stays."""
    verdict = decide(None, record("releasing_root"))
    report = verdict.report
    assert report is not None and verdict.source == "overlay" and verdict.rewrite
    assert not verdict.remove_overlay
    assert (report["failed_state"], report["details"]["written"]) == ("flashing", "partly")
    assert report["written"] is True and report["details"]["record"] == "overlay"


def test_an_older_upgrades_report_loses_to_a_newer_overlay_record() -> None:
    verdict = decide(record(outcome="success", started=T0 - 3600), record(started=T0))
    assert verdict.source == "overlay" and verdict.report is not None
    assert verdict.report["outcome"] == "interrupted" and not verdict.remove_overlay


def test_a_newer_report_makes_a_stale_overlay_record_go() -> None:
    final = record(outcome="success", started=T0 + 3600)
    verdict = decide(final, record(started=T0))
    assert verdict.report == final and verdict.remove_overlay


def test_an_overlay_record_already_interrupted_is_told_again_unchanged() -> None:
    told = lastupgrade.interrupted(record(), "overlay")
    verdict = decide(None, told)
    assert verdict.report == told and not verdict.rewrite


def test_a_record_without_a_start_time_loses_the_tie_break() -> None:
    undated = {"outcome": "running", "recorded_in": "flashing", "written": True}
    verdict = decide(undated, record(started=T0))
    assert verdict.source == "overlay"


def test_summary_and_console_line_of_an_interrupted_upgrade() -> None:
    report = lastupgrade.interrupted(record("flashing", written=True), "boot")
    summary = lastupgrade.summarize(report, "2.0", [])
    assert summary["outcome"] == "interrupted" and summary["written_extent"] == "partly"
    assert summary["meaning"].startswith("interrupted")
    line = lastupgrade.console_line(summary)
    assert line == ("last upgrade: interrupted (1.0 -> 2.0); running 2.0; in flashing: power lost or reset; "
                    "partly written")


# -- publish: the files ------------------------------------------------------------------------------
@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "boot").mkdir()
    (tmp_path / "overlay").mkdir()
    version = tmp_path / "openwrt_version"
    version.write_text("1.0\n")
    return {"boot": tmp_path / "boot" / REPORT_NAME, "overlay": tmp_path / "overlay" / REPORT_NAME,
            "dest": tmp_path / "log" / "last-upgrade.json", "version": version}


def _publish(places: dict[str, Path], *, with_boot: bool) -> dict[str, Any] | None:
    return lastupgrade.publish(str(places["boot"]) if with_boot else None, restored=[],
                               dest=str(places["dest"]), version_file=str(places["version"]),
                               overlay_record=str(places["overlay"]))


def test_publish_turns_the_boot_record_into_an_interrupted_report_in_place(
        places: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    write_json(str(places["boot"]), record("releasing_root"))
    write_json(str(places["overlay"]), record("releasing_root"))
    summary = _publish(places, with_boot=True)
    assert summary is not None and summary["outcome"] == "interrupted"
    assert summary["running_version"] == "1.0" and summary["written_extent"] == "nothing"
    assert "last upgrade: interrupted (1.0 -> 2.0); running 1.0; in releasing_root" in capsys.readouterr().out
    saved = json.loads(places["boot"].read_text())
    assert saved["outcome"] == "interrupted" and "summary" not in saved
    assert not places["overlay"].exists()
    published = json.loads(places["dest"].read_text())
    assert published["summary"] == summary and published["outcome"] == "interrupted"
    # the next boot tells the same, from the saved report
    again = _publish(places, with_boot=True)
    assert again == summary


def test_publish_without_a_boot_report_reads_the_overlay(places: dict[str, Path]) -> None:
    write_json(str(places["overlay"]), record("releasing_root"))
    summary = _publish(places, with_boot=False)
    assert summary is not None and summary["failed_state"] == "flashing"
    assert summary["written_extent"] == "partly"
    assert json.loads(places["overlay"].read_text())["outcome"] == "interrupted"


def test_publish_of_a_final_report_leaves_it_untouched(places: dict[str, Path]) -> None:
    final = record("saving_config", written=True, outcome="success")
    write_json(str(places["boot"]), final)
    before = places["boot"].read_bytes()
    summary = _publish(places, with_boot=True)
    assert summary is not None and summary["outcome"] == "success" and summary["written_extent"] is None
    assert places["boot"].read_bytes() == before


def test_publish_of_a_final_report_in_the_overlay_alone(places: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    final = record("finalizing", written=True, outcome="success")
    final["config_kept"] = True
    write_json(str(places["overlay"]), final)
    before = places["overlay"].read_bytes()
    summary = _publish(places, with_boot=False)
    assert summary is not None and summary["outcome"] == "success" and summary["config_kept"] is True
    assert capsys.readouterr().out.startswith("last upgrade: success (1.0 -> 2.0); running 1.0; config kept")
    assert places["overlay"].read_bytes() == before  # kept: every later boot tells the same
    published = json.loads(places["dest"].read_text())
    assert published["outcome"] == "success" and published["summary"] == summary
    assert _publish(places, with_boot=False) == summary


def test_publish_with_nothing_found_publishes_nothing(places: dict[str, Path]) -> None:
    assert _publish(places, with_boot=False) is None
    assert not places["dest"].exists()


def test_publish_ignores_an_unreadable_overlay_record(places: dict[str, Path]) -> None:
    places["overlay"].write_text("{not json")
    assert _publish(places, with_boot=False) is None


def test_record_paths_agree() -> None:
    assert lastupgrade.OVERLAY_RECORD == OVERLAY_RECORD


def test_write_json_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(str(path), {"a": 1})
    write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# -- NOR: the final report appended to the jffs2 that mtd -j wrote -------------------------------------
IMAGE_BLOCKS = 2  # the kernel and squashfs stand-in before the jffs2


@pytest.fixture
def nor_after_mtd_j(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeFlash, bytes]:
    """``firmware`` as ``mtd -j`` leaves it: image blocks, the config as jffs2 with its end marker, and
    the old overlay's blocks after it (0x5A); ``open_device`` opens it."""
    flash = FakeFlash(tmp_path / "firmware", 12)
    config = os.urandom(3 * E // 2)
    meta = jffs2.FileMeta("sysupgrade.tgz", 0o100644, len(config), 0, 0, 0)
    blocks = jffs2.config_blocks(meta, config, E)
    flash.erase(0, (IMAGE_BLOCKS + len(blocks)) * E)
    flash.write(0, b"\x11" * IMAGE_BLOCKS * E)
    flash.write(IMAGE_BLOCKS * E, b"".join(blocks))
    monkeypatch.setattr(mtdwriter, "open_device", lambda _dev, write=True: contextlib.nullcontext(flash))
    return flash, config


def _jefferson(image: bytes, tmp_path: Path) -> Path:
    (tmp_path / "data.jffs2").write_bytes(image)
    exe = shutil.which("jefferson", path=os.path.dirname(sys.executable))
    assert exe is not None, "jefferson is a test dependency (pip install -e .[test])"
    out = tmp_path / "out"
    proc = subprocess.run([exe, "-d", str(out), str(tmp_path / "data.jffs2")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def test_nor_report_is_appended_to_the_mtd_j_jffs2(nor_after_mtd_j: tuple[FakeFlash, bytes],
                                                   tmp_path: Path) -> None:
    flash, config = nor_after_mtd_j
    rep = Report(outcome="success", from_version="1.0", to_version="2.0", started_at=T0, written=True,
                 config_kept=True)
    (tmp_path / "work").mkdir()
    assert save_in_jffs2(rep, "firmware", IMAGE_BLOCKS * E, workdir=str(tmp_path / "work"))
    content = flash.content()
    assert content[:IMAGE_BLOCKS * E] == b"\x11" * IMAGE_BLOCKS * E  # the image before it untouched
    data = content[IMAGE_BLOCKS * E:]
    eof = next(i for i in range(0, len(data), E) if data[i:i + 4] == jffs2.EOF_MARKER)
    assert set(data[eof + 4:]) == {0xFF}  # the old overlay's blocks after the new end marker erased
    out = _jefferson(data[:eof], tmp_path)
    assert (out / "sysupgrade.tgz").read_bytes() == config
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["outcome"] == "success" and saved["config_kept"] is True
    assert saved["finished_at"] is not None
    verdict = decide(None, saved)  # what preinit reads from /overlay/upgrade-report.json
    assert verdict.report == saved and verdict.source == "overlay"


def test_nor_report_not_saved_without_an_end_marker(nor_after_mtd_j: tuple[FakeFlash, bytes],
                                                    tmp_path: Path) -> None:
    flash, _ = nor_after_mtd_j
    before, calls = flash.content(), len(flash.calls)
    # the start given is not the jffs2: the old overlay's 0x5A blocks have no end marker after them
    assert not save_in_jffs2(Report(outcome="success"), "firmware", 10 * E, workdir=str(tmp_path))
    assert flash.content() == before
    assert [c[0] for c in flash.calls[calls:]] == ["read", "read"]  # looked for the marker, changed nothing


@pytest.fixture
def flash_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A NOR board's context for stage2's steps before the pivot: the overlay record lands in a file of
    the test (the real code requires /overlay to be a mount); the boot partition must never be used."""
    from stage2 import report as reportmod

    where = tmp_path / REPORT_NAME

    def to_test_overlay(report: Report, path: str = OVERLAY_RECORD) -> bool:
        write_json(str(where), report.to_dict())
        return True

    def no_boot_partition(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a flash board has no boot partition")

    monkeypatch.setattr(reportmod, "save_overlay_record", to_test_overlay)
    monkeypatch.setattr(reportmod, "persist", no_boot_partition)
    return where


def _nor_context() -> Any:
    from stage2.machine import Context
    from stage2.platforms.profile import Kind, Profile

    ctx = Context(image="/tmp/sysupgrade.img", backup=None, env={})
    ctx.data["platform"] = Profile(Kind.NOR, "detected: test")
    ctx.report.to_version = "2.0"
    return ctx


def test_flash_board_keeps_its_in_progress_record_in_the_overlay(flash_board: Path) -> None:
    from stage2 import before

    ctx = _nor_context()
    before.record_before_write(ctx, plan=None)  # type: ignore[arg-type]  # unused on flash boards
    record = json.loads(flash_board.read_text())
    assert (record["outcome"], record["recorded_in"]) == ("running", "releasing_root")
    verdict = decide(None, record)
    assert verdict.report is not None and verdict.report["outcome"] == "interrupted"


def test_flash_board_abort_before_the_pivot_is_reported_from_the_overlay(flash_board: Path) -> None:
    from stage2 import before

    ctx = _nor_context()
    ctx.report.outcome, ctx.report.failed_state = "aborted", "terminating"
    ctx.report.error = "UpgradeError: a process would not die"
    before.report_failure(ctx)
    saved = json.loads(flash_board.read_text())
    assert saved["finished_at"] is not None
    verdict = decide(None, saved)
    assert verdict.report is not None
    assert (verdict.report["outcome"], verdict.report["error"]) == ("aborted", ctx.report.error)
