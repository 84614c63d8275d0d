"""The squashfs root's head written last on MTD flash (``roothead.finder_aligned`` deciding,
``mtd.write_flash`` doing): during the pass the erase block holding the superblock reads erased (no
squashfs magic where mtdsplit looks), it gets its data only once every block through the squashfs's
``bytes_used`` end is written and verified, and a failure or a cut in between leaves it erased. On the
file-backed fake flash of test_mtd_writer; NOR and NAND (bad blocks skipped before and at the head)."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from mtdtool import cli
from stage2.formats import jffs2
from stage2.writers import mtd as writer
from stage2.writers import roothead
from stage2.writers.block import FindHeld, Held
from stage2.writers.mtd import MtdError
from tests.datagen import random_bytes
from tests.unit.test_mtd_writer import E, FakeFlash, Pipe

FF = b"\xff"
KERNEL = 2  # erase blocks of kernel before the squashfs
ROOT = KERNEL * E  # where the squashfs starts
USED = 3 * E + 100  # the squashfs's bytes_used: it ends in the image's block 5
END_BLOCK = (ROOT + USED - 1) // E  # the image block holding the squashfs's last byte


def squashfs(size: int, used: int, seed: int) -> bytes:
    body = bytearray(random_bytes(size, seed=seed))
    body[:4] = roothead.SQUASHFS_MAGIC
    struct.pack_into("<Q", body, roothead.BYTES_USED, used)
    return bytes(body)


def firmware(seed: int = 1, used: int = USED, markers: int = 2, kernel: int = KERNEL) -> bytes:
    """A NOR sysupgrade image: kernel, 0xFF to the erase block, squashfs, 0xFF to the erase block,
    ``DE AD C0 DE`` blocks."""
    body = random_bytes(kernel * E - 300, seed=seed + 100) + FF * 300 + squashfs(used, used, seed)
    body += FF * (-len(body) % E)
    return body + (jffs2.EOF_MARKER + FF * (E - 4)) * markers


def src(data: bytes) -> BinaryIO:
    return io.BytesIO(data)


def old_flash(path: Path, blocks: int, nand: bool = False) -> FakeFlash:
    """A flash holding an older build of the firmware (another squashfs at the same offset)."""
    flash = FakeFlash(path, blocks, nand=nand)
    old = firmware(seed=9)
    path.write_bytes(old + FF * (blocks * E - len(old)))
    return flash


def block_of(data: bytes, index: int) -> bytes:
    return data[index * E:(index + 1) * E]


class Snapshots:
    """A progress callback that keeps a copy of the flash after each chunk (one block: CHUNK = E)."""

    def __init__(self, flash: FakeFlash) -> None:
        self.flash = flash
        self.seen: list[tuple[int, bytes]] = []

    def __call__(self, done: int, _total: int | None) -> None:
        self.seen.append((done, self.flash.content()))


@pytest.fixture
def per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """One erase block per chunk: progress after each block, a snapshot of every step of the pass."""
    monkeypatch.setattr(writer, "CHUNK", E)


def hold() -> FindHeld:
    return roothead.finder_aligned(E)


# -- the decision --------------------------------------------------------------------------------------
def test_finder_aligned_finds_the_squashfs_after_the_kernel() -> None:
    image = firmware()
    find = hold()
    found = [find(pos, memoryview(image)[pos:pos + E]) for pos in range(0, len(image), E)]
    assert [h for h in found if h is not None] == [Held(ROOT, roothead.HEAD, ROOT + USED)]
    assert found.index(Held(ROOT, roothead.HEAD, ROOT + USED)) == KERNEL
    # several blocks per piece, and a piece that does not start on a block boundary
    assert hold()(0, memoryview(image)[:4 * E]) == Held(ROOT, roothead.HEAD, ROOT + USED)
    assert hold()(100, memoryview(image)[100:4 * E]) == Held(ROOT, roothead.HEAD, ROOT + USED)


def test_finder_aligned_on_a_bare_squashfs_and_on_other_data() -> None:
    bare = squashfs(3 * E, 3 * E, seed=2)
    assert hold()(0, memoryview(bare)) == Held(0, roothead.HEAD, 3 * E)
    unaligned = random_bytes(E + 512, seed=3) + bare  # a squashfs mtdsplit would not find either
    find = hold()
    assert all(find(pos, memoryview(unaligned)[pos:pos + E]) is None for pos in range(0, len(unaligned), E))
    assert hold()(0, memoryview(random_bytes(4 * E, seed=4))) is None
    with pytest.raises(ValueError, match="smaller than a squashfs superblock"):
        roothead.finder_aligned(64)


def test_finder_aligned_names_the_first_squashfs_only() -> None:
    image = firmware() + squashfs(E, E, seed=5)
    find = hold()
    found = [h for pos in range(0, len(image), E) if (h := find(pos, memoryview(image)[pos:pos + E]))]
    assert found == [Held(ROOT, roothead.HEAD, ROOT + USED)]


# -- NOR -----------------------------------------------------------------------------------------------
def test_nor_head_block_reads_erased_until_the_squashfs_end_is_written(tmp_path: Path,
                                                                       per_block: None) -> None:
    flash = old_flash(tmp_path / "nor", 12)
    image = firmware()
    snap = Snapshots(flash)
    report = writer.write_flash(src(image), flash, progress=snap, hold=hold())
    assert flash.content()[:len(image)] == image
    assert report.bytes_written == len(image) and report.blocks_erased == len(image) // E
    during = [(done, disk) for done, disk in snap.seen if done < ROOT + USED]
    after = [(done, disk) for done, disk in snap.seen if done >= ROOT + USED]
    assert [done for done, _ in during] == [E * i for i in range(1, END_BLOCK + 1)]
    for done, disk in during:
        blocks = done // E
        for i in range(blocks):  # written so far: the head erased, every other block new
            assert block_of(disk, i) == (FF * E if i == KERNEL else block_of(image, i)), (done, i)
    assert after and all(block_of(disk, KERNEL) == block_of(image, KERNEL) for _, disk in after)
    # the head was programmed once, after the block with the squashfs's last byte was read back
    writes = [i for i, c in enumerate(flash.calls) if c[0] == "write" and c[1] == ROOT]
    end_read = flash.calls.index(("read", END_BLOCK * E, E))
    assert len(writes) == 1 and writes[0] > end_read


def test_nor_pass_leaves_old_blocks_after_the_write_position(tmp_path: Path, per_block: None) -> None:
    """Mid-pass, ahead of the write position the old firmware is still there: what a cut would leave
    with the head erased."""
    flash = old_flash(tmp_path / "nor", 12)
    old = flash.content()
    image = firmware()
    snap = Snapshots(flash)
    writer.write_flash(src(image), flash, progress=snap, hold=hold())
    done, disk = next((d, s) for d, s in snap.seen if d == (KERNEL + 2) * E)
    assert disk[done:] == old[done:]
    assert disk[ROOT:ROOT + 4] == FF * 4  # neither squashfs magic


def test_nor_chunks_hold_the_head_block_out_of_the_range_write(tmp_path: Path) -> None:
    per = writer.CHUNK // E
    flash = old_flash(tmp_path / "nor", per + 8)
    used = (per + 1) * E + 10  # the squashfs ends in the second chunk
    image = firmware(used=used, kernel=1)
    report = writer.write_flash(src(image), flash, hold=hold())
    assert flash.content()[:len(image)] == image
    assert report.bytes_written == len(image)
    head_write = flash.calls.index(("write", E, E))
    last_read = max(i for i, c in enumerate(flash.calls) if c[0] == "read" and c[1] + c[2] >= E + used)
    assert head_write > last_read
    # the blocks before the head and after it still go in ranges
    assert ("write", 2 * E, per * E) in flash.calls
    assert writer.verify_flash(src(image), flash).ok


@pytest.mark.parametrize("block", [KERNEL + 1, END_BLOCK])
def test_nor_write_failure_inside_the_squashfs_leaves_the_head_erased(tmp_path: Path, block: int,
                                                                      per_block: None) -> None:
    flash = old_flash(tmp_path / "nor", 12)
    flash.fail_write = {block * E}
    image = firmware()
    with pytest.raises(MtdError) as exc:
        writer.write_flash(src(image), flash, hold=hold())
    assert (exc.value.offset, exc.value.written) == (block * E, True)
    disk = flash.content()
    assert block_of(disk, KERNEL) == FF * E
    assert disk[:ROOT] == image[:ROOT]
    assert disk[ROOT + E:block * E] == image[ROOT + E:block * E]


class Cut(Pipe):
    """A stream that breaks after ``at`` bytes (a download cut off)."""

    def __init__(self, data: bytes, at: int) -> None:
        super().__init__(data[:at])

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = super().readinto(b)
        if n == 0:
            raise OSError(5, "Input/output error")
        return n


@pytest.mark.parametrize("how", ["cut", "truncated gzip", "short of length"])
def test_nor_source_cut_inside_the_squashfs_leaves_the_head_erased(tmp_path: Path, how: str) -> None:
    flash = old_flash(tmp_path / "nor", 12)
    image = firmware()
    at = (KERNEL + 2) * E
    length = None
    if how == "cut":
        source = cast(BinaryIO, Cut(image, at))
    elif how == "truncated gzip":
        packed = gzip.compress(image)
        source = cast(BinaryIO, Pipe(packed[:at + E // 2]))  # random bytes: stored, about 1:1
    else:
        source, length = cast(BinaryIO, Pipe(image[:at])), len(image)
    with pytest.raises((MtdError, OSError)):
        writer.write_flash(source, flash, hold=hold(), length=length)
    disk = flash.content()
    assert block_of(disk, KERNEL) == FF * E
    assert disk[:ROOT] == image[:ROOT]
    assert block_of(disk, KERNEL + 1) == block_of(image, KERNEL + 1)  # the cut came after the head


def test_nor_head_that_fails_its_verify_is_erased_again(tmp_path: Path) -> None:
    flash = old_flash(tmp_path / "nor", 12)
    flash.corrupt = {ROOT + 7: 0x00}  # the commit's program leaves a wrong byte
    image = firmware()
    with pytest.raises(MtdError) as exc:
        writer.write_flash(src(image), flash, hold=hold())
    assert exc.value.offset == ROOT + 7 and exc.value.written
    assert "held root head block; left erased" in exc.value.message
    disk = flash.content()
    assert block_of(disk, KERNEL) == FF * E
    assert disk[ROOT + E:len(image)] == image[ROOT + E:]  # the pass went through


def test_nor_head_write_error_at_commit(tmp_path: Path) -> None:
    flash = old_flash(tmp_path / "nor", 12)
    flash.fail_write = {ROOT}  # the pass does not program the head block: only the commit meets this
    with pytest.raises(MtdError, match="Error writing image") as exc:
        writer.write_flash(src(firmware()), flash, hold=hold())
    assert exc.value.offset == ROOT
    assert block_of(flash.content(), KERNEL) == FF * E


def test_nor_without_erase_and_a_short_squashfs(tmp_path: Path) -> None:
    """``mtd -n`` on an erased flash; a squashfs claiming more than the image: the head at the end."""
    flash = FakeFlash(tmp_path / "nor", 12, fill=0xFF)
    image = firmware()[:(KERNEL + 2) * E]  # bytes_used says USED: past this image's end
    report = writer.write_flash(src(image), flash, erase=False, hold=hold())
    assert flash.content()[:len(image)] == image
    assert report.blocks_erased == 0 and not [c for c in flash.calls if c[0] == "erase"]


def test_nor_jffs2_config_goes_in_after_the_squashfs(tmp_path: Path, per_block: None) -> None:
    flash = old_flash(tmp_path / "nor", 12)
    config = tmp_path / "sysupgrade.tgz"
    config.write_bytes(random_bytes(5000, seed=8))
    image = firmware(markers=3)
    marker = len(image) - 3 * E
    report = writer.write_flash(src(image), flash, jffs2_config=str(config), endian="little", hold=hold())
    assert report.jffs2_offset == marker
    disk = flash.content()
    assert disk[:marker] == image[:marker]
    assert jffs2.node_magic(disk[marker:marker + E], "little") == jffs2.MAGIC


def test_an_image_without_squashfs_is_written_as_without_hold(tmp_path: Path) -> None:
    image = random_bytes(5 * E + 77, seed=6)
    plain, held = FakeFlash(tmp_path / "a", 8), FakeFlash(tmp_path / "b", 8)
    writer.write_flash(src(image), plain)
    writer.write_flash(src(image), held, hold=hold())
    assert held.calls == plain.calls and held.content() == plain.content()


# -- NAND ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "fail_erase", "head"),
                         [({E}, set(), 3 * E), ({ROOT}, set(), 3 * E), (set(), {ROOT}, 3 * E),
                          ({E, 3 * E}, set(), 4 * E)],
                         ids=["bad_before", "bad_at_head", "head_erase_fails", "bad_before_and_at"])
def test_nand_head_block_stays_where_the_pass_put_it(tmp_path: Path, per_block: None, bad: set[int],
                                                     fail_erase: set[int], head: int) -> None:
    flash = old_flash(tmp_path / "nand", 14, nand=True)
    flash.bad, flash.fail_erase = set(bad), set(fail_erase)
    image = firmware()
    snap = Snapshots(flash)
    report = writer.write_flash(src(image), flash, progress=snap, hold=hold())
    unusable = sorted(bad | fail_erase)
    good = [p for p in range(0, 14 * E, E) if p not in unusable]
    disk = flash.content()
    assert b"".join(disk[p:p + E] for p in good[:len(image) // E]) == image
    assert good[KERNEL] == head  # the image's third block, where the pass put it
    assert sorted(report.bad_skipped + report.bad_marked) == unusable
    for done, snapshot in snap.seen:
        want = block_of(image, KERNEL) if done >= ROOT + USED else FF * E
        if done > ROOT:
            assert snapshot[head:head + E] == want, done
    assert [c for c in flash.calls if c[0] == "write" and c[1] == head] == [("write", head, E)]
    assert writer.verify_flash(src(image), flash).ok


def test_nand_failure_after_the_head_leaves_it_erased(tmp_path: Path) -> None:
    flash = old_flash(tmp_path / "nand", 8, nand=True)
    flash.bad = {E}
    flash.fail_write = {p for p in range(0, 8 * E, E)} - {0, 2 * E, 3 * E}  # no good block after the head
    with pytest.raises(MtdError, match="Insufficient space"):
        writer.write_flash(src(firmware()), flash, hold=hold())
    assert flash.content()[3 * E:4 * E] == FF * E  # the head's block (block 1 bad): erased


# -- the callers ---------------------------------------------------------------------------------------
class Device(FakeFlash):
    """The fake as ``open_device`` returns it (a context manager; closing keeps it for the asserts)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass


