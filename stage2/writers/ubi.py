"""NAND upgrades on UBI (OpenWrt's ``nand.sh``, reference 5.4), through ``wrtcore.ubi``'s ioctls.

The order is OpenWrt's: find (or attach) the UBI device on the ``ubi`` MTD partition, remove the
ubiblock of rootfs, remove ``rootfs_data``, make the ``kernel`` and ``rootfs`` volumes the right size,
write them from the sysupgrade tar (``rootfs`` first, then ``kernel``), create ``rootfs_data``, and put
the configuration archive into it as ``sysupgrade.tgz`` (mounted as ubifs).

Sizes (``plan_nand``, pure): ``kernel`` exactly the kernel's size, ``rootfs`` exactly the root's size,
or all the room when the root is ubifs (then there is no ``rootfs_data``); ``rootfs_data`` takes what
is left, or ``rootfs_data_max`` bytes when that is set (``fw_printenv -n rootfs_data_max``) and fits.
Unlike OpenWrt, which removes and re-creates both volumes, a volume that already has the right number
of logical eraseblocks is kept and one of another size is resized (``UBI_IOCRSVOL``): its volume id
stays. Everything is checked against the free room before the first change: a tar that does not fit
is refused with nothing touched.

Every volume update is read back and compared (sha256 per chunk; the first differing chunk is the
offset reported). Errors: ``InvalidInput`` before anything changed, ``WriteError`` with the offset in
the volume and ``written`` afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from stage2.formats import nand_tar
from wrtcore import log, syscalls, ubi
from wrtcore.errors import InvalidInput, UpgradeError, WriteError

Progress = Callable[[int, int | None], None]
CHUNK = 1 << 20
UBIFS_MIN_LEBS = 17  # UBIFS_MIN_LEB_CNT: a smaller rootfs_data could not be mounted
DATA_VOLUME = "rootfs_data"
CONFIG_NAME = "sysupgrade.tgz"


@dataclass(frozen=True)
class Names:
    """OpenWrt's ``CI_*`` names: MTD partition holding UBI, and the volume names."""

    ubipart: str = "ubi"
    kernel: str = "kernel"
    rootfs: str = "rootfs"
    data: str = DATA_VOLUME


@dataclass(frozen=True)
class VolumeOp:
    action: str  # "remove", "resize", "create", "keep"
    name: str
    size: int = 0  # bytes (resize, create): whole LEBs
    vol_id: int | None = None  # the existing volume's id (remove, resize, keep)

    def describe(self) -> str:
        what = f"{self.action} volume {self.name}"
        return what + (f" ({self.size} bytes)" if self.action in ("resize", "create") else "")


@dataclass(frozen=True)
class NandPlan:
    ops: tuple[VolumeOp, ...]
    writes: tuple[tuple[str, str], ...]  # (volume name, tar member), in write order
    leb_size: int

    def describe(self) -> list[str]:
        return [op.describe() for op in self.ops] + [f"update volume {v} from {m}" for v, m in self.writes]


