"""Board identity as preinit derives it: device tree first, then DMI, else "generic" (fake /proc and /sys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from preinit.sysinfo import board_name, dmi_name, write


def device_tree(root: Path, compatible: bytes, model: bytes | None = None) -> None:
    dt = root / "proc/device-tree"
    dt.mkdir(parents=True)
    (dt / "compatible").write_bytes(compatible)
    if model is not None:
        (dt / "model").write_bytes(model)


def dmi(root: Path, **files: str) -> None:
    d = root / "sys/class/dmi/id"
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)


# --- the DMI rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("vendor", "product", "name"), [
    ("PC Engines", "APU2", "pc-engines-apu2"),
    ("QEMU", "Standard_PC-1", "qemu-standard_pc-1"),    # '_' and '-' are kept
    ("Protectli\n", "  FW6\n", "protectli-fw6"),         # sysfs values end in a newline
    ("", "", "generic"),
    ("  ", "\n", "generic"),
])
def test_dmi_name_lower_cases_and_replaces(vendor: str, product: str, name: str) -> None:
    assert dmi_name(vendor, product) == name


def test_dmi_name_keeps_only_the_allowed_characters() -> None:
    name = dmi_name("Vendör", "Bo.ard/2")
    assert name == "vend-r-bo-ard-2"
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")


# --- board_name from a fake root --------------------------------------------------------------------------


def test_device_tree_first_compatible_string_and_model(tmp_path: Path) -> None:
    device_tree(tmp_path, b"tplink,archer-c7-v2\0qca,qca9558\0", b"TP-Link Archer C7 v2\0")
    assert board_name(str(tmp_path)) == ("tplink,archer-c7-v2", "TP-Link Archer C7 v2")


def test_device_tree_without_model_uses_the_compatible_string(tmp_path: Path) -> None:
    device_tree(tmp_path, b"glinet,gl-mt3000\0mediatek,mt7981\0")
    assert board_name(str(tmp_path)) == ("glinet,gl-mt3000", "glinet,gl-mt3000")


def test_device_tree_wins_over_dmi(tmp_path: Path) -> None:
    device_tree(tmp_path, b"raspberrypi,4-model-b\0brcm,bcm2711\0", b"Raspberry Pi 4 Model B Rev 1.4\0")
    dmi(tmp_path, sys_vendor="QEMU\n", product_name="Standard PC\n")
    assert board_name(str(tmp_path))[0] == "raspberrypi,4-model-b"


def test_dmi_vendor_and_product(tmp_path: Path) -> None:
    dmi(tmp_path, sys_vendor="PC Engines\n", product_name="APU2\n")
    assert board_name(str(tmp_path)) == ("pc-engines-apu2", "PC Engines APU2")


def test_empty_device_tree_compatible_falls_through_to_dmi(tmp_path: Path) -> None:
    device_tree(tmp_path, b"")
    dmi(tmp_path, sys_vendor="Protectli\n", product_name="FW4B\n")
    assert board_name(str(tmp_path)) == ("protectli-fw4b", "Protectli FW4B")


def test_generic_fallback(tmp_path: Path) -> None:
    assert board_name(str(tmp_path)) == ("generic", "generic")
    dmi(tmp_path)  # the directory exists, the files do not
    assert board_name(str(tmp_path)) == ("generic", "generic")


def test_write_puts_board_name_and_model_in_sysinfo(tmp_path: Path) -> None:
    name = write(str(tmp_path))
    expected_name, expected_model = board_name()
    assert name == expected_name
    assert (tmp_path / "sysinfo/board_name").read_text() == expected_name + "\n"
    assert (tmp_path / "sysinfo/model").read_text() == expected_model + "\n"


# --- OpenWrt's x86 naming: sanitizing and firmware placeholders ------------------------------------


@pytest.mark.parametrize(("vendor", "product", "name"), [
    ("QEMU", "Standard PC (Q35 + ICH9, 2009)", "qemu-standard-pc-q35-ich9-2009"),
    ("QEMU", "Standard PC (i440FX + PIIX, 1996)", "qemu-standard-pc-i440fx-piix-1996"),
])
def test_dmi_name_matches_openwrts_sanitize(vendor: str, product: str, name: str) -> None:
    assert dmi_name(vendor, product) == name


def test_dmi_placeholders_fall_back_to_the_board_fields(tmp_path: Path) -> None:
    dmi(tmp_path, sys_vendor="To be filled by O.E.M.\n", product_name="Default string\n",
        board_vendor="Qotom\n", board_name="Q355G4\n")
    assert board_name(str(tmp_path))[0] == "qotom-q355g4"


def test_device_tree_under_sys_firmware_when_proc_has_none(tmp_path: Path) -> None:
    base = tmp_path / "sys/firmware/devicetree/base"
    base.mkdir(parents=True)
    (base / "compatible").write_bytes(b"raspberrypi,4-model-b\0brcm,bcm2711\0")
    (base / "model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    dmi(tmp_path, sys_vendor="Ignored", product_name="Ignored")
    assert board_name(str(tmp_path)) == ("raspberrypi,4-model-b", "Raspberry Pi 4 Model B Rev 1.4")
    write(str(tmp_path / "tmp"), sys_root=str(tmp_path))
    assert (tmp_path / "tmp/sysinfo/board_name").read_text() == "raspberrypi,4-model-b\n"
    assert (tmp_path / "tmp/sysinfo/model").read_text() == "Raspberry Pi 4 Model B Rev 1.4\n"


def test_proc_device_tree_wins_over_sys_firmware(tmp_path: Path) -> None:
    device_tree(tmp_path, b"first,board\0")
    base = tmp_path / "sys/firmware/devicetree/base"
    base.mkdir(parents=True)
    (base / "compatible").write_bytes(b"second,board\0")
    assert board_name(str(tmp_path))[0] == "first,board"
