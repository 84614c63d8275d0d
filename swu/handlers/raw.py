"""``raw``: the artifact's bytes (decompressed when ``compressed``) to a block device or a file at
``offset``, streamed, fsync'd and read back. Needs: ``device`` (a node, a symlink to one, or a plain file).

A block device is opened with ``O_EXCL``: a mounted or otherwise claimed device (the running slot) is
refused before anything is written."""

from __future__ import annotations

import errno
import os
import stat

from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, copy_verified, describe
from swu.model import Artifact

NAMES = ("raw",)
NEEDS = ("device",)


def device_path(device: str) -> str:
    """``mmcblk0p2`` and ``/dev/mmcblk0p2`` name the same node (SWUpdate's rule)."""
    return device if device.startswith("/") else f"/dev/{device}"


def _open_direct(path: str) -> int | None:
    """A second descriptor with O_DIRECT (the first holds the O_EXCL claim), or None when refused."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def install(artifact: Artifact, src: Readable, call: Call) -> Result:
    what = describe(artifact)
    if not artifact.device:
        raise InstallError("raw handler needs a device", what, written=False)
    path = device_path(artifact.device)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InstallError(f"{path}: {exc.strerror}", what, written=False) from None
    block = stat.S_ISBLK(st.st_mode)
    if not block and not stat.S_ISREG(st.st_mode):
        raise InstallError(f"{path}: not a block device or regular file", what, written=False)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if block else 0))
    except OSError as exc:
        reason = "target busy (mounted or in use)" if exc.errno == errno.EBUSY else "cannot open target"
        raise InstallError(f"{reason}: {path}: {exc.strerror}", what, written=False) from None
    try:
        limit = None
        if block:
            size = os.lseek(fd, 0, os.SEEK_END)
            if artifact.offset >= size:
                raise InstallError(f"offset {artifact.offset} is past the end of {path} ({size} bytes)",
                                   what, written=False)
            limit = size - artifact.offset
        direct = _open_direct(path) if block else None
        try:
            written = copy_verified(src, fd, artifact.offset, what=what, progress=call.progress,
                                    name=artifact.filename, limit=limit, direct_fd=direct)
        finally:
            if direct is not None:
                os.close(direct)
    finally:
        os.close(fd)
    return Result(path, written)
