"""x86 platform_check_image: boot code magic, partition maps (MBR and GPT), the boot disk (reference 5.5)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from sandbox.disk import mbr
from sysupgrade import platform_x86
from sysupgrade.platform_x86 import Partition, PartitionTableError

MIB = 1 << 20


def disk(path: Path, partitions: list[tuple[int, int]], signature: int = 0x5EED0001) -> Path:
    """An MBR disk (or image) made by the sandbox's own builder; ``partitions`` in MiB (start, size)."""
    path.write_bytes(mbr(signature, [(start * MIB, size * MIB) for start, size in partitions]))
    return path


def gpt(path: Path, entries: dict[int, tuple[int, int]], disk_guid: uuid.UUID) -> Path:
    """A protective MBR, a GPT header and entries {number: (first LBA, last LBA)}, written by hand."""
    head = bytearray(34 * 512)
    head[446 + 4] = 0xEE  # protective partition
    struct.pack_into("<II", head, 446 + 8, 1, 0xFFFFFFFF)
    head[510:512] = b"\x55\xaa"
    head[512:520] = b"EFI PART"
    head[568:584] = disk_guid.bytes_le
    for number, (first, last) in entries.items():
        entry = 1024 + (number - 1) * 128
        head[entry : entry + 16] = uuid.uuid4().bytes_le  # type GUID: anything but zeros
        struct.pack_into("<QQ", head, entry + 32, first, last)
    path.write_bytes(bytes(head))
    return path


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def say() -> Said:
    return Said()


def test_mbr_map(tmp_path: Path) -> None:
    head = disk(tmp_path / "d", [(1, 16), (17, 104)]).read_bytes()
    parts = platform_x86.partition_map(head)
    assert parts == [Partition(1, 2048, 32768), Partition(2, 34816, 212992)]
    assert platform_x86.format_map(parts) == " 1  2048   32768\n 2 34816  212992\n"  # "%2d %5d %7d"


def test_mbr_map_skips_type_zero_and_needs_55aa(tmp_path: Path) -> None:
    head = bytearray(disk(tmp_path / "d", [(1, 16), (17, 104), (200, 8)]).read_bytes())
    head[446 + 16 + 4] = 0  # partition 2: type 0
    assert [p.number for p in platform_x86.partition_map(bytes(head))] == [1, 3]
    head[511] = 0
    with pytest.raises(PartitionTableError):
        platform_x86.partition_map(bytes(head))
    with pytest.raises(PartitionTableError):
        platform_x86.partition_map(b"\xeb\x63")


def test_gpt_map(tmp_path: Path) -> None:
    head = gpt(tmp_path / "g", {1: (512, 33279), 2: (33280, 246271), 15: (300000, 300999)},
               uuid.uuid4()).read_bytes()
    assert platform_x86.partition_map(head) == [Partition(1, 512, 32768), Partition(2, 33280, 212992),
                                                Partition(15, 300000, 1000)]


def test_layout_comparison_is_one_way() -> None:
    """``grep -F -x -v -f bootdisk image``: only image partitions missing from the boot disk count."""
    boot = [Partition(1, 2048, 32768), Partition(2, 34816, 212992), Partition(3, 247808, 1000)]
    assert not platform_x86.layout_changed(boot, boot)
    assert not platform_x86.layout_changed(boot, boot[:2])  # the user's extra partition 3 is kept
    assert platform_x86.layout_changed(boot, [boot[0], Partition(2, 34816, 400000)])  # root grew
    assert platform_x86.layout_changed(boot[:1], boot)  # a new partition
    assert platform_x86.layout_changed(boot, [])  # nothing to write partition by partition


def test_compare_layout_writes_the_maps(tmp_path: Path, say: Said) -> None:
    root = tmp_path / "root"
    boot = disk(tmp_path / "disk", [(1, 16), (17, 104)])
    image = disk(tmp_path / "img", [(1, 16), (17, 104)], signature=0x1234)  # the disk signature differs
    assert platform_x86.compare_layout(str(image), str(boot), root=str(root), say=say) is True
    assert say.lines == ["Reading partition table from bootdisk...", "Extract boot sector from the image",
                         "Reading partition table from image..."]
    assert (root / "tmp/partmap.bootdisk").read_text() == " 1  2048   32768\n 2 34816  212992\n"
    assert (root / "tmp/partmap.image").read_text() == " 1  2048   32768\n 2 34816  212992\n"

    moved = disk(tmp_path / "moved", [(2, 16), (18, 104)])
    assert platform_x86.compare_layout(str(moved), str(boot), root=str(root), say=say) is False
    assert say.lines[-1] == "Partition layout has changed. Full image will be written."
    assert (root / "tmp/partmap.image").read_text() == " 1  4096   32768\n 2 36864  212992\n"


