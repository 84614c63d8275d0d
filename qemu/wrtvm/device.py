"""A VM device: its own disk (a copy of a firmware image), boots of it in QEMU, a transfer disk.

Mirrors ``sandbox.device``: ``Device(workdir, image, ...)`` then ``boot()`` for each boot; a boot ends
when the guest reboots (QEMU exits under ``-no-reboot``), and the next ``boot()`` starts QEMU again on
the same disk. ``close()`` kills whatever QEMU is still running (only the ones started here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sandbox import disk as diskmod
from wrtvm import images as imagesmod
from wrtvm import initramfs, kernel
from wrtvm.runner import VM, Shell


@dataclass(frozen=True)
class Assets:
    kernel: kernel.Kernel
    initrd: Path
    images: imagesmod.Images
    build_seconds: float


def build() -> Assets:
    """Kernel, initramfs and the v1/v2 VM images (each cached under .cache/vm/)."""
    start = time.monotonic()
    k = kernel.fetch()
    initrd = initramfs.build(k)
    imgs = imagesmod.build(k)
    return Assets(k, initrd, imgs, time.monotonic() - start)


class Device:
    def __init__(self, workdir: Path, assets: Assets, image: Path, transfer: Path | None = None,
                 reuse: bool = False) -> None:
        """``reuse``: keep ``workdir``/disk.img when it exists (the disk a previous run left)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.assets = assets
        self.disk_file = workdir / "disk.img"
        if not (reuse and self.disk_file.exists()):
            diskmod.sparse_copy(image, self.disk_file)
            with open(self.disk_file, "r+b") as f:  # the trailer is not part of what a flash writes
                f.truncate(diskmod.payload_size(image))
        self.transfer_size = 0
        self.transfer_file: Path | None = None
        if transfer is not None:  # /dev/vdb in the guest: the file, padded to whole sectors
            self.transfer_size = transfer.stat().st_size
            self.transfer_file = workdir / "transfer.img"
            diskmod.sparse_copy(transfer, self.transfer_file, -(-self.transfer_size // 512) * 512)
        self.boots: list[VM] = []

    def boot(self, *, blkdebug: Path | None = None, stop_on_error: bool = False,
             cmdline_extra: str = "", memory: str = "512M") -> VM:
        """Start QEMU on the disk (the transfer disk as /dev/vdb). ``blkdebug``: a rules file for QEMU's
        blkdebug driver on the disk (``wrtvm.machine.blkdebug_rules``); ``stop_on_error``: an error
        stops the VM (QMP event STOP) instead of reaching the guest; ``memory``: QEMU's ``-m``."""
        extra = (self.transfer_file,) if self.transfer_file else ()
        vm = VM(kernel=self.assets.kernel.vmlinux, initrd=self.assets.initrd, disk=self.disk_file,
                workdir=self.workdir, name=f"boot{len(self.boots) + 1}", extra_disks=extra,
                blkdebug=blkdebug, stop_on_error=stop_on_error, cmdline_extra=cmdline_extra, memory=memory)
        self.boots.append(vm)
        return vm

    def fetch_transfer(self, shell: Shell, dest: str = "/tmp/sysupgrade.img") -> None:
        """Copy the transfer disk's file into the guest (large blocks, then cut to its exact size)."""
        shell.check(f"dd if=/dev/vdb of={dest} bs=1M 2>/dev/null && truncate -s {self.transfer_size} {dest}",
                    timeout=120)

    def close(self) -> None:
        for vm in self.boots:
            vm.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
