"""What every handler shares: the settings of an install, the error that says whether bytes were written,
the bounded copy loop with its read-back check, and mounting a ``device``/``filesystem`` pair."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import queue
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from swu.decompress import Readable
from swu.model import Artifact, SwuError
from wrtcore import syscalls

CHUNK = 1 << 20
Progress = Callable[[str, int, int | None], None]  # (artifact filename, bytes done, total or None)


@dataclass(frozen=True)
class Settings:
    """Where an install reads and writes its bookkeeping; tests point these at a scratch directory."""

    tmpdir: str = field(default_factory=tempfile.gettempdir)
    fw_env_config: str = "/etc/fw_env.config"
    fw_env_lock: str | None = "/var/lock/fw_printenv.lock"
    sw_versions: str = "/etc/sw-versions"


@dataclass(frozen=True)
class Call:
    """One handler call: the settings, the progress callback and ``finish``, which reads what is left of
    the artifact's member and raises on a sha256 mismatch (handlers that can still back out call it
    before they commit)."""

    settings: Settings
    progress: Progress | None = None
    finish: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Result:
    """What a handler did: where, how many bytes, and the env changes it leaves for the end (bootenv)."""

    target: str
    written: int
    env_changes: tuple[tuple[str, str | None], ...] = ()


class InstallError(SwuError):
    """An install step failed; ``written`` tells whether the target was changed (and from ``offset``)."""

    def __init__(self, message: str, where: str | None, *, written: bool, offset: int | None = None) -> None:
        if not written:
            detail = "; nothing was written"
        elif offset is None:
            detail = "; bytes were written to the target"
        else:
            detail = f"; bytes were written to the target (from offset {offset})"
        super().__init__(message + detail, where)
        self.written = written
        self.offset = offset


def describe(artifact: Artifact) -> str:
    return f"{artifact.where} ({artifact.filename})"


def writer_progress(call: Call, name: str) -> Callable[[int, int | None], None]:
    """This call's progress for artifact ``name`` in the shape the project's writers report it."""
    progress = call.progress

    def report(done: int, total: int | None) -> None:
        if progress is not None:
            progress(name, done, total)

    return report


def copy_verified(src: Readable, fd: int, base: int, *, what: str, progress: Progress | None = None,
                  name: str = "", total: int | None = None, limit: int | None = None,
                  direct_fd: int | None = None) -> int:
    """Copy ``src`` to ``fd`` at ``base`` in chunks, fsync, read back and compare (CRC32 per chunk).

    A thread writes while this one reads, hashes and checks the next chunk (both release the GIL), with
    at most ``_DEPTH`` chunks in flight. Raises :class:`InstallError` with ``written`` and the offset
    where it happened; an error raised by ``src`` (sha256 mismatch, corrupt compressed data) after the
    first write is reported the same way. ``direct_fd``: the target opened again with ``O_DIRECT``
    (block devices, ``base`` a multiple of ``ALIGN``): whole chunks go through it, the page cache is
    bypassed and a failing write reports its own offset."""
    writer = _Writer(fd, base, direct_fd if base % ALIGN == 0 else None)
    pos = 0
    try:
        while True:
            try:
                chunk = src.read(CHUNK)
            except SwuError as exc:
                writer.finish()
                raise InstallError(str(exc), what, written=writer.started, offset=base) from None
            if not chunk:
                break
            if limit is not None and pos + len(chunk) > limit:
                writer.finish()
                raise InstallError(f"artifact larger than the target ({limit} bytes available)", what,
                                   written=writer.started, offset=base)
            writer.put(pos, chunk)
            pos += len(chunk)
            if progress is not None:
                progress(name, pos, total)
        writer.finish()
        os.fsync(fd)
    except OSError as exc:
        failed_at = writer.failed_at if writer.failed_at is not None else pos
        raise InstallError(f"write failed: {exc.strerror}", what, written=writer.started,
                           offset=base + failed_at) from None
    verify_readback(fd, base, pos, writer.crcs, what)
    return pos


_DEPTH = 3
ALIGN = 4096  # O_DIRECT alignment used for block devices (covers 512- and 4096-byte sectors)


class _Writer:
    """Writes queued chunks on a thread and takes the (size, CRC32) of each piece written for the
    read-back (pwrite and crc32 release the GIL: the reading thread hashes the next chunk meanwhile).
    With ``direct_fd`` (the target opened ``O_DIRECT``, ``base`` aligned) the bytes are gathered into an
    aligned buffer and written in whole ``CHUNK``s through it; a tail that is not a multiple of ``ALIGN``
    goes through ``fd``. The first OSError is raised from ``put``/``finish``."""

    def __init__(self, fd: int, base: int, direct_fd: int | None = None) -> None:
        self._fd = fd
        self._base = base
        self._direct = direct_fd
        self._buf = mmap.mmap(-1, CHUNK) if direct_fd is not None else None
        self._fill = 0  # bytes gathered in _buf
        self._flushed = 0  # bytes of the image written so far (direct mode)
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(_DEPTH)
        self._error: OSError | None = None
        self.failed_at: int | None = None
        self.started = False
        self.crcs: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=self._run, name="swu-writer", daemon=True)
        self._thread.start()

    def _pwrite(self, fd: int, data: memoryview, pos: int) -> None:
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(fd, data[done:], self._base + pos + done)
        except OSError:
            self.failed_at = pos + done
            raise
        self.crcs.append((len(data), zlib.crc32(data)))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                if self._buf is None:
                    self._pwrite(self._fd, memoryview(item[1]), item[0])
                else:
                    self._gather(memoryview(item[1]))
            except OSError as exc:
                self._error = exc
        if self._error is None and self._buf is not None:
            try:
                self._drain_tail()
            except OSError as exc:
                self._error = exc

    def _gather(self, data: memoryview) -> None:
        assert self._buf is not None and self._direct is not None
        while len(data):
            take = min(len(data), CHUNK - self._fill)
            self._buf[self._fill:self._fill + take] = data[:take]
            self._fill += take
            data = data[take:]
            if self._fill == CHUNK:
                self._pwrite(self._direct, memoryview(self._buf), self._flushed)
                self._flushed += CHUNK
                self._fill = 0

    def _drain_tail(self) -> None:
        assert self._buf is not None and self._direct is not None
        aligned = self._fill // ALIGN * ALIGN
        view = memoryview(self._buf)
        if aligned:
            self._pwrite(self._direct, view[:aligned], self._flushed)
        if self._fill > aligned:
            self._pwrite(self._fd, view[aligned:self._fill], self._flushed + aligned)
        self._flushed += self._fill
        self._fill = 0
        view.release()

    def put(self, pos: int, chunk: bytes) -> None:
        if self._error is not None:
            self.finish()
        self.started = True
        self._queue.put((pos, chunk))

    def finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._buf is not None and not self._buf.closed:
            self._buf.close()
        if self._error is not None:
            raise self._error


def drop_cache(fd: int, base: int, length: int) -> None:
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, base, length, os.POSIX_FADV_DONTNEED)
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, 0x1261)  # BLKFLSBUF on block devices; ENOTTY on files


def verify_readback(fd: int, base: int, length: int, crcs: list[tuple[int, int]], what: str) -> None:
    """Read ``length`` bytes at ``base`` back (caches dropped) and compare with the (size, CRC32) of each
    chunk written."""
    drop_cache(fd, base, length)
    pos = 0
    for index, (size, expected) in enumerate(crcs):
        try:
            data = os.pread(fd, size, base + pos)
        except OSError as exc:
            raise InstallError(f"read-back failed: {exc.strerror}", what, written=True,
                               offset=base + pos) from None
        if len(data) != size or zlib.crc32(data) != expected:
            raise InstallError(f"verify failed: chunk {index} differs after writing", what, written=True,
                               offset=base + pos)
        pos += size


@contextlib.contextmanager
def mounted(artifact: Artifact, settings: Settings) -> Iterator[str]:
    """The root a ``files``/``archive`` path is relative to: the device mounted on a scratch directory
    when ``device`` and ``filesystem`` are given, else ``/``."""
    if not artifact.device:
        yield "/"
        return
    if not artifact.filesystem:
        raise InstallError("device given without filesystem: cannot mount it", describe(artifact),
                           written=False)
    point = tempfile.mkdtemp(prefix="swu-mnt-", dir=settings.tmpdir)
    try:
        try:
            syscalls.mount(artifact.device, point, artifact.filesystem)
        except OSError as exc:
            raise InstallError(f"mounting {artifact.device} ({artifact.filesystem}) failed: {exc}",
                               describe(artifact), written=False) from None
        try:
            yield point
        finally:
            syscalls.sync()
            syscalls.umount(point)
    finally:
        os.rmdir(point)


def ensure_directory(directory: str, artifact: Artifact, where: str) -> None:
    """``directory`` must exist, unless ``properties.create-destination`` asks for it to be made."""
    if os.path.isdir(directory):
        return
    if not artifact.create_destination:
        raise InstallError(f"destination directory {directory} does not exist "
                           "(set properties.create-destination)", where, written=False)
    os.makedirs(directory, exist_ok=True)


def inside(root: str, path: str, where: str) -> str:
    """``path`` under ``root``; raises when it would leave ``root`` (``..``, or a symlink that points out)."""
    joined = os.path.join(root, path.lstrip("/"))
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise InstallError(f"path {path!r} escapes {root}", where, written=False)
    return real
