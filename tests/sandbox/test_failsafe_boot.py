"""Failsafe on the sandbox device, entered during the wait (made long for the test with
``preinit.fs_failsafe_wait_timeout=`` on its command line) by SIGUSR1 to preinit, or by the button file.
The LAN port is one end of a veth pair the test puts into the device's network namespace, the other
end in a namespace of the test's own (a PC on the LAN); both go away with the test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import NetNS, netns

from sandbox.device import Boot, Device
from sandbox.images import Images
from tests.sandbox.test_failsafe_network import PROBE

pytestmark = pytest.mark.sandbox

LONG_WAIT = "preinit.fs_failsafe_wait_timeout=300 preinit.pi_ifname=lan0"


@pytest.fixture
def pc() -> Iterator[str]:
    name = f"wrtfs-pc-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def plug_lan(boot: Boot, pc: str) -> None:
    """veth: ``pc0`` in the PC's namespace, ``lan0`` in the device's."""
    with NetNS(pc) as ns:
        ns.link("add", ifname="pc0", kind="veth", peer={"ifname": "lan0", "net_ns_pid": boot.pid})
        index = ns.link_lookup(ifname="pc0")[0]
        ns.link("set", index=index, state="up")
        ns.addr("add", index=index, address="192.168.1.2", prefixlen=24)


def preinit_pid(boot: Boot) -> int:
    """The host pid of the device's ``preinit start`` (a child of its PID 1)."""
    for task in os.listdir(f"/proc/{boot.pid}/task"):
        with open(f"/proc/{boot.pid}/task/{task}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    argv = c.read().split(b"\0")
                if b"preinit" in argv and b"start" in argv:
                    return int(pid)
    raise AssertionError("no preinit process")


def check_failsafe(boot: Boot, pc: str) -> None:
    boot.wait_console("- failsafe -")
    boot.wait_event("failsafe network", timeout=60)
    assert boot.run(["hostname"]).stdout.strip() == "OpenWrt-failsafe"
    assert not boot.path("/overlay/upper").exists(), "no overlay in failsafe"
    assert boot.path("/tmp/failsafe").exists()
    probe = subprocess.run(["ip", "netns", "exec", pc, sys.executable, "-c", PROBE],
                           capture_output=True, text=True, check=False, timeout=60)
    assert probe.stdout.strip() == "refused", probe.stdout + probe.stderr
    mac = boot.run(["cat", "/sys/class/net/lan0/address"]).stdout.strip()
    with NetNS(pc) as ns:
        assert [n.get_attr("NDA_LLADDR") for n in ns.get_neighbours(dst="192.168.1.1")] == [mac]


def test_sigusr1_to_preinit_enters_failsafe_then_a_failsafe_upgrade(device: Device, images: Images,
                                                                      pc: str) -> None:
    boot1 = device.boot(LONG_WAIT)
    boot1.wait_console("Press the [f] key and hit [enter] to enter failsafe mode")
    plug_lan(boot1, pc)
    os.kill(preinit_pid(boot1), signal.SIGUSR1)
    check_failsafe(boot1, pc)
    assert boot1.wait_event("failsafe requested")["trigger"] == "signal"

    # the upgrade path of failsafe: sysupgrade hands over through /tmp/sysupgrade
    shutil.copyfile(images.v2, boot1.path("/tmp/sysupgrade.img"))
    res = boot1.run(["sysupgrade", "/tmp/sysupgrade.img"], env={"FAILSAFE": "1"})
    assert res.returncode == 0, res.stderr
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}
    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"


def test_the_button_file_during_the_wait_enters_failsafe(device: Device, pc: str) -> None:
    boot1 = device.boot(LONG_WAIT)
    boot1.wait_console("Press the [f] key and hit [enter] to enter failsafe mode")
    plug_lan(boot1, pc)
    boot1.path("/tmp/failsafe_button").write_text("reset\n")
    boot1.wait_console("- failsafe button reset was pressed -")
    check_failsafe(boot1, pc)
    assert boot1.wait_event("failsafe requested")["trigger"] == "button"


def test_without_a_trigger_the_wait_ends_and_the_boot_goes_on(device: Device) -> None:
    boot1 = device.boot("preinit.fs_failsafe_wait_timeout=1")
    boot1.wait_console("Press the [f] key and hit [enter] to enter failsafe mode")
    boot1.wait_console("- regular preinit -")
    boot1.wait_ready()
    assert boot1.path("/overlay/upper").exists()
    assert "- failsafe -" not in boot1.console
    assert not any(r.get("event") == "failsafe requested" for r in boot1.records)
