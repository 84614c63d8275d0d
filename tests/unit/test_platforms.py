"""Platform profiles: detection from /proc/mtd, the kernel command line and GPT names; the override
file (stage2.platforms.profile), and eMMC's overlay offset (stage2.platforms.emmc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage2.platforms import emmc
from stage2.platforms.profile import (
    ConfigMethod,
    Facts,
    Kind,
    Profile,
    Writer,
    decide,
    gather,
    parse_settings,
    read_settings,
)
from wrtcore import mtd
from wrtcore.errors import InvalidInput

PROC_MTD_NOR = """dev:    size   erasesize  name
mtd0: 00040000 00010000 "u-boot"
mtd1: 00010000 00010000 "art"
mtd2: 00fa0000 00010000 "firmware"
mtd3: 00200000 00010000 "kernel"
mtd4: 00da0000 00010000 "rootfs"
mtd5: 00a00000 00010000 "rootfs_data"
"""
PROC_MTD_NAND = """dev:    size   erasesize  name
mtd0: 00100000 00020000 "u-boot"
mtd1: 00400000 00020000 "kernel"
mtd2: 07b00000 00020000 "ubi"
"""


def facts(proc_mtd: str = "", root: str = "", disk: str | None = None,
          names: dict[str, str] | None = None) -> Facts:
    return Facts(tuple(mtd.parse_partitions(proc_mtd)), root, disk, names or {})


def test_x86_from_the_root_disk() -> None:
    p = decide(facts(root="/dev/sda2", disk="/dev/sda"))
    assert (p.kind, p.disk, p.writer, p.config_method) == (Kind.X86, "/dev/sda", Writer.BLOCK,
                                                           ConfigMethod.BOOT_PARTITION)
    assert "root=/dev/sda2" in p.source


def test_emmc_from_gpt_partition_names() -> None:
    p = decide(facts(root="PARTUUID=abc", disk="/dev/mmcblk0",
                     names={"kernel": "/dev/mmcblk0p3", "rootfs": "/dev/mmcblk0p4"}))
    assert (p.kind, p.config_method) == (Kind.EMMC, ConfigMethod.EMMC_OVERLAY)


def test_nor_from_firmware_partition() -> None:
    p = decide(facts(PROC_MTD_NOR, root="/dev/mtdblock4"))
    assert (p.kind, p.writer, p.config_method, p.part_name) == (Kind.NOR, Writer.MTD, ConfigMethod.JFFS2,
                                                                "firmware")


def test_nand_from_ubi_partition_wins_over_a_disk_less_root() -> None:
    p = decide(facts(PROC_MTD_NAND + 'mtd3: 00100000 00020000 "firmware"\n', root="/dev/ubiblock0_1"))
    assert (p.kind, p.writer, p.config_method) == (Kind.NAND, Writer.UBI, ConfigMethod.UBIFS)


def test_block_root_wins_over_mtd_partitions() -> None:
    # an x86 board with a SPI NOR for its firmware: the system runs from the disk
    assert decide(facts(PROC_MTD_NOR, root="/dev/sda2", disk="/dev/sda")).kind is Kind.X86


def test_nothing_to_go_on() -> None:
    with pytest.raises(InvalidInput, match="cannot determine the platform"):
        decide(facts(root="/dev/mtdblock2"))


def test_override_names_the_profile_and_openwrt_variables() -> None:
    settings = parse_settings("# board quirks\nPLATFORM=nand\nCI_UBIPART='ubi2'\nCI_KERNPART=\"kern\"\n"
                              "ROOTFS_DATA_MAX=0x4000000  # 64 MiB\nREQUIRE_IMAGE_SIGNATURE=1\nJUNK=1\n")
    assert "REQUIRE_IMAGE_SIGNATURE" not in settings and "JUNK" not in settings
    p = decide(facts(root="/dev/sda2", disk="/dev/sda"), settings, "/etc/x.conf")
    assert (p.kind, p.ubipart, p.kernpart, p.rootfs_data_max) == (Kind.NAND, "ubi2", "kern", 64 << 20)
    assert p.source == "override: /etc/x.conf"


def test_override_disk_for_a_flash_root() -> None:
    p = decide(facts(PROC_MTD_NOR, root="/dev/mtdblock4"), {"CI_ROOTDEV": "/dev/mmcblk1"})
    assert (p.kind, p.disk) == (Kind.X86, "/dev/mmcblk1")


@pytest.mark.parametrize(("settings", "message"), [
    ({"PLATFORM": "ps2"}, "PLATFORM='ps2' is not one of x86, emmc, nor, nand"),
    ({"ROOTFS_DATA_MAX": "lots"}, "ROOTFS_DATA_MAX='lots' is not a number"),
    ({"PLATFORM": "x86"}, "cannot find the boot disk"),
])
def test_bad_override(settings: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decide(facts(PROC_MTD_NOR), settings)


def test_profile_round_trip() -> None:
    p = Profile(Kind.NAND, "detected", ubipart="ubi", rootfs_data_max=5)
    assert Profile.from_dict(p.to_dict()) == p
    assert p.to_dict()["kind"] == "nand"


def test_gather_reads_cmdline_and_proc_mtd(tmp_path: Path) -> None:
    proc = tmp_path / "mtd"
    proc.write_text(PROC_MTD_NAND)
    got = gather({"WRT_CMDLINE": "console=ttyS0 root=/dev/ubiblock0_1 rootfstype=squashfs"}, str(proc))
    assert got.root == "/dev/ubiblock0_1" and got.root_disk is None
    assert [p.name for p in got.mtd] == ["u-boot", "kernel", "ubi"]
    assert decide(got).kind is Kind.NAND
    conf = tmp_path / "platform.conf"
    conf.write_text("PART_NAME=fw\n")
    assert read_settings(str(conf)) == {"PART_NAME": "fw"}
    assert read_settings(str(tmp_path / "missing")) == {}


@pytest.mark.parametrize(("size", "offset"), [(0, 0), (1, 65536), (65536, 65536), (65537, 131072),
                                              (3_000_000, 3_014_656)])
def test_emmc_overlay_offset(size: int, offset: int) -> None:
    assert emmc.overlay_offset(size) == offset
    assert offset % emmc.ALIGN == 0 and offset >= size


def test_emmc_config_recognised_by_gzip_magic() -> None:
    assert emmc.is_config_archive(b"\x1f\x8b\x08\x00")
    assert not emmc.is_config_archive(b"\xde\xad\xc0\xde") and not emmc.is_config_archive(bytes(8))
    with pytest.raises(ValueError):
        emmc.overlay_offset(-1)
