"""A file put into the free erase blocks of a jffs2 in use: stage2's report into the old ``rootfs_data``
when an upgrade stops after the pivot with nothing written (NOR boards).

``mtd jffs2write`` appends after the last block that starts with a node and ends with a
``DE AD C0 DE`` block; on a jffs2 the kernel has been writing, live blocks can follow a free one (its
garbage collector reuses blocks anywhere), and the end marker makes the next boot erase everything after
it. Here every block is scanned (every node, obsolete ones too, so that the new inode and versions are
above all on the flash), the file's blocks go only into blocks that hold nothing (erased, or a clean
marker alone), and no end marker is written: the kernel sees blocks partly used, as it leaves them
itself. A dirent with a name that exists already supersedes the old one (its version is higher), so
the new file replaces a file of the same name.

Only for a jffs2 that nobody has mounted read-write: the caller checks.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NamedTuple

from stage2.formats import jffs2
from stage2.writers.mtd import read_config
from stage2.writers.mtdblocks import MtdError, Programmer

if TYPE_CHECKING:
    from stage2.writers.mtdblocks import Flash


class Placed(NamedTuple):
    offsets: tuple[int, ...]  # the erase blocks written, in file order
    ino: int  # the file's inode number


def _free(block: bytes | bytearray, marker: bytes) -> bool:
    """Nothing in it: erased, or a clean marker followed by erased bytes."""
    rest = memoryview(block)[len(marker):] if block.startswith(marker) else memoryview(block)
    return rest.tobytes().count(0xFF) == len(rest)


def add_file(path: str, flash: Flash, *, name: str = "", endian: jffs2.Endian = sys.byteorder) -> Placed:
    """Put the file ``path`` into the root directory of the jffs2 on ``flash`` (its basename), into free
    erase blocks. ``MtdError`` when the flash holds no jffs2 of this byte order, when there are not
    enough free blocks (nothing written then), or when a block fails (its offset)."""
    size = flash.info.erasesize
    block = bytearray(size)
    marker = jffs2.clean_marker(endian)
    numbers = jffs2.Numbers(target_ino=jffs2.ROOT_INO)
    free: list[int] = []
    first = True
    for pos in range(0, flash.info.size - size + 1, size):
        if flash.info.nand and flash.is_bad(pos):
            continue
        try:
            flash.read(pos, block)
        except OSError as exc:
            raise MtdError(f"read failed: {exc.strerror}", offset=pos, written=False) from exc
        if _free(block, marker):
            free.append(pos)
        elif jffs2.node_magic(block, endian) == jffs2.MAGIC:
            jffs2.scan_block(block, numbers, endian=endian, every_node=True)
        elif first:
            raise MtdError(f"{name or 'the device'} does not start with a jffs2 node of this byte order",
                           offset=pos, written=False)
        first = False
    numbers.last_version += 1  # the dirent takes this one: above a same-named one's (OpenWrt's could tie)
    meta, data = read_config(path)
    if meta is None:
        raise MtdError(f"cannot read {path}", offset=0, written=False)
    blocks = jffs2.append_blocks(meta, data, size, numbers, endian=endian, end_marker=False)
    if len(blocks) > len(free):
        raise MtdError(f"no room: {len(blocks)} free erase blocks needed, {len(free)} found", offset=0,
                       written=False)
    put = Programmer(flash, name, flash.info.size, skip_bad=False)
    for b, pos in zip(blocks, free, strict=False):
        put.block(b, pos)
    return Placed(tuple(free[:len(blocks)]), numbers.last_ino - 1)
