"""Loop devices through their ioctls (<linux/loop.h>): attach with autoclear, detach, list."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
from dataclasses import dataclass

from wrtcore import ioctl

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8
LO_FLAGS_DIRECT_IO = 16


class LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64), ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64), ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


def attach(backing: str, *, offset: int = 0, sizelimit: int = 0, read_only: bool = False,
           autoclear: bool = False, partscan: bool = False, direct_io: bool = False) -> str:
    """Attach ``backing`` (a file or block device) to a free loop device; return its path.

    ``direct_io``: the loop device reads and writes its backing with direct I/O (the kernel falls back
    to the page cache where the backing cannot do it), so a write error reaches the writer of the loop
    device instead of staying in the backing's page cache until some later flush.

    With ``autoclear`` the kernel detaches the device as soon as its last user closes it, which is
    right away unless something (a mount) holds it: prefer ``set_autoclear`` after mounting.
    """
    flags = ((LO_FLAGS_AUTOCLEAR if autoclear else 0) | (LO_FLAGS_PARTSCAN if partscan else 0)
             | (LO_FLAGS_DIRECT_IO if direct_io else 0))
    if read_only:
        flags |= LO_FLAGS_READ_ONLY
    fd = os.open(backing, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    try:
        for _attempt in range(8):  # another process may grab the free device between the two calls
            ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            finally:
                os.close(ctl)
            path = f"/dev/loop{number}"
            cfg = LoopConfig()
            cfg.fd = fd
            cfg.info.lo_offset = offset
            cfg.info.lo_sizelimit = sizelimit
            cfg.info.lo_flags = flags
            name = os.fsencode(backing)[:63]
            ctypes.memmove(cfg.info.lo_file_name, name, len(name))
            dev = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            try:
                fcntl.ioctl(dev, LOOP_CONFIGURE, cfg)
                return path
            except OSError as exc:
                if exc.errno != 16:  # EBUSY: lost the race, take the next free one
                    raise OSError(exc.errno, f"LOOP_CONFIGURE({path}, {backing}): {exc.strerror}") from exc
            finally:
                os.close(dev)
        raise OSError(16, f"no free loop device for {backing}")
    finally:
        os.close(fd)


LOOP_GET_STATUS64 = 0x4C05


def set_autoclear(path: str) -> None:
    """Mark ``path`` to detach itself when its last user (a mount) goes away.

    Set it only after the device is in use: a loop device nobody holds is cleared at once.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = LoopInfo64()
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        info.lo_flags |= LO_FLAGS_AUTOCLEAR
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    finally:
        os.close(fd)


def detach(path: str) -> None:
    """LOOP_CLR_FD. On a busy device the kernel turns this into autoclear-on-last-close."""
    ioctl.on_path(path, LOOP_CLR_FD)


@dataclass(frozen=True)
class LoopDevice:
    name: str          # loop3
    backing_file: str  # as the kernel recorded it
    offset: int
    backing_dev: int   # st_rdev-style device number of what backs it (file's fs or the block device)


def list_loops(sysfs: str = "/sys/block") -> list[LoopDevice]:
    found: list[LoopDevice] = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(sysfs)):
            base = f"{sysfs}/{name}/loop"
            if not name.startswith("loop") or not os.path.isdir(base):
                continue
            try:
                with open(f"{base}/backing_file") as f:
                    backing = f.read().strip()
                with open(f"{base}/offset") as f:
                    offset = int(f.read())
            except OSError:
                continue
            try:
                st = os.stat(backing)
                bdev = st.st_rdev if st.st_rdev else st.st_dev
            except OSError:
                bdev = -1
            found.append(LoopDevice(name, backing, offset, bdev))
    return found