def plan_nand(index: nand_tar.SysupgradeTar, device: ubi.Device, names: Names = Names(),
              rootfs_data_max: int | None = None, kernel_in_ubi: bool = True) -> NandPlan:
    """The volume operations for ``index`` on ``device``; raises ``InvalidInput`` if it cannot fit.
    ``kernel_in_ubi`` False: the kernel goes to a raw MTD partition (OpenWrt's ``has_kernel=0``)."""
    leb = device.eraseblock_size
    if index.root is None:
        raise InvalidInput(f"{index.path}: {index.board_dir}/root is missing")
    ubifs_root = index.root_type is nand_tar.ImageType.UBIFS
    touched = {names.kernel, names.rootfs, names.data}
    free = device.avail_eraseblocks + sum(v.reserved_ebs for v in device.volumes if v.name in touched)
    want: dict[str, int] = {}
    if index.kernel is not None and kernel_in_ubi:
        want[names.kernel] = ubi.leb_count(index.kernel.size, leb)
    root_lebs = ubi.leb_count(index.root.size, leb)
    need = sum(want.values()) + root_lebs
    if need > free:
        raise InvalidInput(f"image needs {need} eraseblocks, UBI device ubi{device.number} has {free}",
                           hint="nothing was changed")
    if ubifs_root:
        want[names.rootfs] = free - sum(want.values())
    else:
        want[names.rootfs] = root_lebs
        left = free - need
        data = left if rootfs_data_max is None else min(left, ubi.leb_count(rootfs_data_max, leb))
        if data < UBIFS_MIN_LEBS:
            raise InvalidInput(f"cannot initialize {names.data} volume: {data} eraseblocks left, "
                               f"ubifs needs {UBIFS_MIN_LEBS}", hint="nothing was changed")
    ops: list[VolumeOp] = []
    old_data = device.volume(names.data)
    if old_data is not None:
        ops.append(VolumeOp("remove", names.data, vol_id=old_data.vol_id))
    old_kernel = device.volume(names.kernel)
    if names.kernel not in want and old_kernel is not None:  # the kernel goes elsewhere (raw MTD)
        ops.append(VolumeOp("remove", names.kernel, vol_id=old_kernel.vol_id))
    shrink: list[VolumeOp] = []
    grow: list[VolumeOp] = []
    for name, lebs in want.items():
        vol = device.volume(name)
        if vol is None:
            grow.append(VolumeOp("create", name, lebs * leb))
        elif vol.reserved_ebs == lebs:
            ops.append(VolumeOp("keep", name, lebs * leb, vol.vol_id))
        else:
            op = VolumeOp("resize", name, lebs * leb, vol.vol_id)
            (shrink if lebs < vol.reserved_ebs else grow).append(op)
    ops += shrink + grow
    if not ubifs_root:
        ops.append(VolumeOp("create", names.data, data * leb))
    writes = [(names.rootfs, index.root.name)]
    if index.kernel is not None and kernel_in_ubi:
        writes.append((names.kernel, index.kernel.name))
    return NandPlan(tuple(ops), tuple(writes), leb)


@dataclass(frozen=True)
class VolumeReport:
    volume: str
    bytes_written: int
    duration: float
    verify_duration: float


def update_volume(source: BinaryIO, node: str, length: int, *, chunk_size: int = CHUNK,
                  progress: Progress | None = None) -> VolumeReport:
    """``ubiupdatevol -s length``: replace the volume's contents with ``length`` bytes of ``source``,
    then read them back and compare."""
    if length <= 0:
        raise InvalidInput(f"{node}: nothing to write")
    digests: list[bytes] = []
    started = time.monotonic()
    try:
        fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise WriteError(f"cannot open {node}: {exc.strerror}", offset=0, written=False) from exc
    done = 0
    try:
        try:
            ubi.start_update(fd, length)
        except OSError as exc:
            raise WriteError(f"{node}: {exc}", offset=0, written=False) from exc
        while done < length:
            data = source.read(min(chunk_size, length - done))
            if not data:
                raise WriteError(f"{node}: image member truncated: {done} bytes, expected {length}",
                                 offset=done, written=True, hint="the volume is left with an update marker")
            digests.append(hashlib.sha256(data).digest())
            view = memoryview(data)
            while view:
                try:
                    n = os.write(fd, view)
                except OSError as exc:
                    raise WriteError(f"{node}: write failed: {exc.strerror}", offset=done,
                                     written=True) from exc
                view = view[n:]
                done += n
            if progress is not None:
                progress(done, length)
    finally:
        os.close(fd)
    duration = time.monotonic() - started
    started = time.monotonic()
    verify_volume(node, digests, length, chunk_size)
    return VolumeReport(node, done, duration, time.monotonic() - started)


def verify_volume(node: str, digests: list[bytes], length: int, chunk_size: int = CHUNK) -> None:
    """Read ``length`` bytes of the volume back; each chunk's sha256 must match ``digests``."""
    try:
        with open(node, "rb", buffering=0) as f:
            for index, want in enumerate(digests):
                size = min(chunk_size, length - index * chunk_size)
                got = b""
                while len(got) < size:
                    piece = f.read(size - len(got))
                    if not piece:
                        break
                    got += piece
                if hashlib.sha256(got).digest() != want:
                    raise WriteError(f"{node}: verify mismatch", offset=index * chunk_size, written=True,
                                     hint=f"first differing chunk of {chunk_size} bytes")
    except OSError as exc:
        raise WriteError(f"{node}: verify read failed: {exc.strerror}", offset=0, written=True) from exc


def ubi_device(mtd_num: int, ctrl: str = ubi.CTRL) -> ubi.Device:
    """The UBI device on MTD ``mtd_num``, attached first if it is not (``nand_find_ubi``/ubiattach)."""
    dev = ubi.device_on_mtd(mtd_num)
    if dev is None:
        try:
            number = ubi.attach(mtd_num, ctrl)
        except OSError as exc:
            raise InvalidInput(f"cannot attach mtd{mtd_num} to UBI: {exc}",
                               hint="the partition is not UBI-formatted (ubiformat); nothing was written"
                               ) from exc
        dev = ubi.read_device(number)
    ubi.ensure_node(dev.node, dev.devnum)
    return dev


