"""``ubivol`` (an artifact into a UBI volume) and ``ubipartition`` (the ``partitions`` section: create,
resize or remove UBI volumes), over the project's UBI code: ``stage2.writers.ubi`` (attach, volume
update with read-back) and ``wrtcore.ubi`` (the kernel's ioctls and sysfs).

``ubivol`` needs ``volume``; ``ubipartition`` names the MTD partition holding the UBI device (its label
or ``mtdN``; attached when it is not). Without it the volume is looked for on every attached UBI
device, and must be found on exactly one (SWUpdate takes the first; an ambiguous name is refused here).
The update is ``UBI_IOCVOLUP`` with the byte count, then the bytes: that count must be known before the
first byte, so a ``compressed`` artifact needs ``properties.decompressed-size`` (as in SWUpdate), and
decompressed data that does not have exactly that size is an error. Everything that can be checked
before ``UBI_IOCVOLUP`` is (the volume exists, the data fits): such failures leave the volume untouched.

``partitions`` entries (``name``, ``device``, ``size`` in bytes, 0 removes) run before any image,
after the pre-install scripts, as in SWUpdate. A volume that already has the right number of logical
eraseblocks is kept, one of another size is resized (``UBI_IOCRSVOL``, its id and data kept; SWUpdate
removes and re-creates it). Every entry is planned and checked against the free eraseblocks before the
first change. ``data = "static"`` is refused (the project's UBI layer makes dynamic volumes only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, cast

from stage2.writers import ubi as ubi_writer
from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, describe, writer_progress
from swu.handlers.source import ArtifactSource
from swu.model import Artifact, SwuError, UbiPartition
from wrtcore import mtd as mtdio
from wrtcore import ubi
from wrtcore.errors import UpgradeError, WriteError

NAMES = ("ubivol",)
NEEDS = ("volume",)


@dataclass(frozen=True)
class Layout:
    """Where the UBI state is read from (tests point these at a fake sysfs and /proc/mtd)."""

    sysfs: str = ubi.SYSFS
    proc_mtd: str = mtdio.PROC_MTD


def mtd_number(name: str, layout: Layout = Layout()) -> int | None:
    """The N of the MTD partition ``name`` (a label of /proc/mtd, ``mtdN`` or ``/dev/mtdN``), or None."""
    for part in mtdio.partitions(layout.proc_mtd):
        if part.name == name:
            return part.index
    m = re.fullmatch(r"(?:/dev/)?mtd(\d+)", name)
    return int(m[1]) if m else None


def ubi_device(mtd_name: str, where: str, layout: Layout = Layout()) -> ubi.Device:
    """The UBI device on MTD partition ``mtd_name``, attached when needed; nothing written either way."""
    number = mtd_number(mtd_name, layout)
    if number is None:
        raise InstallError(f"no MTD partition {mtd_name!r}", where, written=False)
    found = ubi.device_on_mtd(number, layout.sysfs)
    if found is not None:
        return found
    try:
        return ubi_writer.ubi_device(number)
    except (UpgradeError, OSError) as exc:
        raise InstallError(f"UBI device on mtd{number}: {exc}", where, written=False) from None


def find_volume(artifact: Artifact, layout: Layout = Layout()) -> ubi.Volume:
    """The volume ``artifact.volume`` on ``artifact.ubipartition``, or on the one UBI device having it."""
    where = describe(artifact)
    name = artifact.volume or ""
    if artifact.ubipartition:
        devices = [ubi_device(artifact.ubipartition, where, layout)]
    else:
        devices = ubi.devices(layout.sysfs)
    hits = [v for d in devices for v in d.volumes if v.name == name]
    if not hits:
        on = f"on {artifact.ubipartition}" if artifact.ubipartition else "on any attached UBI device"
        raise InstallError(f"UBI volume {name!r} not found {on}", where, written=False)
    if len(hits) > 1:
        raise InstallError(f"UBI volume {name!r} exists on {', '.join(f'ubi{v.device}' for v in hits)}: "
                           "set ubipartition", where, written=False)
    return hits[0]


def data_length(artifact: Artifact, source: ArtifactSource) -> int:
    """Bytes the volume update will carry: the stored size, or ``decompressed-size`` when compressed."""
    where = describe(artifact)
    if artifact.compressed is None:
        if source.length is None:
            raise InstallError("size of the image unknown", where, written=False)
        return source.length
    raw = artifact.properties.get("decompressed-size")
    if not isinstance(raw, str) or not raw.isdigit():
        raise InstallError("compressed image for a UBI volume needs properties.decompressed-size (bytes)",
                           where, written=False)
    return int(raw)


def install(artifact: Artifact, src: Readable, call: Call, layout: Layout = Layout()) -> Result:
    where = describe(artifact)
    source = ArtifactSource(src)
    length = data_length(artifact, source)
    vol = find_volume(artifact, layout)
    if length > vol.size:
        raise InstallError(f"image of {length} bytes does not fit UBI volume {vol.name} ({vol.size} bytes)",
                           where, written=False)
    try:
        node = ubi.ensure_node(vol.node, vol.devnum)
    except OSError as exc:
        raise InstallError(f"UBI volume {vol.name}: {exc}", where, written=False) from None
    return update(node, artifact, source, length, call)


def update(node: str, artifact: Artifact, source: ArtifactSource, length: int, call: Call) -> Result:
    """``length`` bytes of ``source`` into the volume at ``node`` (read back and compared)."""
    where = describe(artifact)
    report = writer_progress(call, artifact.filename)
    try:
        result = ubi_writer.update_volume(cast(BinaryIO, source), node, length, progress=report)
        extra = source.read(1)
    except WriteError as exc:
        raise InstallError(str(exc), where, written=exc.written, offset=exc.offset) from None
    except UpgradeError as exc:
        raise InstallError(str(exc), where, written=False) from None
    except SwuError as exc:  # from the source, after UBI_IOCVOLUP: the volume is being replaced
        raise InstallError(str(exc), where, written=True, offset=0) from None
    if extra:
        raise InstallError(f"the image has more than the {length} bytes announced (decompressed-size)",
                           where, written=True, offset=0)
    return Result(node, result.bytes_written)


@dataclass(frozen=True)
class VolumeChange:
    """What one ``partitions`` entry does on its UBI device."""

    action: str  # "create", "resize", "remove", "keep" (right size already), "none" (remove a missing one)
    entry: UbiPartition
    device: int  # UBI device number
    lebs: int  # logical eraseblocks wanted (0 for remove)
    vol_id: int | None = None


def plan_partitions(entries: Sequence[UbiPartition], devices: dict[str, ubi.Device]) -> list[VolumeChange]:
    """The volume changes for ``entries`` (``devices``: each entry's ``device`` -> its UBI device), checked
    against each device's free eraseblocks. Pure; raises :class:`InstallError` (nothing written)."""
    changes: list[VolumeChange] = []
    room: dict[int, int] = {}
    for entry in entries:
        dev = devices[entry.device]
        if entry.static:
            raise InstallError("static UBI volumes (data = \"static\") are not supported", entry.where,
                               written=False)
        free = room.setdefault(dev.number, dev.avail_eraseblocks)
        vol = dev.volume(entry.name)
        lebs = ubi.leb_count(entry.size, dev.eraseblock_size)
        if vol is None:
            action = "create" if lebs else "none"
        elif lebs == 0:
            action = "remove"
        else:
            action = "keep" if vol.reserved_ebs == lebs else "resize"
        held = vol.reserved_ebs if vol is not None else 0
        if action in ("create", "resize", "remove"):
            free += held - lebs
        if free < 0:
            raise InstallError(f"UBI volume {entry.name}: {lebs} eraseblocks wanted, ubi{dev.number} has "
                               f"{free + lebs - held} free", entry.where, written=False)
        room[dev.number] = free
        changes.append(VolumeChange(action, entry, dev.number, lebs, vol.vol_id if vol is not None else None))
    return changes


def apply_partitions(entries: Sequence[UbiPartition], layout: Layout = Layout()) -> list[VolumeChange]:
    """Carry out the ``partitions`` section: all of it planned first, then the changes in order."""
    devices = {e.device: ubi_device(e.device, e.where, layout) for e in entries}
    changes = plan_partitions(entries, devices)
    changed = False
    nodes = {d.number: d for d in devices.values()}
    for change in changes:
        entry = change.entry
        try:
            node = ubi.ensure_node(nodes[change.device].node, nodes[change.device].devnum)
            if change.action == "create":
                ubi.mkvol(node, entry.name, entry.size)
            elif change.action == "resize" and change.vol_id is not None:
                ubi.rsvol(node, change.vol_id, entry.size)
            elif change.action == "remove" and change.vol_id is not None:
                ubi.rmvol(node, change.vol_id)
        except OSError as exc:
            raise InstallError(f"UBI volume {entry.name}: {change.action} failed: {exc}", entry.where,
                               written=changed) from None
        changed |= change.action not in ("keep", "none")
    return changes
