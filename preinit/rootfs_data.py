"""rootfs_data: where it is (an MTD partition or a block device after the squashfs) and what to do with it.

fstools' ``volume_find("rootfs_data")`` looks in /proc/mtd first (``find_mtd_part``), then at block
devices: a GPT partition of that name on the root's disk (eMMC, ``find_gpt``), else the space after the
squashfs; the name can be changed with ``fstools_overlay_name=`` on the kernel command line. On an MTD
partition (NOR) only jffs2 is mounted as it is: anything else (``DE AD C0 DE`` after a flash, an erased
chip, garbage) gets a tmpfs overlay for this boot, and ``done`` erases the partition and switches to a
fresh jffs2 (fstools' ``jffs2_switch``). The decisions are pure functions of what ``identify`` found;
``format_jffs2`` and ``erase_after_eof`` are the two things done to the flash, with our MTD helpers.

``erase_after_eof`` does in user space what OpenWrt's kernel patch ``532-jffs2_eofdetect`` does while
scanning: a jffs2 that ``mtd -j`` wrote (the config archive, then a ``DE AD C0 DE`` block) ends at that
block, and everything after it is stale (the old jffs2, the old image's tail) and must not be seen as
jffs2 nodes; the kernels without that patch (Debian's, in the VM) would resurrect old files. Each block
erased is given a jffs2 clean marker, as ``flash_erase -j`` does, so the kernel's jffs2 takes it as
clean at once instead of queueing it for an erase in the background.

``take_report`` is eMMC's: stage2 leaves its final report as a raw record at the end of the overlay area
(``stage2.formats.report_record``); it is read before the overlay is formatted, and its slot cleared so
that no later boot reads it again.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any

from stage2.formats import report_record
from stage2.formats.jffs2 import EOF_MARKER, clean_marker
from stage2.platforms import emmc
from stage2.platforms.profile import gpt_names
from wrtcore import log, loop, mtd, partitions

NAME = "rootfs_data"


@dataclass(frozen=True)
class Volume:
    """rootfs_data. ``device``: what ``identify`` reads and a block filesystem mounts; ``mtd``: the
    character device of an MTD partition (erased through it), None on a block device; ``ubi``: the
    ubifs source (``ubiN:rootfs_data``) of a UBI volume."""

    device: str
    mtd: str | None = None
    ubi: str | None = None
    kernel_partition: bool = False  # a partition node of the kernel's (a GPT's rootfs_data), no loop

    @property
    def on_mtd(self) -> bool:
        return self.mtd is not None

    @property
    def on_block(self) -> bool:
        """A block device holding a block filesystem (not MTD, not UBI): loop device or partition."""
        return self.mtd is None and self.ubi is None

    @property
    def on_loop(self) -> bool:
        """A loop device over the root's block device (x86) or its disk (eMMC): detached with its mount."""
        return self.on_block and not self.kernel_partition

    @property
    def source(self) -> str:
        """The mount source: ``mtdN`` for jffs2 on an MTD partition (the kernel's own naming),
        ``ubiN:name`` for a UBI volume."""
        if self.ubi:
            return self.ubi
        return os.path.basename(self.mtd) if self.mtd else self.device


def find_mtd(name: str = NAME, proc_mtd: str = mtd.PROC_MTD) -> Volume | None:
    """The MTD partition labelled ``name`` in /proc/mtd, or None (fstools' find_mtd_part)."""
    for part in mtd.partitions(proc_mtd):
        if part.name == name:
            return Volume(f"/dev/mtdblock{part.index}", f"/dev/mtd{part.index}")
    return None


def find_ubi(name: str = NAME, sysfs: str = "/sys/class/ubi") -> Volume | None:
    """The UBI volume labelled ``name`` on any attached UBI device, or None (fstools' ubi volume
    lookup); always mounted as ubifs, which formats an empty volume on its first mount."""
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return None
    for entry in entries:
        device, sep, _vol = entry.partition("_")
        if not sep or not device.startswith("ubi"):
            continue
        try:
            with open(f"{sysfs}/{entry}/name") as f:
                if f.read().strip() != name:
                    continue
        except OSError:
            continue
        return Volume(f"/dev/{entry}", ubi=f"{device}:{name}")
    return None


def find_gpt(root_dev: str, name: str = NAME) -> Volume | None:
    """A GPT partition labelled ``name`` on the disk of the block device ``root_dev`` (an eMMC board's
    separate rootfs_data, fstools' partname lookup): the kernel's node by ``PARTNAME``, else, on a kernel
    that parses no partition tables, a loop view over the disk (an existing one is reused). None when
    the disk has no GPT or no such partition."""
    try:
        disk = partitions.disk_of(root_dev)
    except OSError:
        return None
    if disk == root_dev:
        return None
    nodes = gpt_names(disk)
    if nodes:
        return Volume(nodes[name], kernel_partition=True) if name in nodes else None
    try:
        with open(disk, "rb") as f:
            f.seek(emmc.SECTOR)
            start, count, size = emmc.gpt_entries_extent(f.read(emmc.SECTOR))
            f.seek(start)
            found = [p for p in emmc.parse_gpt(f.read(count * size), count, size) if p.name == name]
    except (OSError, ValueError):
        return None
    if not found:
        return None
    entry = partitions.Entry(found[0].number, 0, found[0].start, found[0].size)
    view = partitions.view_of(disk, entry) or loop.attach(disk, offset=entry.start, sizelimit=entry.size)
    return Volume(view)


