"""eMMC's raw report record (stage2.formats.report_record): its bytes, where it goes, stage2 writing it
and preinit taking it from a volume about to be formatted, then keeping it in the new overlay."""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from preinit import lastupgrade
from preinit.rootfs_data import take_report
from stage2.formats import report_record as rr
from stage2.platforms import emmc, emmc_write

REPORT: dict[str, Any] = {"outcome": "success", "from_version": "1.0", "to_version": "2.0",
                          "started_at": 1700000000.5, "finished_at": 1700000042.25, "config_kept": True,
                          "timeline": [{"state": "flashing", "seconds": 3.5}], "error": None}
MIB = 1 << 20


def test_round_trip_and_padding() -> None:
    data = rr.encode(REPORT)
    assert len(data) % rr.BLOCK == 0 and data.startswith(rr.MAGIC)
    _magic, length, crc = struct.unpack_from("<8sII", data)
    assert zlib.crc32(data[16:16 + length]) == crc and not any(data[16 + length:])
    assert rr.decode(data) == REPORT
    assert rr.decode(data + b"\xff" * 100) == REPORT  # what follows the record does not matter


@pytest.mark.parametrize("data", [bytes(4096), b"\xff" * 4096, b"", gzip.compress(b"config"),
                                  b"WRTUPRE" + bytes(100)], ids=["zeros", "erased", "empty", "gzip", "short"])
def test_no_magic_is_no_record(data: bytes) -> None:
    assert rr.decode(data) is None


def test_bad_crc_is_refused() -> None:
    data = bytearray(rr.encode(REPORT))
    data[20] ^= 0x40  # a bit flipped in the payload
    with pytest.raises(rr.RecordError, match="CRC32"):
        rr.decode(bytes(data))


def test_truncated_is_refused() -> None:
    data = rr.encode(REPORT)
    length = struct.unpack_from("<I", data, 8)[0]
    with pytest.raises(rr.RecordError, match="cut short"):
        rr.decode(data[:16 + length - 1])


def test_absurd_length_is_refused() -> None:
    with pytest.raises(rr.RecordError, match="length"):
        rr.decode(rr.MAGIC + struct.pack("<II", rr.SLOT, 0) + bytes(64))


def test_payload_not_a_report_is_refused() -> None:
    for payload in (b"not zlib", zlib.compress(b"[1, 2]")):
        data = rr.MAGIC + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
        with pytest.raises(rr.RecordError, match="payload"):
            rr.decode(data)


def test_too_big_a_report_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        rr.encode({"noise": os.urandom(rr.SLOT).hex()})


@pytest.mark.parametrize(("room", "used", "expected"), [
    (24 * MIB, 4096, 24 * MIB - rr.SLOT),
    (24 * MIB + 1000, 5000, 24 * MIB - rr.SLOT),  # aligned down to 4 KiB
    (rr.SLOT + 4096, 4096, 4096),  # just fits after the zeroed start
    (rr.SLOT + 4096, 4097, None),  # would overlap the archive
    (rr.SLOT - 1, 0, None),
])
def test_slot_offset(room: int, used: int, expected: int | None) -> None:
    assert rr.slot_offset(room, used) == expected


def _plan(device: str, room: int, backup_size: int | None) -> emmc.EmmcPlan:
    """A plan with the overlay at 64 KiB in partition ``rootfs`` (``device``), ``room`` bytes long."""
    return emmc.EmmcPlan(tar="x.tar", board_dir="sysupgrade-b",
                         root=emmc.MemberWrite("sysupgrade-b/root", 60000, "rootfs", device), kernel=None,
                         overlay=emmc.Overlay("rootfs", device, emmc.ALIGN, room), backup_size=backup_size)


def _area(tmp_path: Path, size: int, head: bytes) -> Path:
    path = tmp_path / "overlay-area"
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def test_stage2_writes_where_preinit_takes_it(tmp_path: Path) -> None:
    """The record written by emmc_write.save_report into a partition with the overlay at 64 KiB is read
    by preinit from a volume that starts there (as its loop device does), then cleared."""
    archive = gzip.compress(b"tar bytes" * 500)
    part = tmp_path / "rootfs"
    with open(part, "wb") as f:
        f.truncate(8 * MIB)
        f.seek(emmc.ALIGN)
        f.write(archive)
    plan = _plan(str(part), 8 * MIB - emmc.ALIGN, len(archive))
    offset = emmc_write.save_report(plan, REPORT)
    assert offset == 8 * MIB - rr.SLOT
    raw = part.read_bytes()
    assert raw[emmc.ALIGN:emmc.ALIGN + len(archive)] == archive  # the archive untouched
    volume = tmp_path / "volume"
    volume.write_bytes(raw[emmc.ALIGN:])
    assert take_report(str(volume)) == REPORT
    assert take_report(str(volume)) is None  # taken once: its first block zeroed
    assert volume.read_bytes()[:len(archive)] == archive


def test_stage2_refuses_a_record_that_would_overlap_the_archive(tmp_path: Path) -> None:
    part = _area(tmp_path, 2 * rr.SLOT, b"")
    plan = _plan(str(part), 2 * rr.SLOT - emmc.ALIGN, rr.SLOT)
    with pytest.raises(ValueError, match="no room for the report"):
        emmc_write.save_report(plan, REPORT)
    assert not any(part.read_bytes())


def test_a_damaged_record_is_dropped_and_cleared(tmp_path: Path) -> None:
    record = bytearray(rr.encode(REPORT))
    record[16 + struct.unpack_from("<I", record, 8)[0] - 1] ^= 1  # the payload's last byte
    size = 4 * MIB
    volume = _area(tmp_path, size, bytes(4096))
    with open(volume, "r+b") as f:
        f.seek(size - rr.SLOT)
        f.write(record)
    assert take_report(str(volume)) is None
    assert not any(volume.read_bytes()[size - rr.SLOT:size - rr.SLOT + rr.BLOCK])


def test_no_record_leaves_the_volume_alone(tmp_path: Path) -> None:
    volume = _area(tmp_path, 2 * MIB, gzip.compress(b"config"))
    before = volume.read_bytes()
    assert take_report(str(volume)) is None
    assert volume.read_bytes() == before
    assert take_report(str(_area(tmp_path, rr.SLOT - 1, b""))) is None  # too small to hold one


def test_kept_in_the_overlay_where_publish_finds_it(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    assert lastupgrade.keep_in_overlay(REPORT, str(overlay))
    assert json.loads((overlay / "upgrade-report.json").read_text()) == REPORT
    (tmp_path / "version").write_text("2.0\n")
    summary = lastupgrade.publish(None, restored=["etc/config/network"], dest=str(tmp_path / "last.json"),
                                  version_file=str(tmp_path / "version"),
                                  overlay_record=str(overlay / "upgrade-report.json"))
    assert summary is not None
    assert (summary["outcome"], summary["from_version"], summary["to_version"]) == ("success", "1.0", "2.0")


def test_the_plan_says_where_the_record_goes() -> None:
    plan = _plan("/dev/loop9", 64 * MIB - emmc.ALIGN, None)
    assert f"a raw record at offset {64 * MIB - rr.SLOT} of rootfs" in "\n".join(plan.describe())
    tight = _plan("/dev/loop9", rr.SLOT, None)
    assert "the upgrade report: no room for its record (not kept)" in tight.describe()
