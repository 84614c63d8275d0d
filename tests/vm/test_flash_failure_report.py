"""Flash boards, an upgrade that stops after the pivot with nothing written: the next boot runs the old
firmware with the owner's config and publishes why (``aborted``, the state, the error), not the
in-progress record's ``interrupted``.

The fault: ``WRT_FAULT_STATE=<state>`` on the kernel command line reaches the init's environment (the
kernel hands parameters without a dot to init) and stage2's fault injection raises on entering that
state. In ``flashing`` the old root and overlay were released: on NOR the old jffs2 ``rootfs_data`` is
unmounted, so the report goes into its free erase blocks (``stage2.writers.jffs2_file``), and the
kernel's jffs2 must show it on the next boot, superseding the in-progress record of the same name; on
NAND stage2 mounts the old ubifs ``rootfs_data`` and writes the report into it. In ``releasing_root``
(NOR) nothing was released yet: the report goes through the jffs2 still mounted read-write.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from wrtvm import scenario
from wrtvm.device import Assets, Device
from wrtvm.images import NOR_SIZE
from wrtvm.runner import VM, Shell

from sandbox import disk
from tests.vm import flash_cycle
from tests.vm.test_nand_cycle import DATA, UBI_CMDLINE
from tests.vm.test_nor_cycle import NOR_CMDLINE

pytestmark = pytest.mark.vm

FAULT = " WRT_FAULT_STATE="


def _abort(device: Device, vm: VM, shell: Shell, t: scenario.Phases, state: str,
           outcome: str = "aborted") -> dict[str, object]:
    """Change the config, run sysupgrade, follow stage2 to the reboot through ``outcome``; the record of
    where the report went."""
    scenario.change_config(shell)
    device.fetch_transfer(shell)
    vm.send("sysupgrade /tmp/sysupgrade.img\n")
    vm.wait_event("transition", timeout=400, state="rebooting")
    assert vm.wait_exit(timeout=60) == 0
    t(f"sysupgrade, fault in {state}, reboot")
    states = flash_cycle.STATES
    assert scenario.transitions(vm) == [*states[:states.index(state) + 1], outcome, "rebooting"]
    assert "stage2 crashed" not in [r.get("event") for r in vm.records]
    saved = [r for r in vm.records if r.get("event") == "report saved" and r.get("outcome") == outcome]
    assert saved, [r for r in vm.records if r.get("level") == "error"]
    return saved[-1]


def _check_aborted(vm: VM, shell: Shell, state: str) -> None:
    assert scenario.version(shell) == "1.0"
    assert scenario.lan_ip(shell) == scenario.CHANGED_IP  # the old overlay, whole
    report = scenario.report(shell)
    assert report is not None, "no /var/log/last-upgrade.json"
    assert report["outcome"] == "aborted" and report["failed_state"] == state, report
    assert report["written"] is False and f"fault injected in state {state}" in report["error"]
    assert report["summary"]["running_version"] == "1.0"
    assert "last upgrade: aborted (1.0 -> 2.0" in vm.console


@pytest.mark.parametrize("state", ["releasing_root", "flashing"])
def test_nor_abort_after_the_pivot_is_reported_from_the_old_jffs2(vm_assets: Assets, tmp_path: Path,
                                                                  state: str) -> None:
    t = scenario.Phases()
    images = vm_assets.images
    with Device(tmp_path / "vm", vm_assets, images.nor_v1, transfer=images.nor_v2) as device:
        disk.nor_flash(images.nor_v1, device.disk_file, NOR_SIZE)
        vm, shell = flash_cycle.boot(device, NOR_CMDLINE + FAULT + state)
        t("boot 1 (1.0) to shell")
        assert flash_cycle.overlay(shell)[1] == "jffs2"
        saved = _abort(device, vm, shell, t, state)
        if state == "releasing_root":  # not released yet: through the jffs2 still mounted read-write
            assert str(saved["path"]).endswith("/upgrade-report.json"), saved
        else:  # released: into the unmounted jffs2's free erase blocks
            assert str(saved["device"]).startswith("/dev/mtd") and saved["offsets"], saved

        vm, shell = flash_cycle.boot(device, NOR_CMDLINE)
        t("boot 2 (1.0) to shell")
        assert flash_cycle.overlay(shell)[1] == "jffs2"
        events = [r.get("event") for r in vm.records]
        assert "jffs2 end marker found, erasing the blocks after it" not in events
        _check_aborted(vm, shell, state)
        t("checks")
        t.total()


def test_nand_abort_after_the_pivot_is_reported_from_the_old_ubifs(vm_assets: Assets, tmp_path: Path) -> None:
    t = scenario.Phases()
    images = vm_assets.images
    with Device(tmp_path / "vm", vm_assets, images.ubi_v1, transfer=images.nand_v2) as device:
        vm, shell = flash_cycle.boot(device, UBI_CMDLINE + FAULT + "flashing")
        t("boot 1 (1.0) to shell")
        assert flash_cycle.overlay(shell) == DATA
        saved = _abort(device, vm, shell, t, "flashing")
        assert saved["volume"] == "ubi0:rootfs_data", saved

        vm, shell = flash_cycle.boot(device, UBI_CMDLINE)
        t("boot 2 (1.0) to shell")
        _check_aborted(vm, shell, "flashing")
        t("checks")
        t.total()


@pytest.mark.parametrize("board", ["nor", "nand"])
def test_failure_after_the_write_is_reported_from_the_new_rootfs_data(vm_assets: Assets, tmp_path: Path,
                                                                      board: str) -> None:
    """A fault in ``verifying``: the image is written whole. NOR: ``mtd -j`` put the config in with it, and
    the report is appended to that jffs2; NAND: the new ``rootfs_data`` volume exists, the config is not
    in it yet (``saving_config`` comes next), the report is. The next boot runs 2.0 and says so."""
    t = scenario.Phases()
    images = vm_assets.images
    flash, transfer, cmdline = ((images.nor_v1, images.nor_v2, NOR_CMDLINE) if board == "nor"
                                else (images.ubi_v1, images.nand_v2, UBI_CMDLINE))
    with Device(tmp_path / "vm", vm_assets, flash, transfer=transfer) as device:
        if board == "nor":
            disk.nor_flash(images.nor_v1, device.disk_file, NOR_SIZE)
        vm, shell = flash_cycle.boot(device, cmdline + FAULT + "verifying")
        t("boot 1 (1.0) to shell")
        saved = _abort(device, vm, shell, t, "verifying", outcome="failed_after_write")
        assert ("offset" in saved) if board == "nor" else saved["volume"] == "ubi0:rootfs_data", saved

        vm, shell = flash_cycle.boot(device, cmdline)
        t("boot 2 (2.0) to shell")
        assert scenario.version(shell) == "2.0"
        kept = board == "nor"  # mtd -j wrote the config with the image; NAND saves it after verifying
        assert (scenario.lan_ip(shell) == scenario.CHANGED_IP) is kept
        report = scenario.report(shell)
        assert report is not None, "no /var/log/last-upgrade.json"
        assert report["outcome"] == "failed_after_write" and report["failed_state"] == "verifying", report
        assert report["written"] is True and report["config_kept"] is kept
        assert "last upgrade: failed_after_write (1.0 -> 2.0" in vm.console
        t("checks")
        t.total()
