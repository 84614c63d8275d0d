"""Streaming decompression of an artifact's bytes, with memory bounded whatever the ratio.

SWUpdate 2022.12 (``core/cpio_utils.c``): ``compressed = "zlib"`` (or the deprecated ``true``) is inflated
with ``inflateInit2(16 + MAX_WBITS)``, i.e. a **gzip** stream only (a bare zlib stream fails: "inflate
failed"), and decompression stops at the end of the first gzip member; ``"zstd"`` runs
``ZSTD_decompressStream`` across frames. We do the same, with one deliberate difference: a gzip stream
that ends before its end-of-member marker is an error here (SWUpdate writes what it got and relies on the
sha256). A truncated zstd stream is caught only by the artifact's sha256 (python-zstandard's streaming
reader does not report it).

Each reader takes an upstream object with ``read(n) -> bytes`` (the hashing artifact reader) and offers
``read(n)`` returning at most ``n`` bytes, ``b""`` at the end.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

import zstandard

from swu.model import Compression, SwuError

PIECE = 64 * 1024  # compressed bytes pulled from upstream per step


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class GzipReader:
    """Inflates one gzip member from ``upstream``; output per ``read(n)`` is at most ``n`` bytes."""

    def __init__(self, upstream: Readable, where: str) -> None:
        self._up = upstream
        self._where = where
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""  # input zlib has not consumed yet (output limit reached)
        self._done = False
        self.consumed = 0  # compressed bytes pulled from upstream

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = PIECE * 16
        while not self._done:
            if not self._tail:
                self._tail = self._up.read(PIECE)
                self.consumed += len(self._tail)
                if not self._tail:
                    raise SwuError("compressed data truncated (gzip stream ends early)", self._where)
            try:
                out = self._z.decompress(self._tail, size)
            except zlib.error as exc:
                raise SwuError(f"inflate failed: {exc}", self._where) from None
            self._tail = self._z.unconsumed_tail
            if self._z.eof:
                self._done = True  # like SWUpdate: bytes after the first member are not inflated
            if out:
                return out
        return b""


class ZstdReader:
    """Decompresses zstd frames (several in a row allowed) from ``upstream``."""

    def __init__(self, upstream: Readable, where: str) -> None:
        self._where = where
        source: Any = upstream  # any object with read(n) will do
        self._r = zstandard.ZstdDecompressor().stream_reader(source, read_size=PIECE,
                                                             read_across_frames=True, closefd=False)

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = PIECE * 16
        try:
            return bytes(self._r.read(size))
        except zstandard.ZstdError as exc:
            raise SwuError(f"zstd decompression failed: {exc}", self._where) from None


def decompressing(upstream: Readable, method: Compression | None, where: str) -> Readable:
    """``upstream`` as it is, or a reader that decompresses it."""
    if method is None:
        return upstream
    if method is Compression.ZLIB:
        return GzipReader(upstream, where)
    if method is Compression.ZSTD:
        return ZstdReader(upstream, where)
    raise SwuError(f"unsupported compression {method}", where)
