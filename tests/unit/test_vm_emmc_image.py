"""The vm tier's eMMC board image (``wrtvm.emmc_image``) built from a small stand-in x86 image: GPT
partitions by name, what each holds, the overlay's room, the tar taken as it is, the cache."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from wrtvm import emmc_image

from stage2.formats import fwtool
from stage2.platforms.emmc_write import read_gpt
from wrtcore import run

MIB = 1 << 20


def _x86_image(path: Path, squashfs: bytes) -> None:
    """An MBR disk whose partition 2 starts with ``squashfs`` (as the x86 combined image)."""
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
    run.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path)],
            input=b"label: dos\nstart=2048, size=2048\nstart=4096, size=4096\n")
    with open(path, "r+b") as f:
        f.seek(2 * MIB)
        f.write(squashfs)


def test_emmc_disk_from_the_x86_squashfs(tmp_path: Path) -> None:
    used = 10_000
    squashfs = bytearray(os.urandom(used))
    squashfs[:4] = b"hsqs"
    struct.pack_into("<Q", squashfs, 40, used)
    padded = -(-used // 4096) * 4096  # mksquashfs pads to 4 KiB: the root is that much
    x86 = tmp_path / "v1.img"
    # what follows the padded squashfs in partition 2 (rootfs_data's place) is not the root's
    _x86_image(x86, bytes(squashfs).ljust(padded, b"\0") + b"\xee" * 5000)
    tar = tmp_path / "nand-v2.tar"
    tar.write_bytes(b"a sysupgrade tar")
    kernel = b"kernel stand-in 1.0\n" * 100
    cache = tmp_path / "cache"
    cache.mkdir()

    built = emmc_image.ensure(cache, x86, tar, kernel)
    assert built.build_seconds > 0
    parts = read_gpt(str(built.disk))
    assert [(p.number, p.name) for p in parts] == [(1, "kernel"), (2, "rootfs")]
    kernel_part, rootfs = parts
    with open(built.disk, "rb") as f:
        f.seek(kernel_part.start)
        assert f.read(len(kernel)) == kernel
        f.seek(rootfs.start)
        root = f.read(rootfs.size)
    assert root[:used] == bytes(squashfs) and not any(root[used:])
    assert rootfs.size - padded >= 24 * MIB  # the overlay's room after the squashfs
    # the disk carries no fwtool trailer: a VM device's copy is the whole file
    assert fwtool.payload_length(built.disk) == built.disk.stat().st_size
    # the eMMC tar is the NAND one, taken as it is
    assert built.tar.read_bytes() == tar.read_bytes() and built.tar.name == emmc_image.TAR
    assert not [p for p in cache.iterdir() if p.name.startswith("emmc-work-")]

    again = emmc_image.ensure(cache, x86, tar, b"another kernel")
    assert (again.disk, again.tar, again.build_seconds) == (built.disk, built.tar, 0.0)
