"""``sysupgrade bundle.swu``: detection, stage 1's verdict, stage2's fit decision, the ramfs measure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stage2 import ramfs
from stage2.swu_step import BundlePlan, stage2_refusals
from swu.cpio import is_bundle
from swu.description import build_plan
from swu.model import Target
from sysupgrade import validate
from tests.swu_corpus import cms_sign, cpio_bytes, make_signer, sha

IMG = bytes(range(256)) * 16


def _text(body: str, hw: str = "1.0") -> bytes:
    return f'software = {{ version = "2.0"; hardware-compatibility = [ "{hw}" ];\n{body}\n}};\n'.encode()


def _raw(digest: str, device: str = "/dev/sda") -> str:
    return (f'images: ( {{ filename = "disk.img"; type = "raw"; device = "{device}"; '
            f'sha256 = "{digest}"; }} );')


def _root(tmp_path: Path, hw: str = "board 1.0") -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hwrevision").write_text(hw + "\n")
    return root


def _verdict(image: Path, root: Path) -> tuple[validate.Verdict, list[str]]:
    said: list[str] = []
    verdict = validate.validate_image(str(image), env={"WRT_PLATFORM": "x86"}, root=str(root),
                                      say=said.append)
    return verdict, said


@pytest.mark.parametrize("fmt", ["newc", "crc"])
def test_is_bundle_recognises_sw_description_first(fmt: str) -> None:
    assert is_bundle(cpio_bytes([("sw-description", b"x")], fmt)[:200])
    assert not is_bundle(cpio_bytes([("disk.img", b"x"), ("sw-description", b"x")], fmt)[:200])
    assert not is_bundle(b"\xeb\x63\x90" + bytes(200))
    assert not is_bundle(cpio_bytes([("sw-description", b"x")], fmt)[:100])


def test_stage1_accepts_a_good_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "b.swu"
    bundle.write_bytes(cpio_bytes([("sw-description", _text(_raw(sha(IMG)))), ("disk.img", IMG)]))
    verdict, said = _verdict(bundle, _root(tmp_path))
    assert verdict.valid and verdict.tests == {validate.TEST_SWU_BUNDLE: True}, said
    assert any("checked disk.img" in line for line in said)


@pytest.mark.parametrize("case", ["sha256", "hardware", "unsigned", "wrong-signer"])
def test_stage1_refuses_a_bad_bundle_unforceably(tmp_path: Path, case: str) -> None:
    root = _root(tmp_path, "board 2.0" if case == "hardware" else "board 1.0")
    text = _text(_raw(sha(IMG + b"!" if case == "sha256" else IMG)))
    members = [("sw-description", text)]
    if case in ("unsigned", "wrong-signer"):
        trusted = make_signer(tmp_path, "trusted")
        (root / "etc/swupdate").mkdir()
        (root / "etc/swupdate/public.pem").write_bytes(trusted.cert.read_bytes())
        if case == "wrong-signer":
            members.append(("sw-description.sig", cms_sign(text, make_signer(tmp_path, "other"), tmp_path)))
    bundle = tmp_path / "b.swu"
    bundle.write_bytes(cpio_bytes([*members, ("disk.img", IMG)]))
    verdict, said = _verdict(bundle, root)
    assert not verdict.valid and not verdict.forceable
    assert verdict.tests == {validate.TEST_SWU_BUNDLE: False}
    assert len([line for line in said if line.startswith("Invalid .swu bundle: ")]) == 1, said


def test_stage1_accepts_a_bundle_signed_by_the_trusted_certificate(tmp_path: Path) -> None:
    root = _root(tmp_path)
    signer = make_signer(tmp_path)
    (root / "etc/swupdate").mkdir()
    (root / "etc/swupdate/public.pem").write_bytes(signer.cert.read_bytes())
    text = _text(_raw(sha(IMG)))
    bundle = tmp_path / "b.swu"
    bundle.write_bytes(cpio_bytes([("sw-description", text), ("sw-description.sig", cms_sign(text, signer,
                                                                                               tmp_path)),
                                   ("disk.img", IMG)]))
    verdict, said = _verdict(bundle, root)
    assert verdict.valid, said
    assert any("signature: verified" in line for line in said)


def test_stage2_fit_accepts_raw_images_on_the_disk_and_its_partitions() -> None:
    text = _text(f'images: ( {{ filename = "a"; type = "raw"; device = "/dev/sda"; '
                 f'sha256 = "{sha(b"a")}"; }},\n'
                 f'  {{ filename = "b"; type = "raw"; device = "sda2"; sha256 = "{sha(b"b")}"; }} );')
    plan = build_plan(text, Target("board", "1.0"))
    assert stage2_refusals(plan, {"/dev/sda": 10, "sda2": 12}, frozenset({10, 11, 12})) == []


def test_stage2_fit_refuses_other_devices_and_what_needs_the_old_root() -> None:
    text = _text(_raw(sha(IMG), "/dev/sdb") + '\n files: ( { filename = "f"; path = "/etc/x"; '
                 f'sha256 = "{sha(b"f")}"; }} );\n scripts: ( {{ filename = "s.sh"; type = "shellscript"; '
                 f'sha256 = "{sha(b"s")}"; }} );')
    plan = build_plan(text, Target("board", "1.0"))
    problems = stage2_refusals(plan, {"/dev/sdb": 20}, frozenset({10, 11, 12}))
    assert len(problems) == 3, problems
    assert any("/dev/sdb is not the disk being upgraded" in p for p in problems)
    assert any("files" in p for p in problems) and any("scripts" in p for p in problems)
    missing = stage2_refusals(plan, {"/dev/sdb": None}, frozenset({10}))
    assert any("/dev/sdb is not the disk" in p for p in missing)


def test_bundle_plan_survives_the_handoff() -> None:
    bp = BundlePlan(1234, "ab" * 32, "board", "1.0", True, {"rootfs": "1.0"})
    assert BundlePlan.from_dict(bp.to_dict()) == bp
    assert bp.target == Target("board", "1.0")


def test_ramfs_measures_the_installer_only_when_asked() -> None:
    sys_path = [p for p in sys.path if p and Path(p).is_dir()]
    plain = ramfs.needed_files(sys.executable, sys_path)
    with_swu = ramfs.needed_files(sys.executable, sys_path, (ramfs.SWU_STEP,))
    assert not any(f.endswith("swu/install.py") for f in plain)
    assert any(f.endswith("swu/install.py") for f in with_swu)
    assert any(f.endswith("stage2/swu_step.py") for f in with_swu)
    assert any(f.endswith("swu/handlers/raw.py") for f in with_swu)
