"""Fixtures of the sandbox tier: the demo firmware images (built once, cached) and a device per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import images as imagesmod
from sandbox.device import Boot, Device
from wrtcore import log, loop

LOOPS_GONE_WITHIN = 10.0  # s: a killed device's namespaces (and the autoclear loops they held) go lazily
TMPFS_PREFIX = "wrt-tmpfs-"  # the tmpfs_dir fixture's directories


def _loops_of(run_dirs: tuple[str, ...], before: set[str]) -> list[loop.LoopDevice]:
    """The loop devices attached since ``before`` over a file of this test run (``run_dirs``), and the
    views stacked on them (a view made inside a device's namespaces names its backing ``/loopN``).
    Other loop devices on the machine (another test run's) are not ours to judge or detach."""
    loops = [lo for lo in loop.list_loops() if lo.name not in before]
    mine = {lo.name for lo in loops if lo.backing_file.startswith(run_dirs)}
    grew = True
    while grew:
        grew = False
        for lo in loops:
            if lo.name not in mine and os.path.basename(lo.backing_file) in mine:
                mine.add(lo.name)
                grew = True
    return [lo for lo in loops if lo.name in mine]


@pytest.fixture(autouse=True)
def _no_loop_device_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every loop device a test attaches is gone after it, its stacked views included: a leftover fails
    the test, after being detached (the next test and the machine start clean)."""
    before = {lo.name for lo in loop.list_loops()}
    yield
    run_dirs = (str(tmp_path_factory.getbasetemp()), os.path.join(tempfile.gettempdir(), TMPFS_PREFIX))
    deadline = time.monotonic() + LOOPS_GONE_WITHIN
    while (left := _loops_of(run_dirs, before)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the kernel's release of autoclear loops: there is no event to wait on
    for _ in range(len(left)):  # views first: a device backing another cannot go before it
        for lo in left:
            with contextlib.suppress(OSError):
                loop.detach(f"/dev/{lo.name}")
    assert not left, "loop devices left attached: " + ", ".join(
        f"{lo.name} ({lo.backing_file} @{lo.offset})" for lo in left)


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
    where = Path(tempfile.mkdtemp(prefix=TMPFS_PREFIX))
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
