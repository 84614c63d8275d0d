"""wrtcore.ubi's request layouts and sysfs reading, and the NAND volume plan (stage2.writers.ubi)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from stage2.formats.nand_tar import ImageType, Member, SysupgradeTar
from stage2.writers import ubi as writer
from wrtcore import ubi
from wrtcore.errors import InvalidInput, WriteError

LEB = 126976


def test_ioctl_numbers_are_the_headers() -> None:
    # values of <mtd/ubi-user.h> as compiled by gcc on x86_64
    assert ubi.UBI_IOCMKVOL == 0x40986F00
    assert ubi.UBI_IOCRMVOL == 0x40046F01
    assert ubi.UBI_IOCRSVOL == 0x400C6F02
    assert ubi.UBI_IOCATT == 0x40186F40
    assert ubi.UBI_IOCDET == 0x40046F41
    assert ubi.UBI_IOCVOLUP == 0x40084F00
    assert ubi.UBI_IOCVOLRMBLK == 0x4F08


def test_mkvol_request_layout() -> None:
    raw = ubi.pack_mkvol("rootfs_data", 5 * LEB)
    assert len(raw) == 152
    vol_id, align, size, vtype, flags, name_len = struct.unpack_from("=iiqbBh", raw)
    assert (vol_id, align, size, vtype, flags, name_len) == (-1, 1, 5 * LEB, 3, 0, 11)
    assert raw[24:35] == b"rootfs_data" and raw[35:] == bytes(152 - 35)


@pytest.mark.parametrize("name", ["", "x" * 128])
def test_mkvol_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        ubi.pack_mkvol(name, LEB)


def test_attach_and_rsvol_layouts() -> None:
    assert ubi.pack_attach(3) == struct.pack("=iiihb9s", -1, 3, 0, 0, 0, bytes(9))
    assert len(ubi.pack_attach(3)) == 24
    assert ubi.pack_rsvol(2, 7 * LEB) == struct.pack("=qi", 7 * LEB, 2)


def _fake_sysfs(root: Path, volumes: dict[str, int], avail: int, total: int = 2000) -> Path:
    dev = root / "ubi0"
    dev.mkdir(parents=True)
    for name, value in (("mtd_num", "4"), ("eraseblock_size", str(LEB)), ("avail_eraseblocks", str(avail)),
                        ("total_eraseblocks", str(total)), ("min_io_size", "2048"), ("dev", "250:0")):
        (dev / name).write_text(value + "\n")
    for vol_id, (name, lebs) in enumerate(volumes.items()):
        v = dev / f"ubi0_{vol_id}"
        v.mkdir()
        for attr, value in (("name", name), ("reserved_ebs", str(lebs)), ("usable_eb_size", str(LEB)),
                            ("data_bytes", str(lebs * LEB)), ("type", "dynamic"),
                            ("dev", f"250:{vol_id + 1}")):
            (v / attr).write_text(value + "\n")
    (dev / "power").mkdir()  # other entries are ignored
    return root


def test_sysfs_reading(tmp_path: Path) -> None:
    sysfs = _fake_sysfs(tmp_path, {"kernel": 40, "rootfs": 200, "rootfs_data": 1500}, avail=200)
    [dev] = ubi.devices(str(sysfs))
    assert (dev.number, dev.mtd_num, dev.eraseblock_size, dev.avail_eraseblocks) == (0, 4, LEB, 200)
    assert [v.name for v in dev.volumes] == ["kernel", "rootfs", "rootfs_data"]
    rootfs = dev.volume("rootfs")
    assert rootfs is not None and rootfs.node == "/dev/ubi0_1" and rootfs.size == 200 * LEB
    assert ubi.device_on_mtd(4, str(sysfs)) == dev
    assert ubi.device_on_mtd(5, str(sysfs)) is None
    assert ubi.devices(str(tmp_path / "none")) == []


def _tar(kernel: int | None, root: int, root_type: ImageType = ImageType.SQUASHFS) -> SysupgradeTar:
    return SysupgradeTar("/tmp/sysupgrade.img", "sysupgrade-board", b"BOARD=x\n",
                         Member("sysupgrade-board/kernel", kernel) if kernel else None,
                         Member("sysupgrade-board/root", root), None, root_type)


def _device(tmp_path: Path, volumes: dict[str, int], avail: int) -> ubi.Device:
    return ubi.devices(str(_fake_sysfs(tmp_path, volumes, avail)))[0]


def test_plan_keeps_resizes_and_sizes_rootfs_data(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"kernel": 40, "rootfs": 200, "rootfs_data": 1500}, avail=200)
    plan = writer.plan_nand(_tar(40 * LEB - 5, 250 * LEB), dev)
    assert [(op.action, op.name, op.size // LEB) for op in plan.ops] == [
        ("remove", "rootfs_data", 0), ("keep", "kernel", 40), ("resize", "rootfs", 250),
        ("create", "rootfs_data", 200 + 1740 - 290)]
    assert plan.writes == (("rootfs", "sysupgrade-board/root"), ("kernel", "sysupgrade-board/kernel"))


def test_plan_shrinks_before_it_grows_and_honours_rootfs_data_max(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"kernel": 40, "rootfs": 200}, avail=100)
    plan = writer.plan_nand(_tar(60 * LEB, 150 * LEB), dev, rootfs_data_max=30 * LEB + 1)
    assert [(op.action, op.name, op.size // LEB) for op in plan.ops] == [
        ("resize", "rootfs", 150), ("resize", "kernel", 60), ("create", "rootfs_data", 31)]


def test_ubifs_root_takes_everything_and_has_no_rootfs_data(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"rootfs": 200, "rootfs_data": 100}, avail=50)
    plan = writer.plan_nand(_tar(None, 10 * LEB, ImageType.UBIFS), dev)
    assert [(op.action, op.name, op.size // LEB) for op in plan.ops] == [
        ("remove", "rootfs_data", 0), ("resize", "rootfs", 350)]


def test_kernel_on_raw_mtd_removes_a_stale_kernel_volume(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"kernel": 40, "rootfs": 200}, avail=100)
    plan = writer.plan_nand(_tar(20 * LEB, 200 * LEB), dev, kernel_in_ubi=False)
    assert plan.ops[0].action == "remove" and plan.ops[0].name == "kernel"
    assert [w[0] for w in plan.writes] == ["rootfs"]


def test_too_big_and_no_room_for_rootfs_data_are_refused(tmp_path: Path) -> None:
    dev = _device(tmp_path, {"kernel": 40, "rootfs": 200}, avail=10)
    with pytest.raises(InvalidInput, match=r"needs 300 eraseblocks.*has 250"):
        writer.plan_nand(_tar(100 * LEB, 200 * LEB), dev)
    with pytest.raises(InvalidInput, match="cannot initialize rootfs_data volume: 10 eraseblocks"):
        writer.plan_nand(_tar(40 * LEB, 200 * LEB), dev)


def test_update_and_verify_on_a_regular_file(tmp_path: Path) -> None:
    """The verify half on its own: a file standing in for a volume, one chunk changed."""
    node = tmp_path / "vol"
    data = bytes(range(256)) * 1000
    node.write_bytes(data)
    digests = [hashlib.sha256(data[i:i + 4096]).digest() for i in range(0, len(data), 4096)]
    writer.verify_volume(str(node), digests, len(data), 4096)
    node.write_bytes(data[:10000] + b"X" + data[10001:])
    with pytest.raises(WriteError) as err:
        writer.verify_volume(str(node), digests, len(data), 4096)
    assert err.value.offset == 8192 and err.value.written is True
