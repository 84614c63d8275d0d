"""The upgrade report survives the reboot as JSON: to_dict/from_dict must round-trip it."""

from __future__ import annotations

import dataclasses
import json

from stage2.report import REPORT_NAME, Report


def full_report() -> Report:
    return Report(
        outcome="failed_after_write", image="/tmp/sysupgrade.img", started_at=1700000000.5,
        finished_at=1700000042.25, failed_state="verifying",
        error="WriteError: verify mismatch at offset 4096", written=True, offset=4096, bytes_written=10 << 20,
        timeline=[{"state": "validating", "from": "idle", "t": 1700000000.6, "previous_duration": 0.1}],
        services=[{"name": "dnsmasq", "result": "stopped"}], terminated=[{"pid": 42, "signal": "TERM"}],
        swapped_off=["/overlay/swapfile"], ramfs_bytes=31_000_000, config_kept=True, first_write_after=3.5,
        writer_maps_checked=120, details={"target": "/dev/sda", "nested": {"a": [1, 2]}},
    )


def test_round_trip_through_a_dict() -> None:
    report = full_report()
    assert Report.from_dict(report.to_dict()) == report


def test_round_trip_through_json() -> None:
    report = full_report()
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_to_dict_has_every_field_and_copies_nested_values() -> None:
    report = full_report()
    data = report.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(Report)}
    data["timeline"].append({"state": "x"})
    data["details"]["nested"]["a"].append(3)
    assert len(report.timeline) == 1 and report.details["nested"]["a"] == [1, 2]


def test_unknown_keys_are_ignored() -> None:
    data = full_report().to_dict()
    data["written_by"] = "a newer firmware"
    data["schema"] = 2
    assert Report.from_dict(data) == full_report()


def test_missing_keys_take_their_defaults() -> None:
    report = Report.from_dict({"outcome": "aborted", "error": "InvalidInput: image is empty"})
    assert (report.outcome, report.error) == ("aborted", "InvalidInput: image is empty")
    assert report.written is False and report.offset is None and report.timeline == []
    assert report.started_at > 0


def test_defaults_are_not_shared_between_reports() -> None:
    a, b = Report(), Report()
    a.timeline.append({"state": "validating"})
    a.details["k"] = 1
    assert b.timeline == [] and b.details == {}
    assert a.outcome == "running"


def test_report_file_name() -> None:
    assert REPORT_NAME == "upgrade-report.json"
