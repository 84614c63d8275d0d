"""A streaming reader for the cpio archives a ``.swu`` bundle is made of.

Formats: ``newc`` (magic ``070701``) and ``newc`` with checksum (``070702``, what ``cpio -H crc`` and
SWUpdate's generators write). Both have a 110-byte ASCII header::

    off size field                      off size field
    0   6    magic                      62  8    filesize (hex, like every field below)
    6   8    ino                        70  8    devmajor
    14  8    mode                       78  8    devminor
    22  8    uid                        86  8    rdevmajor
    30  8    gid                        94  8    rdevminor
    38  8    nlink                      102 8    namesize (with the trailing NUL)
    46  8    mtime                      110 ...  check (070702: 32-bit sum of the data bytes; 070701: 0)

then the NUL-terminated name padded so that header + name is a multiple of 4, then the data padded to a
multiple of 4. The archive ends with a member named ``TRAILER!!!``. The old portable (``070707``) and
binary formats are refused, as SWUpdate does.

The archive is read once, front to back, from any readable binary stream (a pipe works): each member's
data is handed out through a bounded :class:`MemberReader` that checks the 070702 sum and, when asked,
the sha256 while the bytes pass, and raises at the end of the data, before the caller sees end-of-file.
A consumer that writes the bytes from its own buffers may take the sha256 over
(:meth:`MemberReader.hand_off_sha256`) and compute it in another thread beside its writes; the member
then refuses to count as read until that hash has seen every byte and matched.
Nothing but the caller's read buffer is held in memory (``readinto`` fills it straight from the stream).
When the stream is a file (it has a descriptor and can tell its position), a member read to its end can
be read again with :meth:`MemberReader.reread` (``pread``, the stream's position untouched): the writers
compare what they wrote with it instead of hashing every chunk.

**The 070702 sum and the sha256 (a deliberate difference from SWUpdate).** SWUpdate adds up the data
bytes of every member of a ``crc`` archive and refuses the member when the sum differs from the header's
``check`` ("Checksum WRONG"). We do the same, except for a member whose sha256 the caller checks
(:meth:`MemberReader.expect_sha256`): its sum is not computed. The sha256 binds the exact bytes (and, in
a signed bundle, is itself signed), so it decides everything the 32-bit sum could; computing the sum
too would cost more than the write (it holds the interpreter lock at about 200 MiB/s, while sha256
releases it and runs at 0.6-1 GB/s). The visible consequence: a member whose data matches its sha256
but whose header carries a wrong ``check`` is accepted here and refused by SWUpdate
(``tests/swu_corpus.py``, case ``crc-check-wrong``). Members without an expected sha256 (the
description, its signature, members the plan skips, artifacts without ``sha256``) keep the sum.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from swu.model import SwuError

NEWC = b"070701"
NEWC_CRC = b"070702"
ODC = b"070707"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
MAX_NAME = 4096
CHUNK = 1 << 20
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")


class CpioError(SwuError):
    """A damaged, truncated or unsupported archive."""


@dataclass(frozen=True)
class MemberHeader:
    name: str
    size: int
    mode: int
    mtime: int
    check: int  # the stored 070702 sum (0 for newc)
    crc: bool  # 070702
    offset: int  # offset of the header in the archive
    data_offset: int | None = None  # offset of the data in the stream's file (None: not a file)


def validate_member_name(name: str) -> str | None:
    """Why ``name`` may not be used as a member (or artifact ``filename``) name, or None when it is fine.

    Refused: empty, absolute, a ``..`` component, NUL or newline, longer than :data:`MAX_NAME`."""
    if not name:
        return "empty name"
    if "\0" in name or "\n" in name:
        return "name contains NUL or newline"
    if len(name) > MAX_NAME:
        return "name too long"
    if name.startswith("/"):
        return "absolute name escapes the bundle"
    if ".." in name.split("/"):
        return "name with '..' escapes the bundle"
    return None


def _byte_sum(data: memoryview) -> int:
    """The 070702 check of ``data``: the sum of its bytes (exact, not reduced).

    ``sum(bytes)`` runs at about 100 MiB/s; this combines two C-speed reductions by the Chinese remainder
    theorem, per piece of at most 65280 bytes (so the sum stays below 255 * 65521): Adler-32's first
    half is the sum mod 65521, and the piece read as an integer is congruent to its byte sum mod 255."""
    total = 0
    for start in range(0, len(data), _PIECE):
        piece = data[start:start + _PIECE]
        mod_a = (zlib.adler32(piece) - 1) % 65536 % 65521
        mod_b = int.from_bytes(piece, "little") % 255
        total += mod_a + 65521 * (((mod_b - mod_a) * _INV) % 255)
    return total


_PIECE = 65280
_INV = pow(65521, -1, 255)


def _read_exact(stream: BinaryIO, size: int, what: str, offset: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise CpioError(f"truncated archive: {what} at offset {offset} ends after {size - left} of "
                            f"{size} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class MemberReader:
    """The data of one member: at most ``size`` bytes, checked as they pass.

    ``read``/``readinto`` behave like a file's. When the last byte has been read, the 070702 sum and
    (after :meth:`expect_sha256`) the sha256 are compared and a mismatch raises :class:`CpioError` or
    :class:`SwuError` ("HASH mismatch") from that read, so a consumer that reads to end-of-file never
    completes on bad data. :meth:`skip` reads the rest (still checking the sum)."""

    def __init__(self, stream: BinaryIO, header: MemberHeader, fd: int | None = None) -> None:
        self._stream = stream
        self.header = header
        self._fd = fd if header.data_offset is not None else None
        self._readinto = getattr(stream, "readinto", None)
        self._left = header.size
        self._sum = 0
        self._sha: hashlib._Hash | None = None
        self._expected: str | None = None
        self._handed_off = False  # the sha256 is fed by the consumer (hand_off_sha256)
        self._fed = 0  # bytes fed to it so far
        self._checked = False  # the handed-off sha256 has seen every byte and matched
        self._finished = header.size == 0
        if self._finished:
            self._finish()

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def remaining(self) -> int:
        return self._left

    @property
    def done(self) -> bool:
        return self._left == 0

    @property
    def expects_sha256(self) -> bool:
        """Whether :meth:`expect_sha256` was called."""
        return self._expected is not None

    @property
    def rereadable(self) -> bool:
        """Whether :meth:`reread` works once the member has been read (the stream is a file)."""
        return self._fd is not None

    def expect_sha256(self, hexdigest: str) -> None:
        """Check the data against ``hexdigest`` (call before the first read); the 070702 sum is then not
        computed (see the module's docstring)."""
        if self._left != self.header.size:
            raise SwuError("expect_sha256 after reading started", self.name)
        self._sha = hashlib.sha256()
        self._expected = hexdigest.lower()
        if self._left == 0:
            self._finished = False
            self._finish()

    def hand_off_sha256(self) -> Callable[[memoryview], None]:
        """Leave the sha256 (set by :meth:`expect_sha256`, before the first read) to the consumer: reads no
        longer hash, and the returned function must be called with every byte of the data, in order (from
        any one thread, such as a writer's, on the very buffers it writes). It raises the HASH mismatch
        when fed the last byte. The member counts as read only once it has matched: :meth:`skip`, which
        the installer calls to finish a member, raises while it has not."""
        if self._expected is None or self._sha is None or self._left != self.header.size or not self._left:
            raise SwuError("hand_off_sha256 needs expect_sha256 and an unread, non-empty member", self.name)
        self._handed_off = True
        return self._feed

    def _feed(self, data: memoryview) -> None:
        assert self._sha is not None and self._expected is not None
        self._fed += len(data)
        if self._fed > self.header.size:
            raise SwuError(f"sha256 fed {self._fed} bytes, the member has {self.header.size}", self.name)
        self._sha.update(data)
        if self._fed == self.header.size:
            got = self._sha.hexdigest()
            if got != self._expected:
                raise SwuError(f"HASH mismatch: sha256 {got}, expected {self._expected}", self.name)
            self._checked = True

    def hexdigest(self) -> str | None:
        """The sha256 of the data read so far (None unless :meth:`expect_sha256` or :meth:`hash` was used)."""
        return self._sha.hexdigest() if self._sha else None

    def hash(self) -> None:
        """Compute the sha256 while reading, without an expected value (see :meth:`hexdigest`)."""
        if self._sha is None:
            self._sha = hashlib.sha256()

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if want == 0:
            return 0
        got = self._readinto(view[:want]) if self._readinto is not None else None
        if got is None:
            chunk = self._stream.read(want)
            got = len(chunk)
            view[:got] = chunk
        if got == 0:
            raise self._truncated()
        self._account(view[:got])
        return got

    def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes (``CHUNK`` when negative), read straight from the stream."""
        want = min(CHUNK if size < 0 else size, self._left)
        if want == 0:
            return b""
        data = self._stream.read(want)
        if not data:
            raise self._truncated()
        self._account(memoryview(data))
        return data

    def reread(self, pos: int, into: memoryview) -> int:
        """Bytes of the data from ``pos`` into ``into`` again, once the member has been read to its end
        (and checked); only for a :attr:`rereadable` member. Returns how many bytes were read."""
        if self._fd is None or self.header.data_offset is None or self._left:
            raise CpioError(f"member {self.name!r} cannot be read again (not a file, or not read yet)")
        want = max(0, min(len(into), self.header.size - pos))
        got = 0
        while got < want:
            n = os.preadv(self._fd, [into[got:want]], self.header.data_offset + pos + got)
            if n == 0:
                break
            got += n
        return got

    def _truncated(self) -> CpioError:
        return CpioError(f"truncated archive: member {self.name!r} ends after "
                         f"{self.header.size - self._left} of {self.header.size} bytes")

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The data in pieces of at most ``size`` bytes."""
        while self._left:
            yield self.read(size)

    def skip(self) -> None:
        """Read and discard the rest (the checks still run)."""
        buf = bytearray(min(CHUNK, self._left))
        while self._left:
            self.readinto(memoryview(buf)[:min(len(buf), self._left)])
        if self._handed_off and not self._checked:
            raise SwuError(f"sha256 not checked: the consumer hashed {self._fed} of {self.header.size} "
                           "bytes", self.name)

    def _account(self, data: memoryview) -> None:
        self._left -= len(data)
        if self.header.crc and self._expected is None:
            self._sum += _byte_sum(data)
        if self._sha is not None and not self._handed_off:
            self._sha.update(data)
        if self._left == 0:
            self._finish()

    def _finish(self) -> None:
        if self._finished and self._sha is None:
            return
        self._finished = True
        if self.header.crc and self._expected is None and (self._sum & 0xFFFFFFFF) != self.header.check:
            raise CpioError(f"Checksum WRONG: member {self.name!r}: computed {self._sum & 0xFFFFFFFF:08x}, "
                            f"stored {self.header.check:08x}")
        if self._sha is not None and self._expected is not None and not self._handed_off:
            got = self._sha.hexdigest()
            if got != self._expected:
                raise SwuError(f"HASH mismatch: sha256 {got}, expected {self._expected}", self.name)


def _parse_header(raw: bytes, offset: int) -> tuple[dict[str, int], bool]:
    magic = raw[:6]
    if magic == ODC:
        raise CpioError("unsupported cpio format: odc (070707); use newc or crc (cpio -H newc/-H crc)")
    if raw[:2] in (b"\xc7\x71", b"\x71\xc7"):
        raise CpioError("unsupported cpio format: binary; use newc or crc (cpio -H newc/-H crc)")
    if magic not in (NEWC, NEWC_CRC):
        raise CpioError(f"not a cpio newc archive: bad magic {magic!r} at offset {offset}")
    fields: dict[str, int] = {}
    for i, key in enumerate(_FIELDS):
        text = raw[6 + 8 * i: 14 + 8 * i]
        try:
            fields[key] = int(text, 16)
        except ValueError:
            raise CpioError(f"corrupt cpio header at offset {offset}: field {key} is {text!r}") from None
    return fields, magic == NEWC_CRC


def _file_position(stream: BinaryIO) -> tuple[int | None, int | None]:
    """(descriptor, position) of a stream that is a regular file, else (None, None)."""
    try:
        fd = stream.fileno()
        if not stream.seekable() or not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, None
        return fd, stream.tell()
    except (AttributeError, OSError, ValueError):
        return None, None


class CpioReader:
    """Members of a newc/crc cpio stream, in archive order, up to (not including) the trailer.

    Each member must be read or skipped before the next is asked for; an unfinished one is skipped
    automatically (checks included). Reaching the end of the stream before the trailer is an error."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._offset = 0
        self._current: MemberReader | None = None
        self._pad = 0
        self._held: MemberReader | None = None
        self.ended = False
        self._fd, self._base = _file_position(stream)

    def __iter__(self) -> Iterator[MemberReader]:
        return self

    def push_back(self, member: MemberReader) -> None:
        """Hand ``member`` (the one just returned, unread) out again on the next call."""
        self._held = member

    def __next__(self) -> MemberReader:
        if self._held is not None:
            held, self._held = self._held, None
            return held
        if self.ended:
            raise StopIteration
        if self._current is not None:
            self._current.skip()
            self._offset += self._current.header.size
            self._consume(self._pad)
            self._current = None
        start = self._offset
        first = self._stream.read(1) if start == 0 else b""
        if start == 0 and not first:
            raise CpioError("empty bundle: not a cpio archive")
        raw = first + _read_exact(self._stream, HEADER_SIZE - len(first), "header", start)
        fields, crc = _parse_header(raw, start)
        namesize = fields["namesize"]
        if not 1 <= namesize <= MAX_NAME + 1:
            raise CpioError(f"corrupt cpio header at offset {start}: name size {namesize}")
        name_raw = _read_exact(self._stream, namesize, "name", start)
        self._offset += HEADER_SIZE + namesize
        self._consume(-self._offset % 4)
        if name_raw[-1:] != b"\0":
            raise CpioError(f"corrupt cpio header at offset {start}: name not NUL-terminated")
        try:
            name = name_raw[:-1].decode()
        except UnicodeDecodeError:
            raise CpioError(f"member name at offset {start} is not UTF-8") from None
        size = fields["filesize"]
        if name == TRAILER:
            self.ended = True
            raise StopIteration
        problem = validate_member_name(name)
        if problem:
            raise CpioError(f"member {name!r} at offset {start}: {problem}")
        data_offset = None if self._base is None else self._base + self._offset
        header = MemberHeader(name=name, size=size, mode=fields["mode"], mtime=fields["mtime"],
                              check=fields["check"], crc=crc, offset=start, data_offset=data_offset)
        self._pad = -size % 4
        self._current = MemberReader(self._stream, header, self._fd)
        return self._current

    def _consume(self, count: int) -> None:
        if count:
            _read_exact(self._stream, count, "padding", self._offset)
            self._offset += count


@dataclass
class Bundle:
    """An opened ``.swu``: the description (and its signature) read, the artifacts still to come."""

    description: bytes
    signature: bytes | None
    members: CpioReader


MAX_DESCRIPTION = 4 << 20  # sw-description is text; a bigger one is refused before it is read


def _small_member(member: MemberReader) -> bytes:
    if member.header.size > MAX_DESCRIPTION:
        raise CpioError(f"{member.name} is {member.header.size} bytes, more than {MAX_DESCRIPTION}")
    return member.read(member.header.size) if member.header.size else b""


def open_bundle(stream: BinaryIO) -> Bundle:
    """Read ``sw-description`` (the first member, required) and ``sw-description.sig`` (second, optional).

    The remaining members are left in ``Bundle.members`` to be streamed. Raises :class:`CpioError` when
    the archive is not newc/crc, is truncated, or does not start with ``sw-description``."""
    reader = CpioReader(stream)
    first = next(reader, None)
    if first is None:
        raise CpioError("bundle has no members: sw-description missing")
    if first.name != "sw-description":
        raise CpioError(f"sw-description must be the first member, found {first.name!r}")
    description = _small_member(first)
    signature: bytes | None = None
    second = next(reader, None)
    if second is not None and second.name == "sw-description.sig":
        signature = _small_member(second)
    elif second is not None:
        reader.push_back(second)
    return Bundle(description=description, signature=signature, members=reader)



def is_bundle_file(path: str) -> bool:
    """Does ``path`` start like a ``.swu`` (False when it cannot be read: the image checks say why).
    Light to import: stage2 asks it in PID 1 for every image, and loads the rest of ``swu`` (signatures:
    ``cryptography``) only for a bundle."""
    try:
        with open(path, "rb") as f:
            return is_bundle(f.read(HEADER_SIZE + 16))
    except OSError:
        return False


def is_bundle(head: bytes) -> bool:
    """Do these first bytes of a file start a ``.swu``: a newc/crc cpio header whose member is
    ``sw-description`` (needs the first 110 + 15 bytes)?"""
    if head[:6] not in (NEWC, NEWC_CRC) or len(head) < HEADER_SIZE:
        return False
    try:
        namesize = int(head[94:102], 16)
    except ValueError:
        return False
    name = b"sw-description\0"
    return namesize == len(name) and head[HEADER_SIZE:HEADER_SIZE + namesize] == name
