"""The installer on plain files: order of scripts, images and the environment; streaming and spooling;
skipped members; sw-versions; bad inputs that stop it and what they leave behind."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from swu_corpus import cpio_tool

from swu import bootenv, install
from swu.cpio import open_bundle
from swu.handlers.base import InstallError, Settings
from swu.model import Artifact, BootenvVar, InstallPlan, Section, SwuError, Target

ENV_SIZE = 0x1000


def build_swu(path: Path, members: list[tuple[str, bytes]], description: bytes = b"software = {};\n") -> Path:
    """A .swu made by GNU cpio (-H crc), ``sw-description`` first, then ``members`` in order."""
    src = path.parent / f"{path.name}.d"
    src.mkdir()
    for name, data in [("sw-description", description), *members]:
        (src / name).write_bytes(data)
    path.write_bytes(cpio_tool(src, ["sw-description", *(name for name, _ in members)]))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def art(section: Section, filename: str, handler: str, data: bytes | None = None, **kw: object) -> Artifact:
    return Artifact(section=section, where=f"software.{section.value}[{filename}]", filename=filename,
                    handler=handler, sha256=sha(data) if data is not None else None, **kw)  # type: ignore[arg-type]


def plan(**kw: object) -> InstallPlan:
    return InstallPlan(target=Target("board", "1.0"), version="1.0", description=None,
                       hardware_compatibility=("1.0",), **kw)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    env = tmp_path / "env.img"
    env.write_bytes(bootenv.encode({"slot": "a"}, ENV_SIZE, redundant=False))
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{env} 0 {ENV_SIZE:#x}\n")
    (tmp_path / "tmp").mkdir()
    return Settings(tmpdir=str(tmp_path / "tmp"), fw_env_config=str(cfg), fw_env_lock=None,
                    sw_versions=str(tmp_path / "sw-versions"))


def env_of(settings: Settings) -> dict[str, str]:
    return bootenv.load(bootenv.read_config(settings.fw_env_config)).variables


def run(bundle: Path, p: InstallPlan, settings: Settings, events: list[install.Event] | None = None
        ) -> install.Report:
    with open(bundle, "rb") as f:
        reporter = events.append if events is not None else None
        return install.install(open_bundle(f).members, p, settings, reporter)


def test_full_install_in_order(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "order.log"
    image = os.urandom(2 << 20)
    target = tmp_path / "slot-b.img"
    target.write_bytes(bytes(4 << 20))
    pre = f"#!/bin/sh\necho pre >> {log}\n".encode()
    post = f"#!/bin/sh\necho post >> {log}\n".encode()
    shell = f'#!/bin/sh\necho "shell $1" >> {log}\n'.encode()
    envfile = b"bootcmd=run b\n"
    conf = b"key=value\n"
    members = [("pre.sh", pre), ("shell.sh", shell), ("post.sh", post), ("rootfs.img", image),
               ("unused.bin", b"not in the plan"), ("env.txt", envfile), ("app.conf", conf)]
    bundle = build_swu(tmp_path / "b.swu", members)
    (tmp_path / "etc").mkdir()
    p = plan(images=(art(Section.IMAGES, "rootfs.img", "raw", image, device=str(target),
                         name="rootfs", version="2.0"),
                     art(Section.BOOTENV, "env.txt", "bootloader", envfile)),
             files=(art(Section.FILES, "app.conf", "rawfile", conf, path=str(tmp_path / "etc/app.conf")),),
             scripts=(art(Section.SCRIPTS, "pre.sh", "preinstall", pre),
                      art(Section.SCRIPTS, "shell.sh", "shellscript", shell),
                      art(Section.SCRIPTS, "post.sh", "postinstall", post)),
             bootenv=(BootenvVar("slot", "b", "software.bootenv[0]"),
                      BootenvVar("upgrade_available", "1", "software.bootenv[1]")))
    events: list[install.Event] = []
    report = run(bundle, p, settings, events)
    assert log.read_text() == "pre\nshell preinst\nshell postinst\npost\n"
    assert target.read_bytes()[:len(image)] == image
    assert (tmp_path / "etc/app.conf").read_bytes() == conf
    assert env_of(settings) == {"slot": "b", "upgrade_available": "1", "bootcmd": "run b"}
    assert report.skipped_members == ("unused.bin",)
    assert report.spooled == ()
    assert Path(settings.sw_versions).read_text() == "rootfs 2.0\n"
    assert events[-1].phase == "done"
    assert any(e.phase == "install" and e.done == len(image) for e in events)
    assert os.listdir(settings.tmpdir) == []  # the private work directory is gone


def test_image_before_preinstall_script_is_spooled(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "order.log"
    target = tmp_path / "t.img"
    target.write_bytes(b"")
    pre = f"#!/bin/sh\ntest -s {target} && echo written-too-early >> {log}; echo pre >> {log}\n".encode()
    image = b"IMAGE" * 1000
    bundle = build_swu(tmp_path / "b.swu", [("img", image), ("pre.sh", pre)])
    p = plan(images=(art(Section.IMAGES, "img", "raw", image, device=str(target)),),
             scripts=(art(Section.SCRIPTS, "pre.sh", "preinstall", pre),))
    report = run(bundle, p, settings)
    assert log.read_text() == "pre\n"
    assert report.spooled == ("img",)
    assert target.read_bytes() == image


def test_sha256_mismatch_leaves_environment_unchanged(tmp_path: Path, settings: Settings) -> None:
    image = os.urandom(3 << 20)
    target = tmp_path / "t.img"
    target.write_bytes(b"")
    bundle = build_swu(tmp_path / "b.swu", [("img", image)])
    bad = art(Section.IMAGES, "img", "raw", b"something else", device=str(target))
    p = plan(images=(bad,), bootenv=(BootenvVar("slot", "b", "x"),))
    with pytest.raises(InstallError, match=r"HASH mismatch.*bytes were written"):
        run(bundle, p, settings)
    assert env_of(settings) == {"slot": "a"}
    assert not Path(settings.sw_versions).exists()


def test_missing_artifact(tmp_path: Path, settings: Settings) -> None:
    bundle = build_swu(tmp_path / "b.swu", [("other", b"x")])
    p = plan(images=(art(Section.IMAGES, "img", "raw", None, device=str(tmp_path / "t")),),
             bootenv=(BootenvVar("slot", "b", "x"),))
    with pytest.raises(InstallError, match=r"missing from the bundle: img"):
        run(bundle, p, settings)
    assert env_of(settings) == {"slot": "a"}


def test_failing_postinstall_keeps_environment(tmp_path: Path, settings: Settings) -> None:
    post = b"#!/bin/sh\nexit 1\n"
    bundle = build_swu(tmp_path / "b.swu", [("post.sh", post)])
    p = plan(scripts=(art(Section.SCRIPTS, "post.sh", "postinstall", post),),
             bootenv=(BootenvVar("slot", "b", "x"),))
    with pytest.raises(InstallError, match=r"post.sh"):
        run(bundle, p, settings)
    assert env_of(settings) == {"slot": "a"}


def test_flash_without_target_and_encryption_refused_first(settings: Settings) -> None:
    p = plan(images=(art(Section.IMAGES, "k", "flash", None),
                     art(Section.IMAGES, "e", "raw", None, device="/dev/null", encrypted=True)))
    with pytest.raises(SwuError, match=r"flash needs mtd.*encrypted"):
        install.install(iter(()), p, settings)  # type: ignore[arg-type]


def test_missing_mtd_partition_refused_before_anything_is_written(tmp_path: Path, settings: Settings) -> None:
    image = os.urandom(5000)
    target = tmp_path / "t.img"
    target.write_bytes(b"old")
    bundle = build_swu(tmp_path / "b.swu", [("img", image), ("k", b"kernel")])
    p = plan(images=(art(Section.IMAGES, "img", "raw", image, device=str(target)),
                     art(Section.IMAGES, "k", "flash", b"kernel", mtdname="no-such-partition")))
    with pytest.raises(SwuError, match=r"no MTD partition named 'no-such-partition'"):
        run(bundle, p, settings)
    assert target.read_bytes() == b"old"


def test_handler_needs_are_checked_first(settings: Settings) -> None:
    p = plan(images=(art(Section.IMAGES, "i", "raw", None),),
             files=(art(Section.FILES, "f", "rawfile", None),))
    with pytest.raises(SwuError, match=r"raw needs device.*rawfile needs path"):
        install.install(iter(()), p, settings)  # type: ignore[arg-type]


def test_truncated_bundle_is_an_error(tmp_path: Path, settings: Settings) -> None:
    image = os.urandom(1 << 20)
    bundle = build_swu(tmp_path / "b.swu", [("img", image)])
    cut = tmp_path / "cut.swu"
    cut.write_bytes(bundle.read_bytes()[: 600_000])
    target = tmp_path / "t.img"
    target.write_bytes(b"")
    p = plan(images=(art(Section.IMAGES, "img", "raw", image, device=str(target)),),
             bootenv=(BootenvVar("slot", "b", "x"),))
    with pytest.raises(SwuError, match=r"truncated"):
        run(cut, p, settings)
    assert env_of(settings) == {"slot": "a"}
