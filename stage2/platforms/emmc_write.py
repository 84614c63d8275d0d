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

from stage2.formats import nand_tar
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


def _view(disk: str, part: emmc.GptPartition) -> str:
    entry = partitions.Entry(part.number, 0, part.start, part.size)
    existing = partitions.view_of(disk, entry)
    if existing:
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


def describe(plan: emmc.EmmcPlan) -> Mapping[str, object]:
    """What the report keeps of the plan."""
    return {"root": plan.root.partition, "kernel": plan.kernel.partition if plan.kernel else None,
            "overlay": {"partition": plan.overlay.partition, "offset": plan.overlay.offset}}
