"""rootfs_data: where it is (an MTD partition or a block device after the squashfs) and what to do with it.

fstools' ``volume_find("rootfs_data")`` looks in /proc/mtd first (``find_mtd_part``), then at block
devices; the name can be changed with ``fstools_overlay_name=`` on the kernel command line. On an MTD
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
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from stage2.formats.jffs2 import EOF_MARKER, clean_marker
from wrtcore import log, mtd

NAME = "rootfs_data"


@dataclass(frozen=True)
class Volume:
    """rootfs_data. ``device``: what ``identify`` reads and a block filesystem mounts; ``mtd``: the
    character device of an MTD partition (erased through it), None on a block device; ``ubi``: the
    ubifs source (``ubiN:rootfs_data``) of a UBI volume."""

    device: str
    mtd: str | None = None
    ubi: str | None = None

    @property
    def on_mtd(self) -> bool:
        return self.mtd is not None

    @property
    def on_loop(self) -> bool:
        """A loop device over the root's block device (x86): detached with its mount."""
        return self.mtd is None and self.ubi is None

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
