"""preinit's settings file, its command line overrides, and the LAN port from board.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preinit import board, settings
from preinit.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_file_gives_openwrts_defaults() -> None:
    got = settings.load(str(REPO / "rootfs-overlay/etc/preinit.conf"), cmdline={})
    assert got == Settings()
    assert (got.ip, got.netmask, got.broadcast, got.failsafe_wait) == (
        "192.168.1.1", "255.255.255.0", "192.168.1.255", 4)
    assert got.problems == () and got.prefixlen == 24 and got.failsafe_hostname == "OpenWrt-failsafe"


def test_parse_conf_comments_quotes_and_junk() -> None:
    text = "# c\npi_ip='10.0.0.1'  # trailing\n\npi_netmask=\"255.255.0.0\"\nnot a setting\n=x\n"
    assert settings.parse_conf(text) == {"pi_ip": "10.0.0.1", "pi_netmask": "255.255.0.0"}


def test_file_values_and_command_line_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "preinit.conf"
    conf.write_text("pi_ip=10.1.1.1\npi_netmask=255.255.0.0\nfs_failsafe_wait_timeout=9\npi_ifname=lan1\n")
    got = settings.load(str(conf), cmdline={"preinit.fs_failsafe_wait_timeout": "30", "root": "/dev/x",
                                             "preinit.pi_preinit_no_failsafe": "y"})
    assert (got.ip, got.prefixlen, got.ifname) == ("10.1.1.1", 16, "lan1")
    assert got.failsafe_wait == 30 and got.no_failsafe is True


@pytest.mark.parametrize(("key", "value"), [
    ("pi_ip", "192.168.1.300"), ("pi_netmask", "255.0.255.0"), ("fs_failsafe_wait_timeout", "soon"),
    ("fs_failsafe_wait_timeout", "99999"), ("pi_preinit_no_failsafe", "maybe"), ("pi_ifname", "a/b"),
    ("pi_broadcast", "x"),
])
def test_a_bad_value_keeps_its_default_and_says_why(key: str, value: str) -> None:
    got = settings.derive({key: value}, {})
    assert got == Settings()
    assert len(got.problems) == 1 and got.problems[0].startswith(f"{key}=")


def test_unknown_keys_are_reported_not_fatal() -> None:
    got = settings.derive({"pi_typo": "1"}, {"preinit.other": "2"})
    assert got == Settings() and len(got.problems) == 2


def test_wait_has_a_floor_of_one_second() -> None:
    assert settings.derive({"fs_failsafe_wait_timeout": "0"}, {}).failsafe_wait == 1


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert settings.load(str(tmp_path / "none"), cmdline={}) == Settings()


# --- board.json --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "port"), [
    ({"network": {"lan": {"ports": ["lan1", "lan2"], "protocol": "static"}}}, "lan1"),   # DSA
    ({"network": {"lan": {"device": "eth0.1", "protocol": "static"}}}, "eth0.1"),         # swconfig
    ({"network": {"lan": {"ifname": "eth0"}}}, "eth0"),                                    # pre-21.02
    ({"network": {"wan": {"device": "eth1"}}}, None),
    ({"network": {"lan": {"ports": []}}}, None),
    ({"network": []}, None),
    ([], None),
])
def test_lan_port_of(doc: object, port: str | None) -> None:
    assert board.lan_port_of(doc) == port


def test_lan_port_from_a_file_and_pi_ifname_wins(tmp_path: Path) -> None:
    path = tmp_path / "board.json"
    path.write_text(json.dumps({"network": {"lan": {"ports": ["lan3"]}}}))
    assert board.preinit_ifname("", str(path)) == "lan3"
    assert board.preinit_ifname("eth9", str(path)) == "eth9"
    path.write_text("{broken")
    assert board.preinit_ifname("", str(path)) is None
    assert board.preinit_ifname("", str(tmp_path / "missing")) is None