class Start(enum.Enum):
    MOUNT = "mount"  # mount it as it is
    FORMAT = "format"  # mkfs, then mount (a block device that holds nothing)
    UNPACK_FORMAT = "unpack_format"  # eMMC's config archive at its start: unpack, then format
    TMPFS = "tmpfs"  # a tmpfs overlay for this boot; ``done`` makes the real one


def start_action(fs: str, on_mtd: bool) -> Start:
    """What ``mount_root start`` does with rootfs_data that ``identify`` called ``fs`` (``ubifs``: a
    UBI volume, mounted as it is)."""
    if fs == "ubifs":
        return Start.MOUNT
    if on_mtd:
        return Start.MOUNT if fs == "jffs2" else Start.TMPFS
    if fs == "deadcode":
        return Start.TMPFS
    if fs == "targz":
        return Start.UNPACK_FORMAT
    if fs == "none":
        return Start.FORMAT
    return Start.MOUNT


class Done(enum.Enum):
    READY = "ready"  # the overlay is the real one: mark it ready
    SWITCH = "switch"  # tmpfs overlay, rootfs_data waiting: make its filesystem, move the overlay onto it
    KEEP = "keep"  # tmpfs overlay and nothing to switch to (no volume, or one that failed to mount)


def done_action(overlay_fs: str | None, volume: Volume | None, fs: str | None) -> Done:
    """What ``mount_root done`` does. ``overlay_fs``: the filesystem type of /overlay now (None: no
    overlay, as in failsafe); ``fs``: what ``identify`` says about ``volume`` now. A filesystem that is
    there but failed to mount at start is never formatted here: its data may still be read by hand."""
    if overlay_fs is None:
        return Done.KEEP
    if overlay_fs != "tmpfs":
        return Done.READY
    if volume is None or fs is None:
        return Done.KEEP
    if volume.on_mtd:
        return Done.KEEP if fs == "jffs2" else Done.SWITCH
    return Done.SWITCH if fs == "deadcode" else Done.KEEP


def _blocks(dev: mtd.Device, first: int) -> list[int]:
    size, erase = dev.info.size, dev.info.erasesize
    return [off for off in range(first * erase, size, erase) if not dev.is_bad(off)]


def _erase_marked(dev: mtd.Device, offsets: list[int]) -> None:
    marker = clean_marker()
    for off in offsets:
        dev.erase(off, dev.info.erasesize)
        if not dev.info.nand:  # NAND keeps its clean markers out of band
            dev.write(off, marker)


def format_jffs2(path: str) -> int:
    """Erase every good block of the MTD partition ``path`` and mark it clean (an empty jffs2).
    Returns the blocks erased."""
    with mtd.Device(path) as dev:
        dev.unlock(0, dev.info.size)
        offsets = _blocks(dev, 0)
        _erase_marked(dev, offsets)
    return len(offsets)


def eof_block(heads: list[bytes]) -> int | None:
    """The index of the first block after the first that starts with ``DE AD C0 DE``: where a jffs2
    written by ``mtd -j`` ends. Pure: ``heads`` are the first 4 bytes of each block."""
    for index, head in enumerate(heads):
        if index > 0 and head[:4] == EOF_MARKER:
            return index
    return None


def erase_after_eof(path: str) -> int:
    """Erase (and mark clean) the ``DE AD C0 DE`` block of a jffs2 from ``mtd -j`` and every block after
    it, as OpenWrt's kernel does on its first mount. Returns the blocks erased (0: no marker)."""
    with mtd.Device(path) as dev:
        erase = dev.info.erasesize
        heads = []
        head = bytearray(4)
        for off in range(0, dev.info.size, erase):
            dev.read(off, head)
            heads.append(bytes(head))
        first = eof_block(heads)
        if first is None:
            return 0
        dev.unlock(first * erase, dev.info.size - first * erase)
        offsets = _blocks(dev, first)
        log.get().info("jffs2 end marker found, erasing the blocks after it", device=path,
                       offset=first * erase, blocks=len(offsets))
        _erase_marked(dev, offsets)
        return len(offsets)


def take_report(device: str) -> dict[str, Any] | None:
    """The upgrade report stage2 left raw at the end of the block device ``device`` (eMMC's overlay
    area), read before it is formatted; the record's first block is then zeroed. None when there is no
    record; a damaged one is dropped with a warning."""
    with open(device, "r+b") as f:
        at = report_record.slot_offset(f.seek(0, os.SEEK_END), 0)
        if at is None:
            return None
        f.seek(at)
        data = f.read(report_record.SLOT)
        if not data.startswith(report_record.MAGIC):
            return None
        try:
            report = report_record.decode(data)
        except report_record.RecordError as exc:
            log.get().warning("upgrade report record ignored", device=device, offset=at, error=str(exc))
            report = None
        f.seek(at)
        f.write(bytes(report_record.BLOCK))
        f.flush()
        os.fsync(f.fileno())
    if report is not None:
        log.get().info("upgrade report record found", device=device, offset=at, outcome=report.get("outcome"))
    return report
