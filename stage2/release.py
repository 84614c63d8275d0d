"""Letting go of the old root after the pivot: swapoff, remount read-only, lazy unmount, loop detach.

The decision is ``stage2.plan.plan_release``; this module gathers the facts and carries it out. A
filesystem that refuses to go read-only (EBUSY: a file still open for writing) has its holders
killed and is tried again; if it still refuses, the upgrade aborts before anything is written.
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
