"""eMMC: the partitions found by GPT name and the writes of ``emmc_do_upgrade`` / ``emmc_copy_config``.

What goes where is decided by ``stage2.platforms.emmc.plan_emmc`` (pure); this module touches the disk:

* ``find_partitions``: the kernel's partitions of the disk by ``PARTNAME`` (sysfs, as ``find_mmc_part``);
  on a kernel without partition-table parsing, the GPT read here and each partition shown as a loop
  device over the disk (a "partition view", as ``wrtcore.partitions`` does for an MBR; an existing
  view of the same extent is reused).
* ``prepare``: the tar's index and the plan, before the pivot (a bad tar is refused with nothing written).
* ``flash``: the kernel's first 4 KiB zeroed, ``root`` written with its squashfs superblock last
  (``stage2.writers.roothead``), then ``kernel``; without a backup 4 KiB zeroed at the overlay start.
  Every write goes through ``stage2.writers.block.write_image`` (streamed, O_DIRECT, read back and
  compared); members are written as they are (a gzip'd kernel is not inflated).
* ``save_config``: the gzip'd archive raw at the overlay start, read back and compared.
* ``save_report``: the final upgrade report as a raw record in the last 256 KiB of the overlay area
  (``stage2.formats.report_record``), read back and compared; preinit reads it before formatting.
  After a failed write, ``clear_overlay_start`` makes sure the next boot formats (and so reads it);
  when nothing was written, ``old_overlay`` shows the old overlay, where the report goes instead.

A failure raises ``WriteError`` naming the partition, with the offset in it and whether it was changed.
Runs after the pivot in the ramfs: imported by ``stage2.afterpivot`` at its top (the ramfs holds it).
"""

from __future__ import annotations

import gzip  # noqa: F401  (tarfile opens a gzip'd tar with it after the pivot: the ramfs must hold it)
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from stage2.formats import nand_tar, report_record
from stage2.platforms import emmc
from stage2.platforms.profile import Profile, gpt_names
from stage2.writers import block, roothead
from wrtcore import blockdev, log, loop, partitions
from wrtcore.errors import InvalidInput, WriteError

OnWrite = Callable[[], None]


def read_gpt(disk: str) -> list[emmc.GptPartition]:
    """The partitions of ``disk``'s primary GPT. Raises ``InvalidInput`` when it has none."""
    try:
        with open(disk, "rb") as f:
            f.seek(emmc.SECTOR)
            start, count, size = emmc.gpt_entries_extent(f.read(emmc.SECTOR))
            f.seek(start)
            return emmc.parse_gpt(f.read(count * size), count, size)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{disk}: cannot read its GPT: {exc}", hint="nothing was written") from exc


def _autoclear(device: str) -> bool:
    try:
        with open(f"/sys/block/{os.path.basename(device)}/loop/autoclear") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _view(disk: str, part: emmc.GptPartition) -> str:
    entry = partitions.Entry(part.number, 0, part.start, part.size)
    existing = partitions.view_of(disk, entry)
    if existing and not _autoclear(existing):  # preinit's view of rootfs_data goes with its mount
        return existing
    # direct I/O: a write error on the view is the writer's, at its offset (as wrtcore.partitions)
    return loop.attach(disk, offset=part.start, sizelimit=part.size, direct_io=True)


def find_partitions(disk: str, names: tuple[str, ...]) -> dict[str, emmc.Part]:
    """The partitions named ``names`` (those that exist), by name: kernel nodes, else loop views."""
    found: dict[str, emmc.Part] = {}
    nodes = gpt_names(disk)
    if nodes:
        for name in names:
            if name in nodes:
                found[name] = emmc.Part(nodes[name], blockdev.size(nodes[name]))
        return found
    for part in read_gpt(disk):
        if part.name in names and part.name not in found:
            found[part.name] = emmc.Part(_view(disk, part), part.size)
    return found


def prepare(image: str, profile: Profile, backup: str | None) -> emmc.EmmcPlan:
    """The plan for writing ``image`` on this board (before the pivot). Raises ``InvalidInput``."""
    if profile.disk is None:
        raise InvalidInput("no boot disk known for the eMMC profile", hint="nothing was written")
    index = nand_tar.read_index(image)
    parts = find_partitions(profile.disk, (profile.kernpart, profile.rootpart, profile.datapart))
    backup_size: int | None = None
    if backup and os.path.isfile(backup):
        with open(backup, "rb") as f:
            if not emmc.is_config_archive(f.read(2)):
                raise InvalidInput(f"{backup} is not a gzip'd archive: the next boot would not find it",
                                   hint="nothing was written")
        backup_size = os.path.getsize(backup)
    return emmc.plan_emmc(index, parts, kernpart=profile.kernpart, rootpart=profile.rootpart,
                          datapart=profile.datapart, backup_size=backup_size)


def _write(source: BinaryIO, device: str, what: str, *, length: int, offset: int = 0,
           progress: block.Progress | None = None, hold: block.FindHeld | None = None) -> block.WriteReport:
    try:
        return block.write_image(source, device, length=length, offset=offset, progress=progress,
                                 decompress=False, hold=hold)
    except WriteError as exc:
        raise WriteError(f"{what} on {device}: {exc.message.rsplit(' at offset ', 1)[0]}", offset=exc.offset,
                         written=exc.written, hint=exc.hint) from exc


def _zero(device: str, offset: int, what: str) -> None:
    _write(io.BytesIO(bytes(emmc.WIPE_BYTES)), device, what, length=emmc.WIPE_BYTES, offset=offset)


