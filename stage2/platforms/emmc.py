"""eMMC (and other GPT block devices): what goes where, as OpenWrt's ``emmc.sh`` (reference 5.5).

The image is the sysupgrade tar NAND boards take (``sysupgrade-<board>/CONTROL``, ``kernel``, ``root``,
optional ``dtb``; ``stage2.formats.nand_tar``). ``emmc_do_upgrade`` writes its members to the GPT
partitions found by name (``find_mmc_part``): ``root`` to ``CI_ROOTPART`` (``rootfs``), ``kernel`` to
``CI_KERNPART`` (``kernel``); while the root is rewritten the kernel partition's first 4 KiB are zeroed,
so a cut leaves a board that does not boot the new kernel over a half-written root. The bytes of
``root`` rounded up to 64 KiB (128 sectors, libfstools' ``ROOTDEV_OVERLAY_ALIGN``) are where the
overlay starts; with a GPT partition named ``CI_DATAPART`` (``rootfs_data``) it starts at that
partition's offset 0 instead. ``emmc_copy_config`` writes the gzip'd archive there raw; without a
backup the first 4 KiB there are zeroed (the old overlay must not survive). The ``dtb`` member is not
written (current OpenWrt does not either).

Unlike OpenWrt: a tar without ``root`` is refused (OpenWrt would write the kernel alone and put the
config after it), and every member must fit its partition before anything is written.

The boot side (preinit) recognises the archive by its gzip magic at that offset (fstools' ``FS_TARGZ``),
extracts it, then formats the overlay. Both sides compute the offset with ``overlay_offset``.

Unlike OpenWrt, the final upgrade report is kept too: a raw record in the last 256 KiB of the overlay
area (``stage2.formats.report_record``), which preinit takes before it formats the overlay.

Pure, standard library only: ``parse_gpt`` reads a partition table from bytes, ``plan_emmc`` decides;
``stage2.platforms.emmc_write`` finds the devices and writes. preinit imports it to find a GPT
``rootfs_data`` partition (``preinit.rootfs_data.find_gpt``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from stage2.formats import report_record
from wrtcore.errors import InvalidInput

if TYPE_CHECKING:  # preinit reads the GPT with this module: it must not pull in the tar reader
    from stage2.formats.nand_tar import SysupgradeTar

ALIGN = 64 * 1024  # ROOTDEV_OVERLAY_ALIGN: 128 sectors
WIPE_BYTES = 8 * 512  # 8 sectors zeroed: the kernel's head while the root is written, the overlay's start
GZIP_MAGIC = b"\x1f\x8b"
SECTOR = 512
GPT_MAGIC = b"EFI PART"
GPT_MAX_ENTRIES_BYTES = 1 << 20  # a sane bound on the entry array (128 entries of 128 bytes: 16 KiB)


def overlay_offset(rootfs_bytes: int, align: int = ALIGN) -> int:
    """The overlay's byte offset in the rootfs partition: the root image's size rounded up to 64 KiB."""
    if rootfs_bytes < 0:
        raise ValueError(f"negative rootfs size {rootfs_bytes}")
    return -(-rootfs_bytes // align) * align


def is_config_archive(head: bytes) -> bool:
    """The overlay start holds a configuration archive written by ``emmc_copy_config`` (gzip)."""
    return head.startswith(GZIP_MAGIC)


# --- the GPT, by name ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GptPartition:
    number: int
    name: str  # PARTNAME, the UTF-16LE name in the entry
    start: int  # bytes
    size: int  # bytes


def gpt_entries_extent(lba1: bytes, sector: int = SECTOR) -> tuple[int, int, int]:
    """(byte offset, count, size of one) of the entry array a GPT header (LBA 1) names; ValueError if
    these bytes are no GPT header."""
    if lba1[:8] != GPT_MAGIC or len(lba1) < 92:
        raise ValueError("no GPT header at LBA 1")
    entries_lba, count, size = struct.unpack_from("<QII", lba1, 72)
    if size < 128 or count * size > GPT_MAX_ENTRIES_BYTES:
        raise ValueError(f"GPT entry array of {count} x {size} bytes is not plausible")
    return entries_lba * sector, count, size


def parse_gpt(entries: bytes, count: int, size: int, sector: int = SECTOR) -> list[GptPartition]:
    """The used entries of a GPT entry array (numbered from 1)."""
    found: list[GptPartition] = []
    for index in range(min(count, len(entries) // size)):
        raw = entries[index * size:(index + 1) * size]
        if raw[:16] == bytes(16):  # unused: no partition type
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        found.append(GptPartition(index + 1, name, first * sector, (last - first + 1) * sector))
    return found


# --- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A partition as stage2 writes it: its device node (kernel partition or loop view) and size."""

    device: str
    size: int


@dataclass(frozen=True)
class MemberWrite:
    member: str  # path in the tar
    size: int
    partition: str  # GPT name
    device: str


