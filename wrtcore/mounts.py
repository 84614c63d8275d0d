"""The mount table (/proc/self/mountinfo) and the swap table (/proc/swaps) as data."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    dev: int
    root: str
    mountpoint: str
    options: tuple[str, ...]
    fstype: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        major, minor = (int(x) for x in f[2].split(":"))
        mounts.append(Mount(
            mount_id=int(f[0]), parent_id=int(f[1]), dev=os.makedev(major, minor),
            root=_unescape(f[3]), mountpoint=_unescape(f[4]), options=tuple(f[5].split(",")),
            fstype=r[0] if r else "", source=_unescape(r[1]) if len(r) > 1 else "",
        ))
    return mounts


def read_mountinfo(pid: str = "self") -> list[Mount]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return parse_mountinfo(f.read())


def find(mounts: list[Mount], mountpoint: str) -> Mount | None:
    """The mount currently visible at ``mountpoint`` (the last one stacked there)."""
    hits = [m for m in mounts if m.mountpoint == mountpoint]
    return hits[-1] if hits else None


@dataclass(frozen=True)
class Swap:
    path: str
    kind: str  # "partition" or "file"


def parse_swaps(text: str) -> list[Swap]:
    swaps: list[Swap] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            swaps.append(Swap(_unescape(parts[0]), parts[1]))
    return swaps


def read_swaps() -> list[Swap]:
    try:
        with open("/proc/swaps") as f:
            return parse_swaps(f.read())
    except FileNotFoundError:
        return []
