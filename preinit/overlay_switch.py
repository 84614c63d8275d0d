"""``mount_root done`` on a tmpfs overlay: move the running system onto the real rootfs_data.

fstools' ``switch2jffs`` as we do it, with the same mount moves: the new filesystem is mounted on
``/rom/overlay`` (the squashfs's own /overlay directory, free while the tmpfs is at /overlay), the tmpfs
overlay's ``upper`` is copied onto it (whiteouts, the device nodes 0/0 overlayfs uses, and extended
attributes such as the opaque mark included) and its state set ready; then a pivot back to the squashfs
(the running overlay root goes to /mnt), an overlayfs with the new upper mounted on /rom, and a pivot
into it (the squashfs goes back to /rom). pivot_root moves the root and working directory of every
process that had the old one, so the services and shells go on in the new root; /proc, /sys, /dev, /tmp,
/boot and any other mount of the old root move along, and the old overlay root with its tmpfs is
detached (files still open there stay readable by their holders). Writes that land on the tmpfs between
the copy and the pivot (a few milliseconds) stay behind, as with fstools' ``cp -a``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable

from wrtcore import log, mounts, syscalls

XATTR_PREFIXES = ("trusted.overlay.", "user.", "security.")
LEFT_BEHIND = ("/overlay", "/rom")  # the tmpfs overlay goes with the old root; /rom is the squashfs


def carried(table: list[mounts.Mount]) -> list[str]:
    """The mounts directly under the root that move to the new root (/proc, /sys, /dev, /tmp, /boot and
    whatever else the boot mounted; their submounts move with them)."""
    found = []
    for m in table:
        point = m.mountpoint
        if point.count("/") == 1 and point != "/" and point not in LEFT_BEHIND and point not in found:
            found.append(point)
    return found


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if not name.startswith(XATTR_PREFIXES):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as exc:
            log.get().warning("extended attribute not carried over", path=dst, name=name, error=str(exc))


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(src: str, dst: str) -> int:
    """``src`` into ``dst`` (created): directories, files, symlinks, device nodes, FIFOs, with owners,
    modes, times and extended attributes. Returns the entries copied."""
    count = 0
    os.makedirs(dst, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = os.path.normpath(os.path.join(dst, rel))
        for name in dirnames + filenames:
            s, d = os.path.join(dirpath, name), os.path.join(target, name)
            st = os.lstat(s)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(d)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(s, d, follow_symlinks=False)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                os.mknod(d, st.st_mode, st.st_rdev)
            else:  # sockets: nothing a reboot would find useful
                continue
            if not stat.S_ISDIR(st.st_mode):
                _copy_meta(s, d, st)
            count += 1
        # symlinks to directories are listed in dirnames but not walked into (followlinks=False)
    for dirpath, _dirs, _files in os.walk(src, topdown=False):  # directories last: their times stay
        _copy_meta(dirpath, os.path.normpath(os.path.join(dst, os.path.relpath(dirpath, src))),
                   os.lstat(dirpath))
    return count


def switch(source: str, fstype: str, set_ready: Callable[[str], None]) -> int:
    """Mount ``source`` (``fstype``) as the new overlay and move the running root onto it; returns the
    entries copied from the tmpfs overlay. ``set_ready(dir)`` marks the new overlay ready."""
    new = "/rom/overlay"
    syscalls.mount(source, new, fstype, syscalls.MS_NOATIME)
    try:
        copied = copy_tree("/overlay/upper", f"{new}/upper")
        os.makedirs(f"{new}/work", exist_ok=True)
        set_ready(new)
        syscalls.sync()
    except BaseException:
        with contextlib.suppress(OSError):
            syscalls.umount(new)
        raise
    log.get().info("overlay copied", entries=copied, to=fstype)
    moving = carried(mounts.read_mountinfo())  # read now: /proc itself moves
    # back to the squashfs, the running overlay root under /mnt
    os.chdir("/rom")
    syscalls.pivot_root(".", "mnt")
    os.chdir("/")
    syscalls.mount("overlayfs:/overlay", "/rom", "overlay", syscalls.MS_NOATIME,
                   "lowerdir=/,upperdir=/overlay/upper,workdir=/overlay/work")
    os.chdir("/rom")
    syscalls.pivot_root(".", "rom")
    os.chdir("/")
    syscalls.mount("/rom/overlay", "/overlay", None, syscalls.MS_MOVE)
    failed = []
    for mnt in moving:  # each on its own: one that cannot move must not keep the others behind
        try:
            os.makedirs(mnt, exist_ok=True)
            syscalls.mount(f"/rom/mnt{mnt}", mnt, None, syscalls.MS_MOVE)
        except OSError as exc:
            failed.append(f"{mnt}: {exc}")
    if failed:
        raise OSError(f"mounts not carried to the new root (the old root stays at /rom/mnt): {failed}")
    syscalls.umount("/rom/mnt", syscalls.MNT_DETACH)
    return copied
