"""Board identity into /tmp/sysinfo, derived as OpenWrt does (device tree first, then DMI on x86)."""

from __future__ import annotations

import os
import re


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def dmi_name(vendor: str, product: str) -> str:
    """x86's 01_sysinfo: "vendor product", lower-cased, anything outside [a-z0-9_-] becomes '-'."""
    text = f"{vendor.strip()} {product.strip()}".strip().lower()
    return re.sub(r"[^a-z0-9_-]", "-", text) if text else "generic"


def board_name(sys_root: str = "/") -> tuple[str, str]:
    """(board_name, model)."""
    dt = _read(os.path.join(sys_root, "proc/device-tree/compatible"))
    if dt:
        model = _read(os.path.join(sys_root, "proc/device-tree/model")).rstrip("\0")
        return dt.split("\0")[0], model or dt.split("\0")[0]
    dmi = os.path.join(sys_root, "sys/class/dmi/id")
    vendor, product = _read(f"{dmi}/sys_vendor"), _read(f"{dmi}/product_name")
    if vendor or product:
        return dmi_name(vendor, product), f"{vendor.strip()} {product.strip()}".strip()
    return "generic", "generic"


def write(tmp: str = "/tmp") -> str:
    name, model = board_name()
    os.makedirs(f"{tmp}/sysinfo", exist_ok=True)
    with open(f"{tmp}/sysinfo/board_name", "w") as f:
        f.write(name + "\n")
    with open(f"{tmp}/sysinfo/model", "w") as f:
        f.write(model + "\n")
    return name
