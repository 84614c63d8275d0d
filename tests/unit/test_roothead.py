"""The squashfs root's head written last (``stage2.writers.roothead`` deciding, ``block.write_image`` doing):
what a cut in the middle of the root's write leaves is a root without a superblock."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pytest
from datagen import random_bytes

from stage2.writers import block, roothead
from stage2.writers.block import Held
from wrtcore.errors import WriteError

MiB = 1 << 20
CHUNK = 64 << 10


def squashfs(size: int, used: int | None = None, seed: int = 1) -> bytes:
    """``size`` bytes starting like a squashfs 4 superblock whose ``bytes_used`` is ``used``."""
    body = bytearray(random_bytes(size, seed=seed))
    body[:4] = b"hsqs"
    struct.pack_into("<Q", body, roothead.BYTES_USED, size if used is None else used)
    return bytes(body)


def mbr(parts: list[tuple[int, int]]) -> bytearray:
    """A 512-byte MBR naming ``parts`` (start, size in sectors)."""
    head = bytearray(512)
    for i, (start, size) in enumerate(parts):
        entry = 446 + 16 * i
        head[entry + 4] = 0x83
        struct.pack_into("<II", head, entry + 8, start, size)
    head[510:512] = b"\x55\xaa"
    return head


def disk_image(boot: int = 3 * CHUNK, root: bytes = b"") -> tuple[bytes, int]:
    """An MBR disk: a boot partition of random bytes, then ``root``; the image and the root's offset."""
    root_at = CHUNK + boot
    head = mbr([(CHUNK // 512, boot // 512), (root_at // 512, len(root) // 512)])
    image = bytes(head) + bytes(CHUNK - 512) + random_bytes(boot, seed=7) + root
    return image, root_at


# -- decisions -----------------------------------------------------------------------------------------
def test_a_squashfs_head_is_held_until_its_end() -> None:
    sb = squashfs(4096, used=1_000_000)
    assert roothead.squashfs_end(sb) == 1_000_000
    assert roothead.held_at(4096, sb) == Held(4096, roothead.HEAD, 4096 + 1_000_000)
    assert roothead.held_at(0, squashfs(4096, used=10)) is None  # smaller than its own superblock
    assert roothead.squashfs_end(b"hsqs") is None
    assert roothead.held_at(0, b"\x1f\x8b" + bytes(200)) is None


def test_partition_starts_come_from_the_mbr() -> None:
    head = mbr([(2048, 100), (8192, 300)])
    assert roothead.partition_starts(bytes(head)) == [2048 * 512, 8192 * 512]
    assert roothead.partition_starts(bytes(512)) == []  # no table


def test_finder_on_a_partition_image_and_on_other_data() -> None:
    find = roothead.finder()
    assert find(0, memoryview(squashfs(CHUNK, used=5 * CHUNK))) == Held(0, roothead.HEAD, 5 * CHUNK)
    assert roothead.finder()(0, memoryview(random_bytes(CHUNK, seed=3))) is None  # not a squashfs: not held


def test_finder_on_a_whole_disk_finds_the_root_in_a_later_chunk() -> None:
    image, root_at = disk_image(root=squashfs(4 * CHUNK))
    find = roothead.finder(None)
    found = [find(pos, memoryview(image)[pos:pos + CHUNK]) for pos in range(0, len(image), CHUNK)]
    assert [h for h in found if h is not None] == [Held(root_at, roothead.HEAD, root_at + 4 * CHUNK)]
    assert found.index(Held(root_at, roothead.HEAD, root_at + 4 * CHUNK)) == root_at // CHUNK


# -- the writer ----------------------------------------------------------------------------------------
def _watch(target: Path, at: int, length: int) -> tuple[list[tuple[int, bytes]], block.Progress]:
    seen: list[tuple[int, bytes]] = []

    def progress(done: int, _total: int | None) -> None:
        with open(target, "rb") as f:
            f.seek(at)
            seen.append((done, f.read(length)))
    return seen, progress


def _split(seen: list[tuple[int, bytes]], squashfs_end: int) -> tuple[list[bytes], list[bytes]]:
    """What the target's head was when the head cannot have been written yet, and when it must have been.
    ``progress(done)`` runs while the writer thread may already have written the next chunk (two buffers):
    before the write of the chunk holding ``squashfs_end`` can have ended, and after it surely has."""
    before = [head for done, head in seen if done + CHUNK < squashfs_end]
    after = [head for done, head in seen if done >= squashfs_end]
    return before, after


@pytest.mark.parametrize("direct", [None, False], ids=["o_direct", "page_cache"])
def test_the_head_lands_only_after_the_squashfs_end(tmp_path: Path, direct: bool | None) -> None:
    used = 5 * CHUNK + 1000  # the squashfs ends inside the sixth chunk; zeros after it (rootfs_data)
    image = squashfs(used, used=used) + bytes(10 * CHUNK - used)
    target = tmp_path / "part"
    target.write_bytes(squashfs(10 * CHUNK, seed=2))  # the old root
    seen, progress = _watch(target, 0, roothead.HEAD)
    block.write_image(io.BytesIO(image), str(target), chunk_size=CHUNK, progress=progress, direct=direct,
                      hold=roothead.finder())
    assert target.read_bytes() == image
    before, after = _split(seen, used)
    assert len(before) == 4 and all(head == bytes(roothead.HEAD) for head in before)
    assert after and all(head == image[:roothead.HEAD] for head in after)


def test_a_whole_gzip_disk_holds_its_root_head(tmp_path: Path) -> None:
    image, root_at = disk_image(root=squashfs(6 * CHUNK))
    target = tmp_path / "disk"
    target.write_bytes(disk_image(root=squashfs(6 * CHUNK, seed=5))[0])  # the old firmware
    seen, progress = _watch(target, root_at, roothead.HEAD)
    block.write_image(io.BytesIO(gzip.compress(image)), str(target), chunk_size=CHUNK, progress=progress,
                      hold=roothead.finder(None))
    assert target.read_bytes() == image
    before, after = _split(seen, root_at + 6 * CHUNK)
    assert len(before) == 8 and all(head == bytes(roothead.HEAD) for head in before[4:])  # root begun
    assert before[0] != bytes(roothead.HEAD)  # the old root's head until then
    assert after and all(head == image[root_at:root_at + roothead.HEAD] for head in after)


def test_a_write_that_fails_in_the_root_leaves_no_superblock(tmp_path: Path) -> None:
    image = squashfs(8 * CHUNK)
    target = tmp_path / "part"
    old = squashfs(8 * CHUNK, seed=2)
    target.write_bytes(old)

    class Broken(io.RawIOBase):  # a source that fails half-way (a download cut off)
        pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            if self.pos >= 4 * CHUNK:
                raise OSError(5, "Input/output error")
            n = min(len(b), CHUNK)
            b[:n] = image[self.pos:self.pos + n]
            self.pos += n
            return n

    with pytest.raises(WriteError) as err:
        block.write_image(Broken(), str(target), chunk_size=CHUNK, hold=roothead.finder())  # type: ignore[arg-type]
    assert err.value.written
    disk = target.read_bytes()
    assert disk[:roothead.HEAD] == bytes(roothead.HEAD)  # neither superblock: nothing mounts it
    assert disk[roothead.HEAD:4 * CHUNK] == image[roothead.HEAD:4 * CHUNK]
    assert disk[4 * CHUNK:] == old[4 * CHUNK:]


def test_an_image_shorter_than_its_squashfs_claims_still_gets_its_head(tmp_path: Path) -> None:
    image = squashfs(3 * CHUNK, used=100 * CHUNK)
    target = tmp_path / "part"
    target.write_bytes(bytes(3 * CHUNK))
    block.write_image(io.BytesIO(image), str(target), chunk_size=CHUNK, hold=roothead.finder())
    assert target.read_bytes() == image
