"""The LAN port from ``/etc/board.json``, as OpenWrt's ``preinit_ip`` picks it: the first of
``network.lan.ports`` (DSA), else ``network.lan.device`` (swconfig; its VLAN suffix kept as the name)."""

from __future__ import annotations

import json
from typing import Any

BOARD_JSON = "/etc/board.json"


def lan_port_of(board: Any) -> str | None:
    if not isinstance(board, dict):
        return None
    lan = board.get("network", {}).get("lan") if isinstance(board.get("network"), dict) else None
    if not isinstance(lan, dict):
        return None
    ports = lan.get("ports")
    if isinstance(ports, list) and ports and isinstance(ports[0], str) and ports[0]:
        return ports[0]
    device = lan.get("device") or lan.get("ifname")  # ifname: board.json before 21.02
    if isinstance(device, str) and device:
        return device.split()[0]
    return None


def lan_port(path: str = BOARD_JSON) -> str | None:
    """None when the file is missing, unreadable or names no LAN port."""
    try:
        with open(path) as f:
            return lan_port_of(json.load(f))
    except (OSError, ValueError):
        return None


def preinit_ifname(configured: str, path: str = BOARD_JSON) -> str | None:
    """``pi_ifname`` when set, else the board's LAN port."""
    return configured or lan_port(path)