def _member(plan: emmc.EmmcPlan, member: emmc.MemberWrite, base: int, progress: block.Progress,
            hold: block.FindHeld | None = None) -> block.WriteReport:
    def step(done: int, _total: int | None) -> None:
        progress(base + done, plan.total)

    with nand_tar.open_member(plan.tar, nand_tar.Member(member.member, member.size)) as src:
        return _write(src, member.device, f"writing {member.member} to {member.partition}",
                      length=member.size, progress=step, hold=hold)


@dataclass(frozen=True)
class Flashed:
    bytes_written: int
    seconds: float
    verify_seconds: float


def flash(plan: emmc.EmmcPlan, progress: block.Progress, on_write: OnWrite) -> Flashed:
    """``emmc_do_upgrade``: the plan's writes, in OpenWrt's order; ``on_write`` once the first is done."""
    if plan.kernel is not None:  # the old kernel must not boot over a half-written root
        _zero(plan.kernel.device, 0, f"invalidating {plan.kernel.partition}")
        on_write()
    reports = [_member(plan, plan.root, 0, progress, hold=roothead.finder())]
    on_write()
    if plan.kernel is not None:
        reports.append(_member(plan, plan.kernel, plan.root.size, progress))
    if plan.backup_size is None:  # no config kept: the old overlay must not come back
        _zero(plan.overlay.device, plan.overlay.offset,
              f"clearing the overlay start of {plan.overlay.partition}")
    log.get().info("emmc written", root=plan.root.size, kernel=plan.kernel.size if plan.kernel else None,
                   overlay=f"{plan.overlay.partition}@{plan.overlay.offset}")
    return Flashed(sum(r.bytes_written for r in reports), sum(r.duration for r in reports),
                   sum(r.verify_duration for r in reports))


def save_config(plan: emmc.EmmcPlan, backup: str) -> int:
    """``emmc_copy_config``: the archive raw at the overlay start, read back and compared; its size."""
    size = os.path.getsize(backup)
    with open(backup, "rb") as src:
        _write(src, plan.overlay.device, f"saving the configuration to {plan.overlay.partition}",
               length=size, offset=plan.overlay.offset)
    log.get().info("configuration saved", partition=plan.overlay.partition, device=plan.overlay.device,
                   offset=plan.overlay.offset, bytes=size)
    return size


def save_report(plan: emmc.EmmcPlan, report: Mapping[str, object]) -> int:
    """The report as a raw record at the end of the overlay area (``report_record.slot_offset``),
    after whatever the overlay start holds; read back and compared. Its offset in the overlay's
    partition. Raises ``WriteError`` (or ``ValueError`` when there is no room for it)."""
    used = max(plan.backup_size or 0, emmc.WIPE_BYTES)
    at = report_record.slot_offset(plan.overlay.room, used)
    if at is None:
        raise ValueError(f"no room for the report after {used} bytes of the overlay area "
                         f"({plan.overlay.room} bytes)")
    data = report_record.encode(dict(report))
    offset = plan.overlay.offset + at
    _write(io.BytesIO(data), plan.overlay.device, f"saving the upgrade report to {plan.overlay.partition}",
           length=len(data), offset=offset)
    log.get().info("report saved", partition=plan.overlay.partition, device=plan.overlay.device,
                   offset=offset, bytes=len(data))
    return offset


def clear_overlay_start(plan: emmc.EmmcPlan) -> None:
    """The overlay start zeroed (as ``flash`` does without a backup): after a failed write, so that the
    next boot makes a fresh overlay over the new root, and reads the report record first."""
    _zero(plan.overlay.device, plan.overlay.offset, f"clearing the overlay start of {plan.overlay.partition}")


def _loop_over(device: str, offset: int) -> str | None:
    """A loop device other than ``device`` that shows ``device``'s bytes from ``offset`` on (directly,
    or over the disk ``device`` is a view of)."""
    loops = loop.list_loops()
    name = os.path.basename(device)
    wanted = {(os.stat(device).st_rdev, offset)}
    wanted |= {(lo.backing_dev, lo.offset + offset) for lo in loops if lo.name == name}
    return next((f"/dev/{lo.name}" for lo in loops
                 if lo.name != name and (lo.backing_dev, lo.offset) in wanted), None)


def old_overlay(plan: emmc.EmmcPlan) -> tuple[str, bool] | None:
    """A device showing the old overlay (ext4 at the 64 KiB boundary after the old root, or at the
    start of the rootfs_data partition), while nothing has been written, and whether it was made here
    (the caller detaches it). A loop device already over it comes first: a mount left behind by the
    release is then shared, never doubled through a second device. None when there is no ext4 there."""
    if plan.overlay.partition != plan.root.partition:
        device, offset = plan.overlay.device, 0
    else:
        device = plan.root.device
        offset = blockdev.overlay_offset(blockdev.squashfs_bytes_used(device))
    with open(device, "rb") as f:
        f.seek(offset + 1080)
        if f.read(2) != b"\x53\xef":
            return None
    existing = _loop_over(device, offset)
    if existing or offset == 0:
        return existing or device, False
    return loop.attach(device, offset=offset), True


def describe(plan: emmc.EmmcPlan) -> Mapping[str, object]:
    """What the report keeps of the plan."""
    return {"root": plan.root.partition, "kernel": plan.kernel.partition if plan.kernel else None,
            "overlay": {"partition": plan.overlay.partition, "offset": plan.overlay.offset}}
