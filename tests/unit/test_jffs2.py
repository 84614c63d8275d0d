"""The jffs2 blocks of ``mtd -j`` / ``mtd jffs2write``: reference 6.3's worked example byte for byte, both
byte orders, and an independent reader (jefferson) extracting what we wrote."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from stage2.formats import jffs2

E = 64 * 1024
FMT = {"little": "<", "big": ">"}


def ref_crc(data: bytes) -> int:
    """jffs2's CRC written out bit by bit (reflected 0xEDB88320, initial 0, no final XOR): independent of
    the module's zlib trick."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


META = jffs2.FileMeta("sysupgrade.tgz", 0o100644, 10_000, 1_700_000_001, 1_700_000_002, 1_700_000_003)
DATA = bytes((i * 7 + 3) % 251 for i in range(10_000))


@pytest.mark.parametrize("endian", ["little", "big"])
def test_worked_example_byte_for_byte(endian: jffs2.Endian) -> None:
    f = FMT[endian]
    blocks = jffs2.config_blocks(META, DATA, E, endian)
    assert [len(b) for b in blocks] == [E, E]
    b0, b1 = blocks
    # clean marker: the reference's verified bytes
    marker = {"little": "85 19 03 20 0c 00 00 00 b1 b0 1e e4", "big": "19 85 20 03 00 00 00 0c f0 60 dc 98"}
    assert b0[:12] == bytes.fromhex(marker[endian])
    # dirent at 12: 40-byte header + 14-byte name, padded to 56
    magic, ntype, totlen, hcrc, pino, version, ino, mctime, nsize, dtype, unused, ncrc, namecrc = \
        struct.unpack_from(f + "HHIIIIIIBBHII", b0, 12)
    assert (magic, ntype, totlen, pino, version, ino, mctime, nsize, dtype, unused) == \
        (0x1985, 0xE001, 54, 1, 0, 2, 0, 14, 8, 0)
    assert hcrc == ref_crc(b0[12:20])
    assert ncrc == ref_crc(b0[12:44])
    assert namecrc == ref_crc(b"sysupgrade.tgz")
    assert b0[52:66] == b"sysupgrade.tgz"
    assert b0[66:68] == b"\xff\xff"
    # data nodes at 68, 4232, 8396: versions 2, 3, 4; 4096, 4096, 1808 bytes
    expect = [(68, 2, 0, 4096), (4232, 3, 4096, 4096), (8396, 4, 8192, 1808)]
    for at, ver, off, size in expect:
        fields = struct.unpack_from(f + "HHIIIIIHHIIIIIIIBBHII", b0, at)
        (magic, ntype, totlen, hcrc, ino, version, mode, uid, gid, isize, atime, mtime, ctime, offset,
         csize, dsize, compr, ucompr, flags, dcrc, ncrc) = fields
        assert (magic, ntype, totlen, ino, version) == (0x1985, 0xE002, 68 + size, 2, ver)
        assert (mode, uid, gid, isize) == (0o100644, 0, 0, 10_000)
        assert (atime, mtime, ctime) == (1_700_000_001, 1_700_000_002, 1_700_000_003)
        assert (offset, csize, dsize, compr, ucompr, flags) == (off, size, size, 0, 0, 0)
        assert hcrc == ref_crc(b0[at:at + 8])
        assert ncrc == ref_crc(b0[at:at + 60])
        assert b0[at + 68:at + 68 + size] == DATA[off:off + size]
        assert dcrc == ref_crc(DATA[off:off + size])
    assert 8396 + 68 + 1808 == 10272
    assert b0[10272:] == b"\xff" * (E - 10272)
    # EOF block: the marker, then 0xFF, no clean marker
    assert b1 == b"\xde\xad\xc0\xde" + b"\xff" * (E - 4)


def test_byte_orders_differ_only_in_field_order() -> None:
    little = jffs2.config_blocks(META, DATA, E, "little")[0]
    big = jffs2.config_blocks(META, DATA, E, "big")[0]
    assert little != big
    assert little[:2] == b"\x85\x19" and big[:2] == b"\x19\x85"
    assert little[68 + 68:68 + 68 + 4096] == big[68 + 68:68 + 68 + 4096]  # data bytes are not swapped


