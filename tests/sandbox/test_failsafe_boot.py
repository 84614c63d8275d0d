"""Failsafe on the sandbox device, entered during the wait (made long for the test with
``preinit.fs_failsafe_wait_timeout=`` on its command line) by SIGUSR1 to preinit, or by the button file.
The LAN port is one end of a veth pair the test puts into the device's network namespace, the other
end in a namespace of the test's own (a PC on the LAN); both go away with the test."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect
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


def ssh(pc: str, home: str, command: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``command`` on the device through its failsafe dropbear, from the PC (Debian's dbclient: no host
    key check, no key of its own, so the login is the blank password's ``none`` method)."""
    return subprocess.run(["ip", "netns", "exec", pc, "dbclient", "-y", "-y", "root@192.168.1.1", command],
                          input=data if data is not None else b"", capture_output=True, timeout=120,
                          check=False, env={"HOME": home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def wait_listening(pc: str, port: int = 22, timeout: float = 30.0) -> None:
    """dropbear may listen only after it forks: the PC tries until the port answers (a refused connect is the
    only news of a server that is not there yet)."""
    code = ("import socket, sys, time\n"
            f"end = time.monotonic() + {timeout}\n"
            "while True:\n"
            f"    try: socket.create_connection(('192.168.1.1', {port}), timeout=5).close(); break\n"
            "    except ConnectionRefusedError:\n"
            "        if time.monotonic() > end: sys.exit('refused')\n"
            "        time.sleep(0.05)\n")
    subprocess.run(["ip", "netns", "exec", pc, sys.executable, "-c", code], check=True, timeout=timeout + 10)


def test_failsafe_over_ssh_only_the_lan_port_an_image_copied_in_and_an_upgrade(
        device: Device, images: Images, pc: str, tmp_path: Path) -> None:
    """A router without a serial console: failsafe by the button, then everything through ssh."""
    boot1 = device.boot(LONG_WAIT)
    boot1.wait_console("Press the [f] key and hit [enter] to enter failsafe mode")
    plug_lan(boot1, pc)
    boot1.path("/tmp/failsafe_button").write_text("reset\n")
    started = boot1.wait_event("failsafe ssh", timeout=60)
    assert started["port"] == 22 and started["keys"] == ["/tmp/dropbear_failsafe_ed25519_host_key",
                                                         "/tmp/dropbear_failsafe_ecdsa_host_key"]
    wait_listening(pc)

    who = ssh(pc, str(tmp_path),
              "hostname; id -u; echo FAILSAFE=$FAILSAFE; sh -l -c 'echo FAILSAFE=$FAILSAFE'")
    assert who.returncode == 0, who.stderr
    # the login shell's /etc/profile sets FAILSAFE (the session's own environment does not have it)
    assert who.stdout.decode().split() == ["OpenWrt-failsafe", "0", "FAILSAFE=", "FAILSAFE=1"]

    # an interactive login: dbclient on a terminal of its own asks for one on the device
    login = pexpect.spawn("ip", ["netns", "exec", pc, "dbclient", "-y", "-y", "root@192.168.1.1"],
                          env={"HOME": str(tmp_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "TERM": "dumb"}, timeout=60)
    try:
        login.sendline("echo T=$(tty) F=$FAILSAFE; exit")
        login.expect(r"T=(/dev/pts/\d+) F=1")
        login.expect(pexpect.EOF)
    finally:
        login.close(force=True)

    image = images.v2.read_bytes()
    copied = ssh(pc, str(tmp_path), "cat > /tmp/sysupgrade.img && md5sum /tmp/sysupgrade.img", image)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split()[0].decode() == hashlib.md5(image).hexdigest()

    upgrade = ssh(pc, str(tmp_path), "sh -l -c 'sysupgrade /tmp/sysupgrade.img'")
    # stage2 ends every process, this session too: the exit status may be the session's end
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, upgrade.stderr
    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
