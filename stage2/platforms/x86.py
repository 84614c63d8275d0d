"""x86 "combined" disks: the whole image over the disk, or partition by partition (reference 5.5).

OpenWrt's x86 ``platform_do_upgrade``: with ``UPGRADE_OPT_SAVE_PARTITIONS=1`` (sysupgrade without
``-p``) and every partition of the image found unchanged in the boot disk's table, each partition is
written to its own device and the rest of the disk (boot code, partition table, other partitions, the
gaps) stays; otherwise the whole image is written over the disk.

Decisions here (``plan_disk``, pure), and where they differ from OpenWrt:

* A partition whose bytes on the disk already equal the image's is not written again ("unchanged");
  OpenWrt rewrites every one.
* The disk signature is kept (OpenWrt copies the image's bytes 440-443 over it). The new boot
  partition's ``boot/grub/grub.cfg`` names the root as ``PARTUUID=<image signature>-02`` (MBR) or
  ``<image disk GUID minus its last byte>NN`` (GPT), so its ``PARTUUID=`` is rewritten to the disk's
  (``fix_partuuid``), as OpenWrt fixes ``PARTUUID=`` in grub.cfg.
* A gzip'd image cannot be cut into partitions without inflating it once per partition: it is written
  whole (OpenWrt pipes ``zcat`` into each ``dd``).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from stage2.writers import block, roothead
from sysupgrade.platform_x86 import (
    DISK_SIGNATURE_OFFSET,
    GPT_DISK_GUID_OFFSET,
    GPT_MAGIC,
    HEAD_SECTORS,
    SECTOR,
    PartitionTableError,
    layout_changed,
    partition_map,
)
from wrtcore import log, partitions, syscalls
from wrtcore.errors import UpgradeError, WriteError

GRUB_CFG = "boot/grub/grub.cfg"
HEAD_BYTES = HEAD_SECTORS * SECTOR  # what both partition maps are read from
COMPARE_CHUNK = 1 << 20
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class PartWrite:
    number: int
    start: int  # bytes, in the image and on the disk
    size: int  # bytes


@dataclass(frozen=True)
class DiskPlan:
    whole: bool
    reason: str
    parts: tuple[PartWrite, ...] = ()
    image_partuuid: str = ""  # prefix of the image's PARTUUIDs ("5eed0001-" or a GUID without its last byte)
    disk_partuuid: str = ""

    def describe(self) -> list[str]:
        if self.whole:
            return [f"write the whole image over the disk ({self.reason})"]
        lines = [f"write partition {p.number} ({p.size} bytes at {p.start}) unless unchanged"
                 for p in self.parts]
        if self.image_partuuid != self.disk_partuuid:
            lines.append(f"keep the disk's PARTUUID {self.disk_partuuid}*, "
                         f"fix grub.cfg's {self.image_partuuid}*")
        return lines


def partuuid_prefix(head: bytes) -> str:
    """What every PARTUUID of this disk starts with: ``<signature>-`` (MBR) or the GPT disk GUID
    without its last byte (OpenWrt's images number partitions in that byte)."""
    if head[SECTOR:SECTOR + len(GPT_MAGIC)] == GPT_MAGIC:
        return str(uuid.UUID(bytes_le=head[GPT_DISK_GUID_OFFSET:GPT_DISK_GUID_OFFSET + 16]))[:-2]
    return f"{struct.unpack_from('<I', head, DISK_SIGNATURE_OFFSET)[0]:08x}-"


def plan_disk(*, save_partitions: bool, disk_head: bytes, image_head: bytes, compressed: bool) -> DiskPlan:
    if not save_partitions:
        return DiskPlan(True, "partition table not kept (sysupgrade -p)")
    if compressed:
        return DiskPlan(True, "compressed image")
    try:
        disk_map = partition_map(disk_head)
    except PartitionTableError:
        return DiskPlan(True, "Invalid partition table on the boot disk")
    try:
        image_map = partition_map(image_head)
    except PartitionTableError:
        return DiskPlan(True, "Invalid partition table in the image")
    if layout_changed(disk_map, image_map):
        return DiskPlan(True, "Partition layout has changed. Full image will be written.")
    parts = tuple(PartWrite(p.number, p.start * SECTOR, p.size * SECTOR) for p in image_map)
    return DiskPlan(False, "partition layout unchanged", parts, partuuid_prefix(image_head),
                    partuuid_prefix(disk_head))


def fix_partuuid(text: str, image_prefix: str, disk_prefix: str) -> str:
    """``PARTUUID=<image prefix>NN`` becomes ``PARTUUID=<disk prefix>NN`` (case-insensitive)."""
    if image_prefix.lower() == disk_prefix.lower():
        return text
    return re.sub(f"(PARTUUID=){re.escape(image_prefix)}", lambda m: m.group(1) + disk_prefix, text,
                  flags=re.IGNORECASE)


# --- execution ------------------------------------------------------------------------------------


def same_bytes(image: str, start: int, device: str, size: int) -> bool:
    """Whether ``device`` already holds the image's ``size`` bytes at ``start``."""
    with open(image, "rb") as a, open(device, "rb") as b:
        a.seek(start)
        left = size
        while left:
            n = min(COMPARE_CHUNK, left)
            x, y = a.read(n), b.read(n)
            if x != y:
                return False
            if not x:
                return True
            left -= len(x)
    return True


@dataclass(frozen=True)
class PartResult:
    number: int
    device: str
    written: bool  # False: unchanged, skipped
    bytes: int


def write_partitions(image: str, disk: str, plan: DiskPlan, progress: Progress | None = None,
                     on_write: Callable[[], None] = lambda: None) -> list[PartResult]:
    """Write each partition of ``plan`` to its device (skipping unchanged ones), each verified."""
    results = []
    for part in plan.parts:
        device = partitions.device(disk, part.number)
        if same_bytes(image, part.start, device, part.size):
            log.get().info("partition unchanged", partition=part.number, device=device)
            results.append(PartResult(part.number, device, False, 0))
            continue
        log.get().info(f"Writing image to {device}...", partition=part.number)
        on_write()
        with open(image, "rb") as src:
            src.seek(part.start)
            try:
                report = block.write_image(src, device, length=part.size, progress=progress,
                                           hold=roothead.finder())
            except WriteError as exc:
                raise WriteError(f"partition {part.number}: {exc.message}", offset=part.start + exc.offset,
                                 written=True, hint=exc.hint) from exc
        results.append(PartResult(part.number, device, True, report.bytes_written))
    return results


def fix_grub(boot_device: str, plan: DiskPlan, mnt: str = "/boot") -> bool:
    """Rewrite ``PARTUUID=`` in the new boot partition's grub.cfg to the disk's; True if changed."""
    if plan.whole or plan.image_partuuid.lower() == plan.disk_partuuid.lower():
        return False
    os.makedirs(mnt, exist_ok=True)
    syscalls.mount(boot_device, mnt, "ext4", syscalls.MS_NOATIME)
    try:
        path = f"{mnt}/{GRUB_CFG}"
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return False
        fixed = fix_partuuid(text, plan.image_partuuid, plan.disk_partuuid)
        if fixed == text:
            return False
        with open(path + ".new", "w") as f:
            f.write(fixed)
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".new", path)
        with open(path) as f:
            if f.read() != fixed:
                raise UpgradeError(f"{path}: read back differs after fixing PARTUUID=")
    finally:
        with contextlib.suppress(OSError):
            syscalls.umount(mnt)
    log.get().info("grub.cfg PARTUUID fixed", old=plan.image_partuuid, new=plan.disk_partuuid)
    return True
