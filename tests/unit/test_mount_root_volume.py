"""rootfs_data's decisions: where it is (/proc/mtd first), what ``start`` and ``done`` do with each kind,
and where a jffs2 written by ``mtd -j`` ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from preinit.overlay_switch import carried
from preinit.rootfs_data import Done, Start, Volume, done_action, eof_block, find_mtd, start_action
from wrtcore.mounts import Mount

PROC_MTD = """dev:    size   erasesize  name
mtd0: 06000000 00010000 "firmware"
mtd1: 02310000 00010000 "rootfs"
mtd2: 03cf0000 00010000 "rootfs_data"
"""
MTD = Volume("/dev/mtdblock2", "/dev/mtd2")
BLOCK = Volume("/dev/loop5")


def test_find_mtd_takes_the_label_from_proc_mtd(tmp_path: Path) -> None:
    proc = tmp_path / "mtd"
    proc.write_text(PROC_MTD)
    assert find_mtd("rootfs_data", str(proc)) == MTD
    assert MTD.on_mtd and MTD.source == "mtd2"  # jffs2 mounts the kernel's name, not the block node
    assert find_mtd("overlay", str(proc)) is None  # fstools_overlay_name= naming another label
    assert find_mtd("rootfs_data", str(tmp_path / "absent")) is None  # no MTD in this kernel
    assert not BLOCK.on_mtd and BLOCK.source == "/dev/loop5"


@pytest.mark.parametrize(("fs", "on_mtd", "action"), [
    ("jffs2", True, Start.MOUNT),
    ("deadcode", True, Start.TMPFS),  # a fresh flash: tmpfs now, jffs2 in done
    ("none", True, Start.TMPFS),  # an erased chip or garbage: never mkfs.ext4 on a NOR partition
    ("ext4", True, Start.TMPFS),
    ("deadcode", False, Start.TMPFS),
    ("none", False, Start.FORMAT),
    ("targz", False, Start.UNPACK_FORMAT),
    ("ext4", False, Start.MOUNT),
    ("f2fs", False, Start.MOUNT),
    ("jffs2", False, Start.MOUNT),
])
def test_start_action(fs: str, on_mtd: bool, action: Start) -> None:
    assert start_action(fs, on_mtd) is action


@pytest.mark.parametrize(("overlay_fs", "volume", "fs", "action"), [
    ("ext4", BLOCK, None, Done.READY),
    ("jffs2", MTD, None, Done.READY),
    (None, MTD, "deadcode", Done.KEEP),  # failsafe: no overlay at all
    ("tmpfs", None, None, Done.KEEP),  # nothing to switch to
    ("tmpfs", MTD, "deadcode", Done.SWITCH),
    ("tmpfs", MTD, "none", Done.SWITCH),  # fstools: "no jffs2 marker found", formats anyway
    ("tmpfs", MTD, "jffs2", Done.KEEP),  # a jffs2 that failed to mount is not erased
    ("tmpfs", BLOCK, "deadcode", Done.SWITCH),
    ("tmpfs", BLOCK, "ext4", Done.KEEP),  # an ext4 that failed to mount is not reformatted
])
def test_done_action(overlay_fs: str | None, volume: Volume | None, fs: str | None, action: Done) -> None:
    assert done_action(overlay_fs, volume, fs) is action


DEAD = b"\xde\xad\xc0\xde"
CLEAN = b"\x85\x19\x03\x20"


@pytest.mark.parametrize(("heads", "index"), [
    ([CLEAN, CLEAN, DEAD, CLEAN, b"\xff" * 4], 2),  # stale jffs2 after the marker is erased too
    ([CLEAN, DEAD, DEAD], 1),  # only the first marker counts
    ([DEAD, b"\xff" * 4], None),  # a marker in block 0 is the deadcode case, not a jffs2 end
    ([CLEAN, CLEAN], None),
    ([], None),
])
def test_eof_block(heads: list[bytes], index: int | None) -> None:
    assert eof_block(heads) == index


def test_carried_mounts_are_the_direct_children_of_the_root() -> None:
    def m(point: str) -> Mount:
        return Mount(1, 1, 0, "/", point, ("rw",), "tmpfs", "x")

    table = [m("/"), m("/rom"), m("/proc"), m("/dev"), m("/dev/pts"), m("/tmp"), m("/overlay"), m("/boot"),
             m("/tmp")]
    assert carried(table) == ["/proc", "/dev", "/tmp", "/boot"]  # the tmpfs overlay and the squashfs stay
