"""The jffs2 erase blocks that OpenWrt's ``mtd -j`` and ``mtd jffs2write`` write (reference 6.2-6.4).

Pure: bytes in, erase blocks out. ``config_blocks`` is what ``mtd -j <file>`` puts at the first erase
block of the image that starts ``DE AD C0 DE``: a clean marker at the start of every block, the dirent of
the file in the root directory, raw inode (data) nodes of at most 4096 bytes that never cross a block,
0xFF padding, and one end-of-filesystem block (``DE AD C0 DE``, then 0xFF). ``append_blocks`` is
``jffs2write``: the same after an existing jffs2, optionally in a directory of the root (created when
missing). ``scan_block`` reads an existing jffs2 erase block for the highest inode and version numbers,
as the tool does before appending.

Layout decisions follow OpenWrt's generator exactly, quirks included: the dirent takes version 0 (then
1 is skipped: data nodes are 2, 3, ...), the inode number is ``last_ino + 1`` and the counter ends one
higher, a block whose free room after a node is at most 128 bytes is closed (so a file ending there
leaves a block holding only a clean marker). Fields are in the target CPU's byte order (``endian``).
All CRCs are jffs2's: reflected CRC-32, initial value 0, no final XOR.

Runs after the pivot: standard library only.
"""

from __future__ import annotations

import stat
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Endian = Literal["little", "big"]

MAGIC = 0x1985
NODETYPE_DIRENT = 0xE001  # INCOMPAT | ACCURATE | 1
NODETYPE_INODE = 0xE002  # INCOMPAT | ACCURATE | 2
NODETYPE_CLEANMARKER = 0x2003  # RWCOMPAT_DELETE | ACCURATE | 3
NODE_ACCURATE = 0x2000  # cleared on NOR to obsolete a node in place
EOF_MARKER = b"\xde\xad\xc0\xde"  # a byte sequence, the same for both byte orders
DT_DIR = 4
DT_REG = 8
DIRENT_SIZE = 40
INODE_SIZE = 68
MAX_DATA = 4096  # data bytes per node
MIN_ROOM = 128  # a node needs more than this many data bytes of room, or the block is closed
ROOT_INO = 1

NATIVE: Endian = "little" if sys.byteorder == "little" else "big"


