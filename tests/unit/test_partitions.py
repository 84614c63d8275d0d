"""The MBR as the sandbox images write it, and as wrtcore.partitions reads it back."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sandbox.disk import BOOT_SIZE, MIB, mbr
from wrtcore.partitions import SECTOR, Entry, parse_mbr, read_table

ROOT_START = MIB + BOOT_SIZE
ROOT_SIZE = 40 * MIB
SECTOR0 = mbr(0x5EED0001, [(MIB, BOOT_SIZE), (ROOT_START, ROOT_SIZE)])


def test_layout_of_the_sector() -> None:
    assert len(SECTOR0) == 512
    assert SECTOR0[0:2] == b"\xeb\x63"  # x86's platform check looks for this boot code
    assert SECTOR0[440:444] == bytes.fromhex("0100ed5e")  # disk signature, little endian
    assert SECTOR0[510:512] == b"\x55\xaa"
    assert SECTOR0[446] == 0x80 and SECTOR0[446 + 16] == 0  # first partition bootable, second not
    assert SECTOR0[446 + 32 : 510] == bytes(16 * 2)  # entries 3 and 4 empty
    assert struct.unpack_from("<II", SECTOR0, 446 + 8) == (MIB // 512, BOOT_SIZE // 512)


def test_entries_in_bytes() -> None:
    assert parse_mbr(SECTOR0) == [
        Entry(number=1, type=0x83, start=MIB, size=BOOT_SIZE),
        Entry(number=2, type=0x83, start=ROOT_START, size=ROOT_SIZE),
    ]


def test_numbers_follow_the_slot_not_the_count() -> None:
    sector = bytearray(SECTOR0)
    sector[446 : 446 + 16] = bytes(16)  # empty slot 1: partition 2 stays number 2
    sector[446 + 48 : 446 + 64] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x0C, b"\0\0\0", 100, 50)
    assert parse_mbr(bytes(sector)) == [
        Entry(2, 0x83, ROOT_START, ROOT_SIZE),
        Entry(4, 0x0C, 100 * SECTOR, 50 * SECTOR),
    ]


def test_entries_with_no_type_or_no_sectors_are_skipped() -> None:
    sector = bytearray(SECTOR0)
    sector[446 + 4] = 0  # slot 1: sectors but type 0
    struct.pack_into("<I", sector, 446 + 16 + 12, 0)  # slot 2: type 0x83 but 0 sectors
    assert parse_mbr(bytes(sector)) == []


def test_a_larger_buffer_reads_only_the_first_sector() -> None:
    assert parse_mbr(SECTOR0 + b"\xff" * 512) == parse_mbr(SECTOR0)


@pytest.mark.parametrize("sector", [
    SECTOR0[:510] + b"\0\0",
    SECTOR0[:510] + b"\xaa\x55",
    SECTOR0[:511],
    b"",
], ids=["zeros", "swapped", "short", "empty"])
def test_no_signature_is_value_error(sector: bytes) -> None:
    with pytest.raises(ValueError, match="no MBR signature"):
        parse_mbr(sector)


def test_read_table_from_a_disk_image(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(SECTOR0)
        f.truncate(ROOT_START + ROOT_SIZE)
    assert [(e.number, e.start, e.size) for e in read_table(str(disk))] == [
        (1, MIB, BOOT_SIZE), (2, ROOT_START, ROOT_SIZE)]


def test_partitions_beyond_two_tib_offsets_are_unsigned() -> None:
    sector = bytearray(SECTOR0)
    struct.pack_into("<II", sector, 446 + 8, 0xFFFFFF00, 0x80)
    assert parse_mbr(bytes(sector))[0] == Entry(1, 0x83, 0xFFFFFF00 * SECTOR, 0x80 * SECTOR)
