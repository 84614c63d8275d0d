"""Steps the flash boards' upgrade cycles share (tests/vm/test_nor_cycle.py, test_nand_cycle.py): boot
the flash with the initramfs's layout option, read what /overlay is, run sysupgrade through stage2's
states to the reboot; after it, the report stage2 left in the new rootfs_data, published by preinit."""

from __future__ import annotations

from typing import Any

from wrtvm import scenario
from wrtvm.device import Device
from wrtvm.runner import VM, Shell

from tests.vm.booted import shell_after_done

STATES = ["validating", "preparing_ramfs", "stopping_services", "terminating", "pivoting", "releasing_root",
          "flashing", "verifying", "saving_config", "finalizing", "rebooting"]


def boot(device: Device, cmdline: str, timeout: float = 240.0) -> tuple[VM, Shell]:
    """Boot the device's flash (``cmdline``: ``wrt.nor=``/``wrt.ubi=`` and ``root=``) until ``done``."""
    vm = device.boot(cmdline_extra=cmdline)
    return vm, shell_after_done(vm, timeout=timeout)


def overlay(shell: Shell) -> tuple[str, str]:
    """The source and filesystem type mounted on /overlay."""
    out = shell.check("awk '$2 == \"/overlay\" { s = $1 \" \" $3 } END { print \"mnt=\" s }' /proc/mounts")
    source, _, fstype = out.split("mnt=")[-1].strip().splitlines()[0].partition(" ")
    return source, fstype


def upgrade(device: Device, vm: VM, shell: Shell, t: scenario.Phases, what: str) -> None:
    """Change the config, run sysupgrade with the transfer disk's image, follow stage2 to the reboot;
    every state passed in order."""
    scenario.change_config(shell)
    scenario.start_upgrade(device, vm, shell)
    t("sysupgrade to flashing")
    vm.wait_event("transition", timeout=400, state="rebooting")
    assert vm.wait_exit(timeout=60) == 0  # reboot(2) under -no-reboot
    t(f"flash ({what}), reboot")
    assert scenario.transitions(vm) == STATES, [r for r in vm.records if r.get("level") == "error"]
    assert "stage2 crashed" not in [r.get("event") for r in vm.records]


def plan_steps(vm: VM) -> list[str]:
    return [str(r.get("step")) for r in vm.records if r.get("event") == "plan"]


def published_report(vm: VM, shell: Shell) -> dict[str, Any]:
    """Boot 2's published report of a successful 1.0 -> 2.0 upgrade: stage2 left it in the new
    rootfs_data, so it is the overlay's top directory now, and preinit published it from there."""
    report = scenario.report(shell)
    assert report is not None, "boot 2 published no /var/log/last-upgrade.json"
    assert report["outcome"] == "success" and report["summary"]["outcome"] == "success", report
    assert (report["from_version"], report["to_version"]) == ("1.0", "2.0"), report
    assert report["summary"]["running_version"] == "2.0"
    assert report["config_kept"] is True and report["written"] is True
    assert isinstance(report["finished_at"], float) and report["finished_at"] >= report["started_at"]
    assert shell.run("test -f /overlay/upgrade-report.json")[0] == 0
    assert "last upgrade: success (1.0 -> 2.0" in vm.console  # preinit's console line
    return report
