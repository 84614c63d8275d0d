"""``flash`` (MTD by ``device`` or ``mtdname``), ``ubivol`` (with ``ubipartition``) and ``ubipartition``:
thin adapters over the project's MTD and UBI writers (``stage2.writers.mtd`` and ``stage2.writers.ubi``).

Those writers were not available when this adapter was written, so these handlers refuse clearly, before
anything is written, instead of carrying an MTD/UBI implementation of their own."""

from __future__ import annotations

from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, describe
from swu.model import Artifact

NAMES = ("flash", "ubivol", "ubipartition")
NEEDS = ("mtd",)


def install(artifact: Artifact, src: Readable, call: Call) -> Result:
    family = "MTD" if artifact.handler == "flash" else "UBI"
    raise InstallError(f"handler {artifact.handler}: {family} writer not available on this system",
                       describe(artifact), written=False)
