"""What a flash board's running system holds on its flash, to be let go of before the flash is written.

On a NOR board the root is the squashfs on ``mtdblock<rootfs>`` and the overlay a jffs2 on
``rootfs_data``: both are sub-partitions of ``firmware`` (OpenWrt's mtdsplit), the partition written.
The kernel's sysfs does not say which partition a sub-partition was cut from (without
``CONFIG_MTD_PARTITIONED_MASTER`` they are all siblings), so every filesystem on the flash is let go
of: a mount on an mtdblock device or of an MTD-backed filesystem (jffs2 names its superblock
``MKDEV(31, <mtd index>)``), ubifs (its device number is anonymous), and the ubiblock devices over UBI
volumes. After the pivot nothing of the old system may stay mounted from the flash anyway.

``held_devices`` is pure; ``ubiblock_devices`` reads sysfs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from wrtcore.mounts import Mount

MTD_BLOCK_MAJOR = 31
FLASH_FILESYSTEMS = ("jffs2", "ubifs")


def held_devices(mounts: Iterable[Mount], ubiblocks: Iterable[int] = ()) -> frozenset[int]:
    """Device numbers to release: every mount on MTD (block or filesystem), every ubifs, the ubiblocks."""
    devs = {m.dev for m in mounts if os.major(m.dev) == MTD_BLOCK_MAJOR or m.fstype in FLASH_FILESYSTEMS}
    return frozenset(devs | set(ubiblocks))


def ubiblock_devices(sysfs: str = "/sys/class/block") -> list[int]:
    """The device numbers of the ubiblock devices that exist now."""
    found: list[int] = []
    try:
        names = sorted(n for n in os.listdir(sysfs) if n.startswith("ubiblock"))
    except OSError:
        return found
    for name in names:
        try:
            with open(f"{sysfs}/{name}/dev") as f:
                major, _, minor = f.read().strip().partition(":")
            found.append(os.makedev(int(major), int(minor)))
        except (OSError, ValueError):
            continue
    return found
