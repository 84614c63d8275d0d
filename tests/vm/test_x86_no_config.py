"""x86 upgrade with ``sysupgrade -n``: the configuration is not kept, the next boot runs 2.0 with the
firmware's defaults and a report saying success without a kept config."""

from __future__ import annotations

import pytest
from wrtvm import scenario
from wrtvm.device import Device

pytestmark = pytest.mark.vm


def test_x86_upgrade_without_config(vm_device: Device) -> None:
    t = scenario.Phases()
    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 1 (1.0) to shell")
    scenario.change_config(shell)
    scenario.start_upgrade(vm_device, vm, shell, "-n")
    t("sysupgrade -n to flashing")
    vm.wait_event("no configuration kept", timeout=120)
    assert vm.wait_exit(timeout=120) == 0
    t("flash, verify, reboot")
    assert scenario.transitions(vm)[-4:] == ["verifying", "saving_config", "finalizing", "rebooting"]

    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 2 (2.0) to shell")
    assert scenario.default_ip(shell) != scenario.CHANGED_IP
    scenario.check_upgraded(shell, ip=scenario.default_ip(shell), config_kept=False)
    assert shell.run("test -e /sysupgrade.tgz")[0] != 0
    t("checks")
    t.total()
