"""x86's ``platform_check_image``: MBR boot code first, and the image's partition map against the boot disk's.

OpenWrt (``target/linux/x86/base-files/lib/upgrade/platform.sh`` with ``get_partitions`` from
``lib/upgrade/common.sh``, reference 5.5):

1. The image's first two bytes must be ``eb48`` or ``eb63`` (MBR boot code), else ``Invalid image type``
   and status 1: invalid, ``-F`` may override.
2. The boot disk is the disk of the ``root=`` of the kernel command line (``/dev/...``, or
   ``PARTUUID=<disk signature>-<nn>`` for MBR, ``PARTUUID=<GPT disk GUID with the last byte = nn>``).
3. Both partition maps are read (the boot disk's, and the one in the image's first 63 sectors): GPT when
   sector 1 starts with ``EFI PART`` (entries 1-15, each ``number first-LBA last-LBA-first+1``), else
   the four MBR entries whose type is not 0. Each map is written as lines ``%2d %5d %7d`` (number, start
   sector, size in sectors) to ``/tmp/partmap.bootdisk`` and ``/tmp/partmap.image``.
4. A line of the image's map that the boot disk's lacks means ``Partition layout has changed. Full image
   will be written.`` The image stays valid: the comparison only decides whether stage2 may write the
   partitions one by one and keep the others (``save_partitions``, sysupgrade without ``-p``) or must
   write the whole disk. It is reported as the test ``x86_partition_layout`` (true = unchanged), which
   does not touch ``valid``; stage2 compares again before writing.

Decisions where OpenWrt's script is not usable as is:

- No ``root=`` on the command line (not a device booted by this chain, e.g. a developer's host): nothing
  is compared and nothing is said. A ``root=`` naming no disk found here prints OpenWrt's ``Unable to
  determine upgrade device`` but, unlike OpenWrt, does not fail the image: stage2 finds the boot disk
  again and refuses cleanly, before writing anything, when it cannot.
- A boot disk whose table cannot be read or lacks the 55AA signature prints ``Invalid partition table
  on <disk>`` and counts as a changed layout (a full write does not need it). OpenWrt's ``exit`` there
  ends the validator without a verdict.
- An image whose boot sector lacks the 55AA signature prints ``Invalid partition table on <image>`` and
  is invalid (status 1, forceable): it could not boot. An image map with no partition counts as changed
  (OpenWrt's ``grep -v -f`` finds no difference in an empty map).
- The map files are left in place (OpenWrt removes them after comparing and ``platform_do_upgrade``
  writes them again).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from sysupgrade import paths
from wrtcore import cmdline, partitions

Say = Callable[[str], None]

MAGIC_WORDS = ("eb48", "eb63")
SECTOR = 512
HEAD_SECTORS = 63  # get_image_dd "$1" of=/tmp/image.bs count=63 bs=512b
PARTMAP_BOOTDISK = "/tmp/partmap.bootdisk"
PARTMAP_IMAGE = "/tmp/partmap.image"
TEST_PARTITION_LAYOUT = "x86_partition_layout"
STATUS_OK = 0
STATUS_INVALID = 1

MBR_SIGNATURE = b"\x55\xaa"
GPT_MAGIC = b"EFI PART"
GPT_ENTRIES = 0x400  # get_partitions assumes the entry array at LBA 2, 128 bytes an entry
GPT_ENTRY_SIZE = 0x80
GPT_MAX_ENTRIES = 15
# MBR: disk signature - partition number
MBR_PARTUUID = re.compile(r"partuuid=([0-9a-f]{8})-[0-9a-f]{2}")
# GPT: the partition GUIDs are the disk GUID with the partition number as last byte
GPT_PARTUUID = re.compile(
    r"partuuid=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{10})[0-9a-f]{2}")
DISK_SIGNATURE_OFFSET = 440  # MBR disk signature, little-endian
GPT_DISK_GUID_OFFSET = 568  # disk GUID in the GPT header at LBA 1


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # sectors
    size: int  # sectors

    def line(self) -> str:
        return f"{self.number:2d} {self.start:5d} {self.size:7d}"


@dataclass(frozen=True)
class Result:
    """What ``platform_check_image`` returned, and the layout comparison when it was made."""

    status: int  # 0 ok, 1 invalid
    layout_unchanged: bool | None = None  # None: not compared


class PartitionTableError(ValueError):
    pass


# --- partition maps ------------------------------------------------------------------------------


def read_head(path: str) -> bytes:
    """The first 63 sectors of a disk or image (fewer if it is shorter)."""
    with open(path, "rb") as f:
        return f.read(HEAD_SECTORS * SECTOR)


def partition_map(head: bytes) -> list[Partition]:
    """``get_partitions``: the GPT entries (1-15) or the MBR entries (1-4) of a disk's first sectors."""
    if head[510:512] != MBR_SIGNATURE:
        raise PartitionTableError("no 55AA signature")
    found: list[Partition] = []
    if head[SECTOR : SECTOR + len(GPT_MAGIC)] == GPT_MAGIC:
        table = head.ljust(GPT_ENTRIES + GPT_MAX_ENTRIES * GPT_ENTRY_SIZE, b"\0")
        for number in range(1, GPT_MAX_ENTRIES + 1):
            entry = GPT_ENTRIES + (number - 1) * GPT_ENTRY_SIZE
            if table[entry : entry + 16] == bytes(16):
                continue
            first, last = struct.unpack_from("<QQ", table, entry + 32)
            found.append(Partition(number, first, last - first + 1))
    else:
        for number in range(1, 5):
            entry = 446 + (number - 1) * 16
            ptype = head[entry + 4]
            start, size = struct.unpack_from("<II", head, entry + 8)
            if ptype > 0:
                found.append(Partition(number, start, size))
    return found


