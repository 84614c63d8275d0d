"""UBI through the kernel's own interface: the ioctls of ``<mtd/ubi-user.h>`` and ``/sys/class/ubi``.

What mtd-utils' ``ubiattach``, ``ubidetach``, ``ubimkvol``, ``ubirmvol``, ``ubirsvol`` and
``ubiupdatevol`` do, without running them (the writer after the pivot has only Python):

* ``/dev/ubi_ctrl``: ``UBI_IOCATT`` (attach an MTD device, returns the UBI device number) and
  ``UBI_IOCDET``;
* ``/dev/ubiN``: ``UBI_IOCMKVOL`` (returns the volume id), ``UBI_IOCRMVOL``, ``UBI_IOCRSVOL``;
* ``/dev/ubiN_M``: ``UBI_IOCVOLUP`` with the new data size, then ``write()`` of exactly that many bytes
  (the kernel finishes the update when the last byte arrives; a volume with an interrupted update
  is marked ``upd_marker`` and reads as corrupted); ``UBI_IOCVOLRMBLK`` removes its ubiblock.

The request layouts (packed, native endianness) and numbers are the header's; ``pack_*`` are pure
and unit-tested. Devices and volumes are read from sysfs (``sysfs`` overridable for tests); a missing
``/dev`` node is made from the ``dev`` attribute, as OpenWrt's ``ubi_mknod`` does.

Import-light (stdlib only): runs after the pivot.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

# <asm-generic/ioctl.h>: _IOW(type, nr, size) = 1 << 30 | size << 16 | type << 8 | nr
_IOC_WRITE = 1


def _iow(kind: str, nr: int, size: int) -> int:
    return _IOC_WRITE << 30 | size << 16 | ord(kind) << 8 | nr


def _io(kind: str, nr: int) -> int:
    return ord(kind) << 8 | nr


UBI_MAX_VOLUME_NAME = 127
UBI_VOL_NUM_AUTO = -1
UBI_DEV_NUM_AUTO = -1
UBI_DYNAMIC_VOLUME = 3
UBI_STATIC_VOLUME = 4

MKVOL_REQ = struct.Struct("=iiqbBh4s128s")  # struct ubi_mkvol_req (packed): 152 bytes
RSVOL_REQ = struct.Struct("=qi")  # struct ubi_rsvol_req (packed): 12 bytes
ATTACH_REQ = struct.Struct("=iiihb9s")  # struct ubi_attach_req: 24 bytes

UBI_IOCMKVOL = _iow("o", 0, MKVOL_REQ.size)
UBI_IOCRMVOL = _iow("o", 1, 4)
UBI_IOCRSVOL = _iow("o", 2, RSVOL_REQ.size)
UBI_IOCATT = _iow("o", 64, ATTACH_REQ.size)
UBI_IOCDET = _iow("o", 65, 4)
UBI_IOCVOLUP = _iow("O", 0, 8)
UBI_IOCVOLRMBLK = _io("O", 8)

SYSFS = "/sys/class/ubi"
CTRL = "/dev/ubi_ctrl"


class UbiError(OSError):
    """A UBI request the kernel refused: the call and the device in the message."""


def pack_mkvol(name: str, size: int, *, vol_id: int = UBI_VOL_NUM_AUTO, alignment: int = 1,
               vol_type: int = UBI_DYNAMIC_VOLUME) -> bytes:
    raw = name.encode()
    if not raw or len(raw) > UBI_MAX_VOLUME_NAME:
        raise ValueError(f"UBI volume name must have 1-{UBI_MAX_VOLUME_NAME} bytes: {name!r}")
    if size <= 0:
        raise ValueError(f"UBI volume size must be positive: {size}")
    return MKVOL_REQ.pack(vol_id, alignment, size, vol_type, 0, len(raw), bytes(4), raw)


def pack_rsvol(vol_id: int, size: int) -> bytes:
    return RSVOL_REQ.pack(size, vol_id)


def pack_attach(mtd_num: int, *, ubi_num: int = UBI_DEV_NUM_AUTO, vid_hdr_offset: int = 0,
                max_beb_per1024: int = 0) -> bytes:
    return ATTACH_REQ.pack(ubi_num, mtd_num, vid_hdr_offset, max_beb_per1024, 0, bytes(9))


# --- sysfs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    device: int  # UBI device number (ubiN)
    vol_id: int
    name: str
    reserved_ebs: int
    usable_eb_size: int
    data_bytes: int
    kind: str  # "dynamic" or "static"
    devnum: str  # "major:minor"

    @property
    def node(self) -> str:
        return f"/dev/ubi{self.device}_{self.vol_id}"

    @property
    def size(self) -> int:
        return self.reserved_ebs * self.usable_eb_size


@dataclass(frozen=True)
class Device:
    number: int
    mtd_num: int
    eraseblock_size: int  # logical eraseblock size (usable bytes of a PEB)
    avail_eraseblocks: int
    total_eraseblocks: int
    min_io_size: int
    devnum: str
    volumes: tuple[Volume, ...]

    @property
    def node(self) -> str:
        return f"/dev/ubi{self.number}"

    def volume(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)


def _attr(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _int(path: str) -> int:
    return int(_attr(path))


def read_device(number: int, sysfs: str = SYSFS) -> Device:
    base = f"{sysfs}/ubi{number}"
    volumes: list[Volume] = []
    prefix = f"ubi{number}_"
    for name in sorted(os.listdir(base)):
        if not name.startswith(prefix) or not name[len(prefix):].isdigit():
            continue
        vdir = f"{base}/{name}"
        volumes.append(Volume(
            device=number, vol_id=int(name[len(prefix):]), name=_attr(f"{vdir}/name"),
            reserved_ebs=_int(f"{vdir}/reserved_ebs"), usable_eb_size=_int(f"{vdir}/usable_eb_size"),
            data_bytes=_int(f"{vdir}/data_bytes"), kind=_attr(f"{vdir}/type"), devnum=_attr(f"{vdir}/dev")))
    return Device(number=number, mtd_num=_int(f"{base}/mtd_num"),
                  eraseblock_size=_int(f"{base}/eraseblock_size"),
                  avail_eraseblocks=_int(f"{base}/avail_eraseblocks"),
                  total_eraseblocks=_int(f"{base}/total_eraseblocks"),
                  min_io_size=_int(f"{base}/min_io_size"), devnum=_attr(f"{base}/dev"),
                  volumes=tuple(sorted(volumes, key=lambda v: v.vol_id)))


def devices(sysfs: str = SYSFS) -> list[Device]:
    try:
        names = os.listdir(sysfs)
    except OSError:
        return []
    return [read_device(int(n[3:]), sysfs) for n in sorted(names) if n.startswith("ubi") and n[3:].isdigit()]


def device_on_mtd(mtd_num: int, sysfs: str = SYSFS) -> Device | None:
    """The UBI device attached to MTD ``mtd_num`` (``nand_find_ubi``), or None."""
    return next((d for d in devices(sysfs) if d.mtd_num == mtd_num), None)


# --- device nodes and requests ----------------------------------------------------------------------


def ensure_node(path: str, devnum: str) -> str:
    """``path`` as a character device ``major:minor`` (made if missing, as ``ubi_mknod``)."""
    major, minor = (int(x) for x in devnum.split(":"))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
        return path
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(major, minor):
        raise UbiError(errno.ENODEV, f"{path} is not the UBI node {devnum}")
    return path


def _ioctl(path: str, request: int, arg: bytes | int, call: str) -> bytes | int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        result: bytes | int = fcntl.ioctl(fd, request, arg)
        return result
    except OSError as exc:
        raise UbiError(exc.errno, f"{call} on {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def attach(mtd_num: int, ctrl: str = CTRL) -> int:
    """``ubiattach -m N``: the new UBI device's number."""
    out = _ioctl(ctrl, UBI_IOCATT, pack_attach(mtd_num), f"UBI_IOCATT mtd{mtd_num}")
    assert isinstance(out, bytes)
    return int(struct.unpack_from("=i", out)[0])


