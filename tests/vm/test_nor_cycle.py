"""The NOR upgrade cycle in QEMU, end to end: the config carried by ``mtd -j`` comes back after the
reboot through the kernel's jffs2.

The flash is the VM's disk file under block2mtd (``wrt.nor=``: the MTD partition ``firmware``, split by
the initramfs into ``rootfs``, the squashfs, and ``rootfs_data``, as OpenWrt's mtdsplit does). Boot 1
runs firmware 1.0 (tmpfs overlay, then ``done`` makes rootfs_data a jffs2); the config is changed on the
console; ``sysupgrade`` validates the 2.0 NOR image (fwtool metadata, the NOR platform check) and hands
it to stage2, which detects the NOR profile, releases the squashfs root and the jffs2 overlay (both on
sub-partitions of ``firmware``), writes ``firmware`` with the configuration archive appended as jffs2 at
the image's ``DE AD C0 DE`` block (``mtd -j``), and reboots. Boot 2 runs 2.0: preinit erases the stale
blocks after the jffs2's end marker, the kernel's jffs2 mounts rootfs_data, and the archive found there
restores the changed config, and the report stage2 appended to that jffs2 (``mtd jffs2write``) is
/overlay/upgrade-report.json, published as /var/log/last-upgrade.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from wrtvm import scenario
from wrtvm.device import Assets, Device
from wrtvm.images import NOR_ERASE, NOR_SIZE

from sandbox import disk
from tests.vm import flash_cycle

pytestmark = pytest.mark.vm

NOR_CMDLINE = f"wrt.nor=/dev/vda,{NOR_ERASE} root=/dev/mtdblock1"


def test_nor_upgrade_keeps_config_through_mtd_j(vm_assets: Assets, tmp_path: Path) -> None:
    t = scenario.Phases()
    images = vm_assets.images
    with Device(tmp_path / "vm", vm_assets, images.nor_v1, transfer=images.nor_v2) as device:
        disk.nor_flash(images.nor_v1, device.disk_file, NOR_SIZE)  # the chip: the image, then erased
        vm, shell = flash_cycle.boot(device, NOR_CMDLINE)
        t("boot 1 (1.0) to shell")
        assert scenario.version(shell) == "1.0"
        assert flash_cycle.overlay(shell)[1] == "jffs2"  # done switched from the tmpfs overlay
        flash_cycle.upgrade(device, vm, shell, t, "mtd -j")
        plan = flash_cycle.plan_steps(vm)
        assert any(p.startswith("platform nor (detected: MTD partition firmware)") for p in plan), plan
        released = next(r for r in vm.records if r.get("event") == "flash released")
        assert "/dev/mtdblock1" in released["devices"]  # the squashfs root let go of before the write

        vm, shell = flash_cycle.boot(device, NOR_CMDLINE)
        t("boot 2 (2.0) to shell")
        assert scenario.version(shell) == "2.0"
        assert scenario.lan_ip(shell) == scenario.CHANGED_IP
        events = [str(r.get("event")) for r in vm.records]
        # rootfs_data is the jffs2 that mtd -j wrote: mounted as it is, the blocks after its end marker
        # (the old jffs2's) erased first; the archive in it restored the config
        assert "jffs2 end marker found, erasing the blocks after it" in events
        assert "switching to jffs2 overlay" in events
        assert "rootfs_data not ready yet, using temporary tmpfs overlay" not in events
        assert "- config restore -" in vm.console
        assert flash_cycle.overlay(shell)[1] == "jffs2"
        assert shell.run("ls /sysupgrade.tgz")[0] != 0  # done deleted it after the good boot
        report = flash_cycle.published_report(vm, shell)  # appended to the jffs2 after mtd -j
        assert report["details"]["mtd"]["jffs2_offset"] is not None
        t("checks")
        t.total()
