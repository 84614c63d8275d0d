"""``raw``: the artifact's bytes (decompressed when ``compressed``) to a block device or a file at
``offset``, through the project's block writer (``stage2.writers.block.write_image``). Needs: ``device``
(a node, a symlink to one, or a plain file).

The writer streams through ``BUFFERS`` aligned buffers of ``CHUNK`` bytes and three threads: this one
reads the next chunks from the bundle (``readinto``, straight into the buffers), a second computes the
member's sha256 on those same buffers (``write_image``'s ``check``; hashlib releases the interpreter
lock) and a third writes them with ``O_DIRECT``. The last chunk is written only once the sha256 has
matched, and the member is not done until it has. The writer fsyncs every ``SYNC_EVERY`` bytes: the
device's flush then overlaps the reading and hashing instead of following them (on a loop device an
``O_DIRECT`` write lands in the backing file's page cache, and the disk write happens at the flush),
and the buffers let the reading side run ahead while a flush holds the writes. A compressed artifact
is hashed as it is read (the sha256 is of the stored bytes). The bytes are written
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
BUFFERS = 16  # chunks in flight (16 MiB): the reading side runs ahead while an fsync holds the writes
SYNC_EVERY = 32 << 20  # bytes between the writer's fsyncs (see the module's text)


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
                             length=source.length, progress=report, decompress=False, buffers=BUFFERS,
                             sync_every=SYNC_EVERY, check=source.hand_off_check())
    except InvalidInput as exc:
        raise InstallError(str(exc), what, written=False) from None
    except WriteError as exc:
        if isinstance(exc.__cause__, SwuError):
            # The member's sha256, checked beside the writes, failed (at the last byte): the writer says
            # whether chunks before the last went out; the last one never does.
            raise InstallError(str(exc.__cause__), what, written=exc.written,
                               offset=artifact.offset if exc.written else None) from None
        raise InstallError(str(exc), what, written=exc.written, offset=exc.offset) from None
    except SwuError as exc:
        # Raised by the source (truncated bundle, corrupt compressed data, the sha256 of a compressed
        # artifact) while a chunk was being filled: the chunks before it were written.
        written = source.delivered >= CHUNK
        raise InstallError(str(exc), what, written=written, offset=artifact.offset if written else None
                           ) from None
    return Result(path, result.bytes_written)