def apply_ops(dev: ubi.Device, plan: NandPlan) -> ubi.Device:
    """Carry out the volume operations; returns the device as sysfs shows it afterwards. A refused
    operation raises ``WriteError`` saying whether an earlier one had changed the device."""
    changed = False
    for op in plan.ops:
        try:
            with log.step("ubi volume", action=op.action, volume=op.name, size=op.size):
                if op.action in ("remove", "resize") and op.vol_id is not None:
                    node = ubi.ensure_node(f"/dev/ubi{dev.number}_{op.vol_id}", _vol(dev, op.name).devnum)
                    changed |= ubi.remove_ubiblock(dev.number, op.vol_id, node)
                    if op.action == "remove":
                        ubi.rmvol(dev.node, op.vol_id)
                    else:
                        ubi.rsvol(dev.node, op.vol_id, op.size)
                    changed = True
                elif op.action == "create":
                    ubi.mkvol(dev.node, op.name, op.size)
                    changed = True
        except OSError as exc:
            raise WriteError(f"UBI: {op.describe()} failed: {exc}", offset=0, written=changed) from exc
    return ubi.read_device(dev.number)


def _vol(dev: ubi.Device, name: str) -> ubi.Volume:
    vol = dev.volume(name)
    if vol is None:
        raise UpgradeError(f"UBI volume {name} not found on ubi{dev.number}")
    return vol


def write_nand(index: nand_tar.SysupgradeTar, dev: ubi.Device, plan: NandPlan,
               progress: Progress | None = None) -> list[VolumeReport]:
    """Apply ``plan`` and write the volumes from the tar. Nothing is changed before ``apply_ops``."""
    dev = apply_ops(dev, plan)
    members = {m.name: m for m in (index.kernel, index.root, index.dtb) if m is not None}
    reports = []
    for volume, member_name in plan.writes:
        vol = _vol(dev, volume)
        node = ubi.ensure_node(vol.node, vol.devnum)
        try:  # a kept volume still has its ubiblock (a resized or new one lost it in apply_ops)
            ubi.remove_ubiblock(dev.number, vol.vol_id, node)
        except OSError as exc:
            raise WriteError(f"UBI: cannot remove the ubiblock of {volume}: {exc}", offset=0,
                             written=True) from exc
        member = members[member_name]
        with log.step("ubi update", volume=volume, bytes=member.size), \
                nand_tar.open_member(index.path, member) as src:
            reports.append(update_volume(src, node, member.size, progress=progress))
    return reports


def save_config(dev: ubi.Device, backup: str, names: Names = Names(), mnt: str = "/tmp/new_root",
                name: str = CONFIG_NAME) -> str:
    """``nand_restore_config``: ``backup`` into the ubifs of ``rootfs_data`` (else ``rootfs``) as
    ``name`` (``sysupgrade.tgz``; stage2's report goes the same way); fsync'd, unmounted, mounted again
    read-only afterwards and compared with ``backup``."""
    vol = dev.volume(names.data) or dev.volume(names.rootfs)
    if vol is None:
        raise UpgradeError("cannot find ubifs data volume")
    source = f"ubi{dev.number}:{vol.name}"
    os.makedirs(mnt, exist_ok=True)
    try:
        syscalls.mount(source, mnt, "ubifs", syscalls.MS_NOATIME)
    except OSError as exc:
        raise UpgradeError(f"cannot mount ubifs volume {vol.name}: {exc.strerror}") from exc
    try:
        dst = f"{mnt}/{name}"
        shutil.copyfile(backup, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        raise UpgradeError(f"could not save configuration to ubifs volume {vol.name}: "
                           f"{exc.strerror}") from exc
    finally:
        syscalls.umount(mnt)
    syscalls.mount(source, mnt, "ubifs", syscalls.MS_RDONLY)
    try:
        with open(f"{mnt}/{name}", "rb") as a, open(backup, "rb") as b:
            if a.read() != b.read():
                raise UpgradeError(f"configuration archive read back from {source} differs from {backup}")
    finally:
        syscalls.umount(mnt)
    log.get().info("configuration saved" if name == CONFIG_NAME else "file saved", volume=source, name=name)
    return source
