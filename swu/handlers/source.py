"""An artifact's bytes in the shape the project's writers read (``stage2.writers``): a binary file object.

The writers (``write_image``, ``write_flash``) take a file object: they fill their own aligned buffers
with ``readinto``, ask ``seekable``/``tell``/``seek`` for the image's extent, and, when the source can be
read again, compare the target with it after the write instead of hashing every chunk. An artifact
arrives as a cpio member (its sha256 checked as it passes, :class:`swu.cpio.MemberReader`), a
decompressor reading one, or a spooled file; :class:`ArtifactSource` gives each that shape:

* ``readinto`` goes straight to the member (one copy: page cache to the writer's buffer);
* it is seekable only when it can honestly be read again: an uncompressed member of a bundle that is a
  file, or a spooled file. Before the end of the data only the writers' probe of the extent is allowed
  (``tell``, ``seek(0, SEEK_END)``, ``seek`` back); once every byte has passed (and the sha256 was
  checked) a read at any position is a ``pread`` of the bundle, which leaves its position alone;
* ``first_read_limit``: the first ``read`` returns at most that many bytes. The MTD writer sniffs the
  first two bytes for gzip and would inflate an artifact that merely starts ``1f 8b``; a one-byte first
  read (a short read, which every file-object consumer must accept) keeps it from matching.

* :meth:`ArtifactSource.hand_off_check`: an uncompressed member's sha256 as a check the block writer
  runs on the very buffers it writes, in a thread of its own beside the writes (``write_image``'s
  ``check``), instead of in the reading thread; the member still refuses to count as read until that
  hash has seen every byte and matched.

``delivered`` counts the bytes handed out, so a handler can say where a failure raised by the source (a
sha256 mismatch at the end of the data) left the target.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from typing import Any

from swu.cpio import MemberReader
from swu.decompress import Readable


class ArtifactSource(io.RawIOBase):
    """``src`` (a member, a decompressor or a spooled file) as a readable, possibly re-readable file."""

    def __init__(self, src: Readable, *, first_read_limit: int | None = None) -> None:
        super().__init__()
        self._src = src
        self._member = src if isinstance(src, MemberReader) and src.rereadable else None
        self._file = _regular_file(src) if self._member is None else None
        self._first = first_read_limit
        self._readinto: Any = getattr(src, "readinto", None)
        self.delivered = 0  # bytes handed out by the first pass
        self._pos = 0  # the file position the writer sees
        self.length = self._length(src)  # bytes the artifact has, when known before reading it
        self.size = self.length if self._member is not None or self._file is not None else None

    def _length(self, src: Readable) -> int | None:
        if isinstance(src, MemberReader):
            return src.header.size
        if self._file is not None:
            fd, base = self._file
            return os.fstat(fd).st_size - base
        return None

    def hand_off_check(self) -> Callable[[memoryview], None] | None:
        """The member's sha256 for the writer to compute on the bytes it writes, in order (see
        :meth:`swu.cpio.MemberReader.hand_off_sha256`), when the source is a member whose sha256 is
        expected and nothing has been read yet; else None: the sha256, if any, is computed as the bytes
        are read."""
        src = self._src
        if (isinstance(src, MemberReader) and src.expects_sha256 and self.delivered == 0
                and self._first is None and src.remaining == src.header.size > 0):
            return src.hand_off_sha256()
        return None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.size is not None

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self.size is None:
            raise io.UnsupportedOperation("the artifact is a stream: it cannot be read again")
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos != self.delivered:
            return self._reread(view)
        if self._first is not None:
            view = view[:self._first]
            self._first = None
        if self._readinto is not None:
            n = int(self._readinto(view))
        else:
            data = self._src.read(len(view))
            n = len(data)
            view[:n] = data
        self.delivered += n
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if self._pos == self.delivered and self._readinto is None:
            if self._first is not None:
                size = self._first if size < 0 else min(size, self._first)
                self._first = None
            data = self._src.read(size)
            self.delivered += len(data)
            self._pos += len(data)
            return data
        buf = bytearray(size if size >= 0 else 1 << 20)
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def _reread(self, view: memoryview) -> int:
        """A read away from the stream's front: allowed once every byte has passed."""
        if self.size is None or self.delivered < self.size:
            raise io.UnsupportedOperation("the artifact can be read again only after its last byte")
        if self._member is not None:
            n = self._member.reread(self._pos, view)
        else:
            assert self._file is not None
            fd, base = self._file
            want = max(0, min(len(view), self.size - self._pos))
            n = os.preadv(fd, [view[:want]], base + self._pos) if want else 0
        self._pos += n
        return n


def _regular_file(src: object) -> tuple[int, int] | None:
    """(descriptor, position) of ``src`` when it is an open regular file, else None."""
    try:
        fd = src.fileno()  # type: ignore[attr-defined]
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fd, int(src.tell())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
