"""The last upgrade's report, published by preinit: a console line, ``/var/log/last-upgrade.json``
(the report with a ``summary`` added) and, through that file, the ``last_upgrade`` field of
``system info``.

Stage2 keeps its report in the boot partition (``stage2.report``): on success and after a failure
once written, the new firmware's; when it aborted before writing, the old one's, which is what boots.
Flash boards (NOR, NAND) have no boot partition: stage2 puts the final report into the new
``rootfs_data``, so it is found in the overlay's top directory alone and published as it is. eMMC boards
get their new ``rootfs_data`` from preinit: stage2 leaves the report raw at the end of the overlay area,
and ``mount_root`` moves it into the overlay's top directory (``keep_in_overlay``) once it is made.

A power cut leaves no outcome, only stage2's in-progress records (outcome ``running``): in the boot
partition (the old one before the write, the new one once written) and in the old overlay's top
directory. ``decide`` (pure) picks what to say: the newest upgrade's record, the boot partition's on a
tie; a record still ``running`` becomes an ``interrupted`` report, saved back in its place so that later
boots say the same; an overlay record that a boot partition report supersedes is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from wrtcore import log

LAST_REPORT = "/tmp/log/last-upgrade.json"  # /var/log/last-upgrade.json, /var -> /tmp
VERSION_FILE = "/etc/openwrt_version"
OVERLAY_RECORD = "/overlay/upgrade-report.json"  # stage2.report.OVERLAY_RECORD
IN_PROGRESS = "running"
INTERRUPTED = "interrupted"
Source = Literal["boot", "overlay"]

MEANING = {
    "success": "upgraded",
    "aborted": "aborted before writing anything: the old firmware still runs",
    "failed_after_write": "failed after writing had begun",
    INTERRUPTED: "interrupted before it reached an outcome (power lost or reset)",
}


@dataclass(frozen=True)
class Verdict:
    report: dict[str, Any] | None  # what to publish; None: no upgrade to tell about
    source: Source | None
    rewrite: bool  # an in-progress record became ``report``: save it back in its place
    remove_overlay: bool  # the overlay's record is superseded by the boot partition's


def extent_of(record: dict[str, Any], source: Source) -> tuple[str, str]:
    """Where an unfinished upgrade stopped (a state) and how much it had written (nothing | partly |
    all). The overlay's record alone means the boot partition lost the record stage2 put there before
    writing (the first thing a write replaces): the write had begun and not reached rootfs_data."""
    if source == "overlay":
        return "flashing", "partly"
    state = str(record.get("recorded_in") or "unknown")
    if not record.get("written"):
        return state, "nothing"
    return state, "all" if state == "saving_config" else "partly"


def interrupted(record: dict[str, Any], source: Source) -> dict[str, Any]:
    """The ``interrupted`` report made of an in-progress record."""
    state, extent = extent_of(record, source)
    details = record.get("details")
    return {**record, "outcome": INTERRUPTED, "failed_state": state, "written": extent != "nothing",
            "error": f"power lost or reset; {'nothing' if extent == 'nothing' else extent} written",
            "details": {**(details if isinstance(details, dict) else {}), "written": extent,
                        "record": source}}


def _started(record: dict[str, Any]) -> float:
    value = record.get("started_at")
    return float(value) if isinstance(value, int | float) else 0.0


def decide(boot: dict[str, Any] | None, overlay: dict[str, Any] | None) -> Verdict:
    """What the boot says about the last upgrade, from the report found in the boot partition and the
    record found in the overlay (either may be missing). Pure."""
    found: list[tuple[Source, dict[str, Any]]] = []
    if isinstance(boot, dict):
        found.append(("boot", boot))
    if isinstance(overlay, dict):
        found.append(("overlay", overlay))
    if not found:
        return Verdict(None, None, False, False)
    source, record = max(found, key=lambda f: (_started(f[1]), f[0] == "boot"))
    running = record.get("outcome") == IN_PROGRESS
    return Verdict(interrupted(record, source) if running else record, source, running,
                   overlay is not None and source == "boot")


def _version(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def summarize(report: dict[str, Any], running_version: str, restored: list[str]) -> dict[str, Any]:
    """What a user asks after a reboot: did it work, from which version to which, how long, what was
    stopped or killed, what was kept. Pure: derived from the report and this boot's facts."""
    outcome = str(report.get("outcome") or "unknown")
    started, finished = report.get("started_at"), report.get("finished_at")
    services = [s for s in report.get("services") or [] if isinstance(s, dict)]
    terminated = [t for t in report.get("terminated") or [] if isinstance(t, dict)]
    return {
        "outcome": outcome,
        "meaning": MEANING.get(outcome, outcome),
        "from_version": report.get("from_version") or "",
        "to_version": report.get("to_version") or "",
        "running_version": running_version,
        "seconds": (round(float(finished) - float(started), 3)
                    if isinstance(started, int | float) and isinstance(finished, int | float) else None),
        "first_write_after": report.get("first_write_after"),
        "written": bool(report.get("written")),
        "failed_state": report.get("failed_state"),
        "error": report.get("error"),
        "offset": report.get("offset"),
        "written_extent": (report.get("details") or {}).get("written") if outcome == INTERRUPTED else None,
        "services_stopped": sorted(str(s.get("name")) for s in services if s.get("outcome") == "term"),
        "services_killed": sorted(str(s.get("name")) for s in services if s.get("outcome") == "killed"),
        "processes_killed": sorted({f"{t.get('name')}" for t in terminated if t.get("signal") == "SIGKILL"}),
        "processes_ended": len(terminated),
        "config_kept": bool(report.get("config_kept")),
        "files_restored": len(restored),
        "swap_released": list(report.get("swapped_off") or []),
    }


