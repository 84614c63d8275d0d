"""x86 upgrade with ``sysupgrade -p``: no partition-by-partition write (OpenWrt's "do not attempt to
restore the partition table"); the whole image goes over the disk, the config is still kept. The cycle
without ``-p`` (tests/vm/test_x86_cycle.py) takes the partition-by-partition path."""

from __future__ import annotations

import pytest
from wrtvm import scenario
from wrtvm.device import Device

pytestmark = pytest.mark.vm


def test_x86_upgrade_whole_disk_keeps_config(vm_device: Device) -> None:
    t = scenario.Phases()
    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 1 (1.0) to shell")
    scenario.change_config(shell)
    scenario.start_upgrade(vm_device, vm, shell, "-p")
    t("sysupgrade -p to flashing")
    assert vm.wait_exit(timeout=180) == 0
    t("flash, verify, reboot")
    plans = [r.get("step", "") for r in vm.records if r.get("event") == "disk plan"]
    assert plans and plans[0].startswith("write the whole image over the disk"), plans
    assert scenario.transitions(vm)[-4:] == ["verifying", "saving_config", "finalizing", "rebooting"]

    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 2 (2.0) to shell")
    scenario.check_upgraded(shell, ip=scenario.CHANGED_IP, config_kept=True)
    t("checks")
    t.total()
