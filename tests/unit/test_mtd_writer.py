"""The MTD writer's logic against a file-backed fake flash: bad blocks, the jffs2 append, and every failure
path with its offset. The fake is a unit-test aid; the real drivers are exercised in tests/vm."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from stage2.formats import jffs2
from stage2.writers import mtd as writer
from stage2.writers.mtd import MtdError
from wrtcore import mtd as mtdio
from wrtcore.errors import InvalidInput

E = 16 * 1024


class FakeFlash:
    """Flash in a file: erase sets 0xFF, a write can only clear bits (NOR and NAND alike), a bad-block
    table on NAND, and failures injected per block offset."""

    def __init__(self, path: Path, blocks: int, nand: bool = False, fill: int = 0x5A) -> None:
        self.path = path
        path.write_bytes(bytes([fill]) * (blocks * E))
        self.fd = os.open(path, os.O_RDWR)
        mtype = mtdio.MTD_NANDFLASH if nand else mtdio.MTD_NORFLASH
        self.info = mtdio.MtdInfo(mtype, mtdio.MTD_WRITEABLE, blocks * E, E, 2048 if nand else 1, 0)
        self.bad: set[int] = set()
        self.fail_erase: set[int] = set()
        self.fail_write: set[int] = set()
        self.fail_mark: set[int] = set()
        self.corrupt: dict[int, int] = {}  # device offset -> byte the flash keeps instead of the one written
        self.flaky: set[int] = set()  # device offsets corrupted by the first write over them only
        self.marked: list[int] = []
        self.erased: list[int] = []
        self.calls: list[tuple[str, int, int]] = []  # (erase|write|read, offset, length)
        self.unlocked = False

    def erase(self, offset: int, length: int) -> None:
        """Block after block, as the drivers do: the blocks before a failing one are erased."""
        assert offset % E == 0 and length % E == 0 and length > 0
        assert not self.info.nand or length == E, "a NAND range may hold a bad block: one at a time"
        self.calls.append(("erase", offset, length))
        for at in range(offset, offset + length, E):
            if at in self.fail_erase:
                raise OSError(5, "Input/output error")
            os.pwrite(self.fd, b"\xff" * E, at)
            self.erased.append(at)

    def unlock(self, offset: int, length: int) -> None:
        self.unlocked = True

    def is_bad(self, offset: int) -> bool:
        if not self.info.nand:
            raise AssertionError("the writer asked a NOR flash for its bad-block table")
        return offset - offset % E in self.bad

    def mark_bad(self, offset: int) -> None:
        self.bad.add(offset - offset % E)  # the table takes it even when the marker cannot be written
        self.marked.append(offset)
        if offset in self.fail_mark:
            raise OSError(5, "Input/output error")

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """A failing block fails a write that covers it; the blocks before it are programmed."""
        self.calls.append(("write", offset, len(data)))
        failing = [at for at in self.fail_write if offset <= at < offset + len(data)]
        if failing:
            if min(failing) > offset:
                self.write(offset, data[:min(failing) - offset])
            raise OSError(5, "Input/output error")
        n = min(len(data), self.info.size - offset)
        old = os.pread(self.fd, n, offset)
        new = bytearray(a & b for a, b in zip(old, bytes(data[:n]), strict=True))
        for at, value in self.corrupt.items():
            if offset <= at < offset + n:
                new[at - offset] = value
        for at in [at for at in self.flaky if offset <= at < offset + n]:
            new[at - offset] ^= 0x01
            self.flaky.discard(at)
        os.pwrite(self.fd, new, offset)
        return n

    def read(self, offset: int, into: bytearray | memoryview) -> int:
        self.calls.append(("read", offset, len(into)))
        data = os.pread(self.fd, len(into), offset)
        into[:len(data)] = data
        return len(data)

    def content(self) -> bytes:
        return self.path.read_bytes()


class Pipe(io.RawIOBase):
    """A non-seekable source."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        return self._f.readinto(b)


def src(data: bytes) -> BinaryIO:
    return io.BytesIO(data)


def pipe(data: bytes) -> BinaryIO:
    return cast(BinaryIO, Pipe(data))


