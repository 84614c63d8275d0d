"""Debian's kernel for the VM: the package ``linux-image-amd64`` depends on, unpacked, depmod'ed, and its
bzImage turned into an uncompressed ``vmlinux`` (booted by PVH: no in-guest decompression under TCG).

Cached under ``.cache/vm/kernel-<package version>/``; the vmlinux is named by the sha256 of the bzImage.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("WRT_VM_CACHE", REPO / ".cache" / "vm"))
META = "linux-image-amd64"
XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True)
class Kernel:
    release: str      # e.g. 6.1.0-56-amd64
    tree: Path        # the unpacked package (boot/, lib/modules/<release>/)
    vmlinux: Path

    @property
    def modules(self) -> Path:
        return self.tree / "lib" / "modules" / self.release


def package_name() -> str:
    """The versioned kernel package the metapackage depends on (apt-cache depends)."""
    out = subprocess.run(["apt-cache", "depends", META], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m and m.group(1) != META:
            return m.group(1)
    raise RuntimeError(f"no kernel package found in `apt-cache depends {META}`:\n{out}")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside an xz-compressed bzImage (what scripts/extract-vmlinux does)."""
    start = bzimage.find(XZ_MAGIC)
    while start >= 0:
        try:
            data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            data = b""
        if data.startswith(b"\x7fELF"):
            return data
        start = bzimage.find(XZ_MAGIC, start + 1)
    raise ValueError("no xz-compressed ELF found in the bzImage")


def fetch(cache: Path = CACHE) -> Kernel:
    pkg = package_name()
    release = pkg.removeprefix("linux-image-")
    where = cache / f"kernel-{release}"
    tree = where / "tree"
    done = where / "ok"
    if not done.exists():
        if where.exists():
            shutil.rmtree(where)
        debs = where / "debs"
        debs.mkdir(parents=True)
        subprocess.run(["apt-get", "download", "-q", pkg], cwd=debs, check=True, capture_output=True)
        (deb,) = debs.glob("*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
        subprocess.run(["depmod", "-b", str(tree), release], check=True)
        shutil.rmtree(debs)
        done.write_text(pkg + "\n")
    bz = tree / "boot" / f"vmlinuz-{release}"
    raw = bz.read_bytes()
    vmlinux = where / f"vmlinux-{hashlib.sha256(raw).hexdigest()[:16]}"
    if not vmlinux.exists():
        tmp = vmlinux.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(extract_vmlinux(raw))
        os.rename(tmp, vmlinux)
    return Kernel(release, tree, vmlinux)


def present(cache: Path = CACHE) -> Kernel | None:
    """The cached kernel, without downloading (None when not fetched yet)."""
    for where in sorted(cache.glob("kernel-*")):
        if (where / "ok").exists():
            release = where.name.removeprefix("kernel-")
            found = sorted(where.glob("vmlinux-*"))
            if found:
                return Kernel(release, where / "tree", found[-1])
    return None
