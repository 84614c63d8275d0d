"""The upgrade report: what happened, kept where the next boot finds it.

Stage2 writes ``upgrade-report.json`` into the boot partition (x86: partition 1, the same place the
config archive goes): the new one after a write, the old one when it aborted before writing. preinit
publishes it on the next boot (console line, /var/log/last-upgrade.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from stage2.formats import fwtool
from wrtcore import log, partitions, syscalls

REPORT_NAME = "upgrade-report.json"
VERSION_FILE = "/etc/openwrt_version"


def running_version(path: str = VERSION_FILE) -> str:
    """The firmware version of the running root ("" when it does not say)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def image_version(image: str) -> str:
    """``version.version`` of the image's fwtool metadata ("" when it has none or cannot be read)."""
    try:
        meta = fwtool.extract_metadata(image, missing_ok=True)
    except (OSError, ValueError, fwtool.FwtoolError):
        return ""
    version = (meta or {}).get("version")
    if isinstance(version, dict):
        return str(version.get("version") or "")
    return str(version or "")


@dataclass
class Report:
    outcome: str = "running"  # success | aborted | failed_after_write
    image: str = ""
    from_version: str = field(default_factory=running_version)  # made in PID 1 on the old root
    to_version: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    failed_state: str | None = None
    error: str | None = None
    written: bool = False
    offset: int | None = None
    bytes_written: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    terminated: list[dict[str, Any]] = field(default_factory=list)
    swapped_off: list[str] = field(default_factory=list)
    ramfs_bytes: int = 0
    config_kept: bool = False
    first_write_after: float | None = None  # seconds from request to the first byte written
    writer_maps_checked: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def peak_rss_kb() -> int | None:
    """VmHWM of this process (reset by exec: the writer after the pivot has its own)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def save_failure(report: Report, disk: str | None, boot_partition: int = 1) -> bool:
    """aborted / failed_after_write: keep the report where the next boot looks, best effort (a failure
    to save it must not stop the reboot). False when it could not be saved."""
    report.finished_at = time.time()
    if disk is None:
        log.get().error("report not saved", error="no boot disk known")
        return False
    try:
        persist(report, partitions.device(disk, boot_partition))
    except Exception as exc:
        log.get().error("report not saved", error=str(exc))
        return False
    return True


def persist(report: Report, partition: str, fstype: str = "ext4") -> None:
    """Mount ``partition`` on a fresh directory, write the report there with fsync, unmount."""
    if not report.to_version and report.image:
        report.to_version = image_version(report.image)
    where = tempfile.mkdtemp(prefix="report-", dir="/tmp" if os.path.isdir("/tmp") else "/")
    try:
        syscalls.mount(partition, where, fstype, syscalls.MS_NOATIME)
        try:
            tmp = f"{where}/{REPORT_NAME}.new"
            with open(tmp, "w") as f:
                json.dump(report.to_dict(), f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, f"{where}/{REPORT_NAME}")
            dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            syscalls.umount(where)
        log.get().info("report saved", partition=partition, outcome=report.outcome)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(where)