@pytest.fixture
def nor(tmp_path: Path) -> FakeFlash:
    return FakeFlash(tmp_path / "nor", 8)


@pytest.fixture
def nand(tmp_path: Path) -> FakeFlash:
    return FakeFlash(tmp_path / "nand", 8, nand=True)


def test_nor_write_pads_the_last_block_and_leaves_the_rest(nor: FakeFlash) -> None:
    image = os.urandom(3 * E + 100)
    seen: list[tuple[int, int | None]] = []
    report = writer.write_flash(src(image), nor, name="fw", progress=lambda d, t: seen.append((d, t)))
    disk = nor.content()
    assert disk[:len(image)] == image
    assert disk[len(image):4 * E] == b"\xff" * (4 * E - len(image))
    assert disk[4 * E:] == b"\x5a" * (4 * E)
    assert (report.bytes_written, report.image_bytes, report.blocks_erased) == (4 * E, len(image), 4)
    assert report.bad_skipped == report.bad_marked == () and report.jffs2_offset is None
    assert nor.erased == [0, E, 2 * E, 3 * E] and nor.unlocked
    assert seen[-1] == (len(image), len(image))


def test_offset_and_gzip_stream(nor: FakeFlash) -> None:
    image = os.urandom(2 * E)
    report = writer.write_flash(pipe(gzip.compress(image)), nor, offset=2 * E)
    assert report.compressed and report.image_bytes == 2 * E
    assert nor.content()[2 * E:4 * E] == image
    assert nor.content()[:2 * E] == b"\x5a" * (2 * E)


def test_unaligned_offset_and_empty_image_are_invalid(nor: FakeFlash) -> None:
    with pytest.raises(InvalidInput):
        writer.write_flash(src(b"x"), nor, offset=100)
    with pytest.raises(InvalidInput):
        writer.write_flash(src(b""), nor)
    assert nor.erased == []


def test_nand_skips_bad_blocks_and_verify_follows_them(nand: FakeFlash) -> None:
    nand.bad = {E, 3 * E}
    image = os.urandom(3 * E)
    report = writer.write_flash(src(image), nand)
    assert report.bad_skipped == (E, 3 * E)
    disk = nand.content()
    assert disk[0:E] + disk[2 * E:3 * E] + disk[4 * E:5 * E] == image
    assert disk[E:2 * E] == disk[3 * E:4 * E] == b"\x5a" * E  # bad blocks untouched
    assert writer.verify_flash(src(image), nand).ok


def test_nand_write_failure_marks_the_block_bad_and_moves_on(nand: FakeFlash) -> None:
    nand.fail_write = {2 * E}
    image = os.urandom(4 * E)
    report = writer.write_flash(src(image), nand)
    assert report.bad_marked == (2 * E,) and nand.marked == [2 * E]
    disk = nand.content()
    assert disk[:2 * E] + disk[3 * E:5 * E] == image
    assert writer.verify_flash(src(image), nand).ok


def test_nand_marker_write_failure_is_fine_when_the_table_has_the_block(nand: FakeFlash) -> None:
    nand.fail_write = nand.fail_mark = {E}
    image = os.urandom(2 * E)
    report = writer.write_flash(src(image), nand)
    assert report.bad_marked == (E,)
    assert nand.content()[:E] + nand.content()[2 * E:3 * E] == image


def test_nand_erase_failure_and_verify_mismatch_retire_the_block(nand: FakeFlash) -> None:
    nand.fail_erase = {0}
    nand.corrupt = {2 * E + 7: 0x00}
    image = b"\xa5" * (2 * E)
    report = writer.write_flash(src(image), nand)
    assert report.bad_marked == (0, 2 * E)
    assert nand.content()[E:2 * E] + nand.content()[3 * E:4 * E] == image


def test_nand_running_out_of_good_blocks(nand: FakeFlash) -> None:
    nand.bad = {5 * E, 6 * E, 7 * E}
    with pytest.raises(MtdError) as exc:
        writer.write_flash(pipe(os.urandom(6 * E)), nand)
    assert (exc.value.offset, exc.value.written) == (8 * E, True)
    assert "Insufficient space" in exc.value.message


