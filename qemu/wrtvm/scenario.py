"""Steps the vm tests share: boot to the console shell, change the config, start an upgrade, read the
report; and a timer that prints each phase (every vm test prints its time)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from wrtvm.device import Device
from wrtvm.runner import VM, Shell

CHANGED_IP = "10.9.8.7"
NETWORK = "/etc/config/network"


class Phases:
    """Prints each phase's duration and the running total."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        print()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"  {name:<30} {now - self.last:6.1f} s   (total {now - self.start:6.1f} s)")
        self.last = now

    def total(self, name: str = "whole test") -> float:
        took = time.monotonic() - self.start
        print(f"  {name:<30} {took:6.1f} s")
        return took


def boot_to_shell(device: Device, timeout: float = 180.0, *, blkdebug: Path | None = None,
                  stop_on_error: bool = False) -> tuple[VM, Shell]:
    """Boot the device's disk until preinit is done and the console shell answers (``Device.boot``'s
    blkdebug options)."""
    vm = device.boot(blkdebug=blkdebug, stop_on_error=stop_on_error)
    vm.wait_event("- init complete -", timeout=timeout)
    vm.wait_event("- done -", timeout=60)  # overlay ready; the init is quiet on the console from now
    shell = Shell(vm)
    shell.wait_ready(timeout=60)
    return vm, shell


def version(shell: Shell) -> str:
    return shell.check("cat /etc/openwrt_version").strip()


def lan_ip(shell: Shell) -> str:
    out = shell.check(f"sed -n \"s/.*option ipaddr '\\([0-9.]*\\)'.*/\\1/p\" {NETWORK} | head -n1")
    return out.strip()


def change_config(shell: Shell, ip: str = CHANGED_IP) -> None:
    shell.check(f"sed -i \"s/option ipaddr '[0-9.]*'/option ipaddr '{ip}'/\" {NETWORK}")
    assert lan_ip(shell) == ip


def default_ip(shell: Shell) -> str:
    """The LAN address the firmware ships (the read-only root under the overlay)."""
    out = shell.check(f"sed -n \"s/.*option ipaddr '\\([0-9.]*\\)'.*/\\1/p\" /rom{NETWORK} | head -n1")
    return out.strip()


def start_upgrade(device: Device, vm: VM, shell: Shell, options: str = "") -> None:
    """Copy the new image in from /dev/vdb, run sysupgrade, return when stage2 starts flashing."""
    device.fetch_transfer(shell)
    vm.send(f"sysupgrade {options} /tmp/sysupgrade.img\n".replace("  ", " "))
    vm.wait_event("transition", timeout=180, state="flashing")


def report(shell: Shell) -> dict[str, Any] | None:
    """The last upgrade's report as the boot published it (None: no report)."""
    code, out = shell.run("test -e /var/log/last-upgrade.json && tr -d '\\n' < /var/log/last-upgrade.json")
    if code != 0:
        return None
    data: dict[str, Any] = json.loads(out[out.index("{"):out.rindex("}") + 1])
    return data


def transitions(vm: VM) -> list[str]:
    return [r["state"] for r in vm.records if r.get("event") == "transition"]


def check_upgraded(shell: Shell, *, ip: str, config_kept: bool, version_now: str = "2.0") -> dict[str, Any]:
    """After the upgrade's reboot: the new version runs with LAN address ``ip`` and the published report
    says success (with ``config_kept``). The report."""
    assert version(shell) == version_now
    assert lan_ip(shell) == ip
    published = report(shell)
    assert published is not None and published["outcome"] == "success", published
    assert published["config_kept"] is config_kept
    return published
