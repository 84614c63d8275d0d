"""mount_root: the squashfs root with an overlay on rootfs_data, as OpenWrt's fstools sets it up.

x86 "combined" layout: rootfs_data lives on the root partition right after the squashfs, at the next
64 KiB boundary, reached through a loop device at that offset. Identified by its first bytes as fstools
does (``identify``): an ext4 or f2fs superblock, or jffs2 (magic 0x1985, either endian), is mounted as
it is; ``deadc0de`` (nothing written since the flash) gets a tmpfs overlay for this boot and is
formatted only when the boot is done; a gzip stream at its start is eMMC's config archive (OpenWrt's
``emmc_copy_config`` writes it there raw): it is unpacked to /tmp/sysupgrade.tar, then the volume is
formatted; anything else (zeros) is formatted. Before a block volume is formatted, the upgrade report
stage2 left raw at its end is taken (eMMC, ``rootfs_data.take_report``) and put into the new overlay's
top directory, where ``lastupgrade`` finds it. A filesystem that will not mount falls back to a tmpfs
overlay. The overlay's state follows fstools: ``.fs_state`` -> "1" pending until ``done`` marks it "2"
ready; a pending overlay is wiped on boot except files named sysupgrade.tgz (the restore runs again).

rootfs_data on an MTD partition (NOR: ``rootfs_data`` in /proc/mtd, ``preinit.rootfs_data``) is mounted
only when it holds jffs2 (after ``mtd -j``: the blocks from its end marker on are erased first, as
OpenWrt's kernel does); anything else gets the tmpfs overlay. ``done`` on a tmpfs overlay makes the real
one, as fstools' ``jffs2_switch``: the MTD partition erased into an empty jffs2, a ``deadc0de`` block
volume formatted ext4, and the running system moved onto it (``preinit.overlay_switch``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zlib
from typing import Any

from preinit import lastupgrade, overlay_switch
from preinit import rootfs_data as rd
from wrtcore import blockdev, cmdline, log, loop, mounts, partitions, run, syscalls

STATE_LINK = ".fs_state"
PENDING, READY = "1", "2"
MIN_OVERLAY = 2 << 20


JFFS2_MAGIC = (b"\x85\x19", b"\x19\x85")  # 0x1985 little- and big-endian
F2FS_MAGIC = b"\x10\x20\xf5\xf2"  # 0xF2F52010 little-endian, at 1024
TAR_FROM_DATA = "/tmp/sysupgrade.tar"
FLASH_ROOTS = ("/dev/mtdblock", "/dev/ubiblock")  # roots on flash: no block device after the squashfs
MAX_TAR = 64 << 20


def identify(dev: str) -> str:
    """ext4 | f2fs | jffs2 | deadcode | targz | none, from the first bytes (fstools' volume_identify)."""
    with open(dev, "rb") as f:
        head = f.read(2048)
    if head[:4] == b"\xde\xad\xc0\xde":
        return "deadcode"
    if head[:2] in JFFS2_MAGIC:
        return "jffs2"
    if head[:2] == b"\x1f\x8b":
        return "targz"
    if head[1080:1082] == b"\x53\xef":
        return "ext4"
    if head[1024:1028] == F2FS_MAGIC:
        return "f2fs"
    return "none"


def unpack_targz(dev: str, dest: str = TAR_FROM_DATA, limit: int = MAX_TAR) -> int:
    """The gzip stream at the start of ``dev`` (padding after it ignored) into ``dest``; its size.
    ValueError when it is not a whole gzip stream or unpacks to more than ``limit`` bytes."""
    inflate = zlib.decompressobj(wbits=31)
    total = 0
    with open(dev, "rb") as src, open(dest + ".new", "wb") as out:
        while not inflate.eof:
            chunk = src.read(1 << 16)
            if not chunk:
                raise ValueError("the gzip stream at the start of rootfs_data is cut short")
            try:
                data = inflate.decompress(chunk, limit + 1 - total)
            except zlib.error as exc:
                raise ValueError(f"damaged gzip stream at the start of rootfs_data: {exc}") from exc
            total += len(data)
            if total > limit or inflate.unconsumed_tail:
                raise ValueError(f"config archive at the start of rootfs_data is over {limit} bytes")
            out.write(data)
    os.rename(dest + ".new", dest)
    return total


def _state(overlay: str) -> str | None:
    try:
        return os.readlink(f"{overlay}/{STATE_LINK}")
    except OSError:
        return None


def set_state(overlay: str, value: str) -> None:
    link = f"{overlay}/{STATE_LINK}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    os.symlink(value, link)


def wipe_pending(overlay: str) -> None:
    """Delete everything except files named sysupgrade.tgz (fstools' overlay_delete)."""
    for dirpath, dirnames, filenames in os.walk(overlay, topdown=False):
        for name in filenames:
            if name != "sysupgrade.tgz":
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def attach_rootfs_data(root_dev: str, reuse: bool = False) -> str | None:
    """A loop device over ``root_dev`` from the first 64 KiB boundary after the squashfs; ``reuse``: the
    one already attached there (start leaves it attached when it chose a tmpfs overlay)."""
    used = blockdev.squashfs_bytes_used(root_dev)
    offset = blockdev.overlay_offset(used)
    if blockdev.size(root_dev) - offset < MIN_OVERLAY:
        return None
    if reuse:
        rdev = os.stat(root_dev).st_rdev
        for lo in loop.list_loops():
            if lo.backing_dev == rdev and lo.offset == offset:
                return f"/dev/{lo.name}"
    return loop.attach(root_dev, offset=offset)


def find_volume(line: dict[str, str], reuse: bool = False) -> rd.Volume | None:
    """rootfs_data (named by ``fstools_overlay_name=``): an MTD partition or UBI volume, else a GPT
    partition of that name on the disk of ``root=`` (eMMC), else the block device after its squashfs."""
    name = line.get("fstools_overlay_name") or rd.NAME
    found = rd.find_mtd(name) or rd.find_ubi(name)
    if found is not None:
        return found
    root_dev = line.get("root", "")
    if not root_dev.startswith("/dev/") or root_dev.startswith(FLASH_ROOTS):
        return None
    found = rd.find_gpt(root_dev, name)
    if found is not None:
        return found
    data = attach_rootfs_data(root_dev, reuse)
    return rd.Volume(data) if data else None


def fopivot(overlay: str) -> None:
    """overlayfs over / with upper in ``overlay``, pivot to it, old root at /rom (fstools' fopivot)."""
    os.makedirs(f"{overlay}/upper", exist_ok=True)
    os.makedirs(f"{overlay}/work", exist_ok=True)
    tgz = f"{overlay}/sysupgrade.tgz"
    if os.path.exists(tgz):
        os.rename(tgz, f"{overlay}/upper/sysupgrade.tgz")
    syscalls.mount("overlayfs:" + overlay, "/mnt", "overlay", syscalls.MS_NOATIME,
                   f"lowerdir=/,upperdir={overlay}/upper,workdir={overlay}/work")
    os.chdir("/mnt")
    syscalls.pivot_root(".", "rom")
    os.chdir("/")
    for mnt in ("/proc", "/dev", "/tmp", "/sys", "/overlay"):
        if os.path.ismount(f"/rom{mnt}"):
            syscalls.mount(f"/rom{mnt}", mnt, None, syscalls.MS_MOVE)


def _mount_data(volume: rd.Volume) -> tuple[str, dict[str, Any] | None]:
    """Mount rootfs_data on /tmp/overlay as its first bytes say; "tmpfs" when it cannot be used now.
    With it, the upgrade report of a block volume about to be formatted (eMMC: ``rd.take_report``)."""
    data = volume.device
    fs = "ubifs" if volume.ubi else identify(data)
    action = rd.start_action(fs, volume.on_mtd)
    if action is rd.Start.TMPFS:
        log.get().info("rootfs_data not ready yet, using temporary tmpfs overlay", device=data, found=fs)
        return "tmpfs", None
    report = None
    if action in (rd.Start.FORMAT, rd.Start.UNPACK_FORMAT) and volume.on_block:
        try:
            report = rd.take_report(data)
        except OSError as exc:
            log.get().warning("upgrade report record not read", device=data, error=str(exc))
    if action is rd.Start.UNPACK_FORMAT:
        try:
            size = unpack_targz(data)
            log.get().info("config archive found at the start of rootfs_data", tar=TAR_FROM_DATA, bytes=size)
        except (OSError, ValueError) as exc:
            log.get().warning("config archive at the start of rootfs_data dropped", error=str(exc))
    if action in (rd.Start.FORMAT, rd.Start.UNPACK_FORMAT):
        log.get().info("formatting rootfs_data", device=data, found=fs)
        run.run(["mkfs.ext4", "-q", "-F", "-L", "rootfs_data", data])
        fs = "ext4"
    try:
        if volume.mtd is not None:
            rd.erase_after_eof(volume.mtd)
        syscalls.mount(volume.source, "/tmp/overlay", fs, syscalls.MS_NOATIME)
    except OSError as exc:
        log.get().warning(f"switching to {fs} failed - fallback to ramoverlay", error=str(exc))
        return "tmpfs", report
    if volume.on_loop:
        loop.set_autoclear(data)  # goes away with the mount
    return fs, report


def start() -> str:
    """Mount the overlay and pivot into it; returns the kind of overlay used."""
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    volume = find_volume(cmdline.read())
    os.makedirs("/tmp/overlay", exist_ok=True)
    kind, report = _mount_data(volume) if volume is not None else ("tmpfs", None)
    if kind == "tmpfs":
        if volume is None:
            log.get().info("no usable overlay filesystem found, using tmpfs overlay")
        syscalls.mount("tmpfs", "/tmp/overlay", "tmpfs", syscalls.MS_NOATIME, "mode=0755")
    state = _state("/tmp/overlay")
    if state == PENDING:
        log.get().info("overlay filesystem has not been fully initialized yet")
        wipe_pending("/tmp/overlay")
    if state != READY:
        set_state("/tmp/overlay", PENDING)
    if report is not None:  # where the reports of NOR and NAND boards are: the overlay's top directory
        lastupgrade.keep_in_overlay(report, "/tmp/overlay")
    syscalls.mount("/tmp/overlay", "/overlay", None, syscalls.MS_MOVE)
    log.get().info(f"switching to {kind} overlay")
    fopivot("/overlay")
    return kind


def mark_ready(overlay: str) -> None:
    set_state(overlay, READY)


def done() -> str:
    """S95done's ``mount_root done``: mark the overlay ready, or on a tmpfs overlay make the real one and
    move onto it (``rootfs_data.done_action``). Returns what was done."""
    where = mounts.find(mounts.read_mountinfo(), "/overlay")
    overlay_fs = where.fstype if where else None
    volume = find_volume(cmdline.read(), reuse=True) if overlay_fs == "tmpfs" else None
    fs = ("ubifs" if volume.ubi else identify(volume.device)) if volume else None
    action = rd.done_action(overlay_fs, volume, fs)
    if action is rd.Done.READY:
        mark_ready("/overlay")
    elif action is rd.Done.SWITCH and volume is not None:
        if volume.mtd is not None:
            blocks = rd.format_jffs2(volume.mtd)
            log.get().info("rootfs_data erased for jffs2", device=volume.mtd, blocks=blocks)
            fstype = "jffs2"
        else:
            log.get().info("formatting rootfs_data", device=volume.device, found=fs)
            run.run(["mkfs.ext4", "-q", "-F", "-L", "rootfs_data", volume.device])
            fstype = "ext4"
        overlay_switch.switch(volume.source, fstype, mark_ready)
        if volume.on_loop:
            loop.set_autoclear(volume.device)
        log.get().info(f"switched from the tmpfs overlay to {fstype}", device=volume.device)
    else:
        log.get().info("staying on the tmpfs overlay", rootfs_data=volume.device if volume else None,
                       found=fs)
    return action.value


def move_config(root_dev: str) -> dict[str, str | None]:
    """x86's 79_move_config: mount the boot partition on /boot, move sysupgrade.tgz to /."""
    found: dict[str, str | None] = {"archive": None, "report": None}
    if not root_dev.startswith("/dev/") or root_dev.startswith(FLASH_ROOTS):
        return found  # NOR, UBI: the config came into rootfs_data (mtd -j, ubifs), no boot partition
    try:
        boot, made = partitions.open_device(blockdev.disk_of(root_dev), 1)
    except (OSError, ValueError) as exc:
        log.get().warning("no boot partition", error=str(exc))
        return found
    os.makedirs("/boot", exist_ok=True)
    try:
        syscalls.mount(boot, "/boot", "ext4", syscalls.MS_NOATIME)
    except OSError as exc:  # eMMC: partition 1 is the raw kernel (or a GPT's protective entry)
        if made:
            loop.detach(boot)
        log.get().info("no boot partition", device=boot, error=str(exc))
        return found
    if made:
        loop.set_autoclear(boot)
    if os.path.exists("/boot/sysupgrade.tgz"):
        shutil.copyfile("/boot/sysupgrade.tgz", "/sysupgrade.tgz")
        os.unlink("/boot/sysupgrade.tgz")
        found["archive"] = "/sysupgrade.tgz"
    if os.path.exists("/boot/upgrade-report.json"):
        found["report"] = "/boot/upgrade-report.json"
    return found
