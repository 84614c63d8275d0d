"""Firmware images in OpenWrt's x86 "combined" layout, and the fwtool metadata that names the board.

    sector 0        MBR (boot code starting EB 63, as x86's platform check expects)
    1 MiB           partition 1: boot, ext4 (kernel stand-in, grub.cfg, where sysupgrade.tgz lands)
    after it        partition 2: the squashfs root, then zeros: rootfs_data's place (wiped by a flash)
    end             fwtool metadata trailer (not written to the disk)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
from pathlib import Path

from stage2.formats import fwtool
from wrtcore import run

MIB = 1 << 20
BOOT_SIZE = 8 * MIB
OVERLAY_ROOM = 32 * MIB


def mbr(disk_signature: int, partitions: list[tuple[int, int]]) -> bytes:
    """A DOS partition table; ``partitions`` as (start, size) in bytes, type 0x83, first one bootable."""
    sector = bytearray(512)
    sector[0:2] = b"\xeb\x63"
    struct.pack_into("<I", sector, 440, disk_signature)
    for i, (start, size) in enumerate(partitions):
        entry = struct.pack("<B3sB3sII", 0x80 if i == 0 else 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                            start // 512, size // 512)
        sector[446 + 16 * i : 446 + 16 * (i + 1)] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def _round_up(n: int, to: int = MIB) -> int:
    return (n + to - 1) // to * to


def boot_partition(out: Path, version: str, root_partuuid: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "boot/grub").mkdir(parents=True)
        (Path(tmp) / "boot/vmlinuz").write_text(f"sandbox kernel stand-in for firmware {version}\n")
        (Path(tmp) / "boot/grub/grub.cfg").write_text(
            f'menuentry "OpenWrt {version}" {{\n  linux /boot/vmlinuz root=PARTUUID={root_partuuid}'
            " rootwait console=ttyS0\n}\n")
        with open(out, "wb") as f:
            f.truncate(BOOT_SIZE)
        run.run(["mkfs.ext4", "-q", "-F", "-L", "boot", "-d", tmp, str(out)])


def combined_image(squashfs: Path, out: Path, *, version: str, board: str, disk_signature: int = 0x5EED0001,
                   compat_version: str = "1.0", supported: list[str] | None = None) -> Path:
    """Assemble the image and append fwtool metadata naming ``board`` (or ``supported``)."""
    boot_start = MIB
    root_start = boot_start + BOOT_SIZE
    root_size = _round_up(squashfs.stat().st_size + OVERLAY_ROOM)
    partuuid = f"{disk_signature:08x}-02"
    with tempfile.TemporaryDirectory() as tmp:
        boot = Path(tmp) / "boot.ext4"
        boot_partition(boot, version, partuuid)
        with open(out, "wb") as f:
            f.write(mbr(disk_signature, [(boot_start, BOOT_SIZE), (root_start, root_size)]))
            f.seek(boot_start)
            with open(boot, "rb") as b:
                shutil.copyfileobj(b, f, MIB)
            f.seek(root_start)
            with open(squashfs, "rb") as s:
                shutil.copyfileobj(s, f, MIB)
            end = root_start + root_size
            f.seek(end - 1)
            f.write(b"\0")  # zeros after the squashfs: a fresh rootfs_data on first boot
    fwtool.append_metadata(out, _metadata(version, board, compat_version, supported))
    return out


def _metadata(version: str, board: str, compat_version: str, supported: list[str] | None) -> str:
    return json.dumps({
        "metadata_version": "1.1", "compat_version": compat_version,
        "supported_devices": supported if supported is not None else [board],
        "version": {"dist": "OpenWrt", "version": version, "revision": f"sandbox-{version}",
                    "target": "x86/64", "board": board},
    })


JFFS2_EOF_MARKER = b"\xde\xad\xc0\xde"


def nor_image(squashfs: Path, out: Path, *, erase_size: int, version: str, board: str,
              compat_version: str = "1.0") -> Path:
    """A NOR sysupgrade image: the squashfs padded with 0xFF to an erase block, then ``DE AD C0 DE`` at
    the start of the next one (where rootfs_data begins; ``mtd -j`` puts the config there), then the
    fwtool metadata. The kernel is not in it: QEMU loads it (``-kernel``)."""
    with open(out, "wb") as f, open(squashfs, "rb") as s:
        shutil.copyfileobj(s, f, MIB)
        f.write(b"\xff" * (-f.tell() % erase_size))
        f.write(JFFS2_EOF_MARKER)
    fwtool.append_metadata(out, _metadata(version, board, compat_version, None))
    return out


def nor_flash(image: Path, out: Path, size: int) -> Path:
    """The whole flash of a device that was flashed with ``image`` (its payload, then erased 0xFF)."""
    payload = payload_size(image)
    with open(image, "rb") as src, open(out, "wb") as f:
        left = payload
        while left:
            buf = src.read(min(left, 4 * MIB))
            f.write(buf)
            left -= len(buf)
        block = b"\xff" * MIB
        while f.tell() < size:
            f.write(block[: size - f.tell()])
    return out


def payload_size(image: Path) -> int:
    return fwtool.payload_length(image)


def sparse_copy(src: Path, dst: Path, size: int | None = None) -> None:
    """Copy ``src`` to ``dst`` keeping holes (SEEK_DATA/SEEK_HOLE), then extend to ``size``."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        end = os.fstat(s.fileno()).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(s.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(s.fileno(), data, os.SEEK_HOLE)
            s.seek(data)
            d.seek(data)
            left = hole - data
            while left:
                buf = s.read(min(left, 4 * MIB))
                if not buf:
                    break
                d.write(buf)
                left -= len(buf)
            pos = hole
        d.truncate(max(end, size or 0))


