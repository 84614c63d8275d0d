"""``bootloader`` (old name ``uboot``): a U-Boot environment text file (``name=value`` lines, ``#``
comments, ``name=`` unsets). Needs: nothing but the file.

The changes are not written here: they are handed back and written with the ``bootenv`` pairs as the
very last step of the update (one environment write, after every image has been verified). SWUpdate
applies such a file when it reaches it; deferring it is what makes a dual-copy switch safe."""

from __future__ import annotations

from swu.bootenv import parse_env_text
from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, describe
from swu.model import Artifact

NAMES = ("bootloader", "uboot")
NEEDS: tuple[str, ...] = ()
MAX_ENV_TEXT = 1 << 20


def install(artifact: Artifact, src: Readable, call: Call) -> Result:
    what = describe(artifact)
    pieces: list[bytes] = []
    size = 0
    while chunk := src.read(64 * 1024):
        size += len(chunk)
        if size > MAX_ENV_TEXT:
            raise InstallError(f"environment file larger than {MAX_ENV_TEXT} bytes", what, written=False)
        pieces.append(chunk)
    call.finish()
    changes = parse_env_text(b"".join(pieces).decode("utf-8", errors="replace"))
    return Result("bootenv", size, tuple(changes))
