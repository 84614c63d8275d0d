"""Building the demo device's firmware images, cached by content under .cache/sandbox/<digest>/."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from preinit import sysinfo
from sandbox import disk, rootfs

CACHE = Path(os.environ.get("WRT_SANDBOX_CACHE", rootfs.REPO / ".cache" / "sandbox"))
DEMO = rootfs.REPO / "sandbox" / "demo-root"


@dataclass(frozen=True)
class Images:
    v1: Path
    v2: Path
    other_board: Path
    board: str
    build_seconds: float


def host_board() -> str:
    """The board name preinit will derive inside the sandbox (the host's DMI, like x86's 01_sysinfo)."""
    return sysinfo.board_name()[0]


def _tree(base: Path, out: Path, version: str) -> Path:
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(["cp", "-al", str(base), str(out)], check=True)
    shutil.copytree(DEMO, out, dirs_exist_ok=True, symlinks=True)
    rootfs.add_version(out, version)
    return out


def build(cache: Path = CACHE) -> Images:
    start = time.monotonic()
    board = host_board()
    where = cache / f"{rootfs.source_digest()}-{board}"
    v1, v2, other = where / "v1.img", where / "v2.img", where / "other-board.img"
    if not (v1.exists() and v2.exists() and other.exists()):
        work = where / f"work-{os.getpid()}"  # concurrent builds of one digest must not share it
        if work.exists():
            shutil.rmtree(work)
        base = work / "base"
        rootfs.build_base(base)
        for version, img, supported in (("1.0", v1, None), ("2.0", v2, None),
                                        ("2.0", other, ["some-other,board"])):
            tree = _tree(base, work / f"tree-{version}", version)
            sq = work / f"root-{version}.sqfs"
            rootfs.mksquashfs(tree, sq)
            tmp = img.with_suffix(f".tmp-{os.getpid()}")
            disk.combined_image(sq, tmp, version=version, board=board, supported=supported)
            os.rename(tmp, img)
        shutil.rmtree(work)
    return Images(v1, v2, other, board, time.monotonic() - start)
