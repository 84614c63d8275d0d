"""upgraded under a real-procd-like PID 1: procd's exec contract, end to end on the sandbox device.

A stand-in for procd (``/usr/share/demo/procd-standin.sh``, booted with the kernel's ``init=``) mounts
the early filesystems, runs preinit and, when told, execs ``/sbin/upgraded <path> <command>`` with
``UPGRADE_BACKUP`` and ``UPGRADE_OPT_*`` in the environment, as procd's sysupgrade_exec_upgraded does.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from sandbox.device import Device
from sandbox.images import Images

pytestmark = pytest.mark.sandbox

CONFIG = "config interface 'lan'\n\toption ipaddr '172.16.5.1'\n"


def config_archive(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        data = CONFIG.encode()
        info = tarfile.TarInfo("etc/config/network")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))


def test_procd_exec_contract_upgrades_and_keeps_the_backup(device: Device, images: Images) -> None:
    boot1 = device.boot("init=/usr/share/demo/procd-standin.sh")
    boot1.wait_console("procd-standin: waiting")
    shutil.copyfile(images.v2, boot1.path("/tmp/sysupgrade.img"))
    config_archive(boot1.path("/tmp/sysupgrade.tgz"))
    with open(boot1.path("/tmp/procd-exec-upgraded"), "w") as fifo:
        fifo.write("go\n")
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}
    states = [r["state"] for r in boot1.records if r.get("event") == "transition"]
    assert states[0] == "validating", states
    assert "flashing" in states, states
    assert states[-1] == "rebooting", states

    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert boot2.path("/etc/config/network").read_text() == CONFIG
    report = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
    assert report["outcome"] == "success" and report["config_kept"] is True
    assert report["services"] == []  # procd stopped its services itself; upgraded had none


def test_failsafe_handover_file_starts_the_upgrade(device: Device, images: Images) -> None:
    """failsafe= on the command line: preinit skips the overlay and waits; sysupgrade with FAILSAFE
    set writes /tmp/sysupgrade (three NUL-separated fields) and wakes it; the init then runs stage2
    from that file, keeping /tmp/sysupgrade.tgz (OpenWrt drops it there)."""
    boot1 = device.boot("failsafe=1")
    boot1.wait_console("- failsafe -")
    assert boot1.run(["hostname"]).stdout.strip() == "OpenWrt-failsafe"
    assert not boot1.path("/overlay/upper").exists(), "no overlay in failsafe"
    shutil.copyfile(images.v2, boot1.path("/tmp/sysupgrade.img"))
    res = boot1.run(["sysupgrade", "/tmp/sysupgrade.img"], env={"FAILSAFE": "1"})
    assert res.returncode == 0, res.stderr
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}
    handed = [r for r in boot1.records if r.get("event") == "failsafe upgrade requested"]
    assert [(r["image"], r["backup"]) for r in handed] == [("/tmp/sysupgrade.img", "/tmp/sysupgrade.tgz")]

    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    report = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
    assert report["outcome"] == "success" and report["config_kept"] is True
    # the archive made in failsafe came back: its synthetic first member is restored
    assert boot2.path("/etc/uci-defaults/10_disable_services").exists()
