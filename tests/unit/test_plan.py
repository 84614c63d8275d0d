"""Stage2's pure decisions: the upgrade plan and the plan that lets go of the old root."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from stage2.plan import (
    OLD_ROOT,
    RAMFS_PREFIX,
    Plan,
    ReleasePlan,
    Target,
    plan_release,
    plan_upgrade,
    swap_device,
)
from wrtcore.errors import EXIT_INVALID, InvalidInput
from wrtcore.loop import LoopDevice
from wrtcore.mounts import Mount, Swap

MiB = 1 << 20
TARGET = Target(disk="/dev/sda", size=64 * MiB)


def upgrade(**overrides: object) -> Plan:
    args: dict[str, object] = {
        "image": "/tmp/sysupgrade.img", "image_size": 20 * MiB + 300, "payload_length": 20 * MiB,
        "target": TARGET, "backup": "/tmp/sysupgrade.tgz", "backup_exists": True, "env": {},
    }
    args.update(overrides)
    return plan_upgrade(**args)  # type: ignore[arg-type]


# --- plan_upgrade --------------------------------------------------------------------------------------


def test_plan_carries_the_decisions() -> None:
    devs = frozenset({os.makedev(8, 0)})
    plan = upgrade(target_devs=devs)
    assert plan == Plan(image="/tmp/sysupgrade.img", payload_length=20 * MiB, target=TARGET,
                        backup="/tmp/sysupgrade.tgz", save_partitions=True, prefix=RAMFS_PREFIX,
                        target_devs=devs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.backup = None  # type: ignore[misc]


def test_image_larger_than_target_is_invalid_input() -> None:
    message = f"image needs {64 * MiB + 1} bytes but /dev/sda has only {64 * MiB}"
    with pytest.raises(InvalidInput, match=re.escape(message)) as err:
        upgrade(payload_length=64 * MiB + 1)
    assert err.value.exit_code == EXIT_INVALID


@pytest.mark.parametrize(("field", "path"), [
    ("image", "/overlay/fw.img"), ("image", "/tmp/../etc/fw.img"), ("backup", "/root/sysupgrade.tgz"),
])
def test_files_outside_tmp_are_refused(field: str, path: str) -> None:
    """Only /tmp moves into the RAM root: stage2 could not read anything else after the pivot."""
    with pytest.raises(InvalidInput, match="is not under /tmp"):
        upgrade(**{field: path})


def test_image_exactly_the_target_size_fits() -> None:
    assert upgrade(payload_length=64 * MiB).payload_length == 64 * MiB


@pytest.mark.parametrize(("image_size", "payload"), [(0, 0), (0, 10), (10, 0), (-1, 10)])
def test_empty_image_is_invalid_input(image_size: int, payload: int) -> None:
    with pytest.raises(InvalidInput, match=re.escape("image /tmp/sysupgrade.img is empty")):
        upgrade(image_size=image_size, payload_length=payload)


def test_missing_backup_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=re.escape("backup archive /tmp/sysupgrade.tgz does not exist")):
        upgrade(backup_exists=False)


@pytest.mark.parametrize("backup", [None, ""])
def test_no_backup_needs_no_archive(backup: str | None) -> None:
    plan = upgrade(backup=backup, backup_exists=False)
    assert plan.backup is None
    assert plan.describe()[-1] == "keep no configuration"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, True),
    ({"UPGRADE_OPT_SAVE_PARTITIONS": "1"}, True),
    ({"UPGRADE_OPT_SAVE_PARTITIONS": "0"}, False),
    ({"UPGRADE_OPT_SAVE_PARTITIONS": ""}, False),
    ({"UPGRADE_OPT_KEEP": "1"}, True),
])
def test_save_partitions_from_the_environment(env: dict[str, str], expected: bool) -> None:
    assert upgrade(env=env).save_partitions is expected


def test_describe_names_sizes_ramfs_and_backup() -> None:
    assert upgrade().describe() == [
        f"write {20 * MiB} bytes of /tmp/sysupgrade.img to /dev/sda ({64 * MiB} bytes), streamed, fsync,"
        " read back and compared",
        f"build a ramfs at {RAMFS_PREFIX}, pivot with the old root at {OLD_ROOT}, re-exec from it",
        "copy /tmp/sysupgrade.tgz to partition 1 of the new image as sysupgrade.tgz",
    ]


def test_describe_says_where_a_flash_board_puts_the_config() -> None:
    from stage2.before import CONFIG_PLACES
    from stage2.platforms.profile import ConfigMethod

    lines = upgrade().describe(CONFIG_PLACES[ConfigMethod.JFFS2])
    assert lines[-1] == ("copy /tmp/sysupgrade.tgz to the firmware partition as jffs2, at the image's first "
                         "DE AD C0 DE block (mtd -j)")
    assert not any("partition 1" in line for line in lines)
    assert set(CONFIG_PLACES) == set(ConfigMethod) - {ConfigMethod.BOOT_PARTITION}


# --- plan_release --------------------------------------------------------------------------------------

DISK = os.makedev(7, 0)   # the flash target (loop0)
BOOT = os.makedev(7, 1)   # its partition 1 view
ROOT = os.makedev(7, 2)   # its partition 2 view: squashfs
DATA = os.makedev(7, 3)   # rootfs_data: a loop device over ROOT at an offset
RAMFS = os.makedev(0, 40)
OVERLAY = os.makedev(0, 41)
ELSEWHERE = os.makedev(8, 17)
TARGET_DEVS = frozenset({DISK, BOOT, ROOT, DATA})

_ids = iter(range(100, 1000))


def M(mountpoint: str, dev: int, fstype: str = "ext4", ro: bool = False) -> Mount:
    return Mount(mount_id=next(_ids), parent_id=1, dev=dev, root="/", mountpoint=mountpoint,
                 options=("ro" if ro else "rw", "noatime"), fstype=fstype, source="/dev/x")


# The mount table of PID 1 right after the pivot into the ramfs.
AFTER_PIVOT = [
    M("/", RAMFS, "tmpfs"),
    M("/mnt", OVERLAY, "overlay"),
    M("/mnt/rom", ROOT, "squashfs", ro=True),
    M("/mnt/overlay", DATA),
    M("/mnt/boot", BOOT),
    M("/proc", os.makedev(0, 5), "proc"),
    M("/sys", os.makedev(0, 6), "sysfs"),
    M("/dev", os.makedev(0, 7), "devtmpfs"),
    M("/tmp", DATA),               # moved into the ramfs: stays, even though it is on the target
    M("/overlay", DATA),           # moved along with the pivot: on the target, outside /mnt
    M("/srv/cache/deep", DATA),    # deeper than everything else
    M("/srv/cache", BOOT, ro=True),
    M("/media/usb", ELSEWHERE, "vfat"),
]


def release(**overrides: object) -> ReleasePlan:
    args: dict[str, object] = {"mounts": AFTER_PIVOT, "swaps": [], "loops": [], "target_devs": TARGET_DEVS}
    args.update(overrides)
    return plan_release(**args)  # type: ignore[arg-type]


def test_rw_mounts_on_the_target_are_remounted_ro() -> None:
    assert release().remount_ro == ("/mnt/overlay", "/mnt/boot", "/overlay", "/srv/cache/deep")


def test_ro_root_and_moved_mounts_are_not_remounted() -> None:
    plan = release(mounts=[*AFTER_PIVOT, M("/", DATA), M("/proc", DATA), M("/sys", DATA), M("/dev", DATA)])
    for kept in ("/mnt/rom", "/srv/cache", "/", "/proc", "/sys", "/dev", "/tmp", "/media/usb"):
        assert kept not in plan.remount_ro


def test_a_mountpoint_stacked_twice_is_remounted_once() -> None:
    plan = release(mounts=[M("/overlay", DATA), M("/overlay", DATA)])
    assert plan.remount_ro == ("/overlay",)


def test_old_root_and_target_mounts_outside_it_are_unmounted_lazily_deepest_first() -> None:
    # /mnt's submounts go with /mnt (umount -l is recursive); /srv/cache/deep comes before /srv/cache.
    assert release().umount_lazy == ("/srv/cache/deep", "/srv/cache", "/mnt", "/overlay")


def test_nothing_under_the_old_root_means_no_umount_of_it() -> None:
    plan = release(mounts=[M("/", RAMFS, "tmpfs"), M("/overlay", DATA)])
    assert plan.umount_lazy == ("/overlay",)
    assert release(mounts=[M("/", RAMFS, "tmpfs")]) == ReleasePlan((), (), (), ())


def test_old_root_is_configurable() -> None:
    mounts = [M("/", RAMFS, "tmpfs"), M("/old", OVERLAY, "overlay"), M("/old/rom", ROOT, ro=True),
              M("/mnt", DATA)]
    plan = release(mounts=mounts, old_root="/old")
    assert plan.umount_lazy == ("/mnt", "/old")  # /mnt is now just a target mount outside the old root


def test_a_prefix_sibling_of_the_old_root_is_not_under_it() -> None:
    plan = release(mounts=[M("/", RAMFS, "tmpfs"), M("/mnt", OVERLAY), M("/mntx", DATA)])
    assert plan.umount_lazy == ("/mnt", "/mntx")


def test_swaps_on_the_target_or_unresolvable_are_swapped_off_others_kept() -> None:
    swaps = [
        (Swap("/mnt/overlay/swapfile", "file"), DATA),
        (Swap("/dev/sdb1", "partition"), ELSEWHERE),
        (Swap("/mnt/boot/swap\011tab", "file"), None),  # its path no longer resolves
        (Swap("/dev/loop1", "partition"), BOOT),
    ]
    plan = release(swaps=swaps)
    assert plan.swapoff == ("/mnt/overlay/swapfile", "/mnt/boot/swap\ttab", "/dev/loop1")


def test_loops_stacked_on_the_target_are_detached_but_the_target_and_its_views_kept() -> None:
    loops = [
        LoopDevice("loop0", "/srv/flash.img", 0, os.makedev(0, 30)),    # the target disk itself
        LoopDevice("loop1", "/dev/loop0", MiB, DISK),                  # partition 1 view
        LoopDevice("loop2", "/dev/loop0", 9 * MiB, DISK),              # partition 2 view
        LoopDevice("loop3", "/dev/loop2", 3 * MiB, ROOT),              # rootfs_data on the squashfs partition
        LoopDevice("loop4", "/mnt/overlay/img", 0, DATA),              # a file on rootfs_data
        LoopDevice("loop5", "/media/usb/img", 0, ELSEWHERE),           # nothing to do with the target
    ]
    plan = release(loops=loops, keep_loops=frozenset({"loop0", "loop1", "loop2"}))
    assert plan.detach_loops == ("/dev/loop3", "/dev/loop4")


def test_release_describe_lists_every_action_in_execution_order() -> None:
    plan = ReleasePlan(swapoff=("/s",), remount_ro=("/r",), umount_lazy=("/u1", "/u2"),
                       detach_loops=("/dev/loop3",))
    assert plan.describe() == ["swapoff /s", "remount ro /r", "umount -l /u1", "umount -l /u2",
                               "detach /dev/loop3"]


def test_swap_device_of_a_file_is_its_filesystem(tmp_path: Path) -> None:
    swapfile = tmp_path / "swapfile"
    swapfile.write_bytes(b"")
    assert swap_device(Swap(str(swapfile), "file")) == os.stat(tmp_path).st_dev


def test_swap_device_of_a_partition_is_the_device_itself() -> None:
    assert swap_device(Swap("/dev/null", "partition")) == os.makedev(1, 3)


def test_swap_device_unresolvable(tmp_path: Path) -> None:
    assert swap_device(Swap(str(tmp_path / "gone"), "file")) is None
