"""eMMC: the GPT read by name (against sfdisk's), the pure plan of ``emmc_do_upgrade`` /
``emmc_copy_config`` (stage2.platforms.emmc), and stage 1's platform check (sysupgrade.platform_flash)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import disk as diskmod
from sandbox.emmc import _drop_member, gpt_disk
from stage2.formats.nand_tar import ImageType, Member, SysupgradeTar
from stage2.platforms import emmc
from stage2.platforms.emmc import EmmcPlan, Part, plan_emmc
from sysupgrade.platform_flash import check_emmc
from wrtcore.errors import InvalidInput

MIB = 1 << 20
BOARD = "acme,router-1"


def index(root: int | None = 5 * MIB + 123, kernel: int | None = 3 * MIB, dtb: bool = False) -> SysupgradeTar:
    d = "sysupgrade-acme_router-1"
    return SysupgradeTar("/tmp/sysupgrade.img", d, b"BOARD=acme\n",
                         Member(f"{d}/kernel", kernel) if kernel else None,
                         Member(f"{d}/root", root) if root else None,
                         Member(f"{d}/dtb", 100) if dtb else None, ImageType.SQUASHFS)


PARTS = {"kernel": Part("/dev/mmcblk0p1", 8 * MIB), "rootfs": Part("/dev/mmcblk0p2", 64 * MIB)}


def test_gpt_names_as_sfdisk_wrote_them(tmp_path: Path) -> None:
    kernel, root = tmp_path / "k", tmp_path / "r"
    kernel.write_bytes(b"K" * 5000)
    root.write_bytes(b"R" * 7000)
    parts = gpt_disk(tmp_path / "disk.img", kernel, root, data_size=2 * MIB)
    assert [(p.number, p.name) for p in parts] == [(1, "kernel"), (2, "rootfs"), (3, "rootfs_data")]
    assert parts[0].start == MIB and parts[0].size == 4 * MIB
    assert parts[1].start == parts[0].start + parts[0].size and parts[2].size == 2 * MIB
    with open(tmp_path / "disk.img", "rb") as f:
        f.seek(parts[1].start)
        assert f.read(7001) == b"R" * 7000 + b"\0"


def test_no_gpt_header_is_an_error() -> None:
    with pytest.raises(ValueError, match="no GPT header"):
        emmc.gpt_entries_extent(bytes(512))


def test_root_and_kernel_to_their_partitions_overlay_after_the_root() -> None:
    plan = plan_emmc(index(), PARTS, backup_size=10_000)
    assert (plan.root.device, plan.root.size) == ("/dev/mmcblk0p2", 5 * MIB + 123)
    assert plan.kernel is not None and plan.kernel.device == "/dev/mmcblk0p1"
    # 5 MiB + 123 bytes rounded up to 64 KiB (128 sectors, as emmc.sh's EMMC_ROOTFS_BLOCKS)
    assert (plan.overlay.partition, plan.overlay.offset) == ("rootfs", 5 * MIB + 64 * 1024)
    assert plan.overlay.room == 64 * MIB - plan.overlay.offset
    assert plan.total == 8 * MIB + 123
    text = "\n".join(plan.describe())
    assert "configuration archive (10000 bytes)" in text and "zero the first 4096 bytes of kernel" in text


def test_rootfs_data_partition_holds_the_overlay_at_its_start() -> None:
    parts = {**PARTS, "data": Part("/dev/mmcblk0p3", 16 * MIB)}
    plan = plan_emmc(index(), parts, datapart="data")
    assert (plan.overlay.partition, plan.overlay.device, plan.overlay.offset) == ("data", "/dev/mmcblk0p3", 0)
    assert plan.backup_size is None
    assert any("4096 bytes zeroed (no configuration kept)" in line for line in plan.describe())


def test_partition_names_from_the_profile() -> None:
    parts = {"k2": PARTS["kernel"], "r2": PARTS["rootfs"]}
    plan = plan_emmc(index(), parts, kernpart="k2", rootpart="r2")
    assert plan.kernel is not None and (plan.kernel.partition, plan.root.partition) == ("k2", "r2")


@pytest.mark.parametrize(("tar", "parts", "backup", "message"), [
    (index(root=None), PARTS, None, "has no root"),
    (index(root=65 * MIB), PARTS, None, "does not fit partition rootfs"),
    (index(kernel=9 * MIB), PARTS, None, "does not fit partition kernel"),
    (index(), {"rootfs": PARTS["rootfs"]}, None, "no GPT partition named kernel"),
    (index(), {"kernel": PARTS["kernel"]}, None, "no GPT partition named rootfs"),
    (index(root=64 * MIB - 1000), PARTS, None, r"overlay start \(4096 bytes\) does not fit"),
    (index(root=60 * MIB), PARTS, 5 * MIB, r"configuration archive \(5242880 bytes\) does not fit"),
])
def test_refused_before_anything_is_written(tar: SysupgradeTar, parts: dict[str, Part], backup: int | None,
                                            message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        plan_emmc(tar, parts, backup_size=backup)


def test_kernel_optional_dtb_noted() -> None:
    plan = plan_emmc(index(kernel=None, dtb=True), {"rootfs": PARTS["rootfs"]})
    assert plan.kernel is None and plan.dtb_ignored
    assert not any("kernel" in line for line in plan.describe())
    assert any("dtb not written" in line for line in plan.describe())


def test_plan_survives_the_handoff() -> None:
    plan = plan_emmc(index(), PARTS, backup_size=1234)
    assert EmmcPlan.from_dict(plan.to_dict()) == plan
    bare = plan_emmc(index(kernel=None), PARTS)
    assert EmmcPlan.from_dict(bare.to_dict()) == bare


def _tar(tmp_path: Path, board: str) -> Path:
    kernel, root = tmp_path / "kernel", tmp_path / "root"
    kernel.write_bytes(b"\x1f\x8bkernel" * 100)
    root.write_bytes(b"hsqs" + bytes(4092))
    return diskmod.nand_sysupgrade_tar(kernel, root, tmp_path / f"{board}.tar", version="2.0", board=board)


def test_platform_check_takes_the_boards_tar(tmp_path: Path) -> None:
    said: list[str] = []
    assert check_emmc(str(_tar(tmp_path, BOARD)), BOARD, said.append) == 0
    assert said == []


def test_platform_check_refuses_another_board(tmp_path: Path) -> None:
    said: list[str] = []
    assert check_emmc(str(_tar(tmp_path, "other,box")), BOARD, said.append) == 1
    assert said[-1] == "Invalid sysupgrade file." and "other_box" in said[0]


def test_platform_check_refuses_a_tar_without_root(tmp_path: Path) -> None:
    tar = _tar(tmp_path, BOARD)
    _drop_member(tar, "root")
    said: list[str] = []
    assert check_emmc(str(tar), BOARD, said.append) == 1
    assert said == [f"{tar}: the sysupgrade tar holds no root", "Invalid sysupgrade file."]


def test_platform_check_refuses_other_images(tmp_path: Path) -> None:
    fit = tmp_path / "fit.itb"
    fit.write_bytes(b"\xd0\x0d\xfe\xed" + bytes(100))
    said: list[str] = []
    assert check_emmc(str(fit), BOARD, said.append) == 1
    assert "fit images are not written on eMMC here" in said[0]


def test_devices_written_are_kept_through_the_release() -> None:
    assert plan_emmc(index(), PARTS).devices == {"/dev/mmcblk0p1", "/dev/mmcblk0p2"}
    parts = {**PARTS, "rootfs_data": Part("/dev/mmcblk0p3", 16 * MIB)}
    assert plan_emmc(index(kernel=None), parts).devices == {"/dev/mmcblk0p2", "/dev/mmcblk0p3"}
