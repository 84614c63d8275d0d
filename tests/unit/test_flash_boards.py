"""The flash boards' parts outside the writers: the NOR/NAND platform checks and platform detection of
the validator (sysupgrade.platform_flash), what stage2 releases on a flash board (stage2.platforms.flash,
stage2.release.block_node), rootfs_data in a UBI volume (preinit.rootfs_data), and the NAND images the
vm tier builds (sandbox.disk: the sysupgrade tar, the ubinized flash)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from wrtvm import initramfs

from preinit import rootfs_data as rd
from sandbox import disk
from stage2 import release
from stage2.formats import fwtool, nand_tar
from stage2.platforms import flash
from sysupgrade import platform_flash, validate
from wrtcore.mounts import Mount

BOARD = "vendor,model"


def nand_tar_for(tmp_path: Path, board: str = BOARD) -> Path:
    kernel, root = tmp_path / "kernel", tmp_path / "root"
    kernel.write_bytes(b"K" * 3000)
    root.write_bytes(b"hsqs" + b"\0" * 5000)
    return disk.nand_sysupgrade_tar(kernel, root, tmp_path / "nand.tar", version="2.0", board=board)


# --- sysupgrade.platform_flash ---------------------------------------------------------------------


@pytest.mark.parametrize("head,kind", [(b"hsqs\0\0", "squashfs"), (b"\x27\x05\x19\x56", "uImage"),
                                       (b"\xd0\x0d\xfe\xed", "FIT"), (b"HDR0", "TRX"), (b"\xeb\x63", None),
                                       (b"", None)])
def test_nor_image_type_by_magic(head: bytes, kind: str | None) -> None:
    assert platform_flash.nor_image_type(head) == kind


def test_check_nor(tmp_path: Path) -> None:
    said: list[str] = []
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(b"hsqs" + b"\xff" * 100)
    bad.write_bytes(b"\xeb\x63" + b"\0" * 100)
    assert platform_flash.check_nor(str(good), said.append) == 0 and said == []
    assert platform_flash.check_nor(str(bad), said.append) == 1
    assert said == ["Invalid image type."]
    assert platform_flash.check_nor(str(tmp_path / "missing"), said.append) == 1


def test_check_nand_takes_the_tar_for_this_board_only(tmp_path: Path) -> None:
    image = nand_tar_for(tmp_path)
    said: list[str] = []
    assert platform_flash.check_nand(str(image), BOARD, said.append) == 0, said
    assert platform_flash.check_nand(str(image), "vendor_model", said.append) == 0, said
    assert platform_flash.check_nand(str(image), "other,board", said.append) == 1
    assert said[-1] == "Invalid sysupgrade file." and "other,board" in said[-2]


@pytest.mark.parametrize("head", [b"UBI#", b"\x31\x18\x10\x06", b"\xd0\x0d\xfe\xed", b"garbage!"])
def test_check_nand_refuses_other_images(tmp_path: Path, head: bytes) -> None:
    image = tmp_path / "img"
    image.write_bytes(head + b"\0" * 2048)
    said: list[str] = []
    assert platform_flash.check_nand(str(image), BOARD, said.append) == 1
    assert said[-1] == "Invalid sysupgrade file."


def test_detect_from_the_override_file(tmp_path: Path) -> None:
    conf = tmp_path / "platform.conf"
    env = {"WRT_CMDLINE": "root=/dev/mtdblock1"}
    conf.write_text("PLATFORM=nand\n")
    assert platform_flash.detect(env, str(conf)) == "nand"
    conf.write_text("PLATFORM=nor\n")
    assert platform_flash.detect(env, str(conf)) == "nor"
    conf.write_text("PLATFORM=x86\n")
    assert platform_flash.detect(env, str(conf)) is None  # not a flash board: the x86 check
    conf.write_text("PLATFORM=bogus\n")
    assert platform_flash.detect(env, str(conf)) is None


def test_validator_runs_the_nand_check(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    (root / "tmp/sysinfo").mkdir(parents=True)
    (root / "tmp/sysinfo/board_name").write_text(BOARD + "\n")
    image = nand_tar_for(tmp_path)
    env = {"WRT_PLATFORM": "nand", "WRT_CMDLINE": "root=/dev/ubiblock0_1"}
    said: list[str] = []
    verdict = validate.validate_image(str(image), env=env, root=str(root), say=said.append)
    assert verdict.valid and verdict.forceable, said
    (root / "tmp/sysinfo/board_name").write_text("other,board\n")
    verdict = validate.validate_image(str(image), env=env, root=str(root), say=said.append)
    assert not verdict.valid and verdict.forceable  # metadata and CONTROL name another board
    assert "Invalid sysupgrade file." in said


def test_validator_runs_the_nor_check(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    (root / "tmp/sysinfo").mkdir(parents=True)
    (root / "tmp/sysinfo/board_name").write_text(BOARD + "\n")
    squashfs = tmp_path / "root.sqfs"
    squashfs.write_bytes(b"hsqs" + b"\0" * 70000)
    image = disk.nor_image(squashfs, tmp_path / "nor.bin", erase_size=65536, version="2.0", board=BOARD)
    env = {"WRT_PLATFORM": "nor", "WRT_CMDLINE": "root=/dev/mtdblock1"}
    said: list[str] = []
    assert validate.validate_image(str(image), env=env, root=str(root), say=said.append).valid, said
    combined = tmp_path / "x86.img"
    combined.write_bytes(b"\xeb\x63" + b"\0" * 1000)
    fwtool.append_metadata(combined, disk._metadata("2.0", BOARD, "1.0", None))
    verdict = validate.validate_image(str(combined), env=env, root=str(root), say=said.append)
    assert not verdict.valid and said[-1] == "Invalid image type."


# --- what stage2 releases ----------------------------------------------------------------------------


def _mount(dev: int, fstype: str, mountpoint: str) -> Mount:
    return Mount(1, 1, dev, "/", mountpoint, ("rw",), fstype, "src")


def test_held_devices_are_every_filesystem_on_the_flash() -> None:
    mounts = [_mount(os.makedev(31, 1), "squashfs", "/rom"), _mount(os.makedev(31, 2), "jffs2", "/overlay"),
              _mount(os.makedev(0, 24), "ubifs", "/data"), _mount(os.makedev(0, 25), "tmpfs", "/tmp"),
              _mount(os.makedev(254, 1), "ext4", "/boot")]
    held = flash.held_devices(mounts, [os.makedev(253, 0)])
    assert held == {os.makedev(31, 1), os.makedev(31, 2), os.makedev(0, 24), os.makedev(253, 0)}


def test_ubiblock_devices_from_sysfs(tmp_path: Path) -> None:
    for name, dev in (("ubiblock0_1", "253:0"), ("vda", "254:0"), ("ubiblock0_3", "bad")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dev").write_text(dev + "\n")
    assert flash.ubiblock_devices(str(tmp_path)) == [os.makedev(253, 0)]
    assert flash.ubiblock_devices(str(tmp_path / "none")) == []


def test_block_node_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "31:1").mkdir()
    (tmp_path / "31:1" / "uevent").write_text("MAJOR=31\nMINOR=1\nDEVNAME=mtdblock1\nDEVTYPE=disk\n")
    assert release.block_node(os.makedev(31, 1), str(tmp_path)) == "/dev/mtdblock1"
    assert release.block_node(os.makedev(0, 24), str(tmp_path)) is None


# --- rootfs_data in a UBI volume -----------------------------------------------------------------------


def test_find_ubi_volume_by_name(tmp_path: Path) -> None:
    for entry, name in (("ubi0_0", "kernel"), ("ubi0_1", "rootfs"), ("ubi0_4", "rootfs_data")):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    (tmp_path / "ubi0").mkdir()
    volume = rd.find_ubi(sysfs=str(tmp_path))
    assert volume == rd.Volume("/dev/ubi0_4", ubi="ubi0:rootfs_data")
    assert volume is not None and volume.source == "ubi0:rootfs_data" and not volume.on_loop
    assert rd.find_ubi("missing", str(tmp_path)) is None
    assert rd.find_ubi(sysfs=str(tmp_path / "none")) is None


def test_ubifs_is_mounted_as_it_is() -> None:
    assert rd.start_action("ubifs", on_mtd=False) is rd.Start.MOUNT
    assert rd.done_action("ubifs", rd.Volume("/dev/ubi0_2", ubi="ubi0:rootfs_data"), "ubifs") is rd.Done.READY
    # a ubifs that failed to mount is never formatted by done
    assert rd.done_action("tmpfs", rd.Volume("/dev/ubi0_2", ubi="ubi0:rootfs_data"), "ubifs") is rd.Done.KEEP


# --- the vm tier's NAND images --------------------------------------------------------------------------


def test_nand_sysupgrade_tar_layout(tmp_path: Path) -> None:
    image = nand_tar_for(tmp_path)
    index = nand_tar.read_index(str(image))
    assert index.board_dir == "sysupgrade-vendor_model"
    assert index.control == b"BOARD=vendor,model\nREV=2.0\n"
    assert index.kernel is not None and index.kernel.size == 3000
    assert index.root is not None and index.root.size == 5004
    assert index.root_type is nand_tar.ImageType.SQUASHFS
    assert nand_tar.board_matches(index, BOARD)
    assert fwtool.extract_metadata(image)["supported_devices"] == [BOARD]


def test_ubi_flash_is_ubinized_and_padded(tmp_path: Path) -> None:
    kernel, root = tmp_path / "kernel", tmp_path / "root"
    kernel.write_bytes(b"K" * 1000)
    root.write_bytes(b"hsqs" + os.urandom(300_000))
    out = disk.ubi_flash(kernel, root, tmp_path / "flash.bin", peb=128 * 1024, size=8 << 20)
    data = out.read_bytes()
    assert len(data) == 8 << 20
    assert data[:4] == b"UBI#" and data[64:68] == b"UBI!"  # EC header, VID header at 64 (1-byte writes)
    assert data[-(1 << 20):] == b"\xff" * (1 << 20)  # erased after the volumes
    with pytest.raises(ValueError, match="does not fit"):
        disk.ubi_flash(kernel, root, tmp_path / "small.bin", peb=128 * 1024, size=256 * 1024)


def test_initramfs_init_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_text(initramfs.INIT)
    result = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "wrt.ubi=*)" in initramfs.INIT and {"ubi", "ubifs", "zstd"} <= set(initramfs.MODULES)
