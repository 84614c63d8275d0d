"""The streaming path of a raw artifact: re-reading a member of a file bundle, the source the writers
read, bytes kept as they are when they look like gzip, and the 070702 sum policy (swu/cpio.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from stage2.writers import block
from stage2.writers.block import WriteReport
from swu.cpio import CpioError, CpioReader, MemberReader
from swu.handlers import raw
from swu.handlers.base import Call, Settings
from swu.handlers.source import ArtifactSource
from swu.model import Artifact, Section
from tests.swu_corpus import cpio_bytes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _members(path: Path) -> tuple[Any, CpioReader]:
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    return f, CpioReader(f)


def _bundle(tmp_path: Path, members: list[tuple[str, bytes]], fmt: str = "crc") -> Path:
    path = tmp_path / "b.swu"
    path.write_bytes(b"JUNK" + cpio_bytes(members, fmt))  # not at offset 0 of its file
    return path


def _open_at(path: Path) -> tuple[Any, CpioReader]:
    f, _ = _members(path)
    f.seek(4)
    return f, CpioReader(f)


def test_member_of_a_file_is_read_again_after_its_end(tmp_path: Path) -> None:
    data = os.urandom(3000)
    f, reader = _open_at(_bundle(tmp_path, [("a", data), ("b", b"next")]))
    with f:
        member = next(reader)
        source = ArtifactSource(member)
        assert source.seekable() and source.length == 3000
        assert source.seek(0, os.SEEK_END) == 3000 and source.seek(0) == 0  # the writers' probe
        first = source.read(1000)
        source.seek(10)
        with pytest.raises(io.UnsupportedOperation, match="after its last byte"):
            source.read(5)
        source.seek(1000)
        rest = source.read(5000)
        assert first + rest == data
        source.seek(100)
        again = bytearray(50)
        assert source.readinto(again) == 50 and bytes(again) == data[100:150]
        assert source.read(1 << 20) == data[150:]
        nxt = next(reader)  # the bundle's position was not moved by the re-reads
        assert (nxt.name, nxt.read()) == ("b", b"next")


def test_members_of_a_pipe_are_not_seekable() -> None:
    reader = CpioReader(io.BytesIO(cpio_bytes([("a", b"xyz")])))
    source = ArtifactSource(next(reader))
    assert not source.seekable() and source.length == 3
    with pytest.raises(io.UnsupportedOperation):
        source.seek(0)


def test_first_read_limit_gives_one_byte_then_the_rest() -> None:
    reader = CpioReader(io.BytesIO(cpio_bytes([("a", b"\x1f\x8b\x08rest")])))
    source = ArtifactSource(next(reader), first_read_limit=1)
    assert source.read(2) == b"\x1f"
    assert source.read(100) == b"\x8b\x08rest"


def _art(device: Path, **kw: object) -> Artifact:
    return Artifact(section=Section.IMAGES, where="software.images[0]", filename="a", handler="raw",
                    device=str(device), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("from_file", [True, False])
def test_raw_writes_a_gzip_looking_artifact_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     from_file: bool) -> None:
    data = gzip.compress(os.urandom(1 << 20)) + os.urandom(5000)  # starts 1f 8b, stored uncompressed
    path = _bundle(tmp_path, [("a", data)])
    reports: list[WriteReport] = []
    real = block.write_image

    def recorded(*args: Any, **kwargs: Any) -> WriteReport:
        reports.append(real(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(raw, "write_image", recorded)
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    f, reader = _open_at(path) if from_file else (io.BytesIO(path.read_bytes()[4:]), None)
    with f:
        member = next(reader or CpioReader(f))
        member.expect_sha256(_sha(data))
        result = raw.install(_art(target), member, Call(Settings(tmpdir=str(tmp_path))))
    assert target.read_bytes() == data and result.written == len(data)
    [report] = reports
    assert not report.compressed
    # A file bundle is compared with itself after the write; a stream keeps a digest per chunk.
    assert (report.digest is None) is from_file


def _bad_check(archive: bytes, name: bytes) -> bytes:
    at = archive.index(name + b"\0") - 110 + 102
    return archive[:at] + b"%08X" % (int(archive[at:at + 8], 16) ^ 1) + archive[at + 8:]


def test_sum_is_not_computed_when_the_sha256_is_checked() -> None:
    data = os.urandom(70000)
    archive = _bad_check(cpio_bytes([("a", data)]), b"a")
    member: MemberReader = next(CpioReader(io.BytesIO(archive)))
    member.expect_sha256(_sha(data))
    assert b"".join(member.chunks()) == data  # the sha256 decides: accepted


@pytest.mark.parametrize("hashed", [False, True])
def test_sum_is_checked_without_an_expected_sha256(hashed: bool) -> None:
    archive = _bad_check(cpio_bytes([("a", b"payload" * 100)]), b"a")
    member = next(CpioReader(io.BytesIO(archive)))
    if hashed:
        member.hash()  # a digest computed for the caller, not checked: the sum still is
    with pytest.raises(CpioError, match="Checksum WRONG"):
        member.skip()


def test_read_returns_what_the_stream_gives_within_the_member() -> None:
    reader = CpioReader(io.BytesIO(cpio_bytes([("a", b"0123456789"), ("b", b"B")])))
    member = next(reader)
    assert member.read(4) == b"0123"
    assert member.read() == b"456789"
    assert member.read() == b""
    assert next(reader).read() == b"B"