def test_the_mtd_command_writes_the_head_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flash = Device(tmp_path / "nor", 12)
    monkeypatch.setattr(writer, "open_device", lambda _device, write=True: flash)
    image = firmware()
    path = tmp_path / "image.bin"
    path.write_bytes(image)
    err = io.StringIO()
    assert cli.main(["-q", "write", str(path), "firmware"], err=err, stdin=io.BytesIO()) == 0, err.getvalue()
    assert flash.content()[:len(image)] == image
    writes = [c for c in flash.calls if c[0] == "write"]
    assert writes[-1] == ("write", ROOT, E)  # the head block last


def test_write_mtd_makes_the_finder_for_the_erase_size(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    flash = Device(tmp_path / "nor", 12)
    monkeypatch.setattr(writer, "open_device", lambda _device, write=True: flash)
    sizes: list[int] = []

    def hold_for(size: int) -> FindHeld:
        sizes.append(size)
        return roothead.finder_aligned(size)

    writer.write_mtd(src(firmware()), "firmware", hold_for=hold_for)
    assert sizes == [E]
    assert [c for c in flash.calls if c[0] == "write"][-1] == ("write", ROOT, E)


def test_what_roothead_imports_late_is_in_stage2s_ramfs() -> None:
    """roothead imports the block writer and the partition parser when first used (the ``mtd`` command
    starts without them); the ramfs holds what ``stage2.afterpivot`` imports, which must include them."""
    late = ["stage2.writers.block", "sysupgrade.platform_x86"]
    code = f"import sys, stage2.afterpivot; print(' '.join(m for m in {late!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == late
