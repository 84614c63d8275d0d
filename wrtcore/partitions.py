"""Partitions of a disk, found by the kernel or, where it cannot, by us.

Some kernels are built without partition-table parsers (CONFIG_MSDOS_PARTITION unset: the machines
this project is developed on are like that), so a disk shows no /dev/sdXN nodes. OpenWrt's fstools
already works around a similar gap for its overlay with a loop device at an offset; we do the same
for partitions: the MBR is parsed here and a partition is exposed as a loop device over the disk at
the partition's offset and size ("partition view"). Where the kernel does list partitions in sysfs,
those are used and no loop device is made.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass

from wrtcore import loop

SECTOR = 512


@dataclass(frozen=True)
class Entry:
    number: int
    type: int
    start: int  # bytes
    size: int   # bytes


def parse_mbr(sector0: bytes) -> list[Entry]:
    """The four primary entries of an MBR (empty ones skipped). Raises ValueError without 55AA."""
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        raise ValueError("no MBR signature")
    entries: list[Entry] = []
    for i in range(4):
        raw = sector0[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = raw[4]
        start, count = struct.unpack_from("<II", raw, 8)
        if ptype and count:
            entries.append(Entry(i + 1, ptype, start * SECTOR, count * SECTOR))
    return entries


def read_table(disk: str) -> list[Entry]:
    with open(disk, "rb") as f:
        return parse_mbr(f.read(SECTOR))


def _sysfs_partitions(disk: str) -> dict[int, str]:
    """The kernel's partition nodes of ``disk`` by number, whatever table it parsed (MBR or GPT)."""
    st = os.stat(disk)
    base = os.path.realpath(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    found: dict[int, str] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return found
    for name in names:
        pfile = f"{base}/{name}/partition"
        if os.path.exists(pfile):
            with open(pfile) as f:
                found[int(f.read())] = f"/dev/{name}"
    return found


def _sysfs_partition(disk: str, number: int) -> str | None:
    return _sysfs_partitions(disk).get(number)


def view_of(disk: str, entry: Entry) -> str | None:
    """An existing loop device that shows exactly ``entry`` of ``disk``."""
    disk_dev = os.stat(disk).st_rdev
    for lo in loop.list_loops():
        if lo.backing_dev == disk_dev and lo.offset == entry.start and _sizelimit(lo.name) == entry.size:
            return f"/dev/{lo.name}"
    return None


def _sizelimit(name: str) -> int:
    try:
        with open(f"/sys/block/{name}/loop/sizelimit") as f:
            return int(f.read())
    except OSError:
        return -1


def open_device(disk: str, number: int) -> tuple[str, bool]:
    """(device of partition ``number`` of ``disk``, whether a loop view was made for it just now).

    A view made here is not autoclear: mount it, then ``loop.set_autoclear`` it, so it goes away
    with the mount."""
    node = _sysfs_partition(disk, number)
    if node:
        return node, False
    for entry in read_table(disk):
        if entry.number == number:
            existing = view_of(disk, entry)
            if existing:
                return existing, False
            # direct I/O: a write error on the view is the writer's, at its offset (not a dirty page of
            # the disk's cache that fails at some later fsync, poisoning the next mount)
            return loop.attach(disk, offset=entry.start, sizelimit=entry.size, direct_io=True), True
    raise FileNotFoundError(f"{disk} has no partition {number}")


def device(disk: str, number: int) -> str:
    """The block device of partition ``number`` of ``disk`` (kernel node, or a loop view)."""
    return open_device(disk, number)[0]


def all_devices(disk: str) -> list[str]:
    """Every partition device of ``disk`` that exists now (no new views are made): the kernel's nodes
    when it parsed the table (a GPT's too: its MBR is only the protective entry), else the MBR's views."""
    with contextlib.suppress(OSError):
        nodes = _sysfs_partitions(disk)
        if nodes:
            return [nodes[n] for n in sorted(nodes)]
    found: list[str] = []
    try:
        table = read_table(disk)
    except (OSError, ValueError):
        return found
    for entry in table:
        node = _sysfs_partition(disk, entry.number) or view_of(disk, entry)
        if node:
            found.append(node)
    return found


def disk_of(path: str) -> str:
    """The whole disk under ``path``: the parent of a kernel partition, or the disk a view is over."""
    st = os.stat(path)
    base = os.path.realpath(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    if os.path.exists(f"{base}/partition"):
        return f"/dev/{os.path.basename(os.path.dirname(base))}"
    name = os.path.basename(base)
    for lo in loop.list_loops():
        if lo.name == name and lo.offset > 0 and lo.backing_file.startswith("/dev/"):
            return lo.backing_file
    return path