def format_map(parts: Iterable[Partition]) -> str:
    return "".join(part.line() + "\n" for part in parts)


def layout_changed(bootdisk: list[Partition], image: list[Partition]) -> bool:
    """``grep -F -x -v -f partmap.bootdisk partmap.image`` is not empty: an image partition is new or
    has moved or changed size."""
    known = {part.line() for part in bootdisk}
    return not image or any(part.line() not in known for part in image)


def magic_word(image: str) -> str:
    """``get_magic_word``: the first two bytes as four hex digits ("" if shorter)."""
    with open(image, "rb") as f:
        head = f.read(2)
    return head.hex() if len(head) == 2 else ""


# --- the boot disk -------------------------------------------------------------------------------


def whole_disks() -> Iterator[str]:
    """Block devices that are not partitions (``/sys/class/block`` entries without ``partition``)."""
    try:
        names = sorted(os.listdir("/sys/class/block"))
    except OSError:
        return
    for name in names:
        if not os.path.exists(f"/sys/class/block/{name}/partition"):
            yield f"/dev/{name}"


def _read_at(path: str, offset: int, length: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    except OSError:
        return b""


def find_boot_disk(root_arg: str, candidates: Iterable[str] | None = None) -> str | None:
    """``export_bootdevice``: the disk holding the ``root=`` partition, or None.

    ``candidates`` are the disks searched for a ``PARTUUID=`` (default: every whole disk).
    """
    if root_arg.startswith("/"):
        try:
            return partitions.disk_of(root_arg)
        except OSError:
            return None
    value = root_arg.lower()
    mbr = MBR_PARTUUID.fullmatch(value)
    gpt = GPT_PARTUUID.fullmatch(value)
    if not mbr and not gpt:
        return None
    for disk in whole_disks() if candidates is None else candidates:
        if mbr:
            raw = _read_at(disk, DISK_SIGNATURE_OFFSET, 4)
            if len(raw) == 4 and f"{struct.unpack('<I', raw)[0]:08x}" == mbr[1]:
                return disk
        elif gpt:
            raw = _read_at(disk, GPT_DISK_GUID_OFFSET, 16)
            if len(raw) == 16 and str(uuid.UUID(bytes_le=raw)) == gpt[1] + "00":
                return disk
    return None


def _cmdline_root(env: Mapping[str, str]) -> str:
    """``root=`` of ``$WRT_CMDLINE`` (the sandbox's command line) or of /proc/cmdline; "" when absent."""
    return cmdline.read(env).get("root", "")


# --- the check -----------------------------------------------------------------------------------


def _write_map(root: str, system_path: str, parts: list[Partition]) -> None:
    path = paths.rooted(system_path, root)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(format_map(parts))


def compare_layout(image: str, disk: str, *, root: str, say: Say) -> bool | None:
    """Partition maps of ``disk`` and ``image`` compared: True unchanged, False changed, None when the
    image has no partition table (an invalid image)."""
    say("Reading partition table from bootdisk...")
    bootdisk: list[Partition] | None = None
    try:
        bootdisk = partition_map(read_head(disk))
    except (OSError, PartitionTableError):
        say(f"Invalid partition table on {disk}")
    else:
        _write_map(root, PARTMAP_BOOTDISK, bootdisk)

    say("Extract boot sector from the image")
    say("Reading partition table from image...")
    try:
        image_map = partition_map(read_head(image))
    except (OSError, PartitionTableError):
        say(f"Invalid partition table on {image}")
        return None
    _write_map(root, PARTMAP_IMAGE, image_map)

    if bootdisk is None or layout_changed(bootdisk, image_map):
        say("Partition layout has changed. Full image will be written.")
        return False
    return True


def check_image(image: str, *, root: str, env: Mapping[str, str], say: Say,
                disk: str | None = None) -> Result:
    """x86 ``platform_check_image``. ``disk`` overrides the boot disk found from the command line."""
    try:
        magic = magic_word(image)
    except OSError as exc:
        say(f"Cannot read image {image}: {exc.strerror or exc}")
        return Result(STATUS_INVALID)
    if magic not in MAGIC_WORDS:
        say("Invalid image type")
        return Result(STATUS_INVALID)

    if disk is None:
        root_arg = _cmdline_root(env)
        if not root_arg:
            return Result(STATUS_OK)
        disk = find_boot_disk(root_arg)
        if disk is None:
            say("Unable to determine upgrade device")
            return Result(STATUS_OK)

    unchanged = compare_layout(image, disk, root=root, say=say)
    if unchanged is None:
        return Result(STATUS_INVALID)
    return Result(STATUS_OK, unchanged)
