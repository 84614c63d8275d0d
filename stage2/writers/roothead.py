"""Which bytes of an image the block writer holds back until last: the superblock of its squashfs root.

A squashfs is found by its superblock at the start of the image (a partition written on its own) or at
the start of a partition named by the image's MBR or GPT (a whole disk). The kernel reads a squashfs's
superblock first and its inode, directory, fragment and id tables from the end of the filesystem
(``bytes_used``), so a root rewritten in place is only whole once everything up to ``bytes_used`` is:

* new superblock, old rest: the tables at the end can still be the old image's at the same offsets, and
  the kernel then mounts a mix of the two firmwares (seen in the vm tier with two builds that differ
  in a few files);
* old superblock, new rest: the old tables over new data blocks.

Holding the first ``HEAD`` bytes (zeros go out in their place, see ``stage2.writers.block``) until the
write has passed ``bytes_used`` leaves, after a cut in between, a partition the kernel refuses to
mount: a board that needs recovery either way, but never one that runs half of each firmware.

On NOR flash the same hazard is dealt with per erase block: ``finder_aligned`` finds the squashfs of a
firmware image (the kernel, then the squashfs at an erase block boundary, where OpenWrt's mtdsplit looks
for it; or a bare squashfs at 0) and ``stage2.writers.mtd`` leaves the erase block holding its superblock
erased until the blocks through ``bytes_used`` are written and verified.

Pure: the decisions take bytes; the block writer calls ``finder()``'s result with each chunk, the MTD
writer ``finder_aligned()``'s with each erase block. Light to import (the ``mtd`` command loads it): the
block writer (for ``Held``) and the partition table parser are imported when first needed.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from stage2.writers.block import FindHeld, Held

SQUASHFS_MAGIC = b"hsqs"
SUPERBLOCK = 96  # bytes of a squashfs 4 superblock
BYTES_USED = 40  # offset of the little-endian u64 bytes_used in it
HEAD = 4096  # bytes held: the superblock, in one block of any device's logical size


def squashfs_end(superblock: bytes | memoryview) -> int | None:
    """``bytes_used`` of a squashfs superblock, None if these bytes are not one."""
    if len(superblock) < SUPERBLOCK or bytes(superblock[:4]) != SQUASHFS_MAGIC:
        return None
    used: int = struct.unpack_from("<Q", superblock, BYTES_USED)[0]
    return used if used >= SUPERBLOCK else None


def partition_starts(head: bytes | memoryview) -> list[int]:
    """Byte offsets of the partitions an image's first sectors name (MBR or GPT); none without a table."""
    from sysupgrade.platform_x86 import SECTOR, PartitionTableError, partition_map

    try:
        return sorted(p.start * SECTOR for p in partition_map(bytes(head)))
    except PartitionTableError:
        return []


def held_at(start: int, superblock: bytes | memoryview) -> Held | None:
    """The squashfs head at image offset ``start``, if one is there."""
    used = squashfs_end(superblock)
    if used is None:
        return None
    from stage2.writers.block import Held

    return Held(start, HEAD, start + max(used, HEAD))


def finder(starts: Iterable[int] | None = (0,)) -> FindHeld:
    """A ``hold`` for ``block.write_image``: the first squashfs found at one of ``starts`` (image offsets;
    None: the partitions of the image's own partition table, read from its first chunk)."""
    from sysupgrade.platform_x86 import HEAD_SECTORS, SECTOR

    candidates: list[int] | None = None if starts is None else sorted(starts)

    def find(pos: int, data: memoryview) -> Held | None:
        nonlocal candidates
        if candidates is None:
            candidates = partition_starts(data[:HEAD_SECTORS * SECTOR]) if pos == 0 else []
        for start in candidates:
            if pos <= start and start + SUPERBLOCK <= pos + len(data):
                held = held_at(start, data[start - pos:start - pos + SUPERBLOCK])
                if held is not None:
                    candidates = []
                    return held
        candidates = [s for s in candidates if s + SUPERBLOCK > pos + len(data)]
        return None

    return find


def finder_aligned(block_size: int) -> FindHeld:
    """A ``hold`` for ``mtd.write_flash``: the first squashfs whose superblock starts at an image offset
    that is a multiple of ``block_size`` (the erase size: a NOR firmware's squashfs follows the kernel at
    the next erase block boundary, or is the whole image, at 0). Called with pieces that start at
    multiples of ``block_size`` (the MTD writer's erase blocks), every candidate lies within one piece."""
    if block_size < SUPERBLOCK:
        raise ValueError(f"block size {block_size} is smaller than a squashfs superblock")
    found = False

    def find(pos: int, data: memoryview) -> Held | None:
        nonlocal found
        if found:
            return None
        first = -(-pos // block_size) * block_size
        for start in range(first, pos + len(data) - SUPERBLOCK + 1, block_size):
            held = held_at(start, data[start - pos:start - pos + SUPERBLOCK])
            if held is not None:
                found = True
                return held
        return None

    return find
