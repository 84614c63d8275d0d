"""Streamed, verified writes of an image to a block device or a regular file.

This is what OpenWrt does with ``get_image | dd of=/dev/... conv=fsync`` (eMMC, x86; reference 5.5), made
honest about errors:

* **Streamed.** Two (``buffers``) page-aligned chunk buffers (mmap) are reused for the whole image; a
  gzip image (magic ``1f 8b``, several members allowed, trailing non-gzip data such as a fwtool trailer
  ignored) is inflated into them in pieces by ``stage2.writers.source``. Memory does not grow with the image.
* **Every error at its offset.** Writes use ``O_DIRECT`` when the target and the alignment allow it, so
  an I/O error comes back from the ``pwrite`` of the chunk that failed instead of surfacing later from
  ``fsync`` with no offset. Without ``O_DIRECT`` (``direct=False``, unaligned offset or chunk size, or a
  filesystem that refuses it) the writer syncs every ``sync_every`` bytes and an error is reported at the
  first byte of the unsynced window. A thread does the writes while the caller's thread reads (and, for
  a compressed or streamed image, inflates and hashes) the next chunk, so the device is kept busy.
* **Verified.** After ``fsync`` the target's cached pages are dropped (``POSIX_FADV_DONTNEED``, and
  ``BLKFLSBUF`` on block devices) and the target is read back (``O_DIRECT`` when the write used it).
  A plain image in a seekable file (stage2's /tmp/sysupgrade.img) is compared with the file itself,
  byte for byte, and the first differing byte is reported: no hashing while writing, which on two cores
  would cost as much as the write. A compressed or non-seekable image keeps a sha256 per chunk (32 bytes
  each) and the read-back is hashed; the first chunk whose hash differs is the mismatch, narrowed to its
  first differing byte when the source can be re-read.
* **The source's own check beside the write.** A source that checks its bytes as they pass (a ``.swu``
  member's sha256) can hand that check to the writer (``check``): it runs in a third thread on each
  chunk while the chunk is written, so on two cores the hash and the device work side by side instead of
  one after the other; the last chunk waits for it, and the pass fails before the fsync if it fails.

* **The root's head last.** ``hold`` (``stage2.writers.roothead``) may name a few image bytes, the
  superblock of a squashfs root, that the pass writes as zeros and writes for real only once the pass has
  written (and synced) through ``Held.commit_at``, the squashfs's end. A power cut while the root is being
  rewritten then leaves a root that does not mount, never the new superblock over the old root's rest (which
  may mount: the kernel reads the tables at the end, which can still be the old ones) or the old superblock
  over new data.

``WriteReport.digest`` is then the sha256 of the concatenated per-chunk sha256 digests (a hash list over
``chunk_size`` pieces of the image, as written), so it depends on ``chunk_size``; it is None when the
image was compared with its source.

Errors: bad arguments, an unusable source or target, or an empty image raise ``InvalidInput``; nothing is
written. Everything else raises ``WriteError``: ``offset`` is a byte offset in the target (for a failed
write, where the failing ``pwrite`` started: the chunk's start unless part of it went through) and
``written`` tells whether any byte of the target was changed. Some devices lose a write without an error
(the loop driver completes a request whose backing-file write came back short); only the read-back
catches those, as a mismatch.

Runs after the pivot in a minimal ramfs: standard library and ``wrtcore`` only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from stage2.writers.chunks import Check, Checks, Chunk, Worker
from stage2.writers.readback import verify
from stage2.writers.source import SourceError, Stream, source_size
from stage2.writers.target import FILE_ALIGN, Target, device_size, inspect, open_target, reason
from wrtcore import log
from wrtcore.errors import InvalidInput, WriteError

__all__ = ["FILE_ALIGN", "Check", "FindHeld", "Held", "Progress", "WriteReport", "device_size", "write_image"]

_BUFFERS = 2  # one being filled and hashed, one being written

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Held:
    """Image bytes [start, start + length) written as zeros in the pass and for real once the pass has
    written through image offset ``commit_at`` (or at the pass's end if the image is shorter)."""

    start: int
    length: int
    commit_at: int


# called with each chunk (its image offset, its bytes) until it names the bytes to hold back
FindHeld = Callable[[int, memoryview], "Held | None"]


@dataclass(frozen=True)
class WriteReport:
    bytes_written: int
    duration: float  # seconds: writing, including the final fsync
    verify_duration: float  # seconds: dropping caches and reading back
    digest: str | None  # hex sha256 over the per-chunk sha256 digests; None when compared with the source
    chunks: int
    direct: bool  # written with O_DIRECT
    compressed: bool  # the source was gzip and was inflated on the way


class _Writer:
    """Runs in the worker thread: writes one chunk, all of it, or raises with ``chunk.error_at`` set."""

    def __init__(self, fd: int, base: int, align: int, direct: bool, sync_every: int) -> None:
        self.fd = fd
        self.base = base
        self.align = align
        self.direct = direct
        self.sync_every = sync_every
        self.wrote_any = False
        self.synced = 0  # image bytes before this offset were written and synced
        self.held: Held | None = None
        self.committed = False
        self._head: mmap.mmap | None = None

    def hold(self, held: Held, chunk: Chunk) -> bool:
        """Take ``held``'s bytes out of ``chunk`` (zeros go out in their place); False if they do not lie
        within it."""
        first = held.start - chunk.pos
        if held.length <= 0 or first < 0 or first + held.length > chunk.size:
            return False
        self._head = mmap.mmap(-1, -(-held.length // mmap.PAGESIZE) * mmap.PAGESIZE)
        self._head[:held.length] = chunk.view[first:first + held.length]
        chunk.view[first:first + held.length] = bytes(held.length)
        self.held = held
        return True

    def commit(self) -> None:
        """Write the held bytes: after a sync (the rest of the pass is on the device first), then synced."""
        held = self.held
        if held is None or self._head is None or self.committed:
            return
        at = self.base + held.start
        os.fsync(self.fd)
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        if flags & os.O_DIRECT and (at % self.align or held.length % self.align):
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        try:
            view = memoryview(self._head)[:held.length]
            done = 0
            while done < held.length:
                n = os.pwrite(self.fd, view[done:], at + done)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
            view.release()
            os.fsync(self.fd)
        finally:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
        self.committed = True
        self._head.close()
        self._head = None
        log.get().info("write_image", note="root head written", offset=at, length=held.length)

    def close(self) -> None:
        if self._head is not None:
            self._head.close()
            self._head = None

    def __call__(self, chunk: Chunk) -> None:
        data = chunk.view[:chunk.size]
        body = chunk.size - chunk.size % self.align if self.direct else chunk.size
        self._pwrite(chunk, data[:body], chunk.pos)
        if body < chunk.size:  # the image's last, partial block: O_DIRECT cannot write it
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self._pwrite(chunk, data[body:], chunk.pos + body)
        end = chunk.pos + chunk.size
        if self.sync_every and end - self.synced >= self.sync_every:
            chunk.error_at = self.base + self.synced
            os.fsync(self.fd)
            self.synced = end
        held = self.held
        if held is not None and not self.committed:
            chunk.error_at = self.base + held.start
            if chunk.pos <= held.start < end:  # the zeros are durable before the old root's body goes
                os.fsync(self.fd)
            if end >= held.commit_at:
                self.commit()

    def _pwrite(self, chunk: Chunk, data: memoryview, pos: int) -> None:
        done = 0
        while done < len(data):
            chunk.error_at = self.base + pos + done
            n = os.pwrite(self.fd, data[done:], self.base + pos + done)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
            self.wrote_any = True


def write_image(source: BinaryIO, target: str, *, length: int | None = None, offset: int = 0,
                chunk_size: int = 1 << 20, progress: Progress | None = None, end: int | None = None,
                direct: bool | None = None, sync_every: int | None = None,
                exclusive: bool = True, decompress: bool = True, hold: FindHeld | None = None,
                buffers: int = _BUFFERS, check: Check | None = None) -> WriteReport:
    """Write the image read from ``source`` to ``target`` at ``offset``, then read it back and compare.

    ``length``: write exactly this many image bytes (after inflating); fewer is an error, more are left
    unread. ``end``: a target offset the image must not pass (default: the block device's size; regular
    files may grow). ``progress(done, total)`` is called in this thread after each chunk has been written
    (``total`` is None when the size is not known in advance). ``direct``: None tries O_DIRECT, False
    uses the page cache. ``sync_every``: bytes between fsyncs (default: only at the end with O_DIRECT,
    every 8 chunks without). ``exclusive``: open block devices with O_EXCL, which fails while they are
    mounted or claimed (swap, another exclusive opener). ``decompress`` False writes an image that
    starts ``1f 8b`` as it is instead of inflating it. ``hold``: finds the bytes to write last (see the
    module's text); a failed or cut write leaves zeros there. ``buffers``: chunk buffers of the write pass
    (at least 2; more let the reading side run ahead while a periodic fsync holds the writes up).

    ``check(bytes)`` (a source's own integrity check, such as a sha256 that raises at the end of the data)
    is called with each chunk's bytes, in order, in a thread of its own while the chunk is written; a
    buffer is filled again only once both are done. When it raises, the writes in flight finish and a
    ``WriteError`` with its message is raised from it (``written``: whether any byte went out), before the
    fsync and the verify. The image's last chunk (the one that reaches ``length`` or the source's known size,
    or a short one) is written only after every check has returned, so a check that fails on the last
    bytes leaves that chunk unwritten.
    """
    if chunk_size <= 0 or offset < 0 or (length is not None and length < 0) or buffers < 2:
        raise ValueError("chunk_size must be positive, offset and length not negative, buffers at least 2")
    info = inspect(target, end)
    start, available = source_size(source)
    try:
        stream = Stream(source, length, decompress=decompress)
    except SourceError as exc:
        raise InvalidInput(f"cannot read image: {exc}") from exc
    size: int | None = length
    if not stream.compressed and available is not None:
        if length is not None and available < length:
            raise InvalidInput(f"image truncated: {available} bytes, expected {length}")
        size = available if length is None else length
    if size == 0:
        raise InvalidInput("empty image: nothing to write")
    if info.capacity is not None and (offset >= info.capacity or
                                      (size is not None and offset + size > info.capacity)):
        raise WriteError("image larger than target", offset=info.capacity, written=False,
                         hint=f"{size if size is not None else 'some'} bytes at offset {offset}, "
                              f"target ends at {info.capacity}")

    use_direct = (direct is not False and offset % info.align == 0 and chunk_size % info.align == 0)
    if direct and not use_direct:
        raise InvalidInput(f"O_DIRECT needs offset and chunk_size multiples of {info.align}")
    flags = os.O_WRONLY | (os.O_EXCL if info.block and exclusive else 0)
    try:
        fd, use_direct = open_target(info, flags, use_direct)
    except OSError as exc:
        reason = "target busy (mounted or in use)" if exc.errno == errno.EBUSY else "cannot open target"
        raise WriteError(f"{reason}: {exc.strerror}", offset=offset, written=False) from exc
    if sync_every is None:
        sync_every = 0 if use_direct else 8 * chunk_size
    log.get().info("write_image", target=target, offset=offset, size=size, direct=use_direct,
                   compressed=stream.compressed, chunk_size=chunk_size)
    writer = _Writer(fd, offset, info.align, use_direct, sync_every)
    try:
        started = time.monotonic()
        # A plain seekable image is verified against itself, byte for byte: no hashing while writing
        # (on two cores sha256 would take as long as the write). Compressed or streamed images keep
        # a sha256 per chunk, since their bytes cannot be read again.
        compare = start is not None and not stream.compressed
        digests = _write_all(stream, writer, info, chunk_size, size, progress, hash_chunks=not compare,
                             hold=hold, buffers=buffers, check=check)
        if not digests:
            raise InvalidInput("empty image: nothing to write")
        if length is not None and stream.produced < length:
            raise WriteError(f"image truncated: {stream.produced} bytes, expected {length}",
                             offset=offset + stream.produced, written=writer.wrote_any)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise WriteError(f"write failed: {exc.strerror}", offset=offset + writer.synced, written=True,
                             hint="reported by fsync: bytes from this offset on may not be on the device"
                             ) from exc
        duration = time.monotonic() - started
        started = time.monotonic()
        verify(info, offset, use_direct, chunk_size, stream.produced, digests, source, start, length,
                compare_source=compare, decompress=decompress)
        verify_duration = time.monotonic() - started
    except WriteError as exc:
        log.get().warning("write_image", target=target, result="failed", error=exc.message,
                          offset=exc.offset, written=exc.written)
        raise
    finally:
        writer.close()
        os.close(fd)
    report = WriteReport(bytes_written=stream.produced, duration=duration, verify_duration=verify_duration,
                         digest=None if compare else hashlib.sha256(b"".join(digests)).hexdigest(),
                         chunks=len(digests),
                         direct=use_direct, compressed=stream.compressed)
    log.get().info("write_image", target=target, result="ok", bytes=report.bytes_written,
                   duration=round(duration, 4), verify_duration=round(verify_duration, 4),
                   digest=report.digest)
    return report


def _write_all(stream: Stream, writer: _Writer, info: Target, chunk_size: int, total: int | None,
               progress: Progress | None, hash_chunks: bool = True, hold: FindHeld | None = None,
               buffers: int = _BUFFERS, check: Check | None = None) -> list[bytes]:
    """Stream the image through ``buffers`` buffers; returns the per-chunk digests (empty placeholders when
    ``hash_chunks`` is off: the verify then compares with the source itself)."""
    digests: list[bytes] = []
    chunks = [Chunk(chunk_size) for _ in range(buffers)]
    spare = list(chunks)
    worker = Worker(writer, "write_image")
    checks = Checks(check) if check is not None else None

    def checked(chunk: Chunk | None = None) -> None:
        """Wait for ``chunk``'s check (every check when None); stop the pass if one failed."""
        failure = checks.wait(chunk) if checks is not None else None
        if failure is not None:
            _drain(worker)
            raise WriteError(str(failure[1]), offset=writer.base + failure[0], written=writer.wrote_any,
                             hint="the source's check failed") from failure[1]

    def completed(chunk: Chunk) -> None:
        if chunk.error is not None:
            raise WriteError(f"write failed: {reason(chunk.error)}", offset=chunk.error_at,
                             written=writer.wrote_any) from chunk.error
        if progress is not None:
            progress(chunk.pos + chunk.size, total)

    try:
        pos = 0
        while True:
            if spare:
                chunk = spare.pop()
            else:
                chunk = worker.take()
                completed(chunk)
                checked(chunk)
            try:
                n = stream.fill(chunk.view)
            except SourceError as exc:
                _drain(worker)
                raise WriteError(str(exc), offset=writer.base + pos, written=writer.wrote_any) from exc
            if n == 0:
                break
            if info.capacity is not None and writer.base + pos + n > info.capacity:
                _drain(worker)
                raise WriteError("image larger than target", offset=info.capacity,
                                 written=writer.wrote_any,
                                 hint=f"the image goes on past {info.capacity - writer.base} bytes")
            digests.append(hashlib.sha256(chunk.view[:n]).digest() if hash_chunks else b"")
            chunk.pos, chunk.size = pos, n
            if checks is not None:
                checks.submit(chunk)
            if hold is not None and writer.held is None:
                held = hold(pos, chunk.view[:n])
                if held is not None:
                    checked()  # the check sees the chunk's bytes before the held ones are taken out
                    if not writer.hold(held, chunk):
                        log.get().warning("write_image", note="held bytes cross a chunk boundary: not held",
                                          start=held.start, length=held.length)
            if n < chunk_size or (total is not None and pos + n >= total):
                checked()  # the last chunk goes out only once every check has passed
            worker.submit(chunk)
            pos += n
            if n < chunk_size:
                break
        while worker.pending:
            completed(worker.take())
        checked()
        if writer.held is not None and not writer.committed:  # the image ended before commit_at
            try:
                writer.commit()
            except OSError as exc:
                raise WriteError(f"write failed: {reason(exc)}", offset=writer.base + writer.held.start,
                                 written=True, hint="the held root head") from exc
    finally:
        worker.close()
        if checks is not None:
            checks.close()
        for chunk in chunks:
            chunk.close()
    return digests


def _drain(worker: Worker) -> None:
    """Let the writes already submitted finish, so ``wrote_any`` is final."""
    while worker.pending:
        worker.take()
