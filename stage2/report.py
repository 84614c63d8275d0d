"""The upgrade report: what happened, kept where the next boot finds it.

Stage2 writes ``upgrade-report.json`` into the boot partition (x86: partition 1, the same place the
config archive goes): the new one after a write, the old one when it aborted before writing. On flash
boards the final report goes into the new ``rootfs_data``, the top directory of the next boot's
overlay (``/overlay/upgrade-report.json``): NOR appends it to the jffs2 ``mtd -j`` wrote
(``save_in_jffs2``), NAND puts it into the new ubifs beside ``sysupgrade.tgz``. eMMC boards have no
boot partition and their new rootfs_data is made by the next boot (from the raw config archive at the
overlay start, or from zeros): the old overlay holds the in-progress record and an abort's report until
the write replaces it; once written, the report goes raw into the last 256 KiB of the new overlay area
(``stage2.formats.report_record``, ``stage2.platforms.emmc_write.save_report``), and preinit moves it
into the overlay it makes. preinit publishes it on the next boot (console line,
/var/log/last-upgrade.json).

A power cut leaves no outcome, so the same file is also saved while the upgrade runs, as an
in-progress record (outcome ``running``, ``recorded_in`` the state it was saved in): in the old boot
partition and the old overlay before anything is written, in the new boot partition once it has been
written, and again once the whole image is verified. A final report replaces it; preinit turns a
record that was never replaced into an ``interrupted`` report (``preinit.lastupgrade.decide``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from stage2.formats import fwtool
from stage2.formats.jffs2 import EOF_MARKER
from stage2.writers import mtd
from wrtcore import log, partitions, syscalls
from wrtcore.errors import UpgradeError
from wrtcore.mtd import MtdInfo

if TYPE_CHECKING:
    from stage2.writers.mtdblocks import Flash

REPORT_NAME = "upgrade-report.json"
# the old overlay's top directory (beside upper/ and work/, outside the root it shows): it outlives a
# cut early in the write, while the boot partition is being overwritten
OVERLAY_RECORD = f"/overlay/{REPORT_NAME}"
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
    recorded_in: str | None = None  # an in-progress record (outcome "running"): the state it was saved in
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
            write_json(f"{where}/{REPORT_NAME}", report.to_dict())
        finally:
            syscalls.umount(where)
        log.get().info("report saved", partition=partition, outcome=report.outcome,
                       recorded_in=report.recorded_in)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(where)


def write_json(path: str, data: dict[str, Any]) -> None:
    """Replace ``path`` by ``data`` so that a power cut leaves the old file or the new one, whole: a
    ``.new`` file written and fsync'd, renamed over it, the directory fsync'd."""
    tmp = f"{path}.new"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_progress(report: Report, partition: str, state: str) -> None:
    """The in-progress record into the boot partition ``partition``: what the next boot reports if this
    upgrade never reaches an outcome. Raises when it cannot be saved."""
    report.recorded_in = state
    persist(report, partition)


def save_overlay_record(report: Report, path: str = OVERLAY_RECORD) -> bool:
    """The in-progress record into the old overlay, while it is still writable; best effort (a tmpfs
    overlay does not outlive the cut anyway). False when it could not be saved."""
    if not os.path.ismount(os.path.dirname(path)):
        log.get().info("no overlay record", reason=f"{os.path.dirname(path)} is not mounted")
        return False
    try:
        write_json(path, report.to_dict())
    except OSError as exc:
        log.get().warning("overlay record not saved", path=path, error=str(exc))
        return False
    log.get().info("overlay record saved", path=path, recorded_in=report.recorded_in)
    return True


def report_dict(report: Report) -> dict[str, Any]:
    """The final report as saved: its end time and the image's version filled in when missing."""
    report.finished_at = report.finished_at or time.time()
    if not report.to_version and report.image:
        report.to_version = image_version(report.image)
    return report.to_dict()


def report_file(report: Report, directory: str = "/tmp") -> str:
    """The final report as ``directory/upgrade-report.json`` (the name it keeps on the flash)."""
    path = f"{directory}/{REPORT_NAME}"
    write_json(path, report_dict(report))
    return path


class _Window:
    """The ``Flash`` from ``start`` to its end, as a device of its own: the jffs2 ``mtd -j`` wrote inside
    ``firmware`` (the old ``rootfs_data`` partition lies where the old image put it)."""

    def __init__(self, flash: Flash, start: int) -> None:
        self.flash, self.start = flash, start
        self.info: MtdInfo = flash.info._replace(size=flash.info.size - start)

    def erase(self, offset: int, length: int) -> None:
        self.flash.erase(self.start + offset, length)

    def unlock(self, offset: int, length: int) -> None:
        self.flash.unlock(self.start + offset, length)

    def is_bad(self, offset: int) -> bool:
        return self.flash.is_bad(self.start + offset)

    def mark_bad(self, offset: int) -> None:
        self.flash.mark_bad(self.start + offset)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        return self.flash.write(self.start + offset, data)

    def read(self, offset: int, into: bytearray | memoryview) -> int:
        return self.flash.read(self.start + offset, into)


def _eof_block(flash: Flash) -> int | None:
    """Offset of the jffs2's end-of-filesystem block (``DE AD C0 DE``), None when it has none."""
    head = bytearray(len(EOF_MARKER))
    for pos in range(0, flash.info.size, flash.info.erasesize):
        flash.read(pos, head)
        if head == EOF_MARKER:
            return pos
    return None


def save_in_jffs2(report: Report, device: str, start: int, workdir: str = "/tmp") -> bool:
    """NOR: append the final report to the jffs2 that ``mtd -j`` wrote at ``start`` in ``device``
    (``mtd jffs2write``). The blocks after its end marker (the old overlay's) are erased first, what
    preinit would erase, so that a cut during the append leaves no stale nodes behind the new ones.
    Best effort: False when it could not be saved (logged). ``workdir``: where the file is made first."""
    try:
        path = report_file(report, workdir)
        with mtd.open_device(device) as flash:
            window = _Window(flash, start)
            eof = _eof_block(window)
            if eof is None:
                raise OSError(f"no jffs2 end marker after offset {start}")
            rest = eof + window.info.erasesize
            if rest < window.info.size:
                mtd.erase_flash(_Window(flash, start + rest), name=f"{device}@{start + rest:#x}")
            done = mtd.jffs2write_flash(path, window, name=device)
    except (OSError, ValueError, UpgradeError) as exc:
        log.get().error("report not saved", device=device, error=str(exc))
        return False
    log.get().info("report saved", device=device, offset=start + (done.jffs2_offset or 0),
                   outcome=report.outcome)
    return True
