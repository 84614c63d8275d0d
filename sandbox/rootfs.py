"""The device's root filesystem: a squashfs able to run the project.

The tree holds the interpreter that runs this code (its stdlib without tests and GUI modules), the
shared libraries it and its extension modules need (found with ldd), the runtime dependencies from
this environment, our packages, busybox for a shell, mke2fs for the overlay, dropbear for failsafe's
ssh, OpenWrt's paths from ``rootfs-overlay/``, and the demo device's services. Paths are kept as they
are on the build host (pyenv's interpreter has an absolute RUNPATH), with ``/usr/bin/python3`` pointing
at it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from preinit import failsafe_ssh
from stage2 import ramfs
from wrtcore import run

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("wrtcore", "upgraded", "stage2", "preinit", "sysupgrade", "sandbox", "mtdtool", "swu")
DISTRIBUTION = "owrt-upgrade"
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
               "pydoc_data", "distutils"}  # unittest stays: pyroute2 imports unittest.mock
BUSYBOX = "/bin/busybox"


def _copy_file(src: str, root: Path) -> None:
    """Copy ``src`` to the same path under ``root``, symlink chain included (as the ramfs does)."""
    ramfs.copy_with_links(src, str(root))


def shared_libraries(binaries: list[str]) -> set[str]:
    libs: set[str] = set()
    for chunk in range(0, len(binaries), 64):
        argv = ["ldd", *binaries[chunk:chunk + 64]]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            m = re.search(r"(/\S+) \(0x", line)
            if m:
                libs.add(m.group(1))
    return libs


def _ignore_stdlib(directory: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n.endswith((".opt-1.pyc", ".opt-2.pyc"))}
    if os.path.basename(directory) == f"python{sys.version_info[0]}.{sys.version_info[1]}":
        skip |= {n for n in names if n in STDLIB_SKIP or n.startswith("config-")}
    return skip


def runtime_distributions() -> list[importlib.metadata.Distribution]:
    """Our distribution's requirements, recursively (extras excluded)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [DISTRIBUTION]
    while todo:
        name = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen[key] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return [d for k, d in seen.items() if k != DISTRIBUTION]


def site_dir(root: Path) -> Path:
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return root / sys.base_prefix.lstrip("/") / "lib" / version / "site-packages"


def build_base(root: Path) -> None:
    """Everything version-independent: runtime, libraries, busybox, mke2fs, our code."""
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    python = os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable)
    _copy_file(python, root)
    for lib in base.glob("lib/libpython*.so*"):
        _copy_file(str(lib), root)
    shutil.copytree(base / "lib" / version, root / str(base / "lib" / version).lstrip("/"),
                    ignore=_ignore_stdlib, symlinks=True, dirs_exist_ok=True)
    site = site_dir(root)
    site.mkdir(parents=True, exist_ok=True)
    for dist in runtime_distributions():
        for f in dist.files or []:
            src = Path(str(dist.locate_file(f)))
            if src.is_file() and "__pycache__" not in src.parts:
                dst = site / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    binaries = [python, "/sbin/mke2fs", "/sbin/losetup",
                *(str(p) for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink())]
    for needed in shared_libraries([b for b in binaries if os.path.exists(b)]):
        _copy_file(needed, root)
    for tool in ("/sbin/mke2fs", "/sbin/losetup"):
        if os.path.exists(tool):
            _copy_file(tool, root)
    add_tools(root, (failsafe_ssh.DROPBEAR, failsafe_ssh.DROPBEARKEY))  # Debian's dropbear-bin
    (root / "sbin").mkdir(exist_ok=True)
    if not os.path.lexists(root / "sbin/mkfs.ext4"):
        os.symlink("mke2fs", root / "sbin/mkfs.ext4")
    _install_busybox(root)
    _skeleton(root, python)
    shutil.copytree(REPO / "rootfs-overlay", root, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    run.run(["python3", "-m", "compileall", "-q", "-j0", str(site)], check=False)


def add_tools(root: Path, tools: tuple[str, ...]) -> None:
    """Host binaries (and the shared libraries they need) at the same paths under ``root``."""
    present = [t for t in tools if os.path.exists(t)]
    for needed in shared_libraries(present):
        _copy_file(needed, root)
    for tool in present:
        _copy_file(tool, root)


def _install_busybox(root: Path) -> None:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if not os.path.lexists(link) and not (root / "sbin" / applet).exists():
            os.symlink("busybox", link)


def _skeleton(root: Path, python: str) -> None:
    for d in ("proc", "sys", "dev", "tmp", "mnt", "rom", "overlay", "boot", "root", "etc/config",
              "usr/bin", "usr/libexec", "lib/upgrade/keep.d", "etc/upgraded/services.d", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(root / "var"):
        os.symlink("tmp", root / "var")  # relative: also resolves through /proc/<pid>/root
    if not os.path.lexists(root / "etc/mtab"):
        os.symlink("/proc/self/mounts", root / "etc/mtab")
    if not os.path.lexists(root / "usr/bin/python3"):
        os.symlink(python, root / "usr/bin/python3")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/ash\ndaemon:*:1:1:daemon:/var:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\ndaemon:x:1:\n")
    (root / "etc/shadow").write_text("root:::0:99999:7:::\ndaemon:*:0:0:99999:7:::\n")
    os.chmod(root / "etc/shadow", 0o600)


def add_version(root: Path, version: str, extra: dict[str, str] | None = None) -> None:
    """What differs between firmware versions: the release files (and any extra files)."""
    (root / "etc/openwrt_release").write_text(
        f"DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='{version}'\nDISTRIB_REVISION='sandbox-{version}'\n"
        f"DISTRIB_TARGET='x86/64'\nDISTRIB_DESCRIPTION='OpenWrt sandbox {version}'\n")
    (root / "etc/openwrt_version").write_text(version + "\n")
    for rel, text in (extra or {}).items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def mksquashfs(tree: Path, out: Path) -> None:
    if out.exists():
        out.unlink()
    run.run(["mksquashfs", str(tree), str(out), "-comp", "zstd", "-Xcompression-level", "3", "-noappend",
             "-all-root", "-quiet", "-no-progress", "-processors", str(os.cpu_count() or 1)])


def source_digest() -> str:
    """Changes whenever anything that goes into the root changes: our code, the runtime, overlay files."""
    h = hashlib.sha256(f"{sys.version}{sys.base_prefix}".encode())
    for dist in sorted(runtime_distributions(), key=lambda d: d.metadata["Name"]):
        h.update(f"{dist.metadata['Name']}={dist.version}".encode())
    for top in (*PACKAGES, "rootfs-overlay"):
        for p in sorted((REPO / top).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(REPO)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]
