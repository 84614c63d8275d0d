"""The upgrade report as a raw record on a block device: how eMMC boards carry it over the reboot.

On eMMC the next boot's ``rootfs_data`` is made by preinit (from the raw config archive at the overlay
start, or from zeros), so stage2 has no filesystem to put ``upgrade-report.json`` in. It writes the report
raw instead, in the last ``SLOT`` bytes of the overlay area (``slot_offset``): past the config archive,
which preinit finds by its gzip magic at the overlay start, and at a place preinit knows without reading
the archive (a damaged archive does not hide the report). preinit reads it before it formats the overlay,
then puts it into the new overlay's top directory, where the reports of NOR and NAND boards are found.

Layout, little-endian, at the start of the slot (4 KiB aligned)::

    0   8  magic  b"WRTUPREP"
    8   4  payload length in bytes
    12  4  CRC32 of the payload (zlib.crc32)
    16  .  payload: the report as JSON (UTF-8), zlib-compressed

Pure, standard library only (preinit imports it): ``encode``, ``decode``, ``slot_offset``.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

MAGIC = b"WRTUPREP"
HEADER = struct.Struct("<8sII")
BLOCK = 4096
SLOT = 256 * 1024  # room for the record at the end of the overlay area
MAX_PAYLOAD = SLOT - HEADER.size


class RecordError(ValueError):
    """A record is there (its magic) but cannot be used: cut short, damaged, or too big."""


def encode(report: dict[str, Any]) -> bytes:
    """The record of ``report``, padded with zeros to a whole number of 4 KiB blocks. ValueError when
    it does not fit ``SLOT``."""
    payload = zlib.compress(json.dumps(report, sort_keys=True, default=str).encode(), 9)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"upgrade report of {len(payload)} compressed bytes does not fit {SLOT} bytes")
    record = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
    return record + bytes(-len(record) % BLOCK)


def decode(data: bytes) -> dict[str, Any] | None:
    """The report in the record at the start of ``data``; None when there is no record (no magic).
    ``RecordError`` when there is one that cannot be used."""
    if len(data) < HEADER.size or not data.startswith(MAGIC):
        return None
    _magic, length, crc = HEADER.unpack_from(data)
    if length > MAX_PAYLOAD:
        raise RecordError(f"record length {length} is over {MAX_PAYLOAD} bytes")
    payload = data[HEADER.size:HEADER.size + length]
    if len(payload) < length:
        raise RecordError(f"record cut short: {len(payload)} of {length} bytes")
    if zlib.crc32(payload) != crc:
        raise RecordError(f"record CRC32 {zlib.crc32(payload):#010x} is not the {crc:#010x} it names")
    try:
        report = json.loads(zlib.decompress(payload))
    except (zlib.error, ValueError) as exc:
        raise RecordError(f"record payload is not a compressed JSON report: {exc}") from exc
    if not isinstance(report, dict):
        raise RecordError("record payload is not a JSON object")
    return report


def slot_offset(room: int, used: int) -> int | None:
    """Where the record goes in an overlay area of ``room`` bytes whose first ``used`` bytes hold the
    config archive (or the zeroed start): the last ``SLOT`` bytes, 4 KiB aligned; None when the area is
    too small to hold the slot after them."""
    start = (room - SLOT) // BLOCK * BLOCK
    if room < SLOT or start < -(-used // BLOCK) * BLOCK:
        return None
    return start
