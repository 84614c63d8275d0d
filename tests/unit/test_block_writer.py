"""The streamed block writer on regular files: no root needed."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from datagen import random_bytes

from stage2.writers import block
from stage2.writers.block import WriteReport, device_size, write_image
from wrtcore.errors import InvalidInput, WriteError

MiB = 1 << 20



def hash_list(data: bytes, chunk_size: int) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(data[i:i + chunk_size]).digest()
                                   for i in range(0, len(data), chunk_size))).hexdigest()


class _Stream(io.RawIOBase):
    """A non-seekable source (a pipe, an HTTP body) handing out at most ``piece`` bytes per read."""

    def __init__(self, data: bytes, piece: int = 100_000) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._piece, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def stream_of(data: bytes, piece: int = 100_000) -> BinaryIO:
    return cast(BinaryIO, _Stream(data, piece))


class _ReadOnly:
    """A source offering only ``read``."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def seekable(self) -> bool:
        return False


def read_only(data: bytes) -> BinaryIO:
    return cast(BinaryIO, _ReadOnly(data))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target.img"
    path.touch()
    return path


@pytest.mark.parametrize("chunk_size", [MiB, 3 * 4096, 1000])
def test_exact_copy(tmp_path: Path, target: Path, chunk_size: int) -> None:
    data = random_bytes(3 * MiB + 12345)
    (tmp_path / "image").write_bytes(data)
    with open(tmp_path / "image", "rb") as source:
        report = write_image(source, str(target), chunk_size=chunk_size)
    assert target.read_bytes() == data
    assert isinstance(report, WriteReport)
    assert report.bytes_written == len(data)
    assert report.chunks == -(-len(data) // chunk_size)
    assert report.digest is None  # a seekable plain image is verified against itself, no hashing
    assert report.direct == (chunk_size % block.FILE_ALIGN == 0)
    assert not report.compressed
    assert report.duration > 0 and report.verify_duration > 0


@pytest.mark.parametrize("chunk_size", [MiB, 1000])
def test_a_streamed_image_is_verified_by_chunk_digests(target: Path, chunk_size: int) -> None:
    data = random_bytes(2 * MiB + 777, seed=9)
    report = write_image(stream_of(data), str(target), chunk_size=chunk_size)
    assert target.read_bytes() == data
    assert report.digest == hash_list(data, chunk_size)


def test_offset_keeps_the_rest_of_the_target(target: Path) -> None:
    before = random_bytes(64 * 1024, seed=2)
    target.write_bytes(before)
    data = random_bytes(10_000, seed=3)
    write_image(io.BytesIO(data), str(target), offset=8192)
    assert target.read_bytes() == before[:8192] + data + before[8192 + len(data):]


@pytest.mark.parametrize("source_kind", ["seekable", "stream", "read-only"])
def test_gzip_image_is_inflated_while_streaming(target: Path, source_kind: str) -> None:
    data = random_bytes(2 * MiB + 999) + bytes(3 * MiB)  # random, then very compressible
    packed = gzip.compress(data, compresslevel=1)
    makers: dict[str, Callable[[bytes], BinaryIO]] = {
        "seekable": io.BytesIO, "stream": stream_of, "read-only": read_only}
    source = makers[source_kind](packed)
    report = write_image(source, str(target))
    assert target.read_bytes() == data
    assert report.compressed and report.bytes_written == len(data)
    assert report.digest == hash_list(data, MiB)


def test_gzip_members_are_concatenated_and_a_trailer_ignored(target: Path) -> None:
    first, second = random_bytes(700_000, seed=4), random_bytes(500_000, seed=5)
    trailer = b"FWx0" + bytes(28)  # what fwtool appends after a gzip'd x86 image
    packed = gzip.compress(first) + gzip.compress(second) + trailer
    write_image(io.BytesIO(packed), str(target), chunk_size=256 * 1024)
    assert target.read_bytes() == first + second


def test_inflating_a_large_image_keeps_memory_flat(target: Path) -> None:
    """48 MiB of zeros compress to ~50 KiB: the inflated image must never sit in memory."""
    packed = gzip.compress(bytes(48 * MiB), compresslevel=9)
    tracemalloc.start()
    try:
        write_image(stream_of(packed), str(target))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert target.stat().st_size == 48 * MiB
    assert peak < 2 * MiB, f"python heap peaked at {peak} bytes"


def test_raw_stream_is_not_copied_through_python_objects(target: Path) -> None:
    data = random_bytes(8 * MiB, seed=6)
    tracemalloc.start()
    try:
        write_image(stream_of(data, piece=MiB), str(target))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB // 2, f"python heap peaked at {peak} bytes"


@pytest.mark.parametrize("compressed", [False, True])
def test_progress_is_monotonic_and_ends_at_the_size(target: Path, compressed: bool) -> None:
    data = random_bytes(5 * MiB + 3, seed=7)
    calls: list[tuple[int, int | None]] = []
    source = io.BytesIO(gzip.compress(data, compresslevel=1) if compressed else data)
    write_image(source, str(target), progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert done == sorted(set(done)) and done[-1] == len(data) and len(done) == 6
    assert {t for _, t in calls} == ({None} if compressed else {len(data)})


def test_short_target_rejected_before_any_write(target: Path) -> None:
    old = random_bytes(4 * MiB, seed=8)
    target.write_bytes(old)
    stamp = target.stat().st_mtime_ns
    data = random_bytes(3 * MiB, seed=9)
    with pytest.raises(WriteError, match="image larger than target") as err:
        write_image(io.BytesIO(data), str(target), offset=MiB, end=4 * MiB - 1)
    assert err.value.written is False and err.value.offset == 4 * MiB - 1
    assert target.read_bytes() == old and target.stat().st_mtime_ns == stamp


def test_compressed_image_too_large_is_stopped_at_the_end(target: Path) -> None:
    """A gzip image's size is unknown until inflated: the chunk that would pass ``end`` is not written."""
    data = random_bytes(3 * MiB, seed=10)
    with pytest.raises(WriteError, match="image larger than target") as err:
        write_image(io.BytesIO(gzip.compress(data, 1)), str(target), end=2 * MiB + 5)
    assert err.value.written is True and err.value.offset == 2 * MiB + 5
    assert target.read_bytes() == data[:2 * MiB]


def test_length_limits_what_is_read(target: Path) -> None:
    data = random_bytes(MiB + 10, seed=11)
    source = io.BytesIO(data + b"next member of an archive")
    report = write_image(source, str(target), length=len(data))
    assert target.read_bytes() == data and report.bytes_written == len(data)
    assert source.tell() == len(data)


def test_truncated_seekable_image_rejected_before_any_write(target: Path) -> None:
    with pytest.raises(InvalidInput, match="image truncated"):
        write_image(io.BytesIO(random_bytes(1000)), str(target), length=1001)
    assert target.stat().st_size == 0


def test_truncated_stream_is_reported_after_writing(target: Path) -> None:
    data = random_bytes(MiB + 5, seed=12)
    with pytest.raises(WriteError, match="image truncated") as err:
        write_image(stream_of(data), str(target), length=2 * MiB)
    assert err.value.written is True and err.value.offset == len(data)


@pytest.mark.parametrize(("packed", "message"), [
    (gzip.compress(random_bytes(2 * MiB))[:-MiB], "compressed image truncated"),
    (gzip.compress(random_bytes(2 * MiB))[:MiB] + bytes(MiB), "corrupt compressed image"),
])
def test_broken_gzip(target: Path, packed: bytes, message: str) -> None:
    with pytest.raises(WriteError, match=message) as err:
        write_image(io.BytesIO(packed), str(target))
    assert err.value.offset <= MiB


def test_empty_image_and_bad_targets(tmp_path: Path, target: Path) -> None:
    for empty in (io.BytesIO(b""), stream_of(b""), stream_of(gzip.compress(b""))):
        with pytest.raises(InvalidInput, match="empty image"):
            write_image(empty, str(target))
    assert target.stat().st_size == 0
    with pytest.raises(InvalidInput, match="No such file"):
        write_image(io.BytesIO(b"x"), str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="not a block device or regular file"):
        write_image(io.BytesIO(b"x"), str(tmp_path))
    assert device_size(str(target)) == 0


@pytest.mark.parametrize("direct", [None, False])
@pytest.mark.parametrize("seekable", [True, False])
def test_verify_finds_a_lost_write(target: Path, direct: bool | None, seekable: bool) -> None:
    """Bytes changed behind the writer's back after they were written are reported where they start."""
    data = random_bytes(4 * MiB, seed=13)
    damaged_at = 2 * MiB + 12345
    assert data[damaged_at] != 0xFF

    def damage(done: int, _total: int | None) -> None:
        if done == 3 * MiB:  # chunk [2 MiB, 3 MiB) has been written
            fd = os.open(target, os.O_WRONLY)
            try:
                os.pwrite(fd, b"\xff" * 100, damaged_at)
                os.fsync(fd)
            finally:
                os.close(fd)

    source = io.BytesIO(data) if seekable else stream_of(data)
    with pytest.raises(WriteError, match="verify mismatch") as err:
        write_image(source, str(target), progress=damage, direct=direct, sync_every=MiB)
    assert err.value.written is True
    # A seekable source is re-read to find the byte; otherwise the start of the chunk is reported.
    assert err.value.offset == (damaged_at if seekable else 2 * MiB)


def test_write_error_reported_at_its_offset(tmp_path: Path, target: Path) -> None:
    """RLIMIT_FSIZE makes every write past 4.5 MiB fail (EFBIG): a write error at a known offset.

    With 1 MiB chunks, the chunk at 4 MiB is written short (512 KiB, up to the limit) and the write of its
    rest, starting at 4.5 MiB, fails: the error's offset is where the failing write started.
    """
    image = tmp_path / "image"
    image.write_bytes(random_bytes(6 * MiB, seed=14))
    script = textwrap.dedent(f"""
        import resource, signal
        from stage2.writers.block import write_image
        from wrtcore.errors import WriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({9 * MiB // 2}, {9 * MiB // 2}))
        try:
            write_image(open({str(image)!r}, "rb"), {str(target)!r})
        except WriteError as exc:
            print(exc.message, exc.offset, exc.written)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == f"write failed: File too large at offset {9 * MiB // 2} "\
                                         f"{9 * MiB // 2} True"
