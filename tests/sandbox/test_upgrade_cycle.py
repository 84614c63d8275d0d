"""Full upgrade cycles on the sandbox device: boot v1, upgrade to v2 over the bus, reboot, boot v2.

Each test boots a real device (loop devices, squashfs root, ext4 overlay, new PID and mount
namespaces, our upgraded as PID 1). The end of a boot is seen as the parent sees it: the device's
PID 1 dies of SIGHUP after reboot(2).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox.device import Boot, Device
from sandbox.images import Images
from tests.sandbox.conftest import start_upgrade

pytestmark = pytest.mark.sandbox

DEFAULT_IP = "192.168.1.1"
ANON_SHARED = "/dev/zero (deleted)"
CHANGED = ("config interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n"
           "\toption ipaddr '10.9.8.7'\n")


def last_report(boot: Boot) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(boot.path("/tmp/log/last-upgrade.json").read_text())
    return data


def transitions(boot: Boot) -> list[str]:
    return [r["state"] for r in boot.records if r.get("event") == "transition"]


def disk_digest(dev: Device, length: int) -> str:
    h = hashlib.sha256()
    with open(dev.disk_file, "rb") as f:
        left = length
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def test_upgrade_keeps_changed_config(device: Device, images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_ready()
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, images.v2)
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}
    assert transitions(boot1) == ["validating", "preparing_ramfs", "stopping_services", "terminating",
                                  "pivoting", "releasing_root", "flashing", "verifying", "saving_config",
                                  "finalizing", "rebooting"]

    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert boot2.path("/etc/config/network").read_text() == CHANGED
    report = last_report(boot2)
    assert report["outcome"] == "success"
    assert report["config_kept"] is True
    assert report["written"] is True
    # the demo services: stubborn ignores SIGTERM (killed), the others stop on SIGTERM
    services = {s["name"]: s for s in report["services"]}
    assert services["stubborn"]["outcome"] == "killed"
    assert services["holder"]["outcome"] == "term"
    # forker's children left its process group and ignore SIGTERM: the kill loop found them
    killed = [p for p in report["terminated"] if p["signal"] == "SIGKILL"]
    assert len(killed) >= 3, report["terminated"]
    assert report["ramfs_bytes"] > 0
    # done ran after the boot completed: the archive is gone and the overlay is marked ready
    boot2.wait_event("config archive removed")
    assert not boot2.path("/sysupgrade.tgz").exists()


def test_upgrade_without_backup_resets_config(device: Device, images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_ready()
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, images.v2, "-n")
    assert boot1.wait_end()["signal"] == "SIGHUP"

    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert f"'{DEFAULT_IP}'" in boot2.path("/etc/config/network").read_text()
    assert last_report(boot2)["config_kept"] is False


def test_wrong_board_is_refused_and_nothing_written(device: Device, images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_ready()
    payload = os.path.getsize(device.disk_file)
    before = disk_digest(device, payload)
    (boot1.path("/tmp/other.img")).write_bytes(images.other_board.read_bytes())
    reply = boot1.call("system", "sysupgrade", {"prefix": "/tmp/root", "path": "/tmp/other.img",
                                                  "backup": "/tmp/sysupgrade.tgz"})
    assert reply["result"] == [8, {"error": {"message": "Firmware image is invalid"}}]
    # the device keeps running its services and answers on the bus
    info = boot1.call("system", "info")["result"][1]
    running = {name for name, s in info["services"].items() if s.get("running")}
    assert running == {"forker", "holder", "stubborn"}
    assert boot1.alive()
    assert not any(r.get("event") == "transition" for r in boot1.records)
    assert disk_digest(device, payload) == before


def test_swap_file_on_overlay_is_swapped_off(device: Device, images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_ready()
    res = boot1.run(["sh", "-c", "dd if=/dev/zero of=/overlay/swapfile bs=1M count=16 2>/dev/null && "
                     "chmod 600 /overlay/swapfile && mkswap /overlay/swapfile >/dev/null && "
                     "swapon /overlay/swapfile && cat /proc/swaps"])
    assert res.returncode == 0, res.stderr
    assert "/overlay/swapfile" in res.stdout
    start_upgrade(boot1, images.v2)
    assert boot1.wait_end()["signal"] == "SIGHUP"
    swapoffs = [r for r in boot1.records if r.get("event") == "step" and r.get("step") == "swapoff"]
    assert [r["path"] for r in swapoffs] == ["/overlay/swapfile"]
    assert swapoffs[0]["result"] == "ok"
    boot2 = device.boot()
    boot2.wait_ready()
    assert last_report(boot2)["swapped_off"] == ["/overlay/swapfile"]


def _file_mappings(pid: int) -> list[tuple[int, str]]:
    found = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            # "/dev/zero (deleted)" is anonymous shared memory (the writer's aligned buffers), no file
            if len(parts) == 6 and parts[5].strip().startswith("/") and parts[5].strip() != ANON_SHARED:
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                found.append((os.makedev(major, minor), parts[5].strip()))
    return found


def _root_dev(pid: int) -> int:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            major, minor = (int(x) for x in fields[2].split(":"))
            dev = os.makedev(major, minor)
    return dev


def test_writer_maps_nothing_from_the_old_root(device: Device, images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_ready()
    old = {dev for dev, _ in _file_mappings(boot1.pid)}
    assert old, "PID 1 maps files from the old root before the upgrade"
    start_upgrade(boot1, images.v2)
    boot1.wait_event("transition", state="flashing", timeout=120)
    ramfs_dev = _root_dev(boot1.pid)      # read by us, from outside, while the writer writes
    mapped = _file_mappings(boot1.pid)
    assert boot1.wait_end()["signal"] == "SIGHUP"
    assert mapped, "the writer maps its interpreter and libraries"
    assert {dev for dev, _ in mapped} == {ramfs_dev}, mapped
    assert not old & {ramfs_dev}
    checked = [r for r in boot1.records if r.get("event") == "transition" and r.get("state") == "flashing"]
    assert checked


def test_sigterm_to_pid1_does_not_cut_the_upgrade_short(device: Device, images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_ready()
    start_upgrade(boot1, images.v2)
    boot1.wait_event("transition", state="releasing_root", timeout=120)
    os.kill(boot1.pid, 15)  # our own device's PID 1
    os.kill(boot1.pid, 2)
    assert boot1.wait_end()["signal"] == "SIGHUP"
    boot2 = device.boot()
    boot2.wait_ready()
    assert last_report(boot2)["outcome"] == "success"
