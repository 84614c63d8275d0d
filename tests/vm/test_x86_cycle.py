"""The x86 upgrade cycle in QEMU: a real kernel boots firmware 1.0 from a virtio disk, the config is
changed on the serial console, ``sysupgrade`` flashes 2.0 from the running system, the guest reboots
(QEMU exits), and the next boot runs 2.0 with the config kept and the upgrade report saying success.
"""

from __future__ import annotations

import json
import time

import pytest
from wrtvm.device import Device
from wrtvm.runner import Shell

pytestmark = pytest.mark.vm

CHANGED_IP = "10.9.8.7"


def test_x86_upgrade_keeps_config(vm_device: Device) -> None:
    phases: list[tuple[str, float]] = []
    start = last = time.monotonic()

    def phase(name: str) -> None:
        nonlocal last
        now = time.monotonic()
        phases.append((name, now - last))
        print(f"  {name:<28} {now - last:6.1f} s   (total {now - start:6.1f} s)")
        last = now

    print()
    boot1 = vm_device.boot()
    boot1.wait_event("- init complete -", timeout=120)
    boot1.wait_event("- done -", timeout=60)  # overlay ready; the init is quiet on the console from now
    shell = Shell(boot1)
    shell.wait_ready(timeout=60)
    phase("boot 1 (1.0) to shell")
    assert shell.check("cat /etc/openwrt_version").strip() == "1.0"
    shell.check(f"sed -i \"s/option ipaddr '[0-9.]*'/option ipaddr '{CHANGED_IP}'/\" /etc/config/network")
    assert f"option ipaddr '{CHANGED_IP}'" in shell.check("cat /etc/config/network")
    vm_device.fetch_transfer(shell)
    phase("config changed, image in")

    boot1.send("sysupgrade /tmp/sysupgrade.img\n")
    boot1.wait_event("transition", timeout=120, state="flashing")
    phase("sysupgrade to flashing")
    boot1.wait_event("transition", timeout=120, state="rebooting")
    assert boot1.wait_exit(timeout=60) == 0  # reboot(2) under -no-reboot
    phase("flash, verify, reboot")
    states = [r["state"] for r in boot1.records if r.get("event") == "transition"]
    assert states == ["validating", "preparing_ramfs", "stopping_services", "terminating", "pivoting",
                      "releasing_root", "flashing", "verifying", "saving_config", "finalizing",
                      "rebooting"], states

    boot2 = vm_device.boot()
    boot2.wait_event("- init complete -", timeout=120)
    boot2.wait_event("- done -", timeout=60)
    shell = Shell(boot2)
    shell.wait_ready(timeout=60)
    phase("boot 2 (2.0) to shell")
    assert shell.check("cat /etc/openwrt_version").strip() == "2.0"
    assert f"option ipaddr '{CHANGED_IP}'" in shell.check("cat /etc/config/network")
    out = shell.check("tr -d '\\n' < /var/log/last-upgrade.json")
    report = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert report["outcome"] == "success", report
    assert report["config_kept"] is True
    phase("checks")
    print(f"  {'full cycle':<28} {time.monotonic() - start:6.1f} s")
