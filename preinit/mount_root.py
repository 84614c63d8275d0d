"""mount_root: the squashfs root with an overlay on rootfs_data, as OpenWrt's fstools sets it up.

x86 "combined" layout: rootfs_data lives on the root partition right after the squashfs, at the next
64 KiB boundary, reached through a loop device at that offset. Identified by its first bytes: an ext4
superblock is mounted as it is; anything else (zeros from a fresh flash, deadc0de) is formatted. The
overlay's state follows fstools: ``.fs_state`` -> "1" pending until ``done`` marks it "2" ready; a
pending overlay is wiped on boot except files named sysupgrade.tgz (the config restore runs again).
"""

from __future__ import annotations

import contextlib
import os
import shutil

from wrtcore import blockdev, cmdline, log, loop, partitions, run, syscalls

STATE_LINK = ".fs_state"
PENDING, READY = "1", "2"
MIN_OVERLAY = 2 << 20


def identify(dev: str) -> str:
    with open(dev, "rb") as f:
        head = f.read(2048)
    if head[1080:1082] == b"\x53\xef":
        return "ext4"
    if head[:4] == b"\xde\xad\xc0\xde":
        return "deadcode"
    if head[:2] == b"\x1f\x8b":
        return "targz"
    return "none"


def _state(overlay: str) -> str | None:
    try:
        return os.readlink(f"{overlay}/{STATE_LINK}")
    except OSError:
        return None


def set_state(overlay: str, value: str) -> None:
    link = f"{overlay}/{STATE_LINK}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    os.symlink(value, link)


def wipe_pending(overlay: str) -> None:
    """Delete everything except files named sysupgrade.tgz (fstools' overlay_delete)."""
    for dirpath, dirnames, filenames in os.walk(overlay, topdown=False):
        for name in filenames:
            if name != "sysupgrade.tgz":
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def attach_rootfs_data(root_dev: str) -> str | None:
    used = blockdev.squashfs_bytes_used(root_dev)
    offset = blockdev.overlay_offset(used)
    if blockdev.size(root_dev) - offset < MIN_OVERLAY:
        return None
    return loop.attach(root_dev, offset=offset)


def fopivot(overlay: str) -> None:
    """overlayfs over / with upper in ``overlay``, pivot to it, old root at /rom (fstools' fopivot)."""
    os.makedirs(f"{overlay}/upper", exist_ok=True)
    os.makedirs(f"{overlay}/work", exist_ok=True)
    tgz = f"{overlay}/sysupgrade.tgz"
    if os.path.exists(tgz):
        os.rename(tgz, f"{overlay}/upper/sysupgrade.tgz")
    syscalls.mount("overlayfs:" + overlay, "/mnt", "overlay", syscalls.MS_NOATIME,
                   f"lowerdir=/,upperdir={overlay}/upper,workdir={overlay}/work")
    os.chdir("/mnt")
    syscalls.pivot_root(".", "rom")
    os.chdir("/")
    for mnt in ("/proc", "/dev", "/tmp", "/sys", "/overlay"):
        if os.path.ismount(f"/rom{mnt}"):
            syscalls.mount(f"/rom{mnt}", mnt, None, syscalls.MS_MOVE)


def start() -> str:
    """Mount the overlay and pivot into it; returns the kind of overlay used."""
    root_dev = cmdline.read().get("root", "")
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    data = attach_rootfs_data(root_dev) if root_dev.startswith("/dev/") else None
    os.makedirs("/tmp/overlay", exist_ok=True)
    kind = "tmpfs"
    if data is not None:
        fs = identify(data)
        if fs != "ext4":
            log.get().info("formatting rootfs_data", device=data, found=fs)
            run.run(["mkfs.ext4", "-q", "-F", "-L", "rootfs_data", data])
        syscalls.mount(data, "/tmp/overlay", "ext4", syscalls.MS_NOATIME)
        loop.set_autoclear(data)  # goes away with the mount
        kind = "ext4"
    else:
        log.get().info("no usable overlay filesystem found, using tmpfs overlay")
        syscalls.mount("tmpfs", "/tmp/overlay", "tmpfs", syscalls.MS_NOATIME, "mode=0755")
    state = _state("/tmp/overlay")
    if state == PENDING:
        log.get().info("overlay filesystem has not been fully initialized yet")
        wipe_pending("/tmp/overlay")
    if state != READY:
        set_state("/tmp/overlay", PENDING)
    syscalls.mount("/tmp/overlay", "/overlay", None, syscalls.MS_MOVE)
    log.get().info(f"switching to {kind} overlay")
    fopivot("/overlay")
    return kind


def done() -> None:
    if os.path.ismount("/overlay"):
        set_state("/overlay", READY)


def move_config(root_dev: str) -> dict[str, str | None]:
    """x86's 79_move_config: mount the boot partition on /boot, move sysupgrade.tgz to /."""
    found: dict[str, str | None] = {"archive": None, "report": None}
    if not root_dev.startswith("/dev/"):
        return found
    try:
        boot, made = partitions.open_device(blockdev.disk_of(root_dev), 1)
    except (OSError, ValueError) as exc:
        log.get().warning("no boot partition", error=str(exc))
        return found
    os.makedirs("/boot", exist_ok=True)
    syscalls.mount(boot, "/boot", "ext4", syscalls.MS_NOATIME)
    if made:
        loop.set_autoclear(boot)
    if os.path.exists("/boot/sysupgrade.tgz"):
        shutil.copyfile("/boot/sysupgrade.tgz", "/sysupgrade.tgz")
        os.unlink("/boot/sysupgrade.tgz")
        found["archive"] = "/sysupgrade.tgz"
    if os.path.exists("/boot/upgrade-report.json"):
        found["report"] = "/boot/upgrade-report.json"
    return found