def test_unreadable_boot_disk_means_full_write(tmp_path: Path, say: Said) -> None:
    image = disk(tmp_path / "img", [(1, 16)])
    missing = tmp_path / "no-disk"
    assert platform_x86.compare_layout(str(image), str(missing), root=str(tmp_path), say=say) is False
    assert f"Invalid partition table on {missing}" in say.lines
    assert say.lines[-1] == "Partition layout has changed. Full image will be written."


def test_check_image_magic(tmp_path: Path, say: Said) -> None:
    for head, ok in ((b"\xeb\x48", True), (b"\xeb\x63", True), (b"hsqs", False), (b"\xeb", False)):
        image = tmp_path / "img"
        image.write_bytes(head)
        result = platform_x86.check_image(str(image), root=str(tmp_path), env={"WRT_CMDLINE": ""}, say=say)
        assert result == platform_x86.Result(0 if ok else 1)
    assert say.lines == ["Invalid image type", "Invalid image type"]


def test_check_image_against_a_given_disk(tmp_path: Path, say: Said) -> None:
    boot = disk(tmp_path / "disk", [(1, 16), (17, 104)])
    same = disk(tmp_path / "same", [(1, 16), (17, 104)])
    other = disk(tmp_path / "other", [(1, 32), (33, 104)])

    def check(image: Path) -> platform_x86.Result:
        return platform_x86.check_image(str(image), root=str(tmp_path), env={"WRT_CMDLINE": ""}, say=say,
                                        disk=str(boot))

    assert check(same) == platform_x86.Result(0, True)
    assert check(other) == platform_x86.Result(0, False)
    no_table = tmp_path / "no-table"
    no_table.write_bytes(b"\xeb\x63" + bytes(510))
    assert check(no_table) == platform_x86.Result(1)
    assert say.lines[-1] == f"Invalid partition table on {no_table}"


def test_boot_disk_from_the_command_line(tmp_path: Path, say: Said) -> None:
    boot = disk(tmp_path / "disk", [(1, 16), (17, 104)])
    image = disk(tmp_path / "img", [(1, 16), (17, 104)])
    result = platform_x86.check_image(str(image), root=str(tmp_path), say=say,
                                      env={"WRT_CMDLINE": f"console=ttyS0 root={boot} rootwait"})
    assert result == platform_x86.Result(0, True)

    say.lines.clear()  # no root= at all: not a device booted by this chain, nothing compared or said
    result = platform_x86.check_image(str(image), root=str(tmp_path), say=say, env={"WRT_CMDLINE": "quiet"})
    assert (result, say.lines) == (platform_x86.Result(0), [])

    result = platform_x86.check_image(str(image), root=str(tmp_path), say=say,
                                      env={"WRT_CMDLINE": "root=UUID=1234"})
    assert (result, say.lines) == (platform_x86.Result(0), ["Unable to determine upgrade device"])


def test_find_boot_disk_by_partuuid(tmp_path: Path) -> None:
    a = disk(tmp_path / "a", [(1, 16)], signature=0x11111111)
    b = disk(tmp_path / "b", [(1, 16)], signature=0x5EED0001)
    guid = uuid.UUID("6a3a1b2c-0d4e-4f50-8a61-72839405a600")
    g = gpt(tmp_path / "g", {1: (34, 1000)}, guid)
    candidates = [str(tmp_path / "missing"), str(a), str(b), str(g)]
    find = platform_x86.find_boot_disk
    assert find("PARTUUID=5eed0001-02", candidates) == str(b)
    assert find("PARTUUID=5EED0001-02", candidates) == str(b)
    assert find("PARTUUID=6a3a1b2c-0d4e-4f50-8a61-72839405a602", candidates) == str(g)
    assert find("PARTUUID=deadbeef-02", candidates) is None
    assert find("UUID=5eed0001-02", candidates) is None
    assert find("/dev/no-such-disk", candidates) is None
