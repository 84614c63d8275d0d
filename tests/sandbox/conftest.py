"""Fixtures of the sandbox tier: the demo firmware images (built once, cached) and a device per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import images as imagesmod
from sandbox.device import Boot, Device
from wrtcore import log


def _probe() -> str | None:
    """Why the sandbox tier cannot run here, or None. Probes capabilities, not the uid."""
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop devices)"
    for tool in ("mksquashfs", "mkfs.ext4", "nsenter", "busybox"):
        if shutil.which(tool) is None and not os.path.exists(f"/bin/{tool}"):
            return f"{tool} not installed (run scripts/setup.sh)"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "true"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        return "cannot create mount + PID namespaces: " + probe.stderr.decode(errors="replace").strip()
    return None


@pytest.fixture(scope="session")
def images() -> imagesmod.Images:
    why = _probe()
    if why:
        pytest.skip(why)
    log.setup("test")
    return imagesmod.build()


@pytest.fixture
def device(images: imagesmod.Images, tmp_path: Path) -> Iterator[Device]:
    dev = Device(tmp_path / "device", images.v1)
    try:
        yield dev
    finally:
        dev.close()


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A tmpfs of our own (resizable with remount), unmounted at the end."""
    where = Path(tempfile.mkdtemp(prefix="wrt-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "wrt-test", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def start_upgrade(boot: Boot, image: Path, *flags: str, env: dict[str, str] | None = None) -> None:
    """Copy ``image`` into the device's /tmp and run its sysupgrade, as a user on the device would."""
    shutil.copyfile(image, boot.path("/tmp/sysupgrade.img"))
    res = boot.run(["sysupgrade", *flags, "/tmp/sysupgrade.img"], env=env, timeout=180)
    # stage2 ends every process on the device, sysupgrade included ("Closing all shell sessions").
    assert res.returncode in (0, -15, -9), f"sysupgrade failed: {res.returncode}\n{res.stdout}\n{res.stderr}"
