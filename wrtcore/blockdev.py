"""Block devices seen through sysfs and a few ioctls: disks, partitions, sizes, re-reading tables."""

from __future__ import annotations

import contextlib
import os
import struct

from wrtcore import ioctl, loop
from wrtcore import partitions as partitions_mod

BLKRRPART = 0x125F
BLKFLSBUF = 0x1261
BLKGETSIZE64 = 0x80081272


def devnum(path: str) -> int:
    st = os.stat(path)
    return st.st_rdev


def sysfs_dir(dev: int) -> str:
    return os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")


def disk_of(path: str) -> str:
    return partitions_mod.disk_of(path)


def partitions(disk: str) -> list[str]:
    """Partition devices of ``disk`` that exist now (kernel nodes or loop views)."""
    return partitions_mod.all_devices(disk)


def partition(disk: str, number: int) -> str:
    return partitions_mod.device(disk, number)


def size(path: str) -> int:
    return int(struct.unpack("Q", ioctl.on_path(path, BLKGETSIZE64, b"\0" * 8))[0])


def reread_partitions(disk: str) -> None:
    ioctl.on_path(disk, BLKRRPART)


def flush_buffers(path: str) -> None:
    """BLKFLSBUF: write back and drop the device's buffer cache (a partition's cache does not see
    what was written through the whole disk)."""
    ioctl.on_path(path, BLKFLSBUF)


def family(disk: str) -> set[int]:
    """Device numbers of ``disk``, its partitions and every loop device stacked on any of them."""
    nums = {devnum(disk)}
    with contextlib.suppress(OSError):
        nums |= {devnum(p) for p in partitions(disk)}
    return with_stacked_loops(nums)


def with_stacked_loops(devices: set[int]) -> set[int]:
    """``devices`` plus every loop device backed by one of them, transitively."""
    nums = set(devices)
    changed = True
    while changed:
        changed = False
        for lo in loop.list_loops():
            if lo.backing_dev in nums:
                with contextlib.suppress(OSError):
                    n = devnum(f"/dev/{lo.name}")
                    if n not in nums:
                        nums.add(n)
                        changed = True
    return nums


SQUASHFS_MAGIC = b"hsqs"


def squashfs_bytes_used(path: str, offset: int = 0) -> int:
    """bytes_used from a squashfs superblock (little-endian, offset 40), or raise ValueError."""
    with open(path, "rb") as f:
        f.seek(offset)
        sb = f.read(96)
    if sb[:4] != SQUASHFS_MAGIC:
        raise ValueError(f"{path}: no squashfs superblock at {offset}")
    return int(struct.unpack_from("<Q", sb, 40)[0])


def overlay_offset(squashfs_size: int, align: int = 64 * 1024) -> int:
    """Where OpenWrt's fstools puts rootfs_data after a squashfs root: rounded up to 64 KiB."""
    return (squashfs_size + align - 1) // align * align
