"""The streaming cpio reader: newc and crc, built by ``cpio -o`` and by Python; checks while reading."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from swu.cpio import CpioError, CpioReader, open_bundle
from swu.model import SwuError
from tests.swu_corpus import cpio_bytes, cpio_tool, sha

DATA = {"sw-description": b'software = { version = "1"; };\n', "a.bin": bytes(range(256)) * 41 + b"xyz",
        "empty": b""}


@pytest.mark.parametrize("fmt", ["newc", "crc"])
def test_reads_what_cpio_wrote(tmp_path: Path, fmt: str) -> None:
    for name, data in DATA.items():
        (tmp_path / name).write_bytes(data)
    archive = cpio_tool(tmp_path, list(DATA), fmt)
    members = [(m.name, m.read(), m.header.crc) for m in CpioReader(io.BytesIO(archive))]
    assert [(n, d) for n, d, _ in members] == list(DATA.items())
    assert all(crc == (fmt == "crc") for *_, crc in members)


def test_python_writer_matches_tool(tmp_path: Path) -> None:
    for name, data in DATA.items():
        (tmp_path / name).write_bytes(data)
    ours = [(m.name, m.read()) for m in CpioReader(io.BytesIO(cpio_bytes(list(DATA.items()))))]
    assert ours == list(DATA.items())


def test_crc_mismatch_detected() -> None:
    archive = bytearray(cpio_bytes([("a", b"hello world")]))
    archive[archive.index(b"hello")] ^= 1
    reader = CpioReader(io.BytesIO(bytes(archive)))
    member = next(reader)
    with pytest.raises(CpioError, match="Checksum WRONG"):
        member.read()


def test_unread_member_is_skipped_and_checked() -> None:
    archive = bytearray(cpio_bytes([("a", b"A" * 5000), ("b", b"B")]))
    archive[archive.index(b"AAAA") + 10] = ord("C")
    reader = CpioReader(io.BytesIO(bytes(archive)))
    next(reader)
    with pytest.raises(CpioError, match="Checksum WRONG"):
        next(reader)


def test_sha256_checked_at_end_of_data() -> None:
    member = next(CpioReader(io.BytesIO(cpio_bytes([("a", b"payload")]))))
    member.expect_sha256(sha(b"other"))
    with pytest.raises(SwuError, match="HASH mismatch"):
        member.read()


def test_truncated_archive() -> None:
    archive = cpio_bytes([("sw-description", b"x" * 3000), ("a", b"y" * 3000)])
    with pytest.raises(CpioError, match="truncated"):
        for member in CpioReader(io.BytesIO(archive[:4000])):
            member.skip()


def test_missing_trailer_is_truncation() -> None:
    archive = cpio_bytes([("a", b"y" * 8)])
    cut = archive[: archive.index(b"TRAILER") - 110]
    with pytest.raises(CpioError, match="truncated"):
        list(CpioReader(io.BytesIO(cut)))


@pytest.mark.parametrize("head", [b"070707", b"\xc7\x71"])
def test_odc_and_binary_refused(head: bytes) -> None:
    archive = head + cpio_bytes([("a", b"1")])[len(head):]
    with pytest.raises(CpioError, match="unsupported cpio format"):
        list(CpioReader(io.BytesIO(archive)))


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../b"])
def test_escaping_member_names_refused(name: str) -> None:
    with pytest.raises(CpioError, match="escapes"):
        list(CpioReader(io.BytesIO(cpio_bytes([(name, b"1")]))))


def test_open_bundle_description_and_signature_first() -> None:
    bundle = open_bundle(io.BytesIO(cpio_bytes([("sw-description", b"d"), ("sw-description.sig", b"s"),
                                                ("a", b"1")])))
    assert (bundle.description, bundle.signature) == (b"d", b"s")
    assert [(m.name, m.read()) for m in bundle.members] == [("a", b"1")]


def test_open_bundle_unsigned_keeps_second_member() -> None:
    bundle = open_bundle(io.BytesIO(cpio_bytes([("sw-description", b"d"), ("a", b"1"), ("b", b"2")])))
    assert bundle.signature is None
    assert [m.name for m in bundle.members] == ["a", "b"]


@pytest.mark.parametrize("members", [[("a", b"1"), ("sw-description", b"d")], []])
def test_open_bundle_requires_description_first(members: list[tuple[str, bytes]]) -> None:
    with pytest.raises(CpioError, match="sw-description"):
        open_bundle(io.BytesIO(cpio_bytes(members)))


def test_streams_without_holding_the_archive() -> None:
    size = 64 << 20
    head = cpio_bytes([("big", b"\0" * 4)], "newc")
    head = head[:54] + b"%08X" % size + head[62:head.index(b"big") + 6]  # "big", 64 MiB

    class Source(io.RawIOBase):
        """The header, then zeros made on the fly; records the biggest read asked for."""

        pos = 0
        biggest = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            self.biggest = max(self.biggest, len(buffer))
            if self.pos < len(head):
                chunk = head[self.pos:self.pos + len(buffer)]
            else:
                chunk = bytes(min(len(buffer), len(head) + size - self.pos))
            memoryview(buffer)[:len(chunk)] = chunk
            self.pos += len(chunk)
            return len(chunk)

    source = Source()
    member = next(CpioReader(io.BufferedReader(source)))
    assert sum(len(c) for c in member.chunks()) == size
    assert source.biggest <= 1 << 20
