"""``raw``: the artifact's bytes (decompressed when ``compressed``) to a block device or a file at
``offset``, through the project's block writer (``stage2.writers.block.write_image``). Needs: ``device``
(a node, a symlink to one, or a plain file).

The writer streams through two aligned buffers: this thread reads the next chunk from the bundle
(``readinto``, straight into the buffer) and hashes it (the member's sha256, which releases the
interpreter lock) while a worker thread writes the previous one with ``O_DIRECT``. The bytes are written
as they are: an artifact that happens to start ``1f 8b`` is not inflated (``decompress=False``; only
``compressed`` decides). A block device is opened with ``O_EXCL``: a mounted or otherwise claimed device
(the running slot) is refused before anything is written.

Verify: after ``fsync`` the target is read back (caches dropped) and compared byte for byte with the
artifact read again from the bundle file (``pread``; its sha256 was checked on the first pass), so no
hash is computed per chunk while writing. A bundle read from a pipe, or a compressed artifact, cannot be
read again: the writer then keeps a sha256 per chunk and compares the read-back with those.
"""

from __future__ import annotations

from typing import BinaryIO, cast

from stage2.writers.block import write_image
from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, describe, writer_progress
from swu.handlers.source import ArtifactSource
from swu.model import Artifact, SwuError
from wrtcore.errors import InvalidInput, WriteError

NAMES = ("raw",)
NEEDS = ("device",)
CHUNK = 1 << 20  # the writer's chunk: reads, writes and the read-back go by this size


def device_path(device: str) -> str:
    """``mmcblk0p2`` and ``/dev/mmcblk0p2`` name the same node (SWUpdate's rule)."""
    return device if device.startswith("/") else f"/dev/{device}"


def install(artifact: Artifact, src: Readable, call: Call) -> Result:
    what = describe(artifact)
    if not artifact.device:
        raise InstallError("raw handler needs a device", what, written=False)
    path = device_path(artifact.device)
    source = ArtifactSource(src)
    report = writer_progress(call, artifact.filename)
    try:
        result = write_image(cast(BinaryIO, source), path, offset=artifact.offset, chunk_size=CHUNK,
                             length=source.length, progress=report, decompress=False)
    except InvalidInput as exc:
        raise InstallError(str(exc), what, written=False) from None
    except WriteError as exc:
        raise InstallError(str(exc), what, written=exc.written, offset=exc.offset) from None
    except SwuError as exc:
        # Raised by the source (sha256 mismatch, truncated bundle, corrupt compressed data) while a
        # chunk was being filled: the chunks before it were written.
        written = source.delivered >= CHUNK
        raise InstallError(str(exc), what, written=written, offset=artifact.offset if written else None
                           ) from None
    return Result(path, result.bytes_written)
