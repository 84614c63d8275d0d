"""A file put into the free erase blocks of a jffs2 in use (``stage2.writers.jffs2_file``), on the
file-backed fake flash, read back by an independent reader (jefferson); and where a flash board's
failure report goes (``stage2.platforms.flash_failure``'s decisions). The kernel's view of the result is
tests/vm/test_flash_failure_report.py."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from stage2.formats import jffs2
from stage2.platforms.flash_failure import Place, jffs2_mount, nor_place, ubi_place, ubifs_mount
from stage2.writers import jffs2_file
from stage2.writers.mtd import MtdError
from tests.unit.test_mtd_writer import E, FakeFlash
from wrtcore import ubi
from wrtcore.mounts import parse_mountinfo

BLOCKS = 8


def _file_blocks(name: str, data: bytes, numbers: jffs2.Numbers) -> list[bytes]:
    meta = jffs2.FileMeta(name, 0o100644, len(data), 0, 0, 0)
    return jffs2.append_blocks(meta, data, E, numbers, endian="little", end_marker=False)


def _obsolete_inode(ino: int, version: int) -> bytes:
    """An inode node the kernel obsoleted in place on NOR (its ACCURATE bit cleared)."""
    b = jffs2._Builder(E, "little", jffs2.Numbers(), lambda _: None)
    node = bytearray(b.inode(ino, version, jffs2.FileMeta("x", 0o100644, 0, 0, 0, 0), 0, b""))
    struct.pack_into("<H", node, 2, jffs2.NODETYPE_INODE & ~jffs2.NODE_ACCURATE)
    return bytes(node)


def _pad(data: bytes) -> bytes:
    return data + b"\xff" * (E - len(data))


@pytest.fixture
def live(tmp_path: Path) -> tuple[FakeFlash, dict[str, bytes]]:
    """A jffs2 as the kernel leaves it: a.txt in block 0, block 1 free, b.txt (high numbers) in block 2,
    block 3 a clean marker alone, block 4 an obsolete inode with the highest inode number, 5-7 erased."""
    flash = FakeFlash(tmp_path / "nor", BLOCKS)
    files = {"a.txt": os.urandom(3000), "b.txt": os.urandom(1000)}
    a = _file_blocks("a.txt", files["a.txt"], jffs2.Numbers())
    b = _file_blocks("b.txt", files["b.txt"], jffs2.Numbers(last_ino=40, last_version=90))
    assert len(a) == len(b) == 1
    marker = jffs2.clean_marker("little")
    image = (a[0] + _pad(b"") + b[0] + _pad(marker) + _pad(marker + _obsolete_inode(77, 300))
             + _pad(b"") * 3)
    os.pwrite(flash.fd, image, 0)
    return flash, files


def _jefferson(image: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "fs.jffs2"
    path.write_bytes(image)
    exe = shutil.which("jefferson", path=os.path.dirname(sys.executable))
    assert exe is not None, "jefferson is a test dependency (pip install -e .[test])"
    out = tmp_path / "out"
    proc = subprocess.run([exe, "-d", str(out), str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_file_goes_into_the_first_free_block_with_numbers_above_all(
        live: tuple[FakeFlash, dict[str, bytes]], tmp_path: Path) -> None:
    flash, files = live
    before = flash.content()
    report = tmp_path / "upgrade-report.json"
    report.write_bytes(b'{"outcome": "aborted"}' + b" " * 5000)
    placed = jffs2_file.add_file(str(report), flash, endian="little")
    after = flash.content()
    assert placed.offsets == (E,)
    assert placed.ino == 78  # above the obsolete inode's 77, which OpenWrt's counters would not see
    assert before[:E] == after[:E] and before[2 * E:] == after[2 * E:]  # nothing else touched
    assert jffs2.EOF_MARKER not in after  # no end marker: the next boot must not erase live blocks
    dirent = after[E + 12:E + 12 + jffs2.DIRENT_SIZE]
    pino, version, ino = struct.unpack_from("<III", dirent, 12)
    assert (pino, ino) == (jffs2.ROOT_INO, 78) and version > 300
    out = _jefferson(after, tmp_path)
    assert (out / "upgrade-report.json").read_bytes() == report.read_bytes()
    for name, data in files.items():
        assert (out / name).read_bytes() == data


def test_a_file_of_several_blocks_skips_the_live_ones(live: tuple[FakeFlash, dict[str, bytes]],
                                                      tmp_path: Path) -> None:
    flash, files = live
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * E))
    placed = jffs2_file.add_file(str(big), flash, endian="little")
    assert placed.offsets == (E, 3 * E, 5 * E)  # free, a clean marker alone, erased; not 2 and 4
    out = _jefferson(flash.content(), tmp_path)
    assert (out / "big.bin").read_bytes() == big.read_bytes()
    assert (out / "b.txt").read_bytes() == files["b.txt"]


def test_no_room_writes_nothing(live: tuple[FakeFlash, dict[str, bytes]], tmp_path: Path) -> None:
    flash, _ = live
    before = flash.content()
    huge = tmp_path / "huge.bin"
    huge.write_bytes(os.urandom(5 * E))
    with pytest.raises(MtdError, match="no room: 6 free erase blocks needed, 5 found") as exc:
        jffs2_file.add_file(str(huge), flash, endian="little")
    assert not exc.value.written
    assert flash.content() == before


def test_not_a_jffs2_writes_nothing(tmp_path: Path) -> None:
    flash = FakeFlash(tmp_path / "nor", BLOCKS)  # 0x5A everywhere
    f = tmp_path / "r.json"
    f.write_bytes(b"{}")
    with pytest.raises(MtdError, match="does not start with a jffs2 node") as exc:
        jffs2_file.add_file(str(f), flash, name="/dev/mtd3", endian="little")
    assert exc.value.offset == 0 and not exc.value.written
    assert flash.content() == bytes([0x5A]) * (BLOCKS * E)


def test_a_failing_block_says_where(live: tuple[FakeFlash, dict[str, bytes]], tmp_path: Path) -> None:
    flash, _ = live
    flash.fail_write.add(E)
    f = tmp_path / "r.json"
    f.write_bytes(b"{}")
    with pytest.raises(MtdError) as exc:
        jffs2_file.add_file(str(f), flash, endian="little")
    assert exc.value.offset == E and exc.value.written


@pytest.mark.parametrize(("written", "jffs2_at", "mount", "place"), [
    (False, None, None, Place.RAW),
    (False, None, "rw", Place.MOUNTED),
    (False, None, "ro", Place.NOWHERE),
    (True, 0x40000, None, Place.NEW_JFFS2),
    (True, None, None, Place.NOWHERE),  # partly new firmware: no rootfs_data to trust
])
def test_nor_place(written: bool, jffs2_at: int | None, mount: str | None, place: Place) -> None:
    m = parse_mountinfo(f"30 1 31:3 / /overlay {mount},noatime - jffs2 /dev/mtdblock3 {mount}\n")[0]
    assert nor_place(written, jffs2_at, m if mount else None) is place


def test_ubi_place() -> None:
    rw, ro = parse_mountinfo("30 1 0:21 / /overlay rw - ubifs ubi0:rootfs_data rw\n"
                             "31 1 0:21 / /x ro - ubifs ubi0:rootfs_data ro\n")
    assert ubi_place(False, None) is Place.NOWHERE
    assert ubi_place(True, None) is Place.RAW
    assert ubi_place(True, rw) is Place.MOUNTED
    assert ubi_place(True, ro) is Place.NOWHERE


def test_the_mounts_of_rootfs_data_are_found() -> None:
    mounts = parse_mountinfo("20 1 31:2 / /rom ro - squashfs /dev/mtdblock2 ro\n"
                             "21 1 31:3 / /old/overlay ro - jffs2 /dev/mtdblock3 ro\n"
                             "22 1 31:3 / /overlay rw - jffs2 /dev/mtdblock3 rw\n"
                             "23 1 0:25 / /data rw - ubifs ubi0_2 rw\n")
    found = jffs2_mount(mounts, 3)
    assert found is not None and found.mountpoint == "/overlay"  # the read-write one first
    assert jffs2_mount(mounts, 4) is None
    volume = ubi.Volume(0, 2, "rootfs_data", 10, 126976, 0, "dynamic", "250:3")
    found = ubifs_mount(mounts, volume)
    assert found is not None and found.mountpoint == "/data"
    assert ubifs_mount(mounts, ubi.Volume(1, 2, "rootfs_data", 10, 126976, 0, "dynamic", "250:3")) is None
