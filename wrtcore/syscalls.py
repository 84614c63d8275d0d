"""ctypes wrappers for the syscalls the chain needs, named as in the kernel headers.

Import-light on purpose (only ctypes, os): PID 1, preinit and the writer after the pivot use it.
Every failure becomes an OSError whose message names the call and its path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(None, use_errno=True)

# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19

# umount2 flags
MNT_FORCE = 1
MNT_DETACH = 2

# <linux/reboot.h>
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_HALT = 0xCDEF0123
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.swapoff.argtypes = [ctypes.c_char_p]
_libc.reboot.argtypes = [ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, call: str, path: str | None = None) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        where = f"{call}({path})" if path is not None else f"{call}()"
        raise OSError(err, f"{where}: {os.strerror(err)}", path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); ``source``/``fstype``/``data`` may be None as the kernel allows."""
    ret = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(ret, "mount", f"{source} -> {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount2", target)


def swapoff(path: str) -> None:
    _check(_libc.swapoff(_b(path)), "swapoff", path)


def pivot_root(new_root: str, put_old: str) -> None:
    nr_pivot_root = 155  # x86_64; the only architecture this sandbox runs on
    ret = _libc.syscall(nr_pivot_root, _b(new_root), _b(put_old))
    _check(ret, "pivot_root", f"{new_root}, {put_old}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def sync() -> None:
    _libc.sync()


def reboot(cmd: int = LINUX_REBOOT_CMD_RESTART) -> None:
    """reboot(2). In a PID namespace this ends the namespace: its init dies of SIGHUP (restart)."""
    _check(_libc.reboot(cmd), "reboot")
