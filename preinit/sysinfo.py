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


_VENDOR_PLACEHOLDERS = re.compile(
    r"^(empty|Default [sS]tring|System manufacturer|To [bB]e [fF]illed [bB]y O\.E\.M\.)$")
_PRODUCT_PLACEHOLDERS = re.compile(
    r"^(empty|Default [sS]tring|System Product Name|To [bB]e [fF]illed [bB]y O\.E\.M\.)$")


def dmi_name(vendor: str, product: str) -> str:
    """x86's board name: "vendor product" lower-cased, each run of characters outside [a-z0-9_-]
    turned into one '-', no '-' at either end."""
    text = f"{vendor.strip()} {product.strip()}".lower()
    return re.sub(r"[^a-z0-9_-]+", "-", text).strip("-") or "generic"


def _dmi_pick(dmi: str) -> tuple[str, str] | None:
    """Vendor and product as x86's 01_sysinfo picks them: the system fields, or the board fields when
    the system ones are missing or firmware placeholders."""
    vendor = product = ""
    for name in ("sys_vendor", "board_vendor"):
        value = _read(f"{dmi}/{name}").strip()
        if _VENDOR_PLACEHOLDERS.match(value):
            vendor = "Unknown vendor"
            continue
        if value:
            vendor = value
            break
    for name in ("product_name", "board_name"):
        value = _read(f"{dmi}/{name}").strip()
        if vendor and _PRODUCT_PLACEHOLDERS.match(value):
            product = "Unknown product"
            continue
        if vendor == "PC Engines" and value == "APU":
            product = "apu1"
            break
        if value:
            product = value
            break
    return (vendor, product) if vendor and product else None


DT_DIRS = ("proc/device-tree", "sys/firmware/devicetree/base")


def device_tree(sys_root: str = "/") -> tuple[str, str] | None:
    """(first ``compatible`` string, ``model``) from the first device tree found under ``sys_root``."""
    for rel in DT_DIRS:
        compatible = _read(os.path.join(sys_root, rel, "compatible")).split("\0")[0].strip()
        if compatible:
            model = _read(os.path.join(sys_root, rel, "model")).split("\0")[0].strip()
            return compatible, model or compatible
    return None


def board_name(sys_root: str = "/") -> tuple[str, str]:
    """(board_name, model): the device tree's first compatible string, else x86's DMI name."""
    dt = device_tree(sys_root)
    if dt:
        return dt
    picked = _dmi_pick(os.path.join(sys_root, "sys/class/dmi/id"))
    if picked:
        model = f"{picked[0]} {picked[1]}"
        return dmi_name(*picked), model
    return "generic", "generic"


def write(tmp: str = "/tmp", sys_root: str = "/") -> str:
    name, model = board_name(sys_root)
    os.makedirs(f"{tmp}/sysinfo", exist_ok=True)
    with open(f"{tmp}/sysinfo/board_name", "w") as f:
        f.write(name + "\n")
    with open(f"{tmp}/sysinfo/model", "w") as f:
        f.write(model + "\n")
    return name
