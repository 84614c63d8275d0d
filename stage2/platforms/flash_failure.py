"""Where the report of an upgrade that stopped after the pivot goes on NOR and NAND boards (no boot
partition), so that the next boot publishes it instead of the in-progress record's ``interrupted``.

NOR, nothing written: the old firmware and its jffs2 ``rootfs_data`` are whole, and the next boot mounts
that jffs2 as the overlay: the report goes into its root as ``upgrade-report.json`` (replacing the
in-progress record there), through the filesystem while it is still mounted read-write (a failure
before the release), else into its free erase blocks (``stage2.writers.jffs2_file``; the kernel's jffs2
is unmounted or read-only by then). NOR, written: only when ``mtd -j`` put its jffs2 in (the image was
written whole), appended to it as on success; otherwise the firmware is partly new and no
``rootfs_data`` of it can be trusted: the report is logged only.

NAND (UBI): into the ``rootfs_data`` volume, whichever it is (the old overlay when nothing was written,
the new one when the volumes were made): through the mount when it is mounted read-write, else mounted
here. A read-only mount of it cannot take it (ubifs refuses a second mount with other flags).

Runs after the pivot: everything is imported at the top (``stage2.ramfs`` measures the imports).

``nor_place`` and ``ubi_place`` decide (pure); ``save_nor`` and ``save_ubi`` act, best effort: a
report that cannot be saved is logged, and the reboot goes on.
"""

from __future__ import annotations

import enum
import os
import time

from stage2.platforms import nand
from stage2.platforms.flash import MTD_BLOCK_MAJOR
from stage2.platforms.profile import Profile
from stage2.report import (
    REPORT_NAME,
    Report,
    report_dict,
    report_file,
    save_in_jffs2,
    write_json,
)
from stage2.writers import jffs2_file, mtd
from wrtcore import log, ubi
from wrtcore import mtd as mtdio
from wrtcore.errors import UpgradeError
from wrtcore.mounts import Mount, read_mountinfo

DATA = "rootfs_data"


class Place(enum.Enum):
    MOUNTED = "through its read-write mount"
    RAW = "into the unmounted filesystem"  # jffs2: free erase blocks; ubifs: mounted here
    NEW_JFFS2 = "appended to the jffs2 mtd -j wrote"
    NOWHERE = "nowhere"


def nor_place(written: bool, jffs2_at: int | None, mount: Mount | None) -> Place:
    if written:
        return Place.NEW_JFFS2 if jffs2_at is not None else Place.NOWHERE
    if mount is None:
        return Place.RAW
    return Place.NOWHERE if mount.read_only else Place.MOUNTED


def ubi_place(volume_exists: bool, mount: Mount | None) -> Place:
    if not volume_exists:
        return Place.NOWHERE
    if mount is None:
        return Place.RAW
    return Place.NOWHERE if mount.read_only else Place.MOUNTED


def jffs2_mount(mounts: list[Mount], index: int) -> Mount | None:
    """The mount of the jffs2 on MTD ``index`` (its superblock is ``MKDEV(31, index)``), or of its
    mtdblock, the read-write one first."""
    dev = os.makedev(MTD_BLOCK_MAJOR, index)
    found = [m for m in mounts if m.dev == dev or m.source in (f"/dev/mtdblock{index}", f"mtd{index}")]
    return min(found, key=lambda m: m.read_only, default=None)


def ubifs_mount(mounts: list[Mount], volume: ubi.Volume) -> Mount | None:
    names = {f"ubi{volume.device}:{volume.name}", f"ubi{volume.device}_{volume.vol_id}",
             f"/dev/ubi{volume.device}_{volume.vol_id}"}
    found = [m for m in mounts if m.fstype == "ubifs" and m.source in names]
    return min(found, key=lambda m: m.read_only, default=None)


def _through_mount(report: Report, mount: Mount) -> bool:
    path = f"{mount.mountpoint.rstrip('/')}/{REPORT_NAME}"
    try:
        write_json(path, report_dict(report))
    except OSError as exc:
        log.get().error("report not saved", path=path, error=str(exc))
        return False
    log.get().info("report saved", path=path, outcome=report.outcome)
    return True


def save_nor(report: Report, firmware: str, jffs2_at: int | None) -> bool:
    """NOR after the pivot (``firmware``: the MTD written; ``jffs2_at``: where ``mtd -j`` put the config,
    None when it did not). False when the report was not saved (logged)."""
    report.finished_at = time.time()  # to_version: filled by report_dict on every path below
    part = next((p for p in mtdio.partitions() if p.name == DATA), None)
    mount = jffs2_mount(read_mountinfo(), part.index) if part is not None else None
    place = nor_place(report.written, jffs2_at, mount)
    if place is Place.NEW_JFFS2 and jffs2_at is not None:
        return save_in_jffs2(report, firmware, jffs2_at)
    if place is Place.MOUNTED and mount is not None:
        return _through_mount(report, mount)
    if place is Place.RAW and part is not None:
        device = f"/dev/mtd{part.index}"
        try:
            with mtd.open_device(device) as flash:
                placed = jffs2_file.add_file(report_file(report), flash, name=device)
        except (OSError, UpgradeError) as exc:
            log.get().error("report not saved", device=device, error=str(exc))
            return False
        log.get().info("report saved", device=device, offsets=list(placed.offsets), outcome=report.outcome)
        return True
    log.get().error("report not saved", place=place.value, written=report.written,
                    rootfs_data=part is not None)
    return False


def save_ubi(report: Report, profile: Profile, ubi_number: int | None) -> bool:
    """NAND after the pivot: the report into ``rootfs_data`` of the UBI device ``ubi_number`` (found on
    the profile's UBI partition when None). False when it was not saved (logged)."""
    report.finished_at = time.time()  # to_version: filled by report_dict on every path below
    try:
        if ubi_number is None:
            found = {p.name: p.index for p in mtdio.partitions()}
            index = found.get(nand.names_of(profile).ubipart, found.get("rootfs"))  # as nand.prepare looks
            dev = ubi.device_on_mtd(index) if index is not None else None
            if dev is None:
                raise UpgradeError("no UBI device attached on the flash")
            ubi_number = dev.number
        volume = ubi.read_device(ubi_number).volume(profile.datapart)
        mount = ubifs_mount(read_mountinfo(), volume) if volume is not None else None
        place = ubi_place(volume is not None, mount)
        if place is Place.MOUNTED and mount is not None:
            return _through_mount(report, mount)
        if place is Place.RAW:
            source = nand.save_file(profile, ubi_number, report_file(report))
            log.get().info("report saved", volume=source, outcome=report.outcome)
            return True
        why = "no such volume" if volume is None else "mounted read-only"
        raise UpgradeError(f"{profile.datapart}: {why}")
    except (OSError, UpgradeError) as exc:
        log.get().error("report not saved", error=str(exc))
        return False
