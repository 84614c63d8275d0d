"""The last upgrade's report, published by preinit: a console line, ``/var/log/last-upgrade.json``
(the report with a ``summary`` added) and, through that file, the ``last_upgrade`` field of
``system info``.

Stage2 keeps its report in the boot partition (``stage2.report``): on success and after a failure
once written, the new firmware's; when it aborted before writing, the old one's, which is what boots.
"""

from __future__ import annotations

import json
import os
from typing import Any

from wrtcore import log

LAST_REPORT = "/tmp/log/last-upgrade.json"  # /var/log/last-upgrade.json, /var -> /tmp
VERSION_FILE = "/etc/openwrt_version"

MEANING = {
    "success": "upgraded",
    "aborted": "aborted before writing anything: the old firmware still runs",
    "failed_after_write": "failed after writing had begun",
}


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


def publish(src: str, *, restored: list[str], dest: str = LAST_REPORT,
            version_file: str = VERSION_FILE) -> dict[str, Any] | None:
    try:
        with open(src) as f:
            report = json.load(f)
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        log.get().warning("last upgrade report unreadable", path=src, error=str(exc))
        return None
    summary = summarize(report, _version(version_file), restored)
    report["summary"] = summary
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".new"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.rename(tmp, dest)
    print(console_line(summary), flush=True)
    log.get().info("last upgrade", **{k: summary[k] for k in ("outcome", "from_version", "to_version",
                                                               "running_version", "error", "failed_state",
                                                               "written", "seconds")})
    return summary
