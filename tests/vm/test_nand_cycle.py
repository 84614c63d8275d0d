"""The NAND (UBI) upgrade cycle in QEMU, end to end: a sysupgrade tar onto UBI volumes, the config in
the ubifs ``rootfs_data``, restored after the reboot.

**Layout, and why.** nandsim keeps its contents in guest RAM: they would not outlive the reboot (QEMU
exits under ``-no-reboot`` and starts again). So the board's flash is the VM's disk file under
block2mtd, as the MTD partition ``ubi`` (OpenWrt's ``CI_UBIPART``), holding UBI: UBI runs on NOR-type
MTD too (1-byte writes, 128 KiB eraseblocks; no bad blocks and no out-of-band data, which is what
nandsim adds and ``tests/vm/test_ubi_nand.py`` covers without a reboot). The flash of 1.0 is made on the
host by ``ubinize`` (volumes ``kernel``, ``rootfs`` with the squashfs, an empty ``rootfs_data`` that UBI
grows to the free room on the first attach). The initramfs (``wrt.ubi=``) attaches it and boots the
squashfs of the volume named ``rootfs`` through a ubiblock, as OpenWrt does with ``rootfs=``/ubiblock;
preinit mounts the ubifs ``rootfs_data`` as the overlay (ubifs formats the empty volume on first mount).
The kernel itself comes from QEMU's ``-kernel``: the ``kernel`` volume holds a stand-in naming the
firmware version, which shows that the upgrade wrote it.

The cycle: boot 1 runs 1.0; the config is changed on the console; ``sysupgrade`` validates the 2.0
sysupgrade tar (fwtool metadata, the NAND platform check: ``sysupgrade-<board>/CONTROL``) and hands it
to stage2, which detects the NAND profile, releases the ubiblock root and the ubifs overlay, removes
``rootfs_data``, resizes ``kernel`` and ``rootfs`` as needed, writes them from the tar (read back),
creates ``rootfs_data``, moves the config archive into its ubifs, and reboots. Boot 2 runs 2.0 with
the config restored from ``/sysupgrade.tgz`` and stage2's report, saved in the same ubifs, published
as /var/log/last-upgrade.json.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from wrtvm import scenario
from wrtvm.device import Assets, Device
from wrtvm.images import UBI_PEB, kernel_stand_in
from wrtvm.runner import Shell

from tests.vm import flash_cycle

pytestmark = pytest.mark.vm

UBI_CMDLINE = f"wrt.ubi=/dev/vda,{UBI_PEB} root=/dev/ubiblock0_1"
DATA = ("ubi0:rootfs_data", "ubifs")


def volume_node(shell: Shell, name: str) -> str:
    out = shell.check(f"grep -lx {name} /sys/class/ubi/ubi0_*/name")
    return "/dev/" + out.strip().splitlines()[-1].split("/")[-2]


def test_nand_upgrade_keeps_config_in_ubifs(vm_assets: Assets, tmp_path: Path) -> None:
    t = scenario.Phases()
    images = vm_assets.images
    with Device(tmp_path / "vm", vm_assets, images.ubi_v1, transfer=images.nand_v2) as device:
        vm, shell = flash_cycle.boot(device, UBI_CMDLINE)
        t("boot 1 (1.0) to shell")
        assert scenario.version(shell) == "1.0"
        assert flash_cycle.overlay(shell) == DATA
        flash_cycle.upgrade(device, vm, shell, t, "UBI volumes")
        plan = flash_cycle.plan_steps(vm)
        assert any(p.startswith("platform nand (detected: MTD partition ubi)") for p in plan), plan
        assert "remove volume rootfs_data" in plan, plan
        assert f"update volume rootfs from sysupgrade-{images.board}/root" in plan, plan
        released = next(r for r in vm.records if r.get("event") == "flash released")
        assert any(d.startswith("/dev/ubiblock0_") for d in released["devices"]), released
        saved = next(r for r in vm.records if r.get("event") == "configuration saved")
        assert saved["volume"] == "ubi0:rootfs_data"

        vm, shell = flash_cycle.boot(device, UBI_CMDLINE)
        t("boot 2 (2.0) to shell")
        assert scenario.version(shell) == "2.0"
        assert scenario.lan_ip(shell) == scenario.CHANGED_IP
        assert "- config restore -" in vm.console
        assert flash_cycle.overlay(shell) == DATA
        kernel = kernel_stand_in("2.0")
        written = shell.check(f"head -c {len(kernel)} {volume_node(shell, 'kernel')} | md5sum").split()[0]
        assert written == hashlib.md5(kernel).hexdigest()  # the kernel volume holds 2.0's
        assert shell.run("ls /sysupgrade.tgz")[0] != 0  # done deleted it after the good boot
        flash_cycle.published_report(vm, shell)  # put into the new ubifs beside sysupgrade.tgz
        t("checks")
        t.total()
