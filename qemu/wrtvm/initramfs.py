"""The VM's initramfs: busybox-static, the kernel modules the firmware needs, and an /init that mounts
``root=`` (squashfs, read-only) and hands over to its /sbin/init with ``switch_root``.

Every module is loaded here, before the switch: the firmware's root carries no modules tree. Written as
a newc cpio in Python (no root needed for /dev/console), gzip-compressed, cached by content.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

from sandbox import rootfs
from wrtvm.kernel import CACHE, Kernel

BUSYBOX = "/bin/busybox"
MODULES = ("virtio_pci", "virtio_blk", "squashfs", "overlay", "loop", "ext4", "i6300esb",
           "mtdblock", "block2mtd", "jffs2", "ubi", "zstd", "ubifs")
# (zstd before ubifs: ubifs sets up every compressor it was built with and fails without this one; ubifs
# is loaded here because preinit mounts rootfs_data and stage2 the new one after the pivot, where
# there is no module tree to load it from)
# what the flash layouts need before the root is mounted: NOR, the firmware's partitions split as
# OpenWrt's mtdsplit does (rootfs = the squashfs rounded up to an erase block, rootfs_data the rest);
# UBI, the device attached and a block device over the rootfs volume (OpenWrt: ubiblock + rootfs=)
TOOLS = ("/usr/sbin/mtdpart", "/usr/sbin/ubiattach", "/usr/sbin/ubiblock")
# not loaded at boot: a test loads them with ``modprobe`` (parameters vary: nandsim's geometry and bad
# blocks, block2mtd's device); the VM firmware carries them in its /lib/modules (see images.py)
ON_DEMAND = ("mtdram", "nandsim", "block2mtd", "mtdblock", "jffs2", "ubi", "ubifs", "zstd", "lzo", "deflate")

INIT = r"""#!/bin/sh
# initramfs /init: kernel modules, root= mounted read-only, then switch_root to its /sbin/init.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r ko args; do
    # shellcheck disable=SC2086
    insmod "$ko" $args || echo "initramfs: insmod $ko failed"
done < /modules.list
root=
fstype=squashfs
init=/sbin/init
nor=
ubi=
# shellcheck disable=SC2013  # the command line is words, not lines
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
        init=*) init="${arg#init=}" ;;
        wrt.nor=*) nor="${arg#wrt.nor=}" ;;
        wrt.ubi=*) ubi="${arg#wrt.ubi=}" ;;
    esac