@dataclass(frozen=True)
class Overlay:
    partition: str  # GPT name
    device: str
    offset: int  # bytes into the partition
    room: int  # bytes from offset to the partition's end


@dataclass(frozen=True)
class EmmcPlan:
    tar: str
    board_dir: str
    root: MemberWrite
    kernel: MemberWrite | None
    overlay: Overlay
    backup_size: int | None  # the config archive written at the overlay start; None: 4 KiB zeroed
    dtb_ignored: bool = False

    @property
    def total(self) -> int:
        """Image bytes written (root and kernel)."""
        return self.root.size + (self.kernel.size if self.kernel else 0)

    @property
    def devices(self) -> frozenset[str]:
        """The partition devices written (loop views among them must outlive the release)."""
        kernel = (self.kernel.device,) if self.kernel else ()
        return frozenset((self.root.device, self.overlay.device, *kernel))

    def describe(self) -> list[str]:
        lines: list[str] = []
        if self.kernel:
            lines.append(f"zero the first {WIPE_BYTES} bytes of {self.kernel.partition} "
                         f"({self.kernel.device}) while the root is written")
        for w in (self.root, self.kernel):
            if w:
                lines.append(f"write {w.member} ({w.size} bytes) to {w.partition} ({w.device}), "
                             "read back and compared" + (", squashfs superblock last" if w is self.root
                                                         else ""))
        where = f"{self.overlay.partition} ({self.overlay.device}) at offset {self.overlay.offset}"
        if self.backup_size is None:
            lines.append(f"overlay start {where}: {WIPE_BYTES} bytes zeroed (no configuration kept)")
        else:
            lines.append(f"overlay start {where}: the configuration archive ({self.backup_size} bytes) "
                         "raw, read back and compared")
        at = report_record.slot_offset(self.overlay.room, max(self.backup_size or 0, WIPE_BYTES))
        lines.append(f"the upgrade report: a raw record at offset {self.overlay.offset + at} of "
                     f"{self.overlay.partition} (the overlay area's last {report_record.SLOT} bytes), "
                     "read back and compared" if at is not None
                     else "the upgrade report: no room for its record (not kept)")
        if self.dtb_ignored:
            lines.append(f"{self.board_dir}/dtb not written (as OpenWrt's emmc.sh)")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmmcPlan:
        kernel = data.get("kernel")
        return cls(**{**data, "root": MemberWrite(**data["root"]),
                      "kernel": MemberWrite(**kernel) if kernel else None,
                      "overlay": Overlay(**data["overlay"])})


def plan_emmc(index: SysupgradeTar, parts: Mapping[str, Part], *, kernpart: str = "kernel",
              rootpart: str = "rootfs", datapart: str = "rootfs_data",
              backup_size: int | None = None) -> EmmcPlan:
    """What ``emmc_do_upgrade`` and ``emmc_copy_config`` write where. ``parts``: the disk's partitions by
    GPT name. Raises ``InvalidInput`` (nothing written) for a tar this board cannot take."""
    if index.root is None:
        raise InvalidInput(f"{index.path}: {index.board_dir}/ has no root", hint="nothing was written")
    if rootpart not in parts:
        raise InvalidInput(f"no GPT partition named {rootpart} (CI_ROOTPART)", hint="nothing was written")
    root_part = parts[rootpart]

    def fits(size: int, name: str, part: Part, what: str) -> None:
        if size > part.size:
            raise InvalidInput(f"{what} ({size} bytes) does not fit partition {name} ({part.size} bytes)",
                               hint="nothing was written")

    fits(index.root.size, rootpart, root_part, index.root.name)
    kernel: MemberWrite | None = None
    if index.kernel is not None:
        if kernpart not in parts:
            raise InvalidInput(f"no GPT partition named {kernpart} (CI_KERNPART)",
                               hint="nothing was written")
        fits(index.kernel.size, kernpart, parts[kernpart], index.kernel.name)
        kernel = MemberWrite(index.kernel.name, index.kernel.size, kernpart, parts[kernpart].device)
    if datapart in parts:
        overlay = Overlay(datapart, parts[datapart].device, 0, parts[datapart].size)
    else:
        start = overlay_offset(index.root.size)
        overlay = Overlay(rootpart, root_part.device, start, max(root_part.size - start, 0))
    fits(max(backup_size or 0, WIPE_BYTES), f"{overlay.partition} after offset {overlay.offset}",
         Part(overlay.device, overlay.room), "the overlay start" if backup_size is None
         else "the configuration archive")
    return EmmcPlan(tar=index.path, board_dir=index.board_dir,
                    root=MemberWrite(index.root.name, index.root.size, rootpart, root_part.device),
                    kernel=kernel, overlay=overlay, backup_size=backup_size,
                    dtb_ignored=index.dtb is not None)
