"""``flash``: an artifact to an MTD partition (NOR or NAND) through the project's MTD writer
(``stage2.writers.mtd.write_flash``): every erase block erased, written, read back and compared, NAND
bad blocks skipped (and a block that fails marked bad, its data moved to the next), as SWUpdate's
flash handler and OpenWrt's ``mtd write`` do. Needs ``device`` (``mtd3``, ``/dev/mtd3``) or ``mtdname``
(a label of ``/proc/mtd``); ``offset`` must be a multiple of the erase size.

The bytes are written as they are: the writer inflates a source that starts ``1f 8b`` (OpenWrt's
``mtd`` does), which a raw artifact may well do, so the source's first read returns a single byte
(``ArtifactSource(first_read_limit=1)``), which that sniffing cannot take for gzip. Only ``compressed``
decides decompression. Peak memory: two erase blocks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, BinaryIO, cast

from stage2.writers import mtd as mtd_writer
from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, describe, writer_progress
from swu.handlers.source import ArtifactSource
from swu.model import Artifact, SwuError
from wrtcore import mtd as mtdio
from wrtcore.errors import InvalidInput, WriteError

if TYPE_CHECKING:
    from stage2.writers.mtdblocks import Flash

NAMES = ("flash",)
NEEDS = ("mtd",)


def target_name(artifact: Artifact) -> str:
    """What the MTD writer opens: ``device`` (``mtd3``, ``/dev/mtd3``) or the label ``mtdname``."""
    return artifact.device or artifact.mtdname or ""


def missing(artifact: Artifact, proc_mtd: str = mtdio.PROC_MTD) -> str | None:
    """Why the MTD partition of ``artifact`` cannot be opened (checked before anything is written)."""
    name = target_name(artifact)
    try:
        path = mtdio.find(name, proc_mtd)
    except FileNotFoundError as exc:
        return str(exc)
    return None if os.path.exists(path) else f"no MTD device {path} (for {name!r})"


def install(artifact: Artifact, src: Readable, call: Call) -> Result:
    name = target_name(artifact)
    try:
        flash = mtd_writer.open_device(name)
    except InvalidInput as exc:
        raise InstallError(str(exc), describe(artifact), written=False) from None
    with flash:
        return write_to(flash, name, artifact, src, call)


def write_to(flash: Flash, name: str, artifact: Artifact, src: Readable, call: Call) -> Result:
    """Write ``src`` to the open ``flash`` (a real ``wrtcore.mtd.Device`` or a test double)."""
    what = describe(artifact)
    source = ArtifactSource(src, first_read_limit=1)
    report = writer_progress(call, artifact.filename)
    try:
        result = mtd_writer.write_flash(cast(BinaryIO, source), flash, name=name, offset=artifact.offset,
                                        length=source.length, progress=report)
    except InvalidInput as exc:
        raise InstallError(str(exc), what, written=False) from None
    except WriteError as exc:
        raise InstallError(str(exc), what, written=exc.written, offset=exc.offset) from None
    except SwuError as exc:
        # From the source while an erase block was being filled: the blocks before it were written.
        written = source.delivered >= flash.info.erasesize
        raise InstallError(str(exc), what, written=written, offset=artifact.offset if written else None
                           ) from None
    return Result(name, result.image_bytes)
