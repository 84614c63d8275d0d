"""The block writer on real block devices: loop devices, and faults injected under them.

Every device here is made by the test over files in ``tmp_path`` and undone in fixture finalizers.

Two faults are injected: a loop device over a file on a full, size-limited tmpfs whose only unallocated range
is a hole (writes there fail with ENOSPC, exactly like a bad region); and a "lost write": the bytes the writer
has just written are overwritten with zeros in the loop device's backing file, beneath the block device's
page cache.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from datagen import random_bytes

from stage2.writers.block import device_size, write_image
from wrtcore.errors import WriteError

pytestmark = pytest.mark.sandbox

MiB = 1 << 20
BAD = 4 * MiB  # first byte of the injected fault: sectors 8192..8199
BAD_LEN = 4096



def sh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=True).stdout.strip()


def read_at(path: str | Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def zero_at(path: str | Path, offset: int, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(size), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


class Devices:
    """Loop devices and tmpfs mounts made by one test, undone in reverse order."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path) -> None:
        self._stack = stack
        self._workdir = workdir

    def sparse_file(self, name: str, size: int) -> Path:
        path = self._workdir / name
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    def loop(self, backing: Path) -> str:
        try:
            dev = sh("losetup", "--find", "--show", str(backing))
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot attach a loop device: {exc}")
        self._stack.callback(sh, "losetup", "--detach", dev)
        return dev

    def tmpfs(self, name: str, size: int) -> Path:
        path = self._workdir / name
        path.mkdir()
        sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "wrt-test", str(path))
        self._stack.callback(sh, "umount", str(path))
        return path


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Devices]:
    with contextlib.ExitStack() as stack:
        yield Devices(stack, tmp_path)


def holed_device(devices: Devices, size: int) -> str:
    """A loop device whose bytes [4 MiB, 4 MiB + 4 KiB) cannot be written (ENOSPC), the rest can.

    Its backing file lives on a tmpfs that is then filled up: every page of the file is allocated except
    the hole, so the only write that needs a new page, and fails, is one into the hole.
    """
    fs = devices.tmpfs("fs", 2 * size)
    backing = fs / "disk"
    fd = os.open(backing, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, BAD)
        os.posix_fallocate(fd, BAD + BAD_LEN, size - BAD - BAD_LEN)
    finally:
        os.close(fd)
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        page = b"\xff" * 4096
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, page)
    finally:
        os.close(fd)
    return devices.loop(backing)


@pytest.mark.parametrize("direct", [None, False])
@pytest.mark.parametrize("compressed", [False, True])
def test_loop_device_written_exactly(devices: Devices, tmp_path: Path, direct: bool | None,
                                     compressed: bool) -> None:
    dev = devices.loop(devices.sparse_file("disk", 16 * MiB))
    data = random_bytes(10 * MiB + 777)  # does not end on a sector: the tail goes through the page cache
    image = tmp_path / "image"
    image.write_bytes(gzip.compress(data, 1) if compressed else data)
    with open(image, "rb") as source:
        report = write_image(source, dev, offset=MiB, direct=direct)
    assert report.bytes_written == len(data) and report.compressed == compressed
    assert report.direct == (direct is None)
    assert read_at(dev, 0, 16 * MiB) == bytes(MiB) + data + bytes(5 * MiB - 777)
    assert device_size(dev) == 16 * MiB


def test_image_larger_than_device_rejected_before_any_write(devices: Devices) -> None:
    backing = devices.sparse_file("disk", 4 * MiB)
    dev = devices.loop(backing)
    with pytest.raises(WriteError, match="image larger than target") as err:
        write_image(io.BytesIO(random_bytes(4 * MiB + 1)), dev)
    assert err.value.written is False and err.value.offset == 4 * MiB
    assert backing.stat().st_blocks == 0  # still entirely sparse: not one block was written


