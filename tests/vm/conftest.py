"""Fixtures of the vm tier: QEMU (TCG) booting Debian's kernel with our firmware images."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from wrtvm import device as devicemod
from wrtvm import runner

from wrtcore import log


def _probe() -> str | None:
    """Why the vm tier cannot run here, or None."""
    if runner.qemu_binary() is None:
        return "qemu-system-x86_64 not installed (run scripts/setup.sh: qemu-system-x86)"
    for tool in ("apt-get", "apt-cache", "dpkg", "depmod", "modprobe", "mksquashfs", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run scripts/setup.sh)"
    if not Path("/bin/busybox").exists():
        return "busybox-static not installed (run scripts/setup.sh)"
    return None


@pytest.fixture(scope="session")
def vm_assets() -> devicemod.Assets:
    why = _probe()
    if why:
        print(f"vm tier skipped: {why}")
        pytest.skip(why)
    log.setup("test")
    try:
        assets = devicemod.build()
    except Exception as exc:  # no kernel package reachable: the tier cannot run
        print(f"vm tier skipped: kernel or images not built: {exc}")
        pytest.skip(f"kernel or images not built: {exc}")
    print(f"\nvm assets ready in {assets.build_seconds:.1f} s (kernel {assets.kernel.release})")
    return assets


@pytest.fixture
def vm_device(vm_assets: devicemod.Assets, tmp_path: Path) -> Iterator[devicemod.Device]:
    dev = devicemod.Device(tmp_path / "vm", vm_assets, vm_assets.images.v1, transfer=vm_assets.images.v2)
    try:
        yield dev
    finally:
        dev.close()