def nand_sysupgrade_tar(kernel: Path, root: Path, out: Path, *, version: str, board: str,
                        compat_version: str = "1.0") -> Path:
    """A NAND sysupgrade image as OpenWrt's ``sysupgrade-tar`` makes it: a tar whose directory
    ``sysupgrade-<board, "," as "_">/`` holds ``CONTROL`` (``BOARD=``, ``REV=``), ``kernel`` and ``root``,
    then the fwtool metadata naming ``board``."""
    top = f"sysupgrade-{board.replace(',', '_')}"
    control = f"BOARD={board}\nREV={version}\n".encode()
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(top)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(info)
        info = tarfile.TarInfo(f"{top}/CONTROL")
        info.size, info.mode, info.mtime = len(control), 0o644, 0
        tar.addfile(info, io.BytesIO(control))
        for name, path in (("kernel", kernel), ("root", root)):
            info = tar.gettarinfo(str(path), f"{top}/{name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(path, "rb") as f:
                tar.addfile(info, f)
    fwtool.append_metadata(out, _metadata(version, board, compat_version, None))
    return out


UBI_DATA_MIN = MIB  # rootfs_data as ubinize makes it; UBI's autoresize gives it the rest on first attach


def ubi_flash(kernel: Path, root: Path, out: Path, *, peb: int, size: int) -> Path:
    """The whole flash of a UBI board (a NOR-type MTD: 1-byte writes, as block2mtd) as ``ubinize``
    makes it from the volumes ``kernel``, ``rootfs`` (squashfs) and an empty ``rootfs_data`` that grows
    to the free room when the device is first attached, then erased (0xFF) to ``size``."""
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "ubinize.ini"
        ini.write_text(
            f"[kernel]\nmode=ubi\nimage={kernel}\nvol_id=0\nvol_type=dynamic\nvol_name=kernel\n"
            f"[rootfs]\nmode=ubi\nimage={root}\nvol_id=1\nvol_type=dynamic\nvol_name=rootfs\n"
            f"[rootfs_data]\nmode=ubi\nvol_id=2\nvol_type=dynamic\nvol_name=rootfs_data\n"
            f"vol_size={UBI_DATA_MIN}\nvol_flags=autoresize\n")
        run.run(["ubinize", "-o", str(out), "-p", str(peb), "-m", "1", str(ini)])
    with open(out, "r+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > size:
            raise ValueError(f"UBI image of {f.tell()} bytes does not fit a flash of {size}")
        block = b"\xff" * MIB
        while f.tell() < size:
            f.write(block[: size - f.tell()])
    return out