def detach(ubi_num: int, ctrl: str = CTRL) -> None:
    _ioctl(ctrl, UBI_IOCDET, struct.pack("=i", ubi_num), f"UBI_IOCDET ubi{ubi_num}")


def mkvol(device_node: str, name: str, size: int, *, vol_id: int = UBI_VOL_NUM_AUTO) -> int:
    """``ubimkvol``: a dynamic volume of ``size`` bytes (rounded up to whole LEBs); its volume id."""
    out = _ioctl(device_node, UBI_IOCMKVOL, pack_mkvol(name, size, vol_id=vol_id), f"UBI_IOCMKVOL {name}")
    assert isinstance(out, bytes)
    return int(struct.unpack_from("=i", out)[0])


def rmvol(device_node: str, vol_id: int) -> None:
    _ioctl(device_node, UBI_IOCRMVOL, struct.pack("=i", vol_id), f"UBI_IOCRMVOL {vol_id}")


def rsvol(device_node: str, vol_id: int, size: int) -> None:
    _ioctl(device_node, UBI_IOCRSVOL, pack_rsvol(vol_id, size), f"UBI_IOCRSVOL {vol_id}")


def remove_ubiblock(device: int, vol_id: int, volume_node: str) -> bool:
    """``ubiblock -r`` when the volume has a ubiblock (``/sys/class/block/ubiblockN_M``); True if
    one was removed."""
    if not os.path.exists(f"/sys/class/block/ubiblock{device}_{vol_id}"):
        return False
    try:
        _ioctl(volume_node, UBI_IOCVOLRMBLK, 0, "UBI_IOCVOLRMBLK")
    except UbiError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENOTTY):
            return False
        raise
    return True


def start_update(fd: int, size: int) -> None:
    """``UBI_IOCVOLUP`` on an open volume: the next ``size`` bytes written replace its contents."""
    try:
        fcntl.ioctl(fd, UBI_IOCVOLUP, struct.pack("=q", size))
    except OSError as exc:
        raise UbiError(exc.errno, f"UBI_IOCVOLUP: {exc.strerror}") from None


def leb_count(size: int, leb_size: int) -> int:
    """Logical eraseblocks ``size`` bytes take (what the kernel reserves for ``mkvol -s size``)."""
    return -(-size // leb_size)

