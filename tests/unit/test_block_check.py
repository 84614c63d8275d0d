"""The block writer's ``check`` (a source's own check run beside the writes) and the ``.swu`` member's
sha256 handed off to it: no root needed."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest

from stage2.writers.block import Held, write_image
from swu.cpio import MemberHeader, MemberReader
from swu.handlers import raw
from swu.handlers.base import Call, InstallError, Settings
from swu.handlers.source import ArtifactSource
from swu.model import Artifact, Section, SwuError
from wrtcore.errors import WriteError

CHUNK = 64 * 1024


class Recorder:
    """A check that keeps what it saw and the threads it ran in; raises on the call numbered ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.seen = bytearray()
        self.calls = 0
        self.threads: set[int] = set()
        self.fail_at = fail_at

    def __call__(self, data: memoryview) -> None:
        self.threads.add(threading.get_ident())
        self.seen += data
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("bad bytes")


def test_check_sees_every_byte_in_order_in_another_thread(tmp_path: Path) -> None:
    image = os.urandom(5 * CHUNK + 123)
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    check = Recorder()
    report = write_image(io.BytesIO(image), str(target), chunk_size=CHUNK, buffers=4, check=check)
    assert bytes(check.seen) == image
    assert check.calls == 6
    assert threading.get_ident() not in check.threads
    assert report.bytes_written == len(image)
    assert target.read_bytes() == image


@pytest.mark.parametrize("size", [5 * CHUNK, 5 * CHUNK + 7])
def test_failing_last_check_keeps_the_last_chunk_off_the_target(tmp_path: Path, size: int) -> None:
    """The image's size is known (a seekable source), so the last chunk waits for every check."""
    image = os.urandom(size)
    target = tmp_path / "disk.img"
    target.write_bytes(b"\xaa" * size)
    chunks = -(-size // CHUNK)
    with pytest.raises(WriteError, match="bad bytes") as info:
        write_image(io.BytesIO(image), str(target), chunk_size=CHUNK, check=Recorder(fail_at=chunks))
    last = (chunks - 1) * CHUNK
    assert info.value.written
    assert info.value.offset == last
    content = target.read_bytes()
    assert content[:last] == image[:last]
    assert content[last:] == b"\xaa" * (size - last)


def test_failing_check_of_a_single_chunk_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "disk.img"
    target.write_bytes(b"\xaa" * 100)
    with pytest.raises(WriteError, match="bad bytes") as info:
        write_image(io.BytesIO(b"x" * 100), str(target), chunk_size=CHUNK, check=Recorder(fail_at=1))
    assert not info.value.written
    assert target.read_bytes() == b"\xaa" * 100


def test_failing_early_check_stops_the_pass(tmp_path: Path) -> None:
    image = os.urandom(8 * CHUNK)
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    check = Recorder(fail_at=2)
    with pytest.raises(WriteError, match="bad bytes"):
        write_image(io.BytesIO(image), str(target), chunk_size=CHUNK, buffers=2, check=check)
    assert check.calls == 2  # the checks after the failure are passed over
    assert target.stat().st_size < len(image)  # the pass stopped before the end


def test_check_sees_the_held_bytes_not_the_zeros(tmp_path: Path) -> None:
    image = b"\x11" * 100 + b"HEAD" + os.urandom(3 * CHUNK)
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    check = Recorder()

    def find(pos: int, data: memoryview) -> Held | None:
        return Held(start=100, length=4, commit_at=len(image)) if pos == 0 else None

    write_image(io.BytesIO(image), str(target), chunk_size=CHUNK, check=check, hold=find)
    assert bytes(check.seen) == image
    assert target.read_bytes() == image


def _member(data: bytes, sha256: str) -> MemberReader:
    reader = MemberReader(io.BytesIO(data), MemberHeader("img", len(data), 0o100644, 0, 0, False, 0))
    reader.expect_sha256(sha256)
    return reader


def test_handed_off_sha256_is_checked_by_the_writer(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 5)
    member = _member(data, hashlib.sha256(data).hexdigest())
    source = ArtifactSource(member)
    check = source.hand_off_check()
    assert check is not None
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    write_image(source, str(target), chunk_size=CHUNK, length=len(data), check=check,  # type: ignore[arg-type]
                decompress=False)
    member.skip()  # the member is finished: its sha256 matched
    assert target.read_bytes() == data


def test_handed_off_sha256_mismatch_raises_on_the_last_byte() -> None:
    data = b"payload" * 10
    member = _member(data, "00" * 32)
    feed = member.hand_off_sha256()
    buf = bytearray(len(data))
    assert member.readinto(buf) == len(data)  # reading no longer hashes, so it does not raise
    feed(memoryview(buf)[:30])
    with pytest.raises(SwuError, match="HASH mismatch"):
        feed(memoryview(buf)[30:])


def test_member_not_done_until_the_handed_off_sha256_has_seen_every_byte() -> None:
    data = b"payload" * 10
    member = _member(data, hashlib.sha256(data).hexdigest())
    feed = member.hand_off_sha256()
    buf = bytearray(len(data))
    member.readinto(buf)
    feed(memoryview(buf)[:10])
    with pytest.raises(SwuError, match="sha256 not checked"):
        member.skip()
    with pytest.raises(SwuError, match="fed"):
        feed(memoryview(buf))


def test_hand_off_needs_an_expected_sha256_and_an_unread_member() -> None:
    plain = MemberReader(io.BytesIO(b"abc"), MemberHeader("img", 3, 0o100644, 0, 0, False, 0))
    assert ArtifactSource(plain).hand_off_check() is None
    with pytest.raises(SwuError, match="hand_off_sha256"):
        plain.hand_off_sha256()
    started = _member(b"abcdef", hashlib.sha256(b"abcdef").hexdigest())
    started.read(2)
    assert ArtifactSource(started).hand_off_check() is None


def test_raw_handler_mismatch_reports_the_artifacts_offset_and_keeps_the_last_chunk_off(tmp_path: Path
                                                                                          ) -> None:
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    data = os.urandom(2 * raw.CHUNK + 10)
    member = _member(data, "00" * 32)
    art = Artifact(section=Section.IMAGES, where="software.images[0]", filename="img", handler="raw",
                   device=str(target), offset=4096)
    with pytest.raises(InstallError, match=r"HASH mismatch.*from offset 4096\)$") as info:
        raw.install(art, member, Call(Settings(tmpdir=str(tmp_path)), None, member.skip))
    assert info.value.written and info.value.offset == 4096
    assert target.read_bytes()[4096:] == data[:2 * raw.CHUNK]  # the last chunk never went out