@pytest.mark.parametrize(("fault", "message"), [("fail_erase", "Failed to erase block"),
                                              ("fail_write", "Error writing image")])
def test_nor_erase_or_write_failure_has_its_offset(nor: FakeFlash, fault: str, message: str) -> None:
    setattr(nor, fault, {2 * E})
    with pytest.raises(MtdError) as exc:
        writer.write_flash(src(os.urandom(4 * E)), nor)
    assert (exc.value.offset, exc.value.written) == (2 * E, True)
    assert message in str(exc.value)
    assert nor.content()[4 * E:] == b"\x5a" * (4 * E)  # nothing after the image's range was touched
    assert nor.content()[3 * E:4 * E] in (b"\x5a" * E, b"\xff" * E)  # at most erased with the chunk


def test_nor_verify_mismatch_has_the_byte_offset(nor: FakeFlash) -> None:
    nor.corrupt = {E + 1234: 0x00}
    with pytest.raises(MtdError) as exc:
        writer.write_flash(src(b"\xff" * (3 * E)), nor)
    assert (exc.value.offset, exc.value.written) == (E + 1234, True)
    assert "Verify failed" in str(exc.value)


def test_first_block_erase_failure_on_nor(nor: FakeFlash) -> None:
    nor.fail_erase = {0}
    with pytest.raises(MtdError) as exc:
        writer.write_flash(src(os.urandom(E)), nor)
    assert exc.value.offset == 0


def test_short_device_known_size_writes_nothing(nor: FakeFlash) -> None:
    with pytest.raises(MtdError) as exc:
        writer.write_flash(src(os.urandom(8 * E + 1)), nor)
    assert (exc.value.offset, exc.value.written) == (0, False)
    assert nor.erased == [] and nor.content() == b"\x5a" * (8 * E)


def test_short_device_streamed_image_stops_at_the_end(nor: FakeFlash) -> None:
    with pytest.raises(MtdError) as exc:
        writer.write_flash(pipe(os.urandom(9 * E)), nor)
    assert (exc.value.offset, exc.value.written) == (8 * E, True)


