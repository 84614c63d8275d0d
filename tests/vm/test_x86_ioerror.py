"""I/O errors injected with QEMU's blkdebug on the target disk during the write: stage2 ends in
``failed_after_write`` with the offset of the failing write, saves its report in the new boot partition,
reboots; the next boot (without the fault) publishes that report.

The bad sector is in rootfs_data's place (after the new squashfs): the boot partition and the root are
complete by then, so the next boot runs 2.0 and can show the report. A bad sector inside the squashfs
would leave a disk that does not boot (see test_x86_powercut: the same state as a cut there)."""

from __future__ import annotations

import re

import pytest
from wrtvm import machine, powercut, scenario
from wrtvm.device import Assets, Device

pytestmark = pytest.mark.vm

MIB = 1 << 20


def test_write_error_is_reported_with_its_offset(vm_device: Device, vm_assets: Assets) -> None:
    layout = powercut.layout_of(vm_assets.images.v2)
    bad = (layout.payload - 4 * MIB) // 512 * 512  # past boot 1's overlay journal (its middle)
    rules = vm_device.workdir / "blkdebug.conf"
    rules.write_text(machine.blkdebug_rules(bad // 512))
    print(f"\n  bad sector at byte {bad} of {layout.payload}")

    t = scenario.Phases()
    vm, shell = scenario.boot_to_shell(vm_device, blkdebug=rules)
    t("boot 1 (1.0, blkdebug) to shell")
    scenario.change_config(shell)
    scenario.start_upgrade(vm_device, vm, shell)
    t("sysupgrade to flashing")
    failed = vm.wait_event("step failed", timeout=120, state="flashing")
    assert failed["written"] is True
    assert bad - MIB < failed["offset"] <= bad  # the start of the 1 MiB write that failed
    assert vm.wait_exit(timeout=120) == 0
    t("write error, report, reboot")
    states = scenario.transitions(vm)
    assert states[-3:] == ["flashing", "failed_after_write", "rebooting"], states
    assert any(r.get("event") == "report saved" and r.get("outcome") == "failed_after_write"
               for r in vm.records)

    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 2 (2.0) to shell")
    assert scenario.version(shell) == "2.0"
    report = scenario.report(shell)
    assert report is not None
    assert report["outcome"] == "failed_after_write" and report["failed_state"] == "flashing"
    assert report["offset"] == failed["offset"] and report["written"] is True
    line = re.search(r"last upgrade: failed_after_write\b.*", vm.console)  # preinit's console line
    assert line is not None and "in flashing" in line.group() and f"at offset {bad}" in line.group()
    assert scenario.lan_ip(shell) == scenario.default_ip(shell)  # no config saved after a failed write
    t("checks")
    t.total()
