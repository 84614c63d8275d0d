"""Letting go of the old root after the pivot: swapoff, remount read-only, lazy unmount, loop detach.

The decision is ``stage2.plan.plan_release``; this module gathers the facts and carries it out. A
filesystem that refuses to go read-only (EBUSY: a file still open for writing) has its holders
killed and is tried again; if it still refuses, the upgrade aborts before anything is written.

A flash board's root lives on the partition about to be written (the squashfs on an mtdblock or a
ubiblock inside ``firmware``/``ubi``): ``check_released`` proves the lazy unmounts really let go of
those block devices (an exclusive open succeeds only when no filesystem holds them) before the first
byte is written; the UBI writer could not remove a held ubiblock, and NOR would be rewritten under a
mounted squashfs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal

from stage2.plan import ReleasePlan, plan_release, swap_device
from wrtcore import log, loop, mounts, partitions, syscalls
from wrtcore.errors import UpgradeError


def gather_and_plan(disk: str, target_devs: frozenset[int]) -> ReleasePlan:
    """The release plan for ``disk``: its own loop device and partition views are kept."""
    keep = {os.path.basename(disk)}
    keep |= {os.path.basename(p) for p in partitions.all_devices(disk)}
    swaps = [(s, swap_device(s)) for s in mounts.read_swaps()]
    return plan_release(mounts=mounts.read_mountinfo(), swaps=swaps, loops=loop.list_loops(),
                        target_devs=target_devs, keep_loops=frozenset(keep))


def holders_of(mountpoint: str) -> list[int]:
    """Processes with a file open, a cwd/root or a mapping under ``mountpoint``."""
    dev = os.stat(mountpoint).st_dev
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        base = f"/proc/{name}"
        try:
            links = [f"{base}/cwd", f"{base}/root"] + [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
        except OSError:
            continue
        for link in links:
            try:
                if os.stat(link).st_dev == dev:
                    found.append(int(name))
                    break
            except OSError:
                continue
    return found


def remount_read_only(path: str) -> None:
    flags = syscalls.MS_REMOUNT | syscalls.MS_RDONLY | syscalls.MS_NOATIME
    try:
        syscalls.mount(None, path, None, flags)
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
    pids = holders_of(path)
    log.get().warning("filesystem busy, stopping its holders", mountpoint=path, pids=pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
    try:
        syscalls.mount(None, path, None, flags)
    except OSError as exc:
        raise UpgradeError(f"cannot remount {path} read-only: {exc.strerror}",
                           hint="a process still writes there") from exc


def execute(plan: ReleasePlan) -> dict[str, list[str]]:
    done: dict[str, list[str]] = {"swapoff": [], "remount_ro": [], "umount": [], "detached": []}
    for path in plan.swapoff:
        with log.step("swapoff", path=path):
            syscalls.swapoff(path)
        done["swapoff"].append(path)
    for path in plan.remount_ro:
        with log.step("remount ro", path=path):
            remount_read_only(path)
        done["remount_ro"].append(path)
    for path in plan.umount_lazy:
        with log.step("umount lazy", path=path):
            syscalls.umount(path, syscalls.MNT_DETACH)
        done["umount"].append(path)
    for dev in plan.detach_loops:
        try:
            loop.detach(dev)
            done["detached"].append(dev)
        except OSError as exc:  # ENXIO: already gone (autoclear did it)
            if exc.errno != errno.ENXIO:
                raise
    log.get().info("old root released", **{k: len(v) for k, v in done.items()})
    return done


def block_node(dev: int, sysfs: str = "/sys/dev/block") -> str | None:
    """``/dev/<name>`` of the block device ``dev``, or None when there is no such block device."""
    try:
        with open(f"{sysfs}/{os.major(dev)}:{os.minor(dev)}/uevent") as f:
            values = dict(line.partition("=")[::2] for line in f.read().splitlines())
    except OSError:
        return None
    name = values.get("DEVNAME")
    return f"/dev/{name}" if name else None


def check_released(devs: frozenset[int]) -> list[str]:
    """Every block device among ``devs`` opens exclusively (no filesystem holds it any more); raises
    ``UpgradeError`` (nothing written yet) naming the ones still held. Returns the devices checked."""
    checked: list[str] = []
    held: list[str] = []
    for dev in sorted(devs):
        node = block_node(dev)
        if node is None:  # not a block device (ubifs' anonymous number): gone with its unmount
            continue
        try:
            fd = os.open(node, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise UpgradeError(f"cannot check {node}: {exc.strerror}") from exc
            held.append(node)
            continue
        os.close(fd)
        checked.append(node)
    if held:
        raise UpgradeError(f"still in use after the old root was released: {', '.join(held)}",
                           hint="a filesystem on the flash is still mounted; nothing was written")
    log.get().info("flash released", devices=checked)
    return checked
