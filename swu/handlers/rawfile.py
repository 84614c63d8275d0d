"""``rawfile`` (the default for ``files``): the artifact's bytes into the file ``path``, on the running
root or, with ``device`` and ``filesystem``, on that device mounted for the occasion. Needs: ``path``.

The destination directory must exist unless ``properties.create-destination = "true"``. The bytes go to
a temporary file next to the destination, are fsync'd and read back, and the artifact's sha256 is checked
(the rest of the member read) before the rename: a bad artifact leaves the old file in place."""

from __future__ import annotations

import contextlib
import os

from swu.decompress import Readable
from swu.handlers.base import (
    Call,
    InstallError,
    Result,
    copy_verified,
    describe,
    ensure_directory,
    inside,
    mounted,
)
from swu.model import Artifact, SwuError

NAMES = ("rawfile",)
NEEDS = ("path",)


def install(artifact: Artifact, src: Readable, call: Call) -> Result:
    what = describe(artifact)
    if not artifact.path:
        raise InstallError("rawfile needs a path", what, written=False)
    with mounted(artifact, call.settings) as root:
        dest = inside(root, artifact.path, what)
        parent = os.path.dirname(dest)
        ensure_directory(parent, artifact, what)
        tmp = f"{dest}.swu-new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            try:
                written = copy_verified(src, fd, 0, what=what, progress=call.progress, name=artifact.filename)
                call.finish()
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except (OSError, SwuError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, InstallError):
                raise InstallError(str(exc).split("; ")[0], None, written=False) from None
            raise InstallError(str(exc), what, written=False) from None
        dirfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    return Result(dest, written)