def crc32(data: bytes | bytearray | memoryview) -> int:
    """jffs2's CRC-32: initial value 0, no final XOR (zlib's CRC pre- and post-inverts)."""
    return zlib.crc32(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def _fmt(endian: Endian) -> str:
    return "<" if endian == "little" else ">"


def clean_marker(endian: Endian = NATIVE) -> bytes:
    head = struct.pack(_fmt(endian) + "HHI", MAGIC, NODETYPE_CLEANMARKER, 12)
    return head + struct.pack(_fmt(endian) + "I", crc32(head))


def node_magic(block: bytes | bytearray | memoryview, endian: Endian = NATIVE) -> int:
    """The first 16-bit word read in ``endian`` order: 0x1985 for jffs2 of this byte order, 0x8519 for the
    other one."""
    return int(struct.unpack_from(_fmt(endian) + "H", block, 0)[0])


@dataclass(frozen=True)
class FileMeta:
    """What the generator takes from ``stat`` of the file it appends."""

    name: str  # the basename stored in the dirent
    mode: int
    size: int
    atime: int
    mtime: int
    ctime: int


@dataclass
class Numbers:
    """The generator's counters, carried across the blocks it scans and writes (OpenWrt's statics)."""

    last_ino: int = 0
    last_version: int = 0
    target_ino: int = 0  # the inode of the directory the file goes in; 0: not found yet


def scan_block(block: bytes | bytearray | memoryview, numbers: Numbers, directory: str = "",
               endian: Endian = NATIVE, *, every_node: bool = False) -> None:
    """Learn the highest inode and version of the dirents in one erase block of an existing jffs2, and the
    inode of ``directory`` (a dirent under the root whose name is a prefix of it, as OpenWrt compares).
    ``every_node``: also the inode nodes and the obsolete nodes, which OpenWrt's counters leave out; a
    jffs2 the kernel wrote (files deleted, nodes superseded) needs them to keep a new inode unique."""
    f = _fmt(endian)
    ofs = 0
    while ofs + 12 <= len(block):
        magic, nodetype, totlen = struct.unpack_from(f + "HHI", block, ofs)
        if magic != MAGIC or totlen < 12:
            break
        if every_node:
            nodetype |= NODE_ACCURATE
            if nodetype == NODETYPE_INODE and ofs + INODE_SIZE <= len(block):
                ino, version = struct.unpack_from(f + "II", block, ofs + 12)
                numbers.last_ino = max(numbers.last_ino, ino)
                numbers.last_version = max(numbers.last_version, version)
        if nodetype == NODETYPE_DIRENT and ofs + DIRENT_SIZE <= len(block):
            pino, version, ino, _mctime, nsize = struct.unpack_from(f + "IIIIB", block, ofs + 12)
            name = bytes(block[ofs + DIRENT_SIZE:ofs + DIRENT_SIZE + nsize])
            if directory and pino == ROOT_INO and directory.encode()[:nsize] == name:
                numbers.target_ino = ino
            numbers.last_ino = max(numbers.last_ino, ino)
            numbers.last_version = max(numbers.last_version, version)
        ofs += (totlen + 3) & ~3


class _Builder:
    """OpenWrt's block buffer: nodes are added at ``ofs``; a full block goes to ``emit``."""

    def __init__(self, erasesize: int, endian: Endian, numbers: Numbers,
                 emit: Callable[[bytes], None]) -> None:
        if erasesize < 512 or erasesize % 4:
            raise ValueError(f"erase size {erasesize} too small for jffs2")
        self.size = erasesize
        self.fmt = _fmt(endian)
        self.numbers = numbers
        self.emit = emit
        self.buf = bytearray(b"\xff" * erasesize)
        self.ofs = 0
        self.marker = clean_marker(endian)

    def rbytes(self) -> int:
        return self.size - self.ofs % self.size

    def pad(self, size: int) -> None:
        if self.ofs % size == 0 and self.ofs < self.size:
            return
        if self.ofs < self.size:
            fill = size - self.ofs % size
            self.buf[self.ofs:self.ofs + fill] = b"\xff" * fill
            self.ofs += fill
        self.ofs %= self.size
        if self.ofs == 0:
            self.emit(bytes(self.buf))

    def add(self, data: bytes | memoryview) -> None:
        if self.ofs + len(data) > self.size:
            self.pad(self.size)
            self.prep()
        self.buf[self.ofs:self.ofs + len(data)] = data
        self.ofs += len(data)

    def prep(self) -> None:
        if self.ofs == 0:
            self.add(self.marker)

    def dirent(self, name: bytes, dtype: int, parent: int) -> int:
        n = self.numbers
        # OpenWrt closes the block only when it is exactly full; a dirent that would not fit (which C
        # would write past its buffer) also starts a new block here.
        if self.ofs == self.size or self.ofs + DIRENT_SIZE + len(name) > self.size:
            self.pad(self.size)
        self.prep()
        n.last_ino += 1
        ino = n.last_ino
        n.last_ino += 1
        version = n.last_version
        n.last_version += 1
        head = struct.pack(self.fmt + "HHI", MAGIC, NODETYPE_DIRENT, DIRENT_SIZE + len(name))
        body = head + struct.pack(self.fmt + "IIIIIBBH", crc32(head), parent, version, ino, 0, len(name),
                                  dtype, 0)
        node = body + struct.pack(self.fmt + "II", crc32(body), crc32(name)) + name
        self.add(node)
        self.pad(4)
        return ino

    def inode(self, ino: int, version: int, meta: FileMeta | None, offset: int, data: bytes) -> bytes:
        head = struct.pack(self.fmt + "HHI", MAGIC, NODETYPE_INODE, INODE_SIZE + len(data))
        if meta is None:  # a directory's inode: everything zero but the mode
            mode, size, atime, mtime, ctime = stat.S_IFDIR | 0o755, 0, 0, 0, 0
        else:
            mode, size, atime, mtime, ctime = meta.mode, meta.size, meta.atime, meta.mtime, meta.ctime
        body = head + struct.pack(self.fmt + "IIIIHHIIIIIIIBBH", crc32(head), ino, version, mode, 0, 0,
                                  size & 0xFFFFFFFF, atime & 0xFFFFFFFF, mtime & 0xFFFFFFFF,
                                  ctime & 0xFFFFFFFF, offset, len(data), len(data), 0, 0, 0)
        return body + struct.pack(self.fmt + "II", crc32(data) if data else 0, crc32(body))

    def directory(self, name: str, parent: int) -> int:
        ino = self.dirent(name.encode(), DT_DIR, parent)
        if self.rbytes() < INODE_SIZE:
            self.pad(self.size)
        self.prep()
        self.add(self.inode(ino, 1, None, 0, b""))
        self.pad(4)
        return ino

    def file(self, meta: FileMeta, data: bytes, parent: int) -> None:
        ino = self.dirent(meta.name.encode(), DT_REG, parent)
        done = 0
        while True:
            while (room := self.rbytes() - INODE_SIZE) <= MIN_ROOM:
                self.pad(self.size)
                self.prep()
            piece = data[done:done + min(room, MAX_DATA)]
            if not piece:
                break
            self.numbers.last_version += 1
            self.add(self.inode(ino, self.numbers.last_version, meta, done, piece))
            self.add(piece)
            done += len(piece)
            self.pad(4)
            self.prep()

    def finish(self) -> None:
        """Close the open block, then one end-of-filesystem block."""
        self.pad(self.size)
        self.add(EOF_MARKER)
        self.pad(self.size)


def config_blocks(meta: FileMeta | None, data: bytes, erasesize: int, endian: Endian = NATIVE,
                  numbers: Numbers | None = None) -> list[bytes]:
    """The erase blocks ``mtd -j`` writes at the marker: the file in the root, then the EOF block.
    ``meta`` None (the file could not be read) gives the EOF block alone, as OpenWrt does.
    ``numbers``: counters learnt from jffs2 blocks earlier in the image (``scan_block``)."""
    numbers = numbers if numbers is not None else Numbers()
    blocks: list[bytes] = []
    b = _Builder(erasesize, endian, numbers, blocks.append)
    if not numbers.last_ino:
        numbers.last_ino = 1
    if meta is not None:
        _check(meta, data)
        b.file(meta, data, ROOT_INO)
    b.finish()
    return blocks


def append_blocks(meta: FileMeta | None, data: bytes, erasesize: int, numbers: Numbers,
                  directory: str = "", endian: Endian = NATIVE, *, end_marker: bool = True) -> list[bytes]:
    """The erase blocks ``mtd jffs2write`` writes after an existing jffs2 whose blocks were scanned into
    ``numbers`` (``directory`` is created under the root when the scan did not find it). ``end_marker``
    False leaves the end-of-filesystem block out: the file alone, for a jffs2 in use (blocks after a
    marker are erased on the next boot)."""
    blocks: list[bytes] = []
    b = _Builder(erasesize, endian, numbers, blocks.append)
    if not directory:
        numbers.target_ino = ROOT_INO
    if not numbers.last_ino:
        numbers.last_ino = 1
    if not numbers.target_ino:
        numbers.target_ino = b.directory(directory, ROOT_INO)
    if meta is not None:
        _check(meta, data)
        b.file(meta, data, numbers.target_ino)
    if end_marker:
        b.finish()
    else:
        b.pad(b.size)
    return blocks


def _check(meta: FileMeta, data: bytes) -> None:
    if len(data) != meta.size:
        raise ValueError(f"{meta.name}: {len(data)} bytes read, stat said {meta.size}")
    if not meta.name or "/" in meta.name or len(meta.name.encode()) > 254:
        raise ValueError(f"invalid jffs2 file name {meta.name!r}")
