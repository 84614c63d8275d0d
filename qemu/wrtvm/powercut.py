"""What a power cut during an x86 upgrade leaves behind, decided from the image's layout and how far the
write got. Pure, apart from the two readers at the end (the image's layout, a comparison of
disk and image). A cut before the squashfs is whole is never a mix of two roots: the writer holds
the squashfs's first 4 KiB (its superblock) back, zeros in their place, and writes them once the chunk
holding the squashfs's last byte is on the disk (``stage2.writers.roothead``).

The x86 image is written in one sequential pass of 1 MiB chunks (``stage2.writers.block``): partition
by partition when the layout is unchanged (the tests' images: boot partition, then the root partition:
squashfs root, zeros over rootfs_data's place), else the whole disk from the MBR on; each part read
back; then the config archive into the new boot partition, the report. ``written``: how far the write
got, in bytes from the disk's start (the tests know it by construction and check the
disk against the images on the host). Bytes that are equal in the old and new image cannot tell.

Stage2's in-progress records (``stage2.report``) say on the next boot how far the upgrade got: saved
before the write in the old boot partition and the old overlay, in the new boot partition once it is
written, and again once everything is verified; ``Expected.report_state``/``report_written`` are what
the next boot's ``interrupted`` report says (``preinit.lastupgrade``). The
kernel and its command line come from QEMU here (``-kernel``), not from the boot partition: on real x86
hardware GRUB reads the boot partition, so a cut inside it may also leave a board that does not boot.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from pathlib import Path

from stage2.formats import fwtool
from wrtcore import blockdev

EXT4_SUPERBLOCK_END = 2048  # the overlay's ext4 superblock: bytes 1024..2047 of rootfs_data


class Region(enum.Enum):
    BOOT = "MBR and boot partition"  # the old root is untouched
    ROOT = "squashfs root"  # its head still zeros: written last, after the squashfs's end
    ROOT_END = "end of the squashfs, before the overlay's superblock"
    DATA = "rootfs_data (zeros over the old overlay)"
    DONE = "all written (verify, config archive, report)"


class Outcome(enum.Enum):
    OLD_BOOTS = "old firmware boots"
    NEW_BOOTS = "new firmware boots"
    BRICKED = "bricked (needs recovery)"


@dataclass(frozen=True)
class Layout:
    """Byte offsets in the disk of the new image's parts."""

    boot_start: int
    root_start: int
    squashfs_end: int
    data_start: int  # rootfs_data: the first 64 KiB boundary after the squashfs
    payload: int  # bytes the flash writes (the image without its fwtool trailer)
    chunk: int = 1 << 20  # the writer's chunk, counted from the root partition's start

    @property
    def head_written(self) -> int:
        """The end of the chunk holding the squashfs's last byte: the root's head is written after it."""
        return self.root_start + -(-(self.squashfs_end - self.root_start) // self.chunk) * self.chunk


@dataclass(frozen=True)
class Expected:
    region: Region
    outcome: Outcome
    config: str  # what the next boot's configuration is
    report: str  # what the next boot shows about the interrupted upgrade
    report_state: str | None = None  # the interrupted report's failed_state (None: no report, no boot)
    report_written: str | None = None  # ... and how much it says was written: nothing | partly | all


def region_of(layout: Layout, written: int) -> Region:
    if written < layout.root_start:
        return Region.BOOT
    if written < layout.head_written:
        return Region.ROOT
    if written < layout.data_start + EXT4_SUPERBLOCK_END:
        return Region.ROOT_END
    if written < layout.payload:
        return Region.DATA
    return Region.DONE


NOTHING = "interrupted in releasing_root, nothing written (the old boot partition kept its record)"
BEGUN = ("interrupted in flashing, partly written (the old overlay's record; the boot partition's was "
         "overwritten)")
PARTLY = "interrupted in flashing, partly written (the new boot partition's record)"

# the cut before the first byte (pivoted, the old root being released): as a cut in the boot partition,
# but the old boot partition still holds the record
BEFORE_WRITE = Expected(Region.BOOT, Outcome.OLD_BOOTS, "as before the upgrade (the overlay is untouched)",
                        NOTHING, "releasing_root", "nothing")
EXPECTED: dict[Region, Expected] = {
    Region.BOOT: Expected(Region.BOOT, Outcome.OLD_BOOTS, "as before the upgrade (the overlay is untouched)",
                          BEGUN, "flashing", "partly"),
    Region.ROOT: Expected(Region.ROOT, Outcome.BRICKED,
                          "none: the root does not mount, its superblock is zeros (the initramfs says so "
                          "and starts a rescue shell)",
                          "none: nothing boots; recovery is a reflash from outside"),
    Region.ROOT_END: Expected(Region.ROOT_END, Outcome.NEW_BOOTS,
                              "the old overlay if its superblock is still there at the same offset, "
                              "else defaults", PARTLY, "flashing", "partly"),
    Region.DATA: Expected(Region.DATA, Outcome.NEW_BOOTS,
                          "defaults (rootfs_data's start is zeroed: preinit formats it; the config "
                          "archive is saved only after the verify)", PARTLY, "flashing", "partly"),
    Region.DONE: Expected(Region.DONE, Outcome.NEW_BOOTS,
                          "restored if the config archive's rename reached the disk, else defaults "
                          "(written to .new, fsync'd, renamed: never a partial archive)",
                          "interrupted in saving_config, all written (the record saved after the verify)",
                          "saving_config", "all"),
}


def expected(layout: Layout, written: int) -> Expected:
    return EXPECTED[region_of(layout, written)]


def cut_sector(layout: Layout, fraction: float, chunk: int = 1 << 20) -> int:
    """The sector (512 bytes) whose write the cut at ``fraction`` of the write stops: the last one of
    the writer's chunk that ends at or before that point. With blkdebug failing it and ``werror=stop``,
    the VM freezes while that chunk is in flight and before the next one is issued: nothing at or after
    the chunk boundary is written, whatever the harness's latency."""
    boundary = int(layout.payload * fraction) // chunk * chunk
    if boundary < chunk:
        raise ValueError(f"no chunk boundary before {fraction:.0%} of {layout.payload} bytes")
    return boundary // 512 - 1


# -- readers -------------------------------------------------------------------------------------------
def layout_of(image: Path) -> Layout:
    """The layout of an x86 combined image: partition 2 from its MBR, the squashfs size from its
    superblock, the payload from the fwtool trailer."""
    with open(image, "rb") as f:
        mbr = f.read(512)
        if mbr[510:512] != b"\x55\xaa":
            raise ValueError(f"{image}: no MBR")
        boot_start, root_start = (struct.unpack_from("<I", mbr, 446 + 16 * i + 8)[0] * 512 for i in (0, 1))
        f.seek(root_start)
        sb = f.read(96)
    if sb[:4] != b"hsqs":
        raise ValueError(f"{image}: no squashfs at partition 2 ({root_start})")
    used = struct.unpack_from("<Q", sb, 40)[0]
    return Layout(boot_start=boot_start, root_start=root_start, squashfs_end=root_start + used,
                  data_start=root_start + blockdev.overlay_offset(used), payload=fwtool.payload_length(image))


def read(disk: Path, start: int, length: int) -> bytes:
    with open(disk, "rb") as f:
        f.seek(start)
        return f.read(length)


def same_bytes(disk: Path, image: Path, start: int, end: int, block: int = 1 << 20) -> bool:
    """Whether ``disk`` holds the bytes of ``image`` in [start, end) (both at the same offsets)."""
    with open(disk, "rb") as d, open(image, "rb") as i:
        d.seek(start)
        i.seek(start)
        pos = start
        while pos < end:
            want = min(block, end - pos)
            if d.read(want) != i.read(want):
                return False
            pos += want
    return True