def console_line(summary: dict[str, Any]) -> str:
    versions = f"{summary['from_version'] or '?'} -> {summary['to_version'] or '?'}"
    line = f"last upgrade: {summary['outcome']} ({versions}"
    if summary["seconds"] is not None:
        line += f", {summary['seconds']:.1f} s"
    line += f"); running {summary['running_version'] or '?'}"
    if summary["error"]:
        line += f"; in {summary['failed_state']}: {summary['error']}"
    if summary["outcome"] == "success":
        kept = summary["config_kept"]
        line += f"; config kept ({summary['files_restored']} files)" if kept else "; config not kept"
    return line


def _load(path: str | None) -> dict[str, Any] | None:
    """A report or record as a JSON object; None when missing or unreadable (said in the log)."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        log.get().warning("last upgrade report unreadable", path=path, error=str(exc))
        return None
    return data


def _write_json(path: str, data: dict[str, Any], *, durable: bool = False) -> None:
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.rename(tmp, path)


def keep_in_overlay(report: dict[str, Any], overlay: str) -> bool:
    """eMMC: the report preinit read raw before making the overlay (``rootfs_data.take_report``), saved
    as ``upgrade-report.json`` in the overlay's top directory (mounted at ``overlay``), where stage2
    puts it itself on NOR and NAND boards. False when it could not be saved (logged)."""
    path = f"{overlay}/{os.path.basename(OVERLAY_RECORD)}"
    try:
        _write_json(path, report, durable=True)
    except OSError as exc:
        log.get().warning("upgrade report not kept in the overlay", path=path, error=str(exc))
        return False
    return True


def publish(src: str | None, *, restored: list[str], dest: str = LAST_REPORT,
            version_file: str = VERSION_FILE, overlay_record: str = OVERLAY_RECORD) -> dict[str, Any] | None:
    """Publish the last upgrade's report: ``src`` is the boot partition's report (None when there is
    none), ``overlay_record`` the overlay's record (in progress, or the final report on flash boards).
    The summary, or None."""
    verdict = decide(_load(src), _load(overlay_record))
    if verdict.remove_overlay:
        with contextlib.suppress(OSError):
            os.unlink(overlay_record)
    report = verdict.report
    if report is None:
        return None
    if verdict.rewrite:
        place = overlay_record if verdict.source == "overlay" else src
        try:
            _write_json(str(place), report, durable=True)
        except OSError as exc:
            log.get().warning("interrupted report not saved back", path=place, error=str(exc))
    summary = summarize(report, _version(version_file), restored)
    published = {**report, "summary": summary}
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _write_json(dest, published)
    print(console_line(summary), flush=True)
    log.get().info("last upgrade", **{k: summary[k] for k in ("outcome", "from_version", "to_version",
                                                               "running_version", "error", "failed_state",
                                                               "written", "seconds")})
    return summary
