"""x86 partition-by-partition upgrades on the sandbox device (stage2.platforms.x86).

The device's disk differs from the images in what a partition-wise write must keep: its own disk
signature, and a third partition (user data) the image does not know. An upgrade with the layout
unchanged writes partitions 1 and 2 only; the signature and partition 3 stay, grub.cfg's PARTUUID= is
made the disk's, and the configuration survives. With ``-p`` (partition table not kept) the whole
image is written, as OpenWrt does, and the image's signature replaces the disk's.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandbox.device import Boot, Device
from sandbox.disk import payload_size
from sandbox.images import Images
from tests.sandbox.conftest import start_upgrade

pytestmark = pytest.mark.sandbox

MIB = 1 << 20
SIGNATURE = 0x0BADCAFE
CHANGED = "config interface 'lan'\n\toption proto 'static'\n\toption ipaddr '10.1.2.3'\n"


def _prepare(tmp_path: Path, images: Images) -> tuple[Device, int, bytes]:
    """A device from v1 whose disk has its own signature and a partition 3 full of user data."""
    size = payload_size(images.v1)
    start = -(-size // MIB) * MIB
    dev = Device(tmp_path / "device", images.v1, disk_size=start + 4 * MIB)
    data = bytes(range(256)) * (4 * MIB // 256)
    with open(dev.disk, "r+b") as f:  # through the loop device: its cache has read the MBR already
        f.seek(440)
        f.write(struct.pack("<I", SIGNATURE))
        f.seek(446 + 2 * 16)
        f.write(struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start // 512,
                            4 * MIB // 512))
        f.seek(start)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return dev, start, data


def _report(boot: Boot) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(boot.path("/tmp/log/last-upgrade.json").read_text())
    return data


def _grub(dev: Device) -> str:
    out = subprocess.run(["debugfs", "-R", "cat /boot/grub/grub.cfg", dev.boot_part], capture_output=True,
                         text=True, check=True)
    return out.stdout


def _upgrade(dev: Device, images: Images, *flags: str) -> Boot:
    boot1 = dev.boot()
    boot1.wait_ready()
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, images.v2, *flags)
    assert boot1.wait_end()["signal"] == "SIGHUP"
    plan = [r.get("step", "") for r in boot1.records if r.get("event") == "disk plan"]
    assert plan, "no disk plan logged"
    boot2 = dev.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert boot2.path("/etc/config/network").read_text() == CHANGED
    return boot2


def test_partition_wise_keeps_signature_and_other_partitions(tmp_path: Path, images: Images) -> None:
    dev, start, data = _prepare(tmp_path, images)
    try:
        assert "root=PARTUUID=5eed0001-02" in _grub(dev)
        boot2 = _upgrade(dev, images)
        report = _report(boot2)
        assert report["outcome"] == "success" and report["config_kept"] is True
        assert report["details"]["partitions"] == {"1": "written", "2": "written"}
        assert report["details"]["grub_partuuid_fixed"] is True
        with open(dev.disk_file, "rb") as f:
            assert struct.unpack("<I", f.read(512)[440:444])[0] == SIGNATURE
            f.seek(start)
            assert f.read(len(data)) == data
        grub = _grub(dev)
        assert f"root=PARTUUID={SIGNATURE:08x}-02" in grub and "5eed0001" not in grub
    finally:
        dev.close()


def test_without_saved_partitions_the_whole_image_is_written(tmp_path: Path, images: Images) -> None:
    dev, _start, _data = _prepare(tmp_path, images)
    try:
        boot2 = _upgrade(dev, images, "-p")
        report = _report(boot2)
        assert report["outcome"] == "success" and report["config_kept"] is True
        assert "partitions" not in report["details"]
        with open(dev.disk_file, "rb") as f:
            sector = f.read(512)
        assert struct.unpack("<I", sector[440:444])[0] == 0x5EED0001  # the image's MBR, whole
        assert sector[446 + 32:446 + 48] == bytes(16)  # partition 3 is gone from the table
    finally:
        dev.close()