def test_truncated_gzip_reports_where_it_stopped(nor: FakeFlash) -> None:
    packed = gzip.compress(os.urandom(3 * E))
    with pytest.raises(MtdError) as exc:
        writer.write_flash(pipe(packed[:len(packed) // 2]), nor)
    assert exc.value.offset % E == 0 and exc.value.offset < 3 * E
    assert "image stream broke" in exc.value.message


def _image_with_marker(marker_block: int, blocks: int) -> bytes:
    body = os.urandom(marker_block * E)
    tail = b"".join(jffs2.EOF_MARKER + b"\xff" * (E - 4) for _ in range(blocks - marker_block))
    return body + tail + b"TRAILER"


def test_jffs2_config_at_the_first_marker(nor: FakeFlash, tmp_path: Path) -> None:
    config = tmp_path / "sysupgrade.tgz"
    config.write_bytes(os.urandom(3 * E // 2))  # takes 2 blocks of nodes, then the EOF block
    image = _image_with_marker(2, 6)
    report = writer.write_flash(src(image), nor, jffs2_config=str(config), endian="little")
    assert report.jffs2_offset == 2 * E
    st = config.stat()
    meta = jffs2.FileMeta("sysupgrade.tgz", st.st_mode, st.st_size, int(st.st_atime), int(st.st_mtime),
                          int(st.st_ctime))
    expected = jffs2.config_blocks(meta, config.read_bytes(), E, "little")
    assert len(expected) == 3
    disk = nor.content()
    assert disk[:2 * E] == image[:2 * E]
    assert disk[2 * E:5 * E] == b"".join(expected)
    # the 3 image blocks the jffs2 replaced were dropped; what follows is written after it
    assert disk[5 * E:6 * E] == image[5 * E:6 * E]
    assert disk[6 * E:6 * E + 7] == b"TRAILER"


def test_jffs2_without_marker_is_reported(nor: FakeFlash, tmp_path: Path) -> None:
    config = tmp_path / "sysupgrade.tgz"
    config.write_bytes(b"cfg")
    report = writer.write_flash(src(os.urandom(2 * E)), nor, jffs2_config=str(config))
    assert report.jffs2_offset is None


def test_jffs2_skip_bytes(nor: FakeFlash, tmp_path: Path) -> None:
    config = tmp_path / "sysupgrade.tgz"
    config.write_bytes(b"cfg")
    image = jffs2.EOF_MARKER + b"\xff" * (E - 4) + _image_with_marker(1, 3)[E:]
    report = writer.write_flash(src(image), nor, jffs2_config=str(config), jffs2_skip=E)
    assert report.jffs2_offset == E


def test_jffs2write_appends_after_the_existing_filesystem(nor: FakeFlash, tmp_path: Path) -> None:
    first = tmp_path / "sysupgrade.tgz"
    first.write_bytes(os.urandom(5000))
    image = _image_with_marker(0, 6)
    writer.write_flash(src(image), nor, jffs2_config=str(first), endian="big")
    second = tmp_path / "extra.bin"
    second.write_bytes(b"hello")
    report = writer.jffs2write_flash(str(second), nor, endian="big")
    assert report.jffs2_offset == E  # the old EOF block
    block = nor.content()[E:2 * E]
    assert jffs2.node_magic(block, "big") == jffs2.MAGIC
    assert block[12 + 40:12 + 40 + 9] == b"extra.bin"
    assert nor.content()[2 * E:2 * E + 4] == jffs2.EOF_MARKER
    with pytest.raises(MtdError, match="wrong endianness"):
        writer.jffs2write_flash(str(second), nor, endian="little")


def test_jffs2write_without_room(nor: FakeFlash, tmp_path: Path) -> None:
    nor.path.write_bytes(jffs2.clean_marker("little") + b"\xff" * (8 * E - 12))
    for pos in range(E, 8 * E, E):
        os.pwrite(nor.fd, jffs2.clean_marker("little"), pos)
    f = tmp_path / "x"
    f.write_bytes(b"x")
    with pytest.raises(MtdError, match="No room"):
        writer.jffs2write_flash(str(f), nor, endian="little")


def test_verify_reports_the_first_difference(nor: FakeFlash) -> None:
    image = os.urandom(2 * E)
    writer.write_flash(src(image), nor)
    os.pwrite(nor.fd, bytes([image[E + 99] ^ 1]), E + 99)
    report = writer.verify_flash(src(image), nor)
    assert report.first_difference == E + 99 and not report.ok
    assert report.image_md5 != report.flash_md5


def test_erase_skips_bad_and_reports_failures(nand: FakeFlash) -> None:
    nand.bad = {E}
    report = writer.erase_flash(nand)
    assert report.bad_skipped == (E,) and report.blocks_erased == 7
    nand.fail_erase = {3 * E, 5 * E}
    with pytest.raises(MtdError) as exc:
        writer.erase_flash(nand)
    assert exc.value.offset == 3 * E


def test_proc_mtd_parsing_and_find(tmp_path: Path) -> None:
    text = ('dev:    size   erasesize  name\nmtd0: 00040000 00010000 "u-boot"\n'
            'mtd3: 00e80000 00010000 "firmware"\nmtd4: 00200000 00010000 "rootfs data"\n')
    proc = tmp_path / "mtd"
    proc.write_text(text)
    assert mtdio.partitions(str(proc)) == [(0, "u-boot", 0x40000, 0x10000),
                                           (3, "firmware", 0xE80000, 0x10000),
                                           (4, "rootfs data", 0x200000, 0x10000)]
    assert mtdio.find("firmware", str(proc)) in ("/dev/mtd3", "/dev/mtd/3")
    assert mtdio.find("rootfs data", str(proc)).endswith("4")
    assert mtdio.find("mtd7", str(proc)).endswith("7")
    assert mtdio.find("/dev/mtd3", str(proc)) == "/dev/mtd3"
    with pytest.raises(FileNotFoundError):
        mtdio.find("nosuch", str(proc))
    assert mtdio.partitions(str(tmp_path / "absent")) == []


def test_nor_chunks_take_one_erase_write_and_read_each(tmp_path: Path) -> None:
    per = writer.CHUNK // E
    flash = FakeFlash(tmp_path / "nor", per + 8)
    image = os.urandom((per + 3) * E + 10)
    report = writer.write_flash(src(image), flash)
    assert flash.content()[:len(image)] == image
    assert flash.calls == [("erase", 0, per * E), ("write", 0, per * E), ("read", 0, per * E),
                           ("erase", per * E, 4 * E), ("write", per * E, 4 * E), ("read", per * E, 4 * E)]
    assert (report.blocks_erased, report.bytes_written) == (per + 4, (per + 4) * E)
    assert 0 < report.verify_seconds <= report.duration


def test_nor_chunk_failure_redone_block_by_block(nor: FakeFlash) -> None:
    nor.flaky = {2 * E + 5}  # the chunk's read-back differs once; the block-by-block pass writes it right
    image = os.urandom(4 * E)
    report = writer.write_flash(src(image), nor)
    assert nor.content()[:4 * E] == image
    assert report.blocks_erased == 4 and report.bytes_written == 4 * E
    assert [c for c in nor.calls if c[0] == "erase"] == [("erase", 0, 4 * E)] + [
        ("erase", b * E, E) for b in range(4)]


def test_nand_blocks_one_at_a_time(nand: FakeFlash) -> None:
    image = os.urandom(3 * E)
    report = writer.write_flash(src(image), nand)
    assert {length for _op, _at, length in nand.calls} == {E}
    assert report.verify_seconds > 0


def test_source_error_writes_the_blocks_read_before_it(nor: FakeFlash) -> None:
    class Breaks(Pipe):
        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            n = super().readinto(b)
            if n == 0:
                raise ValueError("member hash mismatch")
            return n

    image = os.urandom(2 * E + 100)
    with pytest.raises(ValueError, match="hash mismatch"):
        writer.write_flash(cast(BinaryIO, Breaks(image)), nor)
    assert nor.content()[:2 * E] == image[:2 * E]  # the whole blocks before the break, as block by block
    assert nor.content()[2 * E:] == b"\x5a" * (6 * E)


def test_nor_erase_command_is_one_call_unless_it_fails(nor: FakeFlash) -> None:
    report = writer.erase_flash(nor)
    assert report.blocks_erased == 8 and nor.calls == [("erase", 0, 8 * E)]
    assert nor.content() == b"\xff" * (8 * E)
    nor.fail_erase = {5 * E}
    with pytest.raises(MtdError) as exc:
        writer.erase_flash(nor)
    assert exc.value.offset == 5 * E


def test_proc_mtd_odd_lines_parse_as_the_format_says() -> None:
    """Without ``re`` (start-up): checked against a regex of the kernel's line format."""
    import re
    lines = ['dev:    size   erasesize  name', 'mtd0: 00040000 00010000 "u-boot"',
             'mtd12: 00e80000 00020000 ""',
             'mtd3: 00010000 00010000 "two  spaces" ', 'mtd4: 0001000 00010000 "a "quoted" name"',
             'mtdx: 00010000 00010000 "bad"', 'mtd5: 0001zz00 00010000 "bad"', 'mtd6: 00010000 00010000 bad',
             'mtd7: 00010000 00010000 "unterminated', 'mtd8 00010000 00010000 "nocolon"', '', 'garbage']
    line = re.compile(r'^mtd(\d+):\s+([0-9a-fA-F]+)\s+([0-9a-fA-F]+)\s+"(.*)"\s*$')
    expected = [(int(m[1]), m[4], int(m[2], 16), int(m[3], 16)) for m in map(line.match, lines) if m]
    assert mtdio.parse_partitions("\n".join(lines)) == expected
    assert len(expected) == 4


def test_progress_reaches_the_end_when_the_config_takes_the_end(nor: FakeFlash, tmp_path: Path) -> None:
    config = tmp_path / "sysupgrade.tgz"
    config.write_bytes(b"cfg" * 10)
    image = _image_with_marker(2, 4)  # 2 blocks of image, 2 marker blocks: the config takes their place
    seen: list[tuple[int, int | None]] = []
    report = writer.write_flash(src(image[:4 * E]), nor, jffs2_config=str(config),
                                progress=lambda d, t: seen.append((d, t)))
    assert report.jffs2_offset == 2 * E
    assert seen[-1] == (4 * E, 4 * E)
