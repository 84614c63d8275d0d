"""preinit's settings: ``/etc/preinit.conf`` (OpenWrt's ``00_preinit.conf`` keys), overridden for one
boot by ``preinit.<key>=<value>`` tokens on the kernel command line.

A bad value never stops the boot: it is reported (``Settings.problems``) and its default kept.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

CONF = "/etc/preinit.conf"
CMDLINE_PREFIX = "preinit."
MIN_WAIT = 1
MAX_WAIT = 3600


@dataclass(frozen=True)
class Settings:
    ip: str = "192.168.1.1"
    netmask: str = "255.255.255.0"
    broadcast: str = "192.168.1.255"
    ifname: str = ""  # empty: the first LAN port of /etc/board.json
    failsafe_wait: int = 4
    no_failsafe: bool = False
    failsafe_hostname: str = "OpenWrt-failsafe"
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(f"0.0.0.0/{self.netmask}").prefixlen


def parse_conf(text: str) -> dict[str, str]:
    """``key=value`` lines; comments, blank lines and lines without '=' are skipped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def _ipv4(value: str) -> str:
    return str(ipaddress.IPv4Address(value))


def _netmask(value: str) -> str:
    ipaddress.IPv4Network(f"0.0.0.0/{value}")  # raises for a non-contiguous mask
    return _ipv4(value)


def _wait(value: str) -> int:
    seconds = int(value)
    if seconds > MAX_WAIT:
        raise ValueError(f"more than {MAX_WAIT} s")
    return max(MIN_WAIT, seconds)  # OpenWrt waits at least one second


def _flag(value: str) -> bool:
    if value.lower() in ("y", "yes", "1", "true", "on"):
        return True
    if value.lower() in ("", "n", "no", "0", "false", "off"):
        return False
    raise ValueError("not y/n")


def _ifname(value: str) -> str:
    if len(value) > 15 or "/" in value or any(c.isspace() for c in value):
        raise ValueError("not an interface name")
    return value


def _hostname(value: str) -> str:
    if not value or len(value) > 64:
        raise ValueError("empty or longer than 64")
    return value


# conf key -> (Settings field, converter)
KEYS = {
    "pi_ip": ("ip", _ipv4),
    "pi_netmask": ("netmask", _netmask),
    "pi_broadcast": ("broadcast", _ipv4),
    "pi_ifname": ("ifname", _ifname),
    "fs_failsafe_wait_timeout": ("failsafe_wait", _wait),
    "pi_preinit_no_failsafe": ("no_failsafe", _flag),
    "pi_failsafe_hostname": ("failsafe_hostname", _hostname),
}


def derive(conf: Mapping[str, str], cmdline: Mapping[str, str]) -> Settings:
    """Settings from the file's keys, then the command line's ``preinit.<key>=`` overrides."""
    merged = dict(conf)
    merged.update({k[len(CMDLINE_PREFIX):]: v for k, v in cmdline.items() if k.startswith(CMDLINE_PREFIX)})
    values: dict[str, object] = {}
    problems: list[str] = []
    for key, value in merged.items():
        if key not in KEYS:
            problems.append(f"{key}: unknown setting, ignored")
            continue
        name, convert = KEYS[key]
        try:
            values[name] = convert(value)
        except ValueError as exc:
            problems.append(f"{key}={value!r}: {exc}; default kept")
    return Settings(**values, problems=tuple(problems))  # type: ignore[arg-type]


def load(path: str = CONF, cmdline: Mapping[str, str] | None = None) -> Settings:
    try:
        with open(path) as f:
            conf = parse_conf(f.read())
    except OSError:
        conf = {}
    if cmdline is None:
        from wrtcore import cmdline as cmdline_mod

        cmdline = cmdline_mod.read()
    return derive(conf, cmdline)