done
wait_for() {
    tries=0
    while [ ! -e "$1" ] && [ "$tries" -lt 500 ]; do
        tries=$((tries + 1))
        usleep 20000
    done
}
if [ -n "$nor" ]; then
    # wrt.nor=<block device>,<erase size>: a NOR flash emulated by block2mtd, named "firmware"
    wait_for "${nor%%,*}"
    echo "$nor,firmware" > /sys/module/block2mtd/parameters/block2mtd
    wait_for /dev/mtdblock0
    erase=${nor#*,}
    used=$(od -An -t u8 -j 40 -N 8 /dev/mtdblock0 | tr -d ' ')
    total=$(cat /sys/class/mtd/mtd0/size)
    rootfs=$(( (used + erase - 1) / erase * erase ))
    mtdpart add /dev/mtd0 rootfs 0 "$rootfs" && \
        mtdpart add /dev/mtd0 rootfs_data "$rootfs" $((total - rootfs)) || echo "initramfs: mtdpart failed"
    root=/dev/mtdblock1
fi
if [ -n "$ubi" ]; then
    # wrt.ubi=<block device>,<erase size>: a flash emulated by block2mtd, named "ubi" (CI_UBIPART),
    # holding UBI; the root is the squashfs in the volume named rootfs, through a ubiblock
    wait_for "${ubi%%,*}"
    echo "$ubi,ubi" > /sys/module/block2mtd/parameters/block2mtd
    wait_for /dev/mtd0
    ubiattach -m 0 -d 0 >/dev/null || echo "initramfs: ubiattach failed"
    vol=
    for v in /sys/class/ubi/ubi0_*; do
        [ "$(cat "$v/name" 2>/dev/null)" = rootfs ] && vol=${v##*/}
    done
    wait_for "/dev/$vol"
    ubiblock --create "/dev/$vol" || echo "initramfs: ubiblock $vol failed"
    root="/dev/ubiblock${vol#ubi}"
fi
wait_for "$root"
mkdir -p /newroot
if ! mount -t "$fstype" -o ro "$root" /newroot; then
    echo "initramfs: cannot mount root $root ($fstype)"
    exec sh
fi
# the init finds them mounted (Python needs /dev/urandom before it can mount anything)
for fs in /proc /sys /dev; do
    mount --move "$fs" "/newroot$fs" || umount "$fs"
done
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec switch_root /newroot "$init"
"""


class Cpio:
    """A newc archive being written."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self.buf.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def module_order(kernel: Kernel, modules: tuple[str, ...] = MODULES) -> list[tuple[Path, str]]:
    """Each .ko to insmod, dependencies (and softdeps) first, with the arguments modprobe would pass."""
    seen: dict[Path, str] = {}
    for mod in modules:
        argv = ["modprobe", "-d", str(kernel.tree), "-S", kernel.release, "--show-depends", mod]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) >= 2 and parts[0] == "insmod":
                path = Path(parts[1])
                seen.setdefault(path, parts[2].strip() if len(parts) > 2 else "")
    return list(seen.items())


def on_demand_tree(kernel: Kernel, modules: tuple[str, ...] = ON_DEMAND) -> dict[str, Path]:
    """``<release>/<path in the tree>`` -> .ko for ``modules`` and their dependencies, the modules a
    running guest can ``modprobe`` (with a modules.dep made by ``depmod`` for just these)."""
    base = kernel.tree / "lib" / "modules" / kernel.release
    wanted: dict[str, Path] = {}
    for path, _args in module_order(kernel, modules):
        wanted[f"{kernel.release}/{path.relative_to(base)}"] = path
    return wanted


def install_on_demand(kernel: Kernel, root: Path, modules: tuple[str, ...] = ON_DEMAND) -> None:
    """Put ``modules`` (and their dependencies) under ``root``/lib/modules/<release> with the index
    files ``depmod`` makes for just these, so that ``modprobe`` works in the guest."""
    tree = root / "lib" / "modules"
    for rel, src in on_demand_tree(kernel, modules).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tree / rel)
    subprocess.run(["depmod", "-b", str(root), kernel.release], check=True, capture_output=True)


def build(kernel: Kernel, cache: Path = CACHE) -> Path:
    order = module_order(kernel)
    h = hashlib.sha256(INIT.encode() + kernel.release.encode() + Path(BUSYBOX).read_bytes())
    for tool in TOOLS:
        h.update(Path(tool).read_bytes())
    for path, args in order:
        h.update(f"{path.name} {args}".encode())

    out = cache / f"initramfs-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        cpio.dir(d)
    made: set[str] = {"lib"}
    for tool in sorted({*TOOLS, *rootfs.shared_libraries(list(TOOLS))}):
        parts = tool.strip("/").split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) not in made:
                made.add("/".join(parts[:i]))
                cpio.dir("/".join(parts[:i]))
        cpio.file(tool.strip("/"), Path(tool).read_bytes(), 0o755)
    cpio.symlink("sbin", "bin")
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":  # a link named busybox would replace the binary (ELOOP)
            cpio.symlink(f"bin/{applet}", "busybox")
    listing = []
    for path, args in order:
        name = f"lib/modules/{path.name}"
        cpio.file(name, path.read_bytes())
        listing.append(f"/{name} {args}".rstrip())
    cpio.file("modules.list", ("\n".join(listing) + "\n").encode())
    cpio.file("init", INIT.encode(), 0o755)
    tmp = out.with_suffix(f".tmp-{os.getpid()}")
    cache.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(gzip.compress(cpio.finish(), compresslevel=6))
    os.rename(tmp, out)
    return out
