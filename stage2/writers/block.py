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

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from stage2.writers.source import SourceError, Stream, read_source, source_size
from wrtcore import log
from wrtcore.errors import InvalidInput, WriteError

# <linux/fs.h>
BLKFLSBUF = 0x1261
BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272

FILE_ALIGN = 4096  # O_DIRECT alignment assumed for regular files (safe for every common filesystem)
_BUFFERS = 2  # one being filled and hashed, one being written (or read back)

Progress = Callable[[int, int | None], None]
Check = Callable[[memoryview], None]  # called with each chunk's bytes, in order (see ``write_image``)


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


@dataclass(frozen=True)
class _Target:
    path: str
    block: bool
    capacity: int | None  # bytes the image may occupy up to (a target offset), None: unbounded
    align: int  # logical block size: O_DIRECT granularity


def device_size(path: str) -> int:
    """Size in bytes of a block device (BLKGETSIZE64) or a regular file (st_size)."""
    st = _stat(path)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidInput(f"{path}: not a block device or regular file")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _ioctl_u64(fd, BLKGETSIZE64)
    finally:
        os.close(fd)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None


def _ioctl_u64(fd: int, request: int) -> int:
    return int(struct.unpack("=Q", fcntl.ioctl(fd, request, bytes(8)))[0])


def _ioctl_int(fd: int, request: int) -> int:
    return int(struct.unpack("=i", fcntl.ioctl(fd, request, bytes(4)))[0])


def _inspect(path: str, end: int | None) -> _Target:
    st = _stat(path)
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size, align = _ioctl_u64(fd, BLKGETSIZE64), _ioctl_int(fd, BLKSSZGET)
        finally:
            os.close(fd)
        return _Target(path, True, size if end is None else min(size, end), align)
    if stat.S_ISREG(st.st_mode):
        return _Target(path, False, end, FILE_ALIGN)
    raise InvalidInput(f"{path}: not a block device or regular file")


class _Chunk:
    """A page-aligned buffer and the piece of the image it holds."""

    def __init__(self, size: int) -> None:
        self.buf = mmap.mmap(-1, size)
        self.view = memoryview(self.buf)
        self.pos = 0  # offset of this piece in the image
        self.size = 0  # bytes of the image it holds
        self.got = 0  # bytes read back (verify)
        self.error: BaseException | None = None
        self.error_at = 0  # target offset where the failing call started

    def close(self) -> None:
        self.view.release()
        # A traceback may still hold a slice of the buffer; then the mapping goes with the garbage.
        with contextlib.suppress(BufferError):
            self.buf.close()


class _Worker:
    """One thread applying ``fn`` to chunks in submission order; stops working after the first failure."""

    def __init__(self, fn: Callable[[_Chunk], None], name: str) -> None:
        self._fn = fn
        self._todo: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[_Chunk] = queue.SimpleQueue()
        self.pending = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failed = False
        while (chunk := self._todo.get()) is not None:
            if failed:
                chunk.error = RuntimeError("not attempted after an earlier failure")
            else:
                try:
                    self._fn(chunk)
                except BaseException as exc:
                    chunk.error = exc.with_traceback(None)
                    failed = True
            self._done.put(chunk)

    def submit(self, chunk: _Chunk) -> None:
        chunk.error = None
        self.pending += 1
        self._todo.put(chunk)

    def take(self) -> _Chunk:
        chunk = self._done.get()
        self.pending -= 1
        return chunk

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join()


