"""An eMMC board on the sandbox: a GPT disk with partitions named ``kernel`` and ``rootfs``, and its
sysupgrade tars.

    1 MiB            GPT partition 1 ``kernel``: the tar's ``kernel`` (a stand-in: no kernel boots here)
    after it         GPT partition 2 ``rootfs``: the squashfs root, then zeros: the overlay at the next 64 KiB
    (optional)       GPT partition 3 ``rootfs_data``

The GPT is written by ``sfdisk`` (an independent writer of the format ``stage2.platforms.emmc`` reads).
The host kernel lists no partitions, so ``EmmcDevice`` shows each as a loop view over the disk, as
``wrtcore.partitions`` does for an MBR, and boots with ``root=`` the rootfs view. Platform detection reads
GPT names from sysfs, which has none here: ``EmmcDevice.platform_conf`` names the profile and the disk
(``/lib/upgrade/platform.conf``, written into the running device; sysupgrade, run from a shell, sees no
``WRT_CMDLINE`` and so needs ``CI_ROOTDEV=``).

With a ``rootfs_data`` partition, preinit finds it by its GPT name (``preinit.rootfs_data.find_gpt``,
its own loop view over the disk) and mounts the overlay there instead of after the squashfs.

The squashfs roots are the sandbox images' own (``sandbox.images``), cut out of their partition 2.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from sandbox import disk as diskmod
from sandbox.device import Device
from sandbox.images import Images
from stage2.formats import fwtool
from stage2.platforms import emmc
from wrtcore import blockdev, loop, partitions, run

MIB = 1 << 20
KERNEL_SIZE = 4 * MIB
ROOTFS_ROOM = 24 * MIB  # after the squashfs: the overlay


def squashfs_of(image: Path, out: Path) -> Path:
    """The squashfs root of a sandbox x86 image (partition 2), as mksquashfs wrote it (4 KiB padded)."""
    with open(image, "rb") as f:
        root = partitions.parse_mbr(f.read(512))[1]
    used = blockdev.squashfs_bytes_used(str(image), root.start)
    with open(image, "rb") as src, open(out, "wb") as dst:
        src.seek(root.start)
        left = -(-used // 4096) * 4096
        while left:
            buf = src.read(min(left, MIB))
            dst.write(buf)
            left -= len(buf)
    return out


def kernel_standin(out: Path, version: str, size: int = 3 * MIB // 2) -> Path:
    """Bytes that differ between versions, starting with gzip's magic (a zImage-like kernel must be
    written as it is, not inflated)."""
    pattern = f"\x1f\x8bsandbox kernel {version}\n".encode()
    out.write_bytes((pattern * (size // len(pattern) + 1))[:size])
    return out


def gpt_disk(out: Path, kernel: Path, root: Path, *, data_size: int = 0) -> list[emmc.GptPartition]:
    """A GPT disk flashed with ``kernel`` and ``root``; its partitions as ``stage2.platforms.emmc``
    reads them."""
    root_size = -(-(root.stat().st_size + ROOTFS_ROOM) // MIB) * MIB
    size = MIB + KERNEL_SIZE + root_size + data_size + MIB
    with open(out, "wb") as f:
        f.truncate(size)
    script = (f"label: gpt\nstart=2048, size={KERNEL_SIZE // 512}, name=kernel\n"
              f"size={root_size // 512}, name=rootfs\n")
    if data_size:
        script += f"size={data_size // 512}, name=rootfs_data\n"
    run.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)], input=script.encode())
    with open(out, "rb") as f:
        f.seek(512)
        start, count, entry = emmc.gpt_entries_extent(f.read(512))
        f.seek(start)
        parts = emmc.parse_gpt(f.read(count * entry), count, entry)
    by_name = {p.name: p for p in parts}
    with open(out, "r+b") as f:
        for name, src in (("kernel", kernel), ("rootfs", root)):
            f.seek(by_name[name].start)
            with open(src, "rb") as s:
                shutil.copyfileobj(s, f, MIB)
    return parts


def sysupgrade_tar(images: Images, work: Path, version: str, *, board: str | None = None,
                   with_root: bool = True) -> Path:
    """The eMMC sysupgrade tar of firmware ``version`` (``1.0`` or ``2.0``) with fwtool metadata."""
    image = images.v1 if version == "1.0" else images.v2
    root = squashfs_of(image, work / f"root-{version}.sqfs")
    kernel = kernel_standin(work / f"kernel-{version}", version)
    out = work / f"emmc-{version}{'' if with_root else '-noroot'}-{board or 'board'}.tar"
    diskmod.nand_sysupgrade_tar(kernel, root, out, version=version, board=board or images.board)
    if not with_root:  # the same tar without its root member
        _drop_member(out, "root")
    return out


def _drop_member(tar_path: Path, name: str) -> None:
    """Rewrite the tar (and its fwtool metadata) without the member ``sysupgrade-*/<name>``."""
    meta = fwtool.extract_metadata(tar_path)
    kept: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            if not m.name.endswith(f"/{name}"):
                kept.append((m, f.read() if f else None))
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for m, data in kept:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    fwtool.append_metadata(tar_path, meta)


class EmmcDevice(Device):
    """A sandbox device on a GPT disk: loop views for ``kernel`` and ``rootfs``; boots from rootfs."""

    def __init__(self, workdir: Path, kernel: Path, root: Path, data_size: int = 0) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.disk_file = workdir / "disk.img"
        self.gpt = {p.name: p for p in gpt_disk(self.disk_file, kernel, root, data_size=data_size)}
        self.root_size = root.stat().st_size  # of the root flashed first
        self.boots = []
        self._loops = []
        self.disk = loop.attach(str(self.disk_file))
        self._loops.append(self.disk)
        self.kernel_part = self._view("kernel")
        self.root_part = self._view("rootfs")
        self.boot_part = self.kernel_part  # Device's name for partition 1

    def _view(self, name: str) -> str:
        part = self.gpt[name]
        dev = loop.attach(self.disk, offset=part.start, sizelimit=part.size, direct_io=True)
        self._loops.append(dev)
        return dev

    @property
    def platform_conf(self) -> str:
        """``/lib/upgrade/platform.conf`` for this board: the profile and its disk."""
        return f"PLATFORM=emmc\nCI_ROOTDEV={self.disk}\n"

    def read_partition(self, name: str, length: int, offset: int = 0) -> bytes:
        """Bytes of GPT partition ``name`` from the disk file (what a reboot finds)."""
        with open(self.disk_file, "rb") as f:
            f.seek(self.gpt[name].start + offset)
            return f.read(length)
