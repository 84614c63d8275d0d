"""The eMMC upgrade cycle in QEMU: a real kernel parses the board's GPT and the guest reboots for real.

The VM's disk is an eMMC board's (``wrtvm.emmc_image``): GPT partition 1 ``kernel`` (a stand-in: QEMU
boots the real kernel with -kernel), partition 2 ``rootfs`` holding the squashfs of 1.0 with the overlay
at the 64 KiB boundary after it. The guest kernel lists the partitions itself (``/dev/vda2`` is
``root=``; sysfs gives ``PARTNAME``), so stage 1 and stage2 detect the eMMC profile with no
``/lib/upgrade/platform.conf``. Boot 1 runs 1.0 (preinit formats the overlay after the squashfs); the
config is changed on the console; ``sysupgrade`` takes the eMMC sysupgrade tar of 2.0 and stage2 writes
its ``root`` to ``rootfs`` and ``kernel`` to ``kernel`` through the kernel's partition nodes, the config
archive raw at the new overlay start and the report record at the overlay area's end, then reboots.
Boot 2 runs 2.0: preinit finds the gzip at the overlay start, unpacks it, formats the overlay there,
restores the changed config and publishes the report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from wrtvm import scenario
from wrtvm.device import Assets, Device
from wrtvm.images import kernel_stand_in

from stage2.formats import nand_tar
from stage2.formats.report_record import SLOT, decode
from stage2.platforms.emmc import overlay_offset
from stage2.platforms.emmc_write import read_gpt
from tests.vm import flash_cycle

pytestmark = pytest.mark.vm

DETECTED = "platform emmc (detected: root=/dev/vda2 on /dev/vda with GPT kernel/rootfs)"


def _read(disk: Path, start: int, length: int) -> bytes:
    with open(disk, "rb") as f:
        f.seek(start)
        return f.read(length)


def _member_sha256(tar: Path, member: nand_tar.Member) -> str:
    h = hashlib.sha256()
    with nand_tar.open_member(str(tar), member) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_emmc_upgrade_keeps_config_through_the_overlay_start(vm_assets: Assets, tmp_path: Path) -> None:
    t = scenario.Phases()
    images = vm_assets.images
    tar = nand_tar.read_index(str(images.emmc_v2))
    assert tar.root is not None and tar.kernel is not None
    with Device(tmp_path / "vm", vm_assets, images.emmc_v1, transfer=images.emmc_v2) as device:
        gpt = {p.name: p for p in read_gpt(str(device.disk_file))}
        assert [(p.number, p.name) for p in gpt.values()] == [(1, "kernel"), (2, "rootfs")]
        vm, shell = scenario.boot_to_shell(device)
        t("boot 1 (1.0) to shell")
        assert scenario.version(shell) == "1.0"
        # the guest kernel parsed the GPT: its partition nodes carry the names; no override file
        assert "PARTNAME=kernel" in shell.check("cat /sys/class/block/vda1/uevent")
        assert "PARTNAME=rootfs" in shell.check("cat /sys/class/block/vda2/uevent")
        assert shell.run("test -e /lib/upgrade/platform.conf")[0] != 0
        source, fstype = flash_cycle.overlay(shell)
        assert source.startswith("/dev/loop") and fstype == "ext4", (source, fstype)  # after the squashfs

        flash_cycle.upgrade(device, vm, shell, t, "eMMC tar to GPT partitions")
        plan = flash_cycle.plan_steps(vm)
        assert any(p.startswith(DETECTED) for p in plan), plan
        # written through the kernel's partition nodes (no loop views on a kernel that parses the GPT)
        assert any(f"{tar.root.name} ({tar.root.size} bytes) to rootfs (/dev/vda2)" in p for p in plan), plan
        assert any(f"{tar.kernel.name} ({tar.kernel.size} bytes) to kernel (/dev/vda1)" in p for p in plan)
        start = overlay_offset(tar.root.size)
        saved = next(r for r in vm.records if r.get("event") == "configuration saved")
        assert (saved["partition"], saved["device"], saved["offset"]) == ("rootfs", "/dev/vda2", start)

        # what the reboot finds on the disk: 2.0's kernel stand-in and root, the gzip at the overlay start
        kernel, rootfs = gpt["kernel"].start, gpt["rootfs"].start
        assert _read(device.disk_file, kernel, tar.kernel.size) == kernel_stand_in("2.0")
        assert (hashlib.sha256(_read(device.disk_file, rootfs, tar.root.size)).hexdigest()
                == _member_sha256(images.emmc_v2, tar.root))
        assert _read(device.disk_file, rootfs + start, 2) == b"\x1f\x8b"
        # the final report, raw in the last 256 KiB of the overlay area
        record = next(r for r in vm.records if r.get("event") == "report saved")
        assert (record["partition"], record["offset"]) == ("rootfs", gpt["rootfs"].size - SLOT)
        raw = decode(_read(device.disk_file, rootfs + record["offset"], SLOT))
        assert raw is not None and raw["outcome"] == "success", raw
        t("disk checks")

        vm, shell = scenario.boot_to_shell(device)
        t("boot 2 (2.0) to shell")
        events = [str(r.get("event")) for r in vm.records]
        assert "config archive found at the start of rootfs_data" in events, events
        assert "config archive removed" in events
        shell.check("sync")  # what the guest wrote reaches the disk file the checks read
        # the overlay is ext4 now where the archive was, on a loop device over the rootfs partition
        assert _read(device.disk_file, rootfs + start + 1080, 2) == b"\x53\xef"
        source, fstype = flash_cycle.overlay(shell)
        assert source.startswith("/dev/loop") and fstype == "ext4", (source, fstype)
        published = scenario.check_upgraded(shell, ip=scenario.CHANGED_IP, config_kept=True)
        assert (published["from_version"], published["to_version"]) == ("1.0", "2.0"), published
        assert published["summary"]["running_version"] == "2.0"
        assert "last upgrade: success (1.0 -> 2.0" in vm.console
        # taken once: the raw record is gone, the report stays in the overlay for later boots
        assert decode(_read(device.disk_file, rootfs + record["offset"], SLOT)) is None
        assert shell.run("test -f /overlay/upgrade-report.json")[0] == 0
        t("checks")
        t.total()
