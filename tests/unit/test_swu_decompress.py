"""Streaming decompression: SWUpdate's gzip-only "zlib", zstd across frames, bounded output per read."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest
import zstandard

from swu.decompress import GzipReader, ZstdReader, decompressing
from swu.model import Compression, SwuError


def _drain(reader: object, size: int = 1 << 20) -> tuple[bytes, int]:
    out, biggest = [], 0
    while chunk := reader.read(size):  # type: ignore[attr-defined]
        out.append(chunk)
        biggest = max(biggest, len(chunk))
    return b"".join(out), biggest


def test_gzip_roundtrip_and_bounded_output() -> None:
    data = os.urandom(100_000) + bytes(20 << 20)  # 20 MiB of zeros compress about 1000:1
    reader = GzipReader(io.BytesIO(gzip.compress(data)), "x")
    out, biggest = _drain(reader, 1 << 20)
    assert out == data
    assert biggest <= 1 << 20


def test_gzip_stops_after_first_member_like_swupdate() -> None:
    stream = gzip.compress(b"first") + gzip.compress(b"second")
    assert _drain(GzipReader(io.BytesIO(stream), "x"))[0] == b"first"


def test_bare_zlib_stream_is_refused_like_swupdate() -> None:
    with pytest.raises(SwuError, match="inflate failed"):
        _drain(GzipReader(io.BytesIO(zlib.compress(b"hello" * 100)), "img"))


def test_truncated_gzip_is_an_error() -> None:
    stream = gzip.compress(os.urandom(50_000))
    with pytest.raises(SwuError, match="truncated"):
        _drain(GzipReader(io.BytesIO(stream[:-100]), "img"))


def test_random_bytes_labelled_zlib_fail() -> None:
    with pytest.raises(SwuError, match="inflate failed"):
        _drain(decompressing(io.BytesIO(os.urandom(4096)), Compression.ZLIB, "img"))


def test_zstd_across_frames_bounded() -> None:
    c = zstandard.ZstdCompressor()
    data1, data2 = bytes(8 << 20), os.urandom(30_000)
    reader = ZstdReader(io.BytesIO(c.compress(data1) + c.compress(data2)), "x")
    out, biggest = _drain(reader, 256 * 1024)
    assert out == data1 + data2
    assert biggest <= 256 * 1024


def test_zstd_garbage_fails() -> None:
    with pytest.raises(SwuError, match="zstd"):
        _drain(decompressing(io.BytesIO(b"not zstd at all" * 10), Compression.ZSTD, "img"))


def test_uncompressed_is_passed_through() -> None:
    src = io.BytesIO(b"abc")
    assert decompressing(src, None, "x") is src
