"""The mount table and the swap table parsed from kernel-shaped text."""

from __future__ import annotations

import os

from wrtcore.mounts import Mount, Swap, find, parse_mountinfo, parse_swaps, read_mountinfo, read_swaps

# An OpenWrt box after mount_root (overlay over squashfs, rootfs_data on a loop device), with a few
# mounts whose names need the kernel's octal escapes (space \040, tab \011, newline \012, backslash \134)
# and the optional propagation fields, which come in any number before the " - " separator.
MOUNTINFO = "\n".join([
    r"22 1 0:19 / / rw,noatime shared:1 - overlay overlayfs:/overlay"
    r" rw,lowerdir=/,upperdir=/overlay/upper,workdir=/overlay/work",
    r"15 22 0:4 / /proc rw,nosuid,nodev,noexec,noatime shared:2 - proc proc rw",
    r"16 22 0:20 / /sys rw,nosuid,nodev,noexec,noatime - sysfs sysfs rw",
    r"17 22 0:21 / /tmp rw,nosuid,nodev,noatime shared:4 master:9 propagate_from:3 - tmpfs tmpfs rw",
    r"18 22 31:2 / /rom ro,relatime shared:5 - squashfs /dev/root ro,errors=continue",
    r"19 22 7:3 / /overlay rw,noatime shared:6 - ext4 /dev/loop0 rw",
    r"20 17 0:22 / /tmp/my\040dir rw,relatime unbindable - tmpfs my\134source rw",
    r"21 22 259:1 /sub\011dir /mnt/a\012b ro - vfat /dev/nvme0n1p1 rw,fmask=0022",
    "",
    r"24 22 7:3 / /overlay ro,noatime - ext4 /dev/loop0 ro",
    "",
])


def test_every_line_is_one_mount() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mountpoint for m in mounts] == ["/", "/proc", "/sys", "/tmp", "/rom", "/overlay",
                                              "/tmp/my dir", "/mnt/a\nb", "/overlay"]


def test_fields_of_the_overlay_root() -> None:
    root = parse_mountinfo(MOUNTINFO)[0]
    assert root == Mount(mount_id=22, parent_id=1, dev=os.makedev(0, 19), root="/", mountpoint="/",
                         options=("rw", "noatime"), fstype="overlay", source="overlayfs:/overlay")


def test_optional_fields_do_not_shift_the_rest() -> None:
    tmp = parse_mountinfo(MOUNTINFO)[3]
    assert (tmp.mount_id, tmp.parent_id, tmp.fstype, tmp.source) == (17, 22, "tmpfs", "tmpfs")
    assert tmp.options == ("rw", "nosuid", "nodev", "noatime")
    sysfs = parse_mountinfo(MOUNTINFO)[2]  # no optional field at all
    assert (sysfs.fstype, sysfs.source) == ("sysfs", "sysfs")


def test_device_numbers_including_large_majors() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[4].dev == os.makedev(31, 2)  # mtdblock
    assert mounts[5].dev == os.makedev(7, 3)
    assert mounts[7].dev == os.makedev(259, 1)
    assert os.major(mounts[7].dev) == 259 and os.minor(mounts[7].dev) == 1


def test_escapes_in_root_mountpoint_and_source() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[6].mountpoint == "/tmp/my dir" and mounts[6].source == "my\\source"
    assert mounts[7].root == "/sub\tdir" and mounts[7].mountpoint == "/mnt/a\nb"


def test_escape_at_the_very_end_and_a_lone_backslash() -> None:
    line = r"30 22 0:30 / /a\134 rw - tmpfs x\040 rw" + "\n" + r"31 22 0:31 / /b\04 rw - tmpfs \ rw"
    a, b = parse_mountinfo(line)
    assert a.mountpoint == "/a\\" and a.source == "x "
    assert b.mountpoint == "/b\\04" and b.source == "\\"  # not a complete escape: kept as it is


def test_read_only_is_the_mount_option() -> None:
    ro = {m.mountpoint for m in parse_mountinfo(MOUNTINFO) if m.read_only}
    assert "/rom" in ro and "/mnt/a\nb" in ro
    assert "/" not in ro and "/tmp" not in ro
    # an option merely containing the letters "ro" is not "ro"
    assert not Mount(1, 0, 0, "/", "/x", ("rw", "errors=remount-ro", "root"), "ext4", "d").read_only


def test_find_returns_the_mount_on_top() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    top = find(mounts, "/overlay")
    assert top is not None and top.mount_id == 24 and top.read_only
    assert find(mounts, "/nowhere") is None
    assert find(mounts, "/tmp/my dir") is mounts[6]


def test_read_mountinfo_of_this_process_has_a_root() -> None:
    mounts = read_mountinfo()
    root = find(mounts, "/")
    assert root is not None
    assert root.dev == os.stat("/").st_dev


SWAPS = (
    "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    "/dev/sda2                               partition\t1048572\t\t0\t\t-2\n"
    "/overlay/swap\\040file                   file\t\t65532\t\t0\t\t-3\n"
)


def test_parse_swaps_skips_the_header_and_unescapes() -> None:
    assert parse_swaps(SWAPS) == [Swap("/dev/sda2", "partition"), Swap("/overlay/swap file", "file")]


def test_parse_swaps_with_no_swap_at_all() -> None:
    assert parse_swaps("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n") == []
    assert parse_swaps("") == []


def test_read_swaps_matches_the_kernel_table() -> None:
    try:
        with open("/proc/swaps") as f:
            lines = f.read().splitlines()[1:]
    except FileNotFoundError:
        lines = []
    assert len(read_swaps()) == len([line for line in lines if line.strip()])
