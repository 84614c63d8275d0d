"""A dual-copy (A/B) install on loop devices: two slots and a redundant U-Boot environment in one disk
image. The running slot A is mounted; the bundle's ``copy-2`` mode writes slot B and switches the
environment only after B is verified. A fault between write and read-back leaves the environment as it
was, byte for byte, and slot A is never touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from swu_corpus import cpio_bytes

from stage2.writers import readback
from swu import bootenv, cli
from wrtcore import loop

pytestmark = pytest.mark.sandbox

MiB = 1 << 20
SLOT = 16 * MiB
ENV_SIZE = 0x2000


@dataclass
class Disk:
    image: Path
    slot_a: str
    slot_b: str
    env_dev: str
    cfg: Path
    mount_a: Path

    def read(self, dev: str) -> bytes:
        with open(dev, "rb") as f:
            return f.read()

    def env(self) -> dict[str, str]:
        out = subprocess.run(["fw_printenv", "-c", str(self.cfg)], capture_output=True, text=True,
                             check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control (loop devices)")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(2 * SLOT + 2 * ENV_SIZE)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    with contextlib.ExitStack() as stack:
        devs = []
        for offset, size in ((0, SLOT), (SLOT, SLOT), (2 * SLOT, 2 * ENV_SIZE)):
            dev = loop.attach(str(image), offset=offset, sizelimit=size)
            stack.callback(loop.detach, dev)
            devs.append(dev)
        slot_a, slot_b, env_dev = devs
        subprocess.run(["mkfs.ext4", "-q", "-F", slot_a], check=True)
        mount_a = Path(tempfile.mkdtemp(prefix="slot-a-"))
        subprocess.run(["mount", "-t", "ext4", slot_a, str(mount_a)], check=True)
        stack.callback(os.rmdir, mount_a)
        stack.callback(subprocess.run, ["umount", str(mount_a)], check=False)
        (mount_a / "version").write_text("1.0\n")
        subprocess.run(["mount", "-o", "remount,ro", str(mount_a)], check=True)
        cfg = tmp_path / "fw_env.config"
        cfg.write_text(f"{env_dev} 0x0 {ENV_SIZE:#x}\n{env_dev} {ENV_SIZE:#x} {ENV_SIZE:#x}\n")
        bootenv.store(bootenv.read_config(str(cfg)),
                      [("boot_slot", "a"), ("bootlimit", "3"), ("upgrade_available", "0")], lock=None)
        yield Disk(image, slot_a, slot_b, env_dev, cfg, mount_a)


def _bundle(path: Path, members: list[tuple[str, bytes]], description: bytes) -> Path:
    path.write_bytes(cpio_bytes([("sw-description", description), *members]))
    return path


def ab_description(image: bytes, disk: Disk) -> bytes:
    digest = hashlib.sha256(image).hexdigest()

    def mode(device: str, slot: str) -> str:
        return f"""{{
            images = ( {{ filename = "rootfs.img"; device = "{device}"; sha256 = "{digest}"; }} );
            bootenv = ( {{ name = "boot_slot"; value = "{slot}"; }},
                        {{ name = "upgrade_available"; value = "1"; }},
                        {{ name = "bootcount"; value = "0"; }} );
        }}"""

    return f"""software = {{
    version = "2.0";
    hardware-compatibility = [ "1.0" ];
    stable = {{
        copy-1 = {mode(disk.slot_a, "a")};
        copy-2 = {mode(disk.slot_b, "b")};
    }};
}};
""".encode()


def _args(disk: Disk, bundle: Path, mode: str) -> list[str]:
    return ["-i", str(bundle), "-H", "board:1.0", "-e", f"stable,{mode}", "--fw-env-config", str(disk.cfg),
            "--sw-versions-file", str(disk.image.parent / "sw-versions")]


def test_ab_writes_inactive_slot_then_switches(disk: Disk, tmp_path: Path) -> None:
    image = os.urandom(12 * MiB)
    bundle = _bundle(tmp_path / "ab.swu", [("rootfs.img", image)], ab_description(image, disk))
    running = hashlib.sha256(disk.read(disk.slot_a)).hexdigest()
    assert cli.main(_args(disk, bundle, "copy-2")) == 0
    assert disk.read(disk.slot_b)[:len(image)] == image
    assert hashlib.sha256(disk.read(disk.slot_a)).hexdigest() == running
    assert disk.env() == {"boot_slot": "b", "bootlimit": "3", "upgrade_available": "1", "bootcount": "0"}
    assert (disk.mount_a / "version").read_text() == "1.0\n"


def test_writing_the_running_slot_is_refused(disk: Disk, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    image = os.urandom(MiB)
    bundle = _bundle(tmp_path / "ab.swu", [("rootfs.img", image)], ab_description(image, disk))
    running = disk.read(disk.slot_a)
    env_before = disk.read(disk.env_dev)
    assert cli.main(_args(disk, bundle, "copy-1")) == 1  # slot A is mounted: O_EXCL refuses it
    err = capsys.readouterr().err
    assert "target busy" in err and "nothing was written" in err
    assert disk.read(disk.slot_a) == running
    assert disk.read(disk.env_dev) == env_before


def test_verify_failure_leaves_environment_unchanged(disk: Disk, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A lost write: after the image is written and fsync'd, 4 KiB of slot B are zeroed in the disk image
    beneath the loop device (as a device that acknowledged a write and dropped it); the read-back must
    catch it and the environment must not switch."""
    image = os.urandom(8 * MiB)
    bundle = _bundle(tmp_path / "ab.swu", [("rootfs.img", image)], ab_description(image, disk))
    running = disk.read(disk.slot_a)
    env_before = disk.read(disk.env_dev)
    real_drop = readback.drop_cache  # the block writer drops the target's caches, then reads it back

    def lose_a_write(fd: int, target: object, offset: int, length: int) -> None:
        if length == len(image):
            with open(disk.image, "r+b") as f:
                f.seek(SLOT + 5 * MiB)
                f.write(bytes(4096))
                f.flush()
                os.fsync(f.fileno())
        real_drop(fd, target, offset, length)  # type: ignore[arg-type]

    monkeypatch.setattr(readback, "drop_cache", lose_a_write)
    assert cli.main(_args(disk, bundle, "copy-2")) == 1
    err = capsys.readouterr().err
    found = re.search(r"verify mismatch at offset (\d+) \(first differing byte; chunk 5 of 8\); bytes were "
                      r"written to the target \(from offset (\d+)\)", err)
    assert found, err
    assert found.group(1) == found.group(2)
    assert 5 * MiB <= int(found.group(1)) < 5 * MiB + 4096  # the first zeroed byte that differs
    assert disk.read(disk.env_dev) == env_before
    assert disk.env()["boot_slot"] == "a"
    assert disk.read(disk.slot_a) == running
