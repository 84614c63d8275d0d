"""validate_firmware_image: fwtool checks, compat rules, x86 platform check (reference 4.2-4.3, 5.5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stage2.formats import fwtool
from sysupgrade import validate

REPO = Path(__file__).resolve().parents[2]
MBR = b"\xeb\x63\x90" + b"\0" * 509  # x86 image: MBR boot code first

ENV_KEYS = ("REQUIRE_IMAGE_METADATA", "REQUIRE_IMAGE_SIGNATURE", "SAVE_CONFIG", "IGNORE_MINOR_COMPAT",
            "FORCE", "WRT_PLATFORM")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "tmp/sysinfo").mkdir(parents=True)
    (tmp_path / "tmp/sysinfo/board_name").write_text("vendor,model\n")
    return tmp_path


MakeImage = Callable[..., Path]


@pytest.fixture
def make_image(tmp_path: Path) -> MakeImage:
    def make(meta: dict[str, Any] | None = None, head: bytes = MBR, name: str = "fw.img") -> Path:
        path = tmp_path / name
        path.write_bytes(head)
        if meta is not None:
            fwtool.append_metadata(path, meta)
        return path
    return make


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lines: list[str] = []

    def __call__(self, image: Path, **env: str) -> validate.Verdict:
        self.lines = []
        return validate.validate_image(str(image), env=env, root=str(self.root), say=self.lines.append)


@pytest.fixture
def run(root: Path) -> Run:
    return Run(root)


def meta_for(*devices: str, compat: str | None = None, key: str = "supported_devices",
             **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"metadata_version": "1.1", key: list(devices), **extra}
    if compat is not None:
        meta["compat_version"] = compat
    return meta


def set_device_compat(root: Path, version: str) -> None:
    (root / "etc/config").mkdir(parents=True, exist_ok=True)
    (root / "etc/config/system").write_text(
        "config system\n\toption hostname 'OpenWrt'\n"
        f"\toption compat_version '{version}'\n\nconfig timeserver 'ntp'\n\toption enabled '1'\n")


def test_device_match(run: Run, make_image: MakeImage) -> None:
    verdict = run(make_image(meta_for("other,board", "vendor,model")))
    assert verdict.as_json() == {"tests": {"fwtool_signature": True, "fwtool_device_match": True},
                                 "valid": True, "forceable": True, "allow_backup": True}


def test_unsupported_board(run: Run, make_image: MakeImage) -> None:
    verdict = run(make_image(meta_for("other,board", "legacy-name")))
    assert verdict.tests["fwtool_device_match"] is False
    assert (verdict.valid, verdict.forceable) == (False, True)
    assert "Device vendor,model not supported by this image" in run.lines
    assert "Supported devices: other,board legacy-name" in run.lines


def test_oem_name_matches(run: Run, root: Path, make_image: MakeImage) -> None:
    (root / "tmp/sysinfo/oem_name").write_text("oem-box\n")
    image = make_image(meta_for("oem-box"))
    assert run(image).valid
    # an OEM match counts as a config change when keeping the config
    verdict = run(image, SAVE_CONFIG="1")
    assert not verdict.valid
    assert any("config is incompatible" in line for line in run.lines)


def test_major_compat_mismatch_fails_even_ignoring_minor(run: Run, make_image: MakeImage) -> None:
    image = make_image({"compat_version": "2.0", "supported_devices": ["vendor,model - mismatch"],
                        "new_supported_devices": ["vendor,model"], "compat_message": "Reinstall."})
    verdict = run(image, SAVE_CONFIG="1", IGNORE_MINOR_COMPAT="1")
    assert not verdict.valid and verdict.forceable
    assert run.lines[-2:] == [
        "The device is supported, but this image is incompatible for sysupgrade based on the image "
        "version (1.0->2.0).", "Reinstall."]
    assert not run(image, SAVE_CONFIG="0").valid


def test_image_compat_other_than_1_0_uses_new_supported_devices(run: Run, root: Path,
                                                                 make_image: MakeImage) -> None:
    set_device_compat(root, "1.1")
    image = make_image({"compat_version": "1.1", "supported_devices": ["vendor,model"]})
    verdict = run(image)
    assert not verdict.valid
    assert "Image metadata has no new_supported_devices list" in run.lines
    image = make_image({"compat_version": "1.1", "supported_devices": ["vendor,model - mismatch"],
                        "new_supported_devices": ["vendor,model"]})
    assert run(image, SAVE_CONFIG="1").valid


def test_minor_compat_mismatch_needs_no_config_or_ignore(run: Run, make_image: MakeImage) -> None:
    image = make_image({"compat_version": "1.1", "new_supported_devices": ["vendor,model"]})
    verdict = run(image, SAVE_CONFIG="1")
    assert not verdict.valid and verdict.forceable
    assert run.lines == [
        "Image signature not present",
        "The device is supported, but the config is incompatible to the new image (1.0->1.1). "
        "Please upgrade without keeping config (sysupgrade -n)."]
    assert run(image, SAVE_CONFIG="1", IGNORE_MINOR_COMPAT="1").valid
    assert run(image, SAVE_CONFIG="0").valid
    assert run(image).valid  # called by upgraded: SAVE_CONFIG unset


def test_device_compat_read_from_first_system_section(root: Path) -> None:
    set_device_compat(root, "1.2")
    assert validate.uci_system_option(str(root), "compat_version") == "1.2"
    assert validate.uci_system_option(str(root), "enabled") is None  # other section
    assert validate.uci_system_option(str(root / "nowhere"), "compat_version") is None


@pytest.mark.parametrize(("head", "ok"), [(b"\xeb\x48rest", True), (b"\xeb\x63rest", True),
                                         (b"\x7fELF", False), (b"hsqs", False), (b"\xeb", False)])
def test_x86_magic(run: Run, make_image: MakeImage, head: bytes, ok: bool) -> None:
    verdict = run(make_image(meta_for("vendor,model"), head=head))
    assert verdict.valid is ok
    assert verdict.forceable
    assert verdict.tests == {"fwtool_signature": True, "fwtool_device_match": True}
    assert ("Invalid image type" in run.lines) is not ok


def test_missing_metadata_passes_unless_required(run: Run, make_image: MakeImage) -> None:
    image = make_image(None)
    verdict = run(image)
    assert verdict.valid and verdict.tests["fwtool_device_match"]
    assert "Image metadata not present" in run.lines

    verdict = run(image, REQUIRE_IMAGE_METADATA="1")
    assert not verdict.valid and verdict.forceable
    assert verdict.tests["fwtool_device_match"] is False
    assert validate.FORCE_HINT in run.lines
    run(image, REQUIRE_IMAGE_METADATA="1", FORCE="1")
    assert validate.FORCE_HINT not in run.lines


def test_metadata_crc_error_fails(run: Run, make_image: MakeImage) -> None:
    image = make_image(meta_for("vendor,model"))
    raw = bytearray(image.read_bytes())
    raw[5] ^= 1
    image.write_bytes(bytes(raw))
    verdict = run(image)
    assert not verdict.valid and verdict.forceable
    assert "Invalid image metadata: CRC error" in run.lines


def test_signature_absent_fails_only_when_required(run: Run, make_image: MakeImage) -> None:
    image = make_image(meta_for("vendor,model"))
    assert run(image).tests["fwtool_signature"] is True
    verdict = run(image, REQUIRE_IMAGE_SIGNATURE="1")
    assert verdict.tests["fwtool_signature"] is False and not verdict.valid and verdict.forceable
    assert run.lines[:2] == ["Image signature not present", validate.FORCE_HINT]


def test_signature_verification_not_implemented_never_passes_when_required(
        run: Run, make_image: MakeImage) -> None:
    """usign/ucert verification is NOT IMPLEMENTED yet: a present signature must not count as verified."""
    image = make_image(meta_for("vendor,model"))
    fwtool.append_signature(image, b"untrusted blob")
    verdict = run(image, REQUIRE_IMAGE_SIGNATURE="1")
    assert verdict.tests["fwtool_signature"] is False and not verdict.valid
    assert any("not implemented" in line for line in run.lines)
    verdict = run(image)  # not required: like OpenWrt without ucert
    assert verdict.tests == {"fwtool_signature": True, "fwtool_device_match": True}


@pytest.mark.parametrize("content", [b"", None])
def test_unreadable_image_is_broken(run: Run, tmp_path: Path, content: bytes | None) -> None:
    image = tmp_path / "img"
    if content is not None:
        image.write_bytes(content)
    verdict = run(image)
    assert verdict.as_json() == {"tests": {"fwtool_signature": False, "fwtool_device_match": False},
                                 "valid": False, "forceable": False, "allow_backup": True}


def test_directory_is_broken(run: Run, tmp_path: Path) -> None:
    assert not run(tmp_path).forceable


def test_unknown_platform(run: Run, make_image: MakeImage) -> None:
    verdict = run(make_image(meta_for("vendor,model")), WRT_PLATFORM="ramips")
    assert not verdict.valid and verdict.forceable


def test_main_prints_only_json(root: Path, make_image: MakeImage, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WRT_ROOT", str(root))
    image = make_image(meta_for("someone-else"))
    assert validate.main([str(image)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"tests": {"fwtool_signature": True, "fwtool_device_match": False},
                               "valid": False, "forceable": True, "allow_backup": True}
    assert "Device vendor,model not supported by this image" in err
    assert validate.main([]) == 2
    assert capsys.readouterr().out == ""


def test_installed_launcher(root: Path, make_image: MakeImage) -> None:
    launcher = REPO / "rootfs-overlay/usr/libexec/validate_firmware_image"
    assert os.access(launcher, os.X_OK)
    assert launcher.read_text().startswith("#!/usr/bin/python3\n")
    env = {**os.environ, "WRT_ROOT": str(root)}
    proc = subprocess.run([sys.executable, str(launcher), str(make_image(meta_for("vendor,model")))],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["valid"] is True
    assert proc.stdout.startswith("{") and proc.stdout.endswith("}\n")