class _Checks:
    """``check`` applied to the chunks in a thread of its own, in order, while they are written; after the
    first failure the rest are passed over."""

    def __init__(self, check: Check) -> None:
        self._check = check
        self.failure: tuple[int, BaseException] | None = None  # (image offset of the chunk, what it raised)
        self._worker = _Worker(self._run, "check_image")
        self._checked: set[int] = set()  # id() of the chunks whose check has returned

    def _run(self, chunk: _Chunk) -> None:
        if self.failure is not None:
            return
        try:
            self._check(chunk.view[:chunk.size])
        except BaseException as exc:
            self.failure = (chunk.pos, exc.with_traceback(None))

    def submit(self, chunk: _Chunk) -> None:
        self._checked.discard(id(chunk))
        self._worker.submit(chunk)

    def wait(self, chunk: _Chunk | None = None) -> tuple[int, BaseException] | None:
        """Wait until ``chunk``'s check (every check when None) has returned; the failure, if any."""
        while self._worker.pending and (chunk is None or id(chunk) not in self._checked):
            self._checked.add(id(self._worker.take()))
        return self.failure

    def close(self) -> None:
        self._worker.close()


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

    def hold(self, held: Held, chunk: _Chunk) -> bool:
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

    def __call__(self, chunk: _Chunk) -> None:
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

    def _pwrite(self, chunk: _Chunk, data: memoryview, pos: int) -> None:
        done = 0
        while done < len(data):
            chunk.error_at = self.base + pos + done
            n = os.pwrite(self.fd, data[done:], self.base + pos + done)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
            self.wrote_any = True


def _open_target(target: _Target, flags: int, direct: bool) -> tuple[int, bool]:
    """Open with O_DIRECT if asked and possible; returns the fd and whether O_DIRECT is on."""
    if direct:
        try:
            return os.open(target.path, flags | os.O_DIRECT | os.O_CLOEXEC), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.get().info("write_image", note="O_DIRECT refused, using the page cache", target=target.path)
    return os.open(target.path, flags | os.O_CLOEXEC), False


