"""validate_firmware_image: signatures, fwtool checks, compat rules, x86 checks (reference 4.2-4.3, 5.5).

Signed images are signed for real: keys and signatures come from Debian's signify-openbsd (usign's
format), wrapped as ucert chains and appended as the fwtool signature chunk.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.disk import mbr
from stage2.formats import fwtool
from sysupgrade import usign, validate
from tests.unit.test_usign import Key, Signify, make_signify

REPO = Path(__file__).resolve().parents[2]
MBR = b"\xeb\x63\x90" + b"\0" * 509  # x86 image: MBR boot code first

ENV_KEYS = ("REQUIRE_IMAGE_METADATA", "REQUIRE_IMAGE_SIGNATURE", "SAVE_CONFIG", "IGNORE_MINOR_COMPAT",
            "FORCE", "WRT_PLATFORM", "WRT_CMDLINE")
MIB_SECTORS = 2048


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
        """Validate with ``env`` only; no ``root=`` on the command line unless ``WRT_CMDLINE`` is given."""
        self.lines = []
        return validate.validate_image(str(image), env={"WRT_CMDLINE": "", **env}, root=str(self.root),
                                       say=self.lines.append)


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


def test_metadata_header_version_other_than_0_is_not_metadata(run: Run, make_image: MakeImage) -> None:
    image = make_image(None)
    data = struct.pack(">II", 1, 0) + json.dumps(meta_for("vendor,model")).encode()
    with open(image, "ab") as f:
        f.write(data + fwtool.encode_trailer(fwtool.ChunkType.METADATA, fwtool.crc32(MBR + data), len(data)))
    verdict = run(image, REQUIRE_IMAGE_METADATA="1")
    assert verdict.tests["fwtool_device_match"] is False
    assert "Image metadata not present" in run.lines


def test_oversized_metadata_is_invalid(run: Run, make_image: MakeImage) -> None:
    image = make_image(None)
    text = json.dumps({**meta_for("vendor,model"), "padding": "x" * fwtool.METADATA_MAX}).encode()
    data = struct.pack(">II", 0, 0) + text
    with open(image, "ab") as f:
        f.write(data + fwtool.encode_trailer(fwtool.ChunkType.METADATA, fwtool.crc32(MBR + data), len(data)))
    verdict = run(image)
    assert verdict.tests["fwtool_device_match"] is False
    assert (verdict.valid, verdict.forceable) == (False, True)
    assert any(line.startswith("Invalid image metadata: Chunk too large") for line in run.lines)


@pytest.mark.parametrize("text", [b'{"supported_devices": ["vendor,model"]', b"[1, 2]", b"\xff"])
def test_invalid_metadata_json(run: Run, make_image: MakeImage, text: bytes) -> None:
    image = make_image(None)
    fwtool.append_metadata(image, text)
    verdict = run(image)
    assert verdict.tests["fwtool_device_match"] is False
    assert (verdict.valid, verdict.forceable) == (False, True)
    assert run.lines[1] == "Invalid image metadata"  # OpenWrt's line, then why
    assert len(run.lines) == 3


def test_truncated_trailer_leaves_nothing_to_check(run: Run, signed: Path) -> None:
    """A cut trailer is no trailer (as with fwtool): only the REQUIRE_* policies catch it."""
    with open(signed, "r+b") as f:
        f.truncate(signed.stat().st_size - 5)
    verdict = run(signed)
    assert verdict.valid
    assert run.lines == ["Image signature not present", "Image metadata not present"]
    verdict = run(signed, REQUIRE_IMAGE_SIGNATURE="1", REQUIRE_IMAGE_METADATA="1")
    assert verdict.tests == {"fwtool_signature": False, "fwtool_device_match": False}
    assert (verdict.valid, verdict.forceable) == (False, True)


# --- signatures ----------------------------------------------------------------------------------


def sign_image(signify: Signify, image: Path, key: Key, *, certify: bool = False) -> None:
    """OpenWrt's Build/append-metadata: usign -S over image + metadata, ucert -A onto the build key's
    certificate (``certify``) or onto nothing, fwtool -S."""
    chain = signify.certificate(key, key) if certify else b""
    chain += usign.encode_chain_element(signify.sign(key, image))
    fwtool.append_signature(image, chain)


@pytest.fixture
def signify(tmp_path: Path) -> Signify:
    return make_signify(tmp_path)


@pytest.fixture
def build_key(signify: Signify, root: Path) -> Key:
    key = signify.keypair("key-build")
    signify.install(key, root / "etc/opkg/keys")
    return key


@pytest.fixture
def signed(make_image: MakeImage, signify: Signify, build_key: Key) -> Path:
    image = make_image(meta_for("vendor,model"))
    sign_image(signify, image, build_key)
    return image


GOOD = {"tests": {"fwtool_signature": True, "fwtool_device_match": True},
        "valid": True, "forceable": True, "allow_backup": True}


def test_signed_image_verifies(run: Run, signed: Path, build_key: Key, root: Path) -> None:
    assert (root / "etc/opkg/keys" / build_key.fingerprint).is_file()
    assert len(build_key.fingerprint) == 16
    assert run(signed, REQUIRE_IMAGE_SIGNATURE="1").as_json() == GOOD
    assert run.lines == ["OK"]
    assert run(signed).as_json() == GOOD


def test_openwrt_certificate_chain_verifies(run: Run, make_image: MakeImage, signify: Signify,
                                            build_key: Key) -> None:
    image = make_image(meta_for("vendor,model"))
    sign_image(signify, image, build_key, certify=True)
    assert run(image, REQUIRE_IMAGE_SIGNATURE="1").as_json() == GOOD
    assert run.lines == ["OK", "OK"]


def tamper(image: Path, offset: int, value: int | None = None, *, fix_crcs: bool = True) -> None:
    """Change one byte; with ``fix_crcs`` also every trailer CRC, as an attacker would."""
    chunks = fwtool.read_chunks(image)
    raw = bytearray(image.read_bytes())
    raw[offset] = raw[offset] ^ 0x01 if value is None else value
    if fix_crcs:
        for chunk in reversed(chunks):  # innermost first: each CRC covers the ones before it
            crc = fwtool.crc32(bytes(raw[: chunk.trailer_offset]))
            raw[chunk.trailer_offset : chunk.end] = fwtool.encode_trailer(chunk.type, crc, chunk.length)
    image.write_bytes(bytes(raw))


def signature_offsets(image: Path) -> tuple[int, int]:
    """(offset of the metadata chunk's data, offset of a byte inside the image signature's Ed25519 part)."""
    sig_chunk, meta_chunk = fwtool.read_chunks(image)
    blob = fwtool.extract_signature(image)
    line = blob.index(b"\nRW", blob.rindex(b"untrusted comment:")) + 1  # base64 of the last signature
    return meta_chunk.offset, sig_chunk.offset + line + 40  # char 40 encodes signature bytes


def test_flipped_byte_breaks_the_crc(run: Run, signed: Path) -> None:
    tamper(signed, 100, fix_crcs=False)
    verdict = run(signed)
    assert verdict.as_json() == {"tests": {"fwtool_signature": False, "fwtool_device_match": False},
                                 "valid": False, "forceable": True, "allow_backup": True}
    assert run.lines == ["Image signature not readable: CRC error", "Invalid image metadata: CRC error"]


@pytest.mark.parametrize("where", ["image", "metadata", "signature"])
def test_flipped_byte_fails_verification(run: Run, signed: Path, where: str) -> None:
    metadata, signature = signature_offsets(signed)
    if where == "image":
        tamper(signed, 100)
    elif where == "metadata":  # "vendor,model" -> "vendor,modem": still a valid board list
        tamper(signed, signed.read_bytes().index(b"vendor,model", metadata) + 11, ord("m"))
    else:
        old = signed.read_bytes()[signature]
        tamper(signed, signature, ord("A") if old != ord("A") else ord("B"))
    verdict = run(signed)
    assert verdict.tests["fwtool_signature"] is False
    assert (verdict.valid, verdict.forceable) == (False, True)
    assert run.lines[0] == "verification failed"


def test_unknown_key_fails(run: Run, make_image: MakeImage, signify: Signify, build_key: Key) -> None:
    stranger = signify.keypair("stranger")
    image = make_image(meta_for("vendor,model"))
    sign_image(signify, image, stranger)
    verdict = run(image)  # a present signature must verify, required or not
    assert verdict.tests == {"fwtool_signature": False, "fwtool_device_match": True}
    assert (verdict.valid, verdict.forceable) == (False, True)
    assert run.lines[0] == "Failed to decode public key"
    assert stranger.fingerprint in run.lines[1]


def test_bare_usign_signature_is_not_a_ucert(run: Run, make_image: MakeImage, signify: Signify,
                                             build_key: Key) -> None:
    image = make_image(meta_for("vendor,model"))
    fwtool.append_signature(image, signify.sign(build_key, image))
    verdict = run(image)
    assert verdict.tests["fwtool_signature"] is False
    assert run.lines[0] == "cert_verify: cannot parse cert"


def test_require_signature_policy(run: Run, make_image: MakeImage, signed: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    unsigned = make_image(meta_for("vendor,model"), name="unsigned.img")
    assert run(unsigned).tests["fwtool_signature"] is True
    assert run(unsigned, REQUIRE_IMAGE_SIGNATURE="1").tests["fwtool_signature"] is False
    assert run(signed, REQUIRE_IMAGE_SIGNATURE="1").tests["fwtool_signature"] is True

    monkeypatch.setattr(usign, "verifier_available", lambda: False)  # OpenWrt without /usr/bin/ucert
    for image in (signed, unsigned):
        assert run(image).as_json() == GOOD
        assert run.lines == []
        verdict = run(image, REQUIRE_IMAGE_SIGNATURE="1")
        assert verdict.tests["fwtool_signature"] is False and verdict.forceable
        assert run.lines[0].startswith("Image signature cannot be checked")


def test_force_overrides_only_what_openwrt_lets_it(run: Run, make_image: MakeImage, signify: Signify,
                                                  build_key: Key, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_signature = make_image(meta_for("vendor,model"), name="a.img")
    sign_image(signify, bad_signature, signify.keypair("stranger"))
    wrong_board = make_image(meta_for("other,board"), name="b.img")
    for image in (bad_signature, wrong_board):
        verdict = run(image, FORCE="1")
        assert (verdict.valid, verdict.forceable) == (False, True)

    broken, invalid = validate.PlatformOutcome(74, {"probe": False}), validate.PlatformOutcome(1)
    monkeypatch.setitem(validate.PLATFORM_CHECKS, "broken", lambda ctx: broken)
    monkeypatch.setitem(validate.PLATFORM_CHECKS, "invalid", lambda ctx: invalid)
    good = make_image(meta_for("vendor,model"), name="c.img")
    verdict = run(good, WRT_PLATFORM="broken", FORCE="1")
    assert verdict.as_json() == {
        "tests": {"fwtool_signature": True, "fwtool_device_match": True, "probe": False},
        "valid": False, "forceable": False, "allow_backup": True}
    verdict = run(good, WRT_PLATFORM="invalid")
    assert (verdict.valid, verdict.forceable) == (False, True)
    verdict = run(bad_signature, WRT_PLATFORM="broken")  # broken wins over forceable failures
    assert (verdict.valid, verdict.forceable) == (False, False)


def test_large_signed_image_is_mapped_not_read(run: Run, root: Path, signify: Signify,
                                                build_key: Key) -> None:
    image = root / "tmp/big.img"
    with open(image, "wb") as f:
        f.write(MBR)
        f.truncate(64 << 20)  # holes
    fwtool.append_metadata(image, meta_for("vendor,model"))
    sign_image(signify, image, build_key)
    tracemalloc.start()
    try:
        verdict = run(image, REQUIRE_IMAGE_SIGNATURE="1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.as_json() == GOOD
    assert peak < 8 << 20, f"peak {peak} bytes: the image was read into memory"


# --- x86 partition layout ------------------------------------------------------------------------


def x86_disk(path: Path, partitions: list[tuple[int, int]], signature: int = 0x5EED0001) -> Path:
    """An MBR disk (or image head); ``partitions`` as (start, size) in MiB."""
    path.write_bytes(mbr(signature, [(start << 20, size << 20) for start, size in partitions]))
    return path


def test_partition_layout_compared_with_the_boot_disk(run: Run, root: Path, tmp_path: Path,
                                                      make_image: MakeImage) -> None:
    disk = x86_disk(tmp_path / "disk", [(1, 16), (17, 100)])
    same = make_image(meta_for("vendor,model"), head=disk.read_bytes())
    verdict = run(same, WRT_CMDLINE=f"root={disk} rootwait")
    assert verdict.as_json() == {
        "tests": {"fwtool_signature": True, "fwtool_device_match": True, "x86_partition_layout": True},
        "valid": True, "forceable": True, "allow_backup": True}
    assert run.lines[-3:] == ["Reading partition table from bootdisk...",
                              "Extract boot sector from the image", "Reading partition table from image..."]
    lines = f" 1 {MIB_SECTORS:5d} {16 * MIB_SECTORS:7d}\n 2 {17 * MIB_SECTORS:5d} {100 * MIB_SECTORS:7d}\n"
    assert (root / "tmp/partmap.bootdisk").read_text() == lines
    assert (root / "tmp/partmap.image").read_text() == lines

    head = x86_disk(tmp_path / "head", [(1, 16), (17, 200)]).read_bytes()
    bigger = make_image(meta_for("vendor,model"), head=head, name="bigger.img")
    verdict = run(bigger, WRT_CMDLINE=f"root={disk}")
    assert verdict.tests["x86_partition_layout"] is False
    assert (verdict.valid, verdict.forceable) == (True, True)  # only decides how stage2 writes
    assert run.lines[-1] == "Partition layout has changed. Full image will be written."


def test_image_without_partition_table(run: Run, tmp_path: Path, make_image: MakeImage) -> None:
    disk = x86_disk(tmp_path / "disk", [(1, 16), (17, 100)])
    image = make_image(meta_for("vendor,model"))  # eb63 boot code, but no 55AA
    verdict = run(image, WRT_CMDLINE=f"root={disk}")
    assert (verdict.valid, verdict.forceable) == (False, True)
    assert run.lines[-1] == f"Invalid partition table on {image}"


def test_boot_disk_not_found(run: Run, make_image: MakeImage) -> None:
    verdict = run(make_image(meta_for("vendor,model")), WRT_CMDLINE="root=/dev/no-such-disk2")
    assert verdict.as_json() == GOOD  # stage2 refuses later, before writing, if it cannot find it either
    assert run.lines[-1] == "Unable to determine upgrade device"


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
    monkeypatch.setenv("WRT_CMDLINE", "")
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
    env = {**os.environ, "WRT_ROOT": str(root), "WRT_CMDLINE": ""}
    proc = subprocess.run([sys.executable, str(launcher), str(make_image(meta_for("vendor,model")))],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["valid"] is True
    assert proc.stdout.startswith("{") and proc.stdout.endswith("}\n")


def test_policy_comes_from_platform_conf_unless_the_environment_says(tmp_path: Path) -> None:
    conf = tmp_path / "lib/upgrade/platform.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# set by the target\nREQUIRE_IMAGE_SIGNATURE=1\nREQUIRE_IMAGE_METADATA='0'\nOTHER=1\n")
    assert validate.platform_settings(str(tmp_path)) == {"REQUIRE_IMAGE_SIGNATURE": "1",
                                                        "REQUIRE_IMAGE_METADATA": "0"}
    ctx = validate.Context(image="x", root=str(tmp_path), env={}, say=lambda line: None)
    assert ctx.flag("REQUIRE_IMAGE_SIGNATURE") and not ctx.flag("REQUIRE_IMAGE_METADATA")
    ctx = validate.Context(image="x", root=str(tmp_path), env={"REQUIRE_IMAGE_SIGNATURE": "0"},
                           say=lambda line: None)
    assert not ctx.flag("REQUIRE_IMAGE_SIGNATURE")
