"""The eMMC board of the vm tier: a GPT disk flashed with firmware 1.0, and the eMMC sysupgrade tar of 2.0.

    0 - 1 MiB        protective MBR, GPT header and entries (written by ``sfdisk``)
    1 MiB - 5 MiB    partition 1 ``kernel``: a kernel stand-in (QEMU boots the real kernel with -kernel)
    then             partition 2 ``rootfs``: the squashfs root, then zeros: the overlay starts at the first
                     64 KiB boundary after the squashfs (``ROOTDEV_OVERLAY_ALIGN``), 24 MiB of room
    last 1 MiB       the backup GPT

The guest kernel parses the GPT itself (``CONFIG_EFI_PARTITION``): ``root=/dev/vda2`` is the rootfs
partition, and sysfs names the partitions (``/sys/class/block/vda1/uevent``: ``PARTNAME=kernel``), which
is how stage2 detects the eMMC profile (``stage2.platforms.profile``), with no platform.conf.

Cheap to build: the squashfs is the x86 image's own (cut out of its partition 2, ``sandbox.emmc``), the
disk is sparse, and the 2.0 tar is the NAND sysupgrade tar already built (OpenWrt's eMMC and NAND boards
take the same ``sysupgrade-tar``: ``sysupgrade-<board>/CONTROL``, ``kernel``, ``root``, fwtool metadata),
hard-linked under its own name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox import emmc as sandbox_emmc
from wrtcore import log

# the layout is this module's: its source names the files (the images' digest covers sandbox.emmc)
_LAYOUT = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
DISK = f"emmc-v1-{_LAYOUT}.img"
TAR = "emmc-v2.tar"


@dataclass(frozen=True)
class EmmcImages:
    disk: Path  # the GPT disk flashed with 1.0 (the VM's /dev/vda)
    tar: Path  # the eMMC sysupgrade tar of 2.0
    build_seconds: float  # 0 when both came from the cache


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copyfile(src, dst)


def ensure(where: Path, x86_v1: Path, tar_v2: Path, kernel_v1: bytes) -> EmmcImages:
    """The eMMC images in the cache directory ``where``, built when missing: the disk from ``x86_v1``'s
    squashfs and the stand-in ``kernel_v1``; the tar is ``tar_v2`` (a NAND sysupgrade tar of 2.0)."""
    disk, tar = where / DISK, where / TAR
    if disk.exists() and tar.exists():
        return EmmcImages(disk, tar, 0.0)
    start = time.monotonic()
    work = where / f"emmc-work-{os.getpid()}"  # concurrent builds of one digest must not share it
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        if not disk.exists():
            root = sandbox_emmc.squashfs_of(x86_v1, work / "root-1.0.sqfs")
            kernel = work / "kernel-1.0"
            kernel.write_bytes(kernel_v1)
            tmp = work / DISK
            sandbox_emmc.gpt_disk(tmp, kernel, root)
            os.rename(tmp, disk)
        if not tar.exists():
            tmp = work / TAR
            _link_or_copy(tar_v2, tmp)
            os.rename(tmp, tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - start
    log.get().info("emmc images built", disk=str(disk), disk_bytes=disk.stat().st_size,
                   tar_bytes=tar.stat().st_size, seconds=round(took, 2))
    return EmmcImages(disk, tar, took)