def test_device_in_use_is_refused(devices: Devices) -> None:
    dev = devices.loop(devices.sparse_file("disk", 4 * MiB))
    holder = os.open(dev, os.O_RDONLY | os.O_EXCL)  # as a mount or an active swap would hold it
    try:
        with pytest.raises(WriteError, match="target busy") as err:
            write_image(io.BytesIO(random_bytes(MiB)), dev)
    finally:
        os.close(holder)
    assert err.value.written is False


@pytest.mark.parametrize(("chunk_size", "offset"), [
    pytest.param(MiB, 0, id="1MiB-chunks"),
    # 256 KiB + 5 * 768 KiB = 4 MiB: the sixth chunk starts at the hole. The offset is a target offset.
    pytest.param(768 * 1024, 256 * 1024, id="768KiB-chunks-at-256KiB"),
])
def test_write_error_from_a_hole_in_a_full_tmpfs(devices: Devices, chunk_size: int, offset: int) -> None:
    """The failing chunk starts at the hole, so the error is reported at 4 MiB, with ``written`` True.

    (The hole must be where the loop device's request starts: loop completes a request whose backing-file
    write came back short as a success, see the next test.)
    """
    dev = holed_device(devices, 8 * MiB)
    data = random_bytes(6 * MiB)
    with pytest.raises(WriteError, match="write failed: No space left on device") as err:
        write_image(io.BytesIO(data), dev, chunk_size=chunk_size, offset=offset)
    assert err.value.offset == BAD and err.value.written is True
    assert read_at(dev, offset, BAD - offset) == data[:BAD - offset]


def test_write_lost_silently_by_the_device_is_caught_by_verify(devices: Devices) -> None:
    """With 768 KiB chunks from offset 0, the chunk [3.75 MiB, 4.5 MiB) reaches the hole in its middle.

    The loop driver's backing-file write comes back short (256 KiB) and loop reports the request as
    done (lo_complete_rq only retries short reads): the write "succeeds" and [4 MiB, 4.5 MiB) is lost.
    Only the read-back sees it, at the first byte of the hole.
    """
    dev = holed_device(devices, 8 * MiB)
    data = random_bytes(6 * MiB)
    with pytest.raises(WriteError, match="verify mismatch") as err:
        write_image(io.BytesIO(data), dev, chunk_size=768 * 1024)
    first = BAD + next(i for i in range(BAD_LEN) if data[BAD + i])
    assert err.value.offset == first and err.value.written is True


def test_write_error_through_the_page_cache_is_reported_at_its_sync_window(devices: Devices) -> None:
    """Without O_DIRECT the error only surfaces at fsync: with a sync per chunk it still names the chunk."""
    dev = holed_device(devices, 8 * MiB)
    with pytest.raises(WriteError, match="write failed") as err:
        write_image(io.BytesIO(random_bytes(6 * MiB)), dev, direct=False, sync_every=MiB)
    assert err.value.offset == 4 * MiB and err.value.written is True


@pytest.mark.parametrize("direct", [None, False])
def test_verify_mismatch_from_a_lost_write(devices: Devices, direct: bool | None) -> None:
    """The backing file's bytes [4 MiB, +4 KiB) are zeroed once the writer is past them.

    Through the page cache (``direct=False``) the loop device's cache still holds the written bytes: the
    mismatch is only seen if the writer really drops that cache (BLKFLSBUF, FADV_DONTNEED) before reading
    back. A sync per chunk puts each chunk in the backing file before the next progress call.
    """
    backing = devices.sparse_file("disk", 8 * MiB)
    dev = devices.loop(backing)
    data = random_bytes(6 * MiB, seed=2)

    def lose_write(done: int, _total: int | None) -> None:
        if done == BAD + MiB:
            zero_at(backing, BAD, BAD_LEN)

    with pytest.raises(WriteError, match="verify mismatch") as err:
        write_image(io.BytesIO(data), dev, progress=lose_write, direct=direct, sync_every=MiB)
    first = BAD + next(i for i in range(BAD_LEN) if data[BAD + i])
    assert err.value.offset == first and err.value.written is True
