"""The target of a block write: a block device or a regular file, its size and O_DIRECT granularity,
opened with ``O_DIRECT`` when it can be, and its cached pages dropped before a read-back
(``stage2.writers.block`` writes, ``stage2.writers.readback`` reads back).

Runs after the pivot in a minimal ramfs: standard library and ``wrtcore`` only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from wrtcore import log
from wrtcore.errors import InvalidInput

# <linux/fs.h>
BLKFLSBUF = 0x1261
BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272

FILE_ALIGN = 4096  # O_DIRECT alignment assumed for regular files (safe for every common filesystem)


@dataclass(frozen=True)
class Target:
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


def inspect(path: str, end: int | None) -> Target:
    st = _stat(path)
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size, align = _ioctl_u64(fd, BLKGETSIZE64), _ioctl_int(fd, BLKSSZGET)
        finally:
            os.close(fd)
        return Target(path, True, size if end is None else min(size, end), align)
    if stat.S_ISREG(st.st_mode):
        return Target(path, False, end, FILE_ALIGN)
    raise InvalidInput(f"{path}: not a block device or regular file")


def open_target(target: Target, flags: int, direct: bool) -> tuple[int, bool]:
    """Open with O_DIRECT if asked and possible; returns the fd and whether O_DIRECT is on."""
    if direct:
        try:
            return os.open(target.path, flags | os.O_DIRECT | os.O_CLOEXEC), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.get().info("write_image", note="O_DIRECT refused, using the page cache", target=target.path)
    return os.open(target.path, flags | os.O_CLOEXEC), False


def drop_cache(fd: int, target: Target, offset: int, length: int) -> None:
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    if target.block:
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        except OSError as exc:
            log.get().warning("write_image", note="BLKFLSBUF failed; verify may read cached pages",
                              error=exc.strerror)


def reason(exc: BaseException) -> str:
    """The message of a failure: an OSError's strerror, else its text."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
