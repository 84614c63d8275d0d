"""Pure decisions of stage2: what to write where, and how to let go of the old root.

No I/O here: executors gather facts (mount table, swaps, loop devices, sizes) and hand them in; the
result is a frozen plan that unit tests assert and ``describe()`` prints for a dry run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from wrtcore.errors import InvalidInput
from wrtcore.loop import LoopDevice
from wrtcore.mounts import Mount, Swap

RAMFS_PREFIX = "/tmp/root"
OLD_ROOT = "/mnt"  # where pivot_root puts the old root inside the ramfs
# Mounts that move into the ramfs with the pivot and stay until the reboot.
MOVED_INTO_RAMFS: tuple[str, ...] = ("/proc", "/sys", "/dev", "/tmp")


@dataclass(frozen=True)
class Target:
    """An x86 "combined" disk: partition 1 boot (kernel, grub.cfg), partition 2 squashfs root + overlay."""

    disk: str
    size: int
    boot_partition: int = 1
    root_partition: int = 2


@dataclass(frozen=True)
class Plan:
    image: str
    payload_length: int
    target: Target
    backup: str | None
    save_partitions: bool
    prefix: str = RAMFS_PREFIX
    target_devs: frozenset[int] = field(default_factory=frozenset)

    def describe(self, config_to: str | None = None) -> list[str]:
        """The plan in words; ``config_to``: where the platform puts the configuration archive (default:
        the new image's boot partition, x86)."""
        lines = [
            f"write {self.payload_length} bytes of {self.image} to {self.target.disk}"
            f" ({self.target.size} bytes), streamed, fsync, read back and compared",
            f"build a ramfs at {self.prefix}, pivot with the old root at {OLD_ROOT}, re-exec from it",
        ]
        if self.backup:
            where = config_to or f"partition {self.target.boot_partition} of the new image as sysupgrade.tgz"
            lines.append(f"copy {self.backup} to {where}")
        else:
            lines.append("keep no configuration")
        return lines


def plan_upgrade(*, image: str, image_size: int, payload_length: int, target: Target,
                 backup: str | None, backup_exists: bool, env: dict[str, str],
                 target_devs: frozenset[int] = frozenset()) -> Plan:
    for what, path in (("image", image), ("backup archive", backup)):
        if path and not os.path.normpath(path).startswith("/tmp/"):
            raise InvalidInput(f"{what} {path} is not under /tmp",
                               hint="only /tmp moves into the RAM root; the rest is gone after the pivot")
    if image_size <= 0 or payload_length <= 0:
        raise InvalidInput(f"image {image} is empty")
    if payload_length > target.size:
        raise InvalidInput(f"image needs {payload_length} bytes but {target.disk} has only {target.size}")
    if backup and not backup_exists:
        raise InvalidInput(f"backup archive {backup} does not exist")
    return Plan(
        image=image, payload_length=payload_length, target=target, backup=backup or None,
        save_partitions=env.get("UPGRADE_OPT_SAVE_PARTITIONS", "1") == "1", target_devs=target_devs,
    )


@dataclass(frozen=True)
class ReleasePlan:
    swapoff: tuple[str, ...]
    remount_ro: tuple[str, ...]
    umount_lazy: tuple[str, ...]
    detach_loops: tuple[str, ...]

    def describe(self) -> list[str]:
        return ([f"swapoff {p}" for p in self.swapoff] + [f"remount ro {p}" for p in self.remount_ro]
                + [f"umount -l {p}" for p in self.umount_lazy] + [f"detach {p}" for p in self.detach_loops])


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def plan_release(*, mounts: list[Mount], swaps: list[tuple[Swap, int | None]], loops: list[LoopDevice],
                 target_devs: frozenset[int], keep_loops: frozenset[str] = frozenset(),
                 old_root: str = OLD_ROOT) -> ReleasePlan:
    """Let go of everything on the target after the pivot.

    ``swaps`` pairs each swap area with the device it lives on (None if it could not be resolved:
    swapped off too, to be safe). Every mount on a target device is remounted read-only, then the old
    root and every other mount on the target are lazily unmounted, deepest first. Loop devices stacked
    on the target (rootfs_data's loop after the squashfs) are detached, the kernel deferring it while
    still in use; ``keep_loops`` names the ones that are the target itself or its partitions.
    """
    swapoff = tuple(s.path for s, dev in swaps if dev is None or dev in target_devs)
    keep = set(MOVED_INTO_RAMFS) | {"/"}
    on_target = [m for m in mounts if m.dev in target_devs and m.mountpoint not in keep]
    remount = tuple(dict.fromkeys(m.mountpoint for m in on_target if not m.read_only))
    lazy = {old_root} if any(_under(m.mountpoint, old_root) for m in mounts) else set()
    lazy |= {m.mountpoint for m in on_target if not any(_under(m.mountpoint, top) for top in lazy)}
    umount = tuple(sorted(lazy, key=lambda p: (-p.count("/"), p)))
    detach = tuple(f"/dev/{lo.name}" for lo in loops
                   if lo.backing_dev in target_devs and lo.name not in keep_loops)
    return ReleasePlan(swapoff, remount, umount, detach)


def swap_device(swap: Swap) -> int | None:
    """The device a swap area lives on: the partition itself, or the filesystem holding the file."""
    try:
        st = os.stat(swap.path)
    except OSError:
        return None
    return st.st_rdev if swap.kind == "partition" else st.st_dev
