"""The x86 upgrade cycle in QEMU: a real kernel boots firmware 1.0 from a virtio disk, the config is
changed on the serial console, ``sysupgrade`` flashes 2.0 from the running system (partition by
partition: the partition maps of 1.0 and 2.0 match), the guest reboots (QEMU exits), and the next boot
runs 2.0 with the config kept and the upgrade report saying success.
"""

from __future__ import annotations

import pytest
from wrtvm import scenario
from wrtvm.device import Device

pytestmark = pytest.mark.vm


def test_x86_upgrade_keeps_config(vm_device: Device) -> None:
    t = scenario.Phases()
    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 1 (1.0) to shell")
    assert scenario.version(shell) == "1.0"
    scenario.change_config(shell)
    scenario.start_upgrade(vm_device, vm, shell)
    t("sysupgrade to flashing")
    vm.wait_event("transition", timeout=120, state="rebooting")
    assert vm.wait_exit(timeout=60) == 0  # reboot(2) under -no-reboot
    t("flash, verify, reboot")
    assert scenario.transitions(vm) == [
        "validating", "preparing_ramfs", "stopping_services", "terminating", "pivoting", "releasing_root",
        "flashing", "verifying", "saving_config", "finalizing", "rebooting"]
    plans = [r.get("step", "") for r in vm.records if r.get("event") == "disk plan"]
    assert plans and all(p.startswith(("write partition", "keep the disk's PARTUUID")) for p in plans), plans

    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 2 (2.0) to shell")
    scenario.check_upgraded(shell, ip=scenario.CHANGED_IP, config_kept=True)
    t("checks")
    t.total()
