"""The image's bytes as the block writer reads them: raw, or gzip inflated on the fly.

``Stream`` fills the writer's chunk buffers from a file object: a gzip image (magic ``1f 8b``, several
members allowed, trailing non-gzip data such as a fwtool trailer ignored and noted) is inflated in
pieces of at most ``PIECE`` bytes, so memory does not grow with the image; any other image is copied
as it is (``readinto`` when the source has it). ``decompress=False`` turns the detection off: the bytes
are copied as they are even when they start ``1f 8b`` (an artifact whose format is known). A read
error, a corrupt or a truncated gzip stream raises ``SourceError``, which the writer reports at its
target offset.

``source_size`` tells the extent of a seekable source (the image's size when it is not compressed,
and whether it can be read again); ``read_source`` reads its bytes at an offset again, for the verify
to compare with what the target holds.

Runs after the pivot in a minimal ramfs: standard library and ``wrtcore`` only.
"""

from __future__ import annotations

import os

from wrtcore import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:  # annotations only: the mtd command's start-up (see wrtcore.light_tuple)
    import zlib
    from collections.abc import Callable
    from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
PIECE = 256 * 1024  # compressed bytes read, and inflated bytes produced, per zlib call


class SourceError(Exception):
    """The image stream broke (read error, corrupt or truncated gzip)."""


class Stream:
    """The image's bytes from ``source``: raw, or inflated on the fly; at most ``limit`` of them."""

    def __init__(self, source: BinaryIO, limit: int | None, *, decompress: bool = True) -> None:
        self._src = source
        self._limit = limit
        self._readinto: Callable[[memoryview], int | None] | None = getattr(source, "readinto", None)
        self.produced = 0
        self.trailing = False  # non-gzip data followed the last gzip member (ignored)
        self._pending = self._read(2 if limit is None else min(2, limit)) if decompress else b""
        self.compressed = self._pending == GZIP_MAGIC
        self._inflate: zlib._Decompress | None = None
        if self.compressed:
            import zlib  # here: a plain image (most of them) never loads it (the mtd command's start-up)

            self._inflate = zlib.decompressobj(31)

    def _read(self, size: int) -> bytes:
        try:
            data = self._src.read(size)
        except OSError as exc:
            raise SourceError(f"read failed: {exc.strerror or exc}") from exc
        return data or b""

    def fill(self, view: memoryview) -> int:
        """Fill ``view`` from the start; fewer bytes than its length only at the end of the image."""
        want = len(view) if self._limit is None else min(len(view), self._limit - self.produced)
        n = self._fill_gzip(view, want) if self.compressed else self._fill_raw(view, want)
        self.produced += n
        return n

    def _fill_raw(self, view: memoryview, want: int) -> int:
        pos = 0
        if self._pending:
            pos = min(len(self._pending), want)
            view[:pos] = self._pending[:pos]
            self._pending = self._pending[pos:]
        while pos < want:
            try:
                if self._readinto is not None:
                    n = self._readinto(view[pos:want]) or 0
                else:
                    data = self._src.read(want - pos) or b""
                    n = len(data)
                    view[pos:pos + n] = data
            except OSError as exc:
                raise SourceError(f"read failed: {exc.strerror or exc}") from exc
            if n == 0:
                break
            pos += n
        return pos

    def _fill_gzip(self, view: memoryview, want: int) -> int:
        import zlib  # loaded by __init__ for a compressed stream

        pos = 0
        while pos < want and self._inflate is not None:
            inflate = self._inflate
            if inflate.eof:
                self._next_member(inflate.unused_data)
                continue
            try:
                out = inflate.decompress(self._pending, min(want - pos, PIECE))
            except zlib.error as exc:
                raise SourceError(f"corrupt compressed image: {exc}") from exc
            self._pending = inflate.unconsumed_tail
            if out:
                view[pos:pos + len(out)] = out
                pos += len(out)
            elif not inflate.eof:
                if self._pending:  # zlib neither consumed input nor produced output
                    raise SourceError("corrupt compressed image: inflate made no progress")
                self._pending = self._read(PIECE)
                if not self._pending:
                    raise SourceError("compressed image truncated")
        return pos

    def _next_member(self, rest: bytes) -> None:
        while len(rest) < len(GZIP_MAGIC):
            more = self._read(PIECE)
            if not more:
                break
            rest += more
        if rest.startswith(GZIP_MAGIC):
            import zlib

            self._inflate = zlib.decompressobj(31)
            self._pending = rest
            return
        self._inflate = None
        self._pending = b""
        if rest:
            self.trailing = True
            log.get().info("write_image", note="data after the gzip stream ignored")


def source_size(source: BinaryIO) -> tuple[int | None, int | None]:
    """(start position, bytes from there to the end) for seekable sources, else (None, None)."""
    try:
        if not source.seekable():
            return None, None
        start = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(start)
    except (OSError, ValueError):
        return None, None
    return start, end - start


def read_source(source: BinaryIO, pos: int, into: memoryview) -> memoryview:
    """The source's bytes at ``pos`` (as many as ``into`` holds, fewer at its end)."""
    source.seek(pos)
    got = 0
    while got < len(into):
        n = source.readinto(into[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return into[:got]