def test_missing_file_gives_the_eof_block_alone() -> None:
    assert jffs2.config_blocks(None, b"", E) == [b"\xde\xad\xc0\xde" + b"\xff" * (E - 4)]


def test_nodes_never_cross_a_block_and_small_room_closes_it() -> None:
    size = 4096
    data = os.urandom(20_000)
    meta = jffs2.FileMeta("sysupgrade.tgz", 0o100600, len(data), 0, 0, 0)
    blocks = jffs2.config_blocks(meta, data, size, "little")
    assert blocks[-1].startswith(jffs2.EOF_MARKER)
    got = bytearray()
    versions = []
    for i, block in enumerate(blocks[:-1]):
        assert block[:12] == jffs2.clean_marker("little")
        ofs = 12
        while ofs + 12 <= size and block[ofs:ofs + 2] == b"\x85\x19":
            ntype, totlen = struct.unpack_from("<HI", block, ofs + 2)
            assert ofs + totlen <= size
            if ntype == jffs2.NODETYPE_INODE:
                version, = struct.unpack_from("<I", block, ofs + 16)
                offset, csize = struct.unpack_from("<II", block, ofs + 44)
                assert offset == len(got)
                got += block[ofs + 68:ofs + 68 + csize]
                versions.append(version)
            ofs += (totlen + 3) & ~3
        if i < len(blocks) - 2:  # a block before the last is closed only when too little room was left
            assert size - ofs <= 68 + 128
    assert bytes(got) == data
    assert versions == list(range(2, 2 + len(versions)))


def test_scan_learns_numbers_and_append_continues_them() -> None:
    first = jffs2.config_blocks(META, DATA, E, "little")
    numbers = jffs2.Numbers(target_ino=jffs2.ROOT_INO)
    jffs2.scan_block(first[0], numbers, "", "little")
    assert (numbers.last_ino, numbers.last_version) == (2, 0)  # dirents only, as OpenWrt reads them
    meta = jffs2.FileMeta("second.bin", 0o100644, 5, 0, 0, 0)
    more = jffs2.append_blocks(meta, b"hello", E, numbers, "", "little")
    version, ino = struct.unpack_from("<II", more[0], 12 + 16)
    assert (ino, version) == (3, 0)


def test_append_creates_the_directory() -> None:
    numbers = jffs2.Numbers()
    blocks = jffs2.append_blocks(jffs2.FileMeta("a", 0o100644, 1, 0, 0, 0), b"x", E, numbers, "etc", "big")
    b = blocks[0]
    # dirent "etc" (ino 2, DT_DIR) then a directory inode (mode 040755, version 1)
    pino, _v, ino = struct.unpack_from(">III", b, 12 + 12)
    assert (pino, ino, b[12 + 29], b[12 + 40:12 + 43]) == (1, 2, jffs2.DT_DIR, b"etc")
    at = 12 + 44  # 43 padded to 44
    assert struct.unpack_from(">HH", b, at) == (0x1985, jffs2.NODETYPE_INODE)
    assert struct.unpack_from(">III", b, at + 12) == (2, 1, stat.S_IFDIR | 0o755)
    # the file's dirent names the directory as its parent
    at += 68
    assert struct.unpack_from(">I", b, at + 12)[0] == 2


def test_wrong_endianness_is_visible() -> None:
    block = jffs2.config_blocks(META, DATA, E, "big")[0]
    assert jffs2.node_magic(block, "little") == 0x8519
    assert jffs2.node_magic(block, "big") == jffs2.MAGIC


@pytest.mark.parametrize("endian", ["little", "big"])
def test_jefferson_extracts_the_same_file(tmp_path: Path, endian: jffs2.Endian) -> None:
    data = os.urandom(150_000)
    meta = jffs2.FileMeta("sysupgrade.tgz", 0o100644, len(data), 0, 0, 0)
    image = tmp_path / "rootfs_data.jffs2"
    image.write_bytes(b"".join(jffs2.config_blocks(meta, data, E, endian)))
    exe = shutil.which("jefferson", path=os.path.dirname(sys.executable))
    assert exe is not None, "jefferson is a test dependency (pip install -e .[test])"
    out = tmp_path / "out"
    proc = subprocess.run([exe, "-d", str(out), str(image)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (out / "sysupgrade.tgz").read_bytes() == data
