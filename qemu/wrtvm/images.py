"""Firmware images for the VM: the sandbox's images (same base tree, demo services, x86 "combined"
layout, fwtool trailer) plus the VM-only files of ``qemu/vm-root/`` (a root shell on the serial
console for the harness), for the board name the VM's firmware (QEMU's i440FX PC) gives preinit.
Cached under ``.cache/vm/images-<digest>/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from preinit.sysinfo import dmi_name
from sandbox import disk, rootfs
from sandbox import images as sandbox_images
from wrtvm import emmc_image, initramfs
from wrtvm.kernel import CACHE, REPO, Kernel

VM_ROOT = REPO / "qemu" / "vm-root"
# x86's board name from QEMU's default machine's DMI (sys_vendor, product_name)
BOARD = dmi_name("QEMU", "Standard PC (i440FX + PIIX, 1996)")
# mtd-utils in the guest: the reference tools the MTD/UBI tests and benchmarks compare against
GUEST_TOOLS = tuple(f"/usr/sbin/{t}" for t in (
    "flashcp", "flash_erase", "nandwrite", "nanddump", "mtdinfo", "ubiattach", "ubidetach", "ubimkvol",
    "ubirmvol", "ubiupdatevol", "ubiformat", "ubinfo", "mkfs.ubifs", "mkfs.jffs2", "mtdpart"))


NOR_ERASE = 64 * 1024
NOR_SIZE = 96 * 1024 * 1024  # the emulated NOR chip (block2mtd over the VM's disk file)
# the UBI board: UBI on a flash emulated by block2mtd (NOR-type: 1-byte writes), as the MTD partition
# "ubi"; nandsim's contents live in guest RAM and would not outlive the reboot (tests/vm/test_nand_cycle.py)
UBI_PEB = 128 * 1024
UBI_SIZE = 112 * 1024 * 1024


@dataclass(frozen=True)
class Images:
    v1: Path  # x86 combined images (sysupgrade files; the disk is the payload)
    v2: Path
    board: str
    build_seconds: float
    nor_v1: Path  # NOR sysupgrade images (squashfs, 0xFF, DE AD C0 DE, metadata)
    nor_v2: Path
    ubi_v1: Path  # the whole flash of a UBI board flashed with 1.0 (volumes kernel, rootfs, rootfs_data)
    nand_v2: Path  # NAND sysupgrade tar of 2.0 (sysupgrade-<board>/CONTROL, kernel, root; metadata)
    emmc_v1: Path  # the GPT disk of an eMMC board flashed with 1.0 (partitions kernel, rootfs)
    emmc_v2: Path  # eMMC sysupgrade tar of 2.0 (the NAND one: OpenWrt's boards share the format)


def kernel_stand_in(version: str) -> bytes:
    """What the NAND images carry as the kernel (QEMU loads the real one with -kernel): it lands in the
    ``kernel`` volume, where a test can tell the versions apart."""
    return f"kernel stand-in for firmware {version}\n".encode() * 1000


def digest(kernel: Kernel) -> str:
    h = hashlib.sha256(rootfs.source_digest().encode() + BOARD.encode() + " ".join(GUEST_TOOLS).encode()
                       + kernel.release.encode() + " ".join(initramfs.ON_DEMAND).encode())
    for top in (VM_ROOT, sandbox_images.DEMO):
        for p in sorted(top.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(REPO)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _tree(base: Path, out: Path, version: str, kernel: Kernel) -> Path:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out, symlinks=True, copy_function=os.link)
    shutil.copytree(sandbox_images.DEMO, out, dirs_exist_ok=True, symlinks=True)
    shutil.copytree(VM_ROOT, out, dirs_exist_ok=True, symlinks=True)
    rootfs.add_tools(out, GUEST_TOOLS)
    initramfs.install_on_demand(kernel, out)
    rootfs.add_version(out, version)
    return out


def build(kernel: Kernel, cache: Path = CACHE) -> Images:
    start = time.monotonic()
    where = cache / f"images-{digest(kernel)}"
    v1, v2 = where / "v1.img", where / "v2.img"
    nor_v1, nor_v2 = where / "nor-v1.bin", where / "nor-v2.bin"
    ubi_v1, nand_v2 = where / "ubi-v1.bin", where / "nand-v2.tar"
    if not all(p.exists() for p in (v1, v2, nor_v1, nor_v2, ubi_v1, nand_v2)):
        work = where / f"work-{os.getpid()}"  # concurrent builds of one digest must not share it
        if work.exists():
            shutil.rmtree(work)
        base = work / "base"
        rootfs.build_base(base)
        for version, img, nor in (("1.0", v1, nor_v1), ("2.0", v2, nor_v2)):
            tree = _tree(base, work / f"tree-{version}", version, kernel)
            sq = work / f"root-{version}.sqfs"
            rootfs.mksquashfs(tree, sq)
            tmp = img.with_suffix(f".tmp-{os.getpid()}")
            disk.combined_image(sq, tmp, version=version, board=BOARD)
            os.rename(tmp, img)
            disk.nor_image(sq, tmp, erase_size=NOR_ERASE, version=version, board=BOARD)
            os.rename(tmp, nor)
            stand_in = work / f"kernel-{version}"
            stand_in.write_bytes(kernel_stand_in(version))
            if version == "1.0":
                disk.ubi_flash(stand_in, sq, tmp, peb=UBI_PEB, size=UBI_SIZE)
                os.rename(tmp, ubi_v1)
            else:
                disk.nand_sysupgrade_tar(stand_in, sq, tmp, version=version, board=BOARD)
                os.rename(tmp, nand_v2)
        shutil.rmtree(work)
    emmc = emmc_image.ensure(where, v1, nand_v2, kernel_stand_in("1.0"))
    return Images(v1, v2, BOARD, time.monotonic() - start, nor_v1, nor_v2, ubi_v1, nand_v2, emmc.disk,
                  emmc.tar)
