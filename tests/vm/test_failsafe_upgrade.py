"""Failsafe under a real kernel: ``f`` + Enter on the serial console during preinit's wait enters
failsafe (no overlay: the firmware's defaults, read-only root), and ``sysupgrade`` from the failsafe
shell hands over to the init through ``/tmp/sysupgrade``.

The documented config outcome: in failsafe the running configuration is the firmware's defaults (the
owner's overlay is not mounted, and the flash replaces it), so what the next firmware gets is what
``sysupgrade`` saves there: the defaults, or the archive given with ``-f`` (how an owner brings a saved
backup back). procd drops the archive on this path; we keep it. Here ``-f`` carries a changed LAN
address, and the next boot runs 2.0 with it.
"""

from __future__ import annotations

import pytest
from wrtvm import scenario
from wrtvm.device import Device
from wrtvm.runner import Shell

pytestmark = pytest.mark.vm

BACKUP_IP = "10.20.30.40"
WAIT = "preinit.fs_failsafe_wait_timeout=120"  # long enough for the harness to answer the prompt


def test_failsafe_from_the_console_then_upgrade_with_a_saved_backup(vm_device: Device) -> None:
    t = scenario.Phases()
    vm = vm_device.boot(cmdline_extra=WAIT)
    vm.expect(r"Press the \[f\] key and hit \[enter\] to enter failsafe mode", timeout=180)
    vm.send("f\n")
    vm.expect("- failsafe -", timeout=60)
    requested = vm.wait_event("failsafe requested", timeout=60)
    assert requested.get("trigger") == "console", requested
    shell = Shell(vm)
    shell.wait_ready(timeout=120)
    t("boot 1 (1.0) to failsafe shell")
    assert scenario.version(shell) == "1.0"
    assert shell.check("hostname").strip() == "OpenWrt-failsafe"
    assert shell.run("test -e /tmp/failsafe")[0] == 0
    assert shell.run("grep -q ' overlay ' /proc/mounts")[0] != 0, "no overlay in failsafe"
    default_ip = scenario.lan_ip(shell)
    assert default_ip != BACKUP_IP

    shell.check("rm -rf /tmp/saved && mkdir -p /tmp/saved/etc/config && "
                f"sed \"s/option ipaddr '[0-9.]*'/option ipaddr '{BACKUP_IP}'/\" {scenario.NETWORK} "
                "> /tmp/saved/etc/config/network && tar -czf /tmp/backup.tgz -C /tmp/saved etc")
    scenario.start_upgrade(vm_device, vm, shell, "-f /tmp/backup.tgz")
    t("sysupgrade -f in failsafe to flashing")
    assert vm.wait_exit(timeout=180) == 0
    t("flash, verify, reboot")
    assert scenario.transitions(vm)[-4:] == ["verifying", "saving_config", "finalizing", "rebooting"]

    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 2 (2.0) to shell")
    scenario.check_upgraded(shell, ip=BACKUP_IP, config_kept=True)
    t("checks")
    t.total()