def _drop_cache(fd: int, target: _Target, offset: int, length: int) -> None:
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    if target.block:
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        except OSError as exc:
            log.get().warning("write_image", note="BLKFLSBUF failed; verify may read cached pages",
                              error=exc.strerror)


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
    info = _inspect(target, end)
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
        fd, use_direct = _open_target(info, flags, use_direct)
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
        _verify(info, offset, use_direct, chunk_size, stream.produced, digests, source, start, length,
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


def _write_all(stream: Stream, writer: _Writer, info: _Target, chunk_size: int, total: int | None,
               progress: Progress | None, hash_chunks: bool = True, hold: FindHeld | None = None,
               buffers: int = _BUFFERS, check: Check | None = None) -> list[bytes]:
    """Stream the image through ``buffers`` buffers; returns the per-chunk digests (empty placeholders when
    ``hash_chunks`` is off: the verify then compares with the source itself)."""
    digests: list[bytes] = []
    chunks = [_Chunk(chunk_size) for _ in range(buffers)]
    spare = list(chunks)
    worker = _Worker(writer, "write_image")
    checks = _Checks(check) if check is not None else None

    def checked(chunk: _Chunk | None = None) -> None:
        """Wait for ``chunk``'s check (every check when None); stop the pass if one failed."""
        failure = checks.wait(chunk) if checks is not None else None
        if failure is not None:
            _drain(worker)
            raise WriteError(str(failure[1]), offset=writer.base + failure[0], written=writer.wrote_any,
                             hint="the source's check failed") from failure[1]

    def completed(chunk: _Chunk) -> None:
        if chunk.error is not None:
            raise WriteError(f"write failed: {_reason(chunk.error)}", offset=chunk.error_at,
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
                raise WriteError(f"write failed: {_reason(exc)}", offset=writer.base + writer.held.start,
                                 written=True, hint="the held root head") from exc
    finally:
        worker.close()
        if checks is not None:
            checks.close()
        for chunk in chunks:
            chunk.close()
    return digests


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _drain(worker: _Worker) -> None:
    """Let the writes already submitted finish, so ``wrote_any`` is final."""
    while worker.pending:
        worker.take()


def _verify(info: _Target, base: int, direct: bool, chunk_size: int, produced: int, digests: list[bytes],
            source: BinaryIO, start: int | None, length: int | None, compare_source: bool = False,
            decompress: bool = True) -> None:
    """Drop the target's cached pages, read the image's extent back and compare it: with the source
    re-read (``compare_source``), else with the chunk digests taken while writing."""
    try:
        fd, direct = _open_target(info, os.O_RDONLY, direct)
    except OSError as exc:
        raise WriteError(f"verify failed: cannot open target: {exc.strerror}", offset=base,
                         written=True) from exc
    align = info.align if direct else 1

    def read(chunk: _Chunk) -> None:
        want = -(-chunk.size // align) * align  # O_DIRECT reads whole blocks
        got = 0
        while got < want:
            chunk.error_at = base + chunk.pos + got
            n = os.preadv(fd, [chunk.view[got:want]], base + chunk.pos + got)
            if n == 0 or (direct and n % align):  # end of the target
                got += n
                break
            got += n
        chunk.got = min(got, chunk.size)

    chunks = [_Chunk(chunk_size) for _ in range(_BUFFERS)]
    expected = _Chunk(chunk_size) if compare_source else None
    worker = _Worker(read, "verify_image")
    count = len(digests)
    try:
        _drop_cache(fd, info, base, produced)
        queued = 0
        for chunk in chunks[:count]:
            chunk.pos, chunk.size = queued * chunk_size, min(chunk_size, produced - queued * chunk_size)
            worker.submit(chunk)
            queued += 1
        for index in range(count):
            chunk = worker.take()
            if chunk.error is not None:
                raise WriteError(f"verify read failed: {_reason(chunk.error)}", offset=chunk.error_at,
                                 written=True) from chunk.error
            if expected is not None and start is not None:
                want = read_source(source, start + chunk.pos, expected.view[:chunk.size])
                actual = chunk.view[:chunk.got]
                if chunk.got < chunk.size or want.tobytes() != actual.tobytes():
                    first = _first_difference(want, actual)
                    raise WriteError("verify mismatch", offset=base + chunk.pos + first, written=True,
                                     hint=f"first differing byte; chunk {index} of {count}")
            elif chunk.got < chunk.size or hashlib.sha256(chunk.view[:chunk.got]).digest() != digests[index]:
                pos, how = _locate(chunk, index, chunk_size, digests, source, start, length, decompress)
                raise WriteError("verify mismatch", offset=base + pos, written=True,
                                 hint=f"{how}; chunk {index} of {count}")
            if queued < count:
                chunk.pos, chunk.size = queued * chunk_size, min(chunk_size, produced - queued * chunk_size)
                worker.submit(chunk)
                queued += 1
    finally:
        worker.close()
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, base, produced, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        for chunk in chunks:
            chunk.close()
        if expected is not None:
            expected.close()


def _locate(readback: _Chunk, index: int, chunk_size: int, digests: list[bytes], source: BinaryIO,
            start: int | None, length: int | None, decompress: bool = True) -> tuple[int, str]:
    """Image offset of the first byte of chunk ``index`` that differs, regenerating it from the source."""
    if start is None:
        return readback.pos, "first differing chunk (the source cannot be re-read)"
    scratch = _Chunk(chunk_size)
    try:
        source.seek(start)
        stream = Stream(source, length, decompress=decompress)
        n = 0
        for _ in range(index + 1):
            n = stream.fill(scratch.view)
        if n != readback.size or hashlib.sha256(scratch.view[:n]).digest() != digests[index]:
            return readback.pos, "first differing chunk (the source changed since it was written)"
        first = _first_difference(scratch.view[:n], readback.view[:readback.got])
        return readback.pos + first, "first differing byte"
    except (OSError, ValueError, SourceError):
        return readback.pos, "first differing chunk (the source could not be re-read)"
    finally:
        scratch.close()


def _first_difference(expected: memoryview, actual: memoryview) -> int:
    """Index of the first differing byte (``len(actual)`` when it is a short prefix of ``expected``)."""
    step = 4096
    for base in range(0, min(len(expected), len(actual)), step):
        a, b = expected[base:base + step], actual[base:base + step]
        if a != b:
            return base + next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    return min(len(expected), len(actual))
