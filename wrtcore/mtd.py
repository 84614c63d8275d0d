"""The kernel's MTD character-device interface (``<mtd/mtd-abi.h>``) and ``/proc/mtd``.

Import-light (``fcntl``, ``struct``, ``os``; no ``re``, no dataclass): stage2 uses it after the pivot and
the ``mtd`` command at every start. Each call is one ioctl on an open ``/dev/mtdN`` file descriptor; a
failing ioctl raises ``OSError`` naming the request and the offset. Constants are named as in the kernel
header.
"""

from __future__ import annotations

import fcntl
import os
import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from wrtcore.light_tuple import NamedTuple

# <mtd/mtd-abi.h>: struct mtd_info_user {u8 type; u32 flags, size, erasesize, writesize, oobsize; u64 padding}
_INFO = struct.Struct("=B3xIIIIIQ")
MEMGETINFO = 0x80204D01  # _IOR('M', 1, struct mtd_info_user)
MEMERASE = 0x40084D02  # _IOW('M', 2, struct erase_info_user)
MEMLOCK = 0x40084D05  # _IOW('M', 5, struct erase_info_user)
MEMUNLOCK = 0x40084D06  # _IOW('M', 6, struct erase_info_user)
MEMGETBADBLOCK = 0x40084D0B  # _IOW('M', 11, __kernel_loff_t)
MEMSETBADBLOCK = 0x40084D0C  # _IOW('M', 12, __kernel_loff_t)
MEMERASE64 = 0x40104D14  # _IOW('M', 20, struct erase_info_user64)

MTD_ABSENT = 0
MTD_RAM = 1
MTD_ROM = 2
MTD_NORFLASH = 3
MTD_NANDFLASH = 4
MTD_DATAFLASH = 6
MTD_UBIVOLUME = 7
MTD_MLCNANDFLASH = 8

MTD_WRITEABLE = 0x400
MTD_BIT_WRITEABLE = 0x800
MTD_NO_ERASE = 0x1000
MTD_POWERUP_LOCK = 0x2000

TYPE_NAMES = {MTD_ABSENT: "absent", MTD_RAM: "ram", MTD_ROM: "rom", MTD_NORFLASH: "nor",
              MTD_NANDFLASH: "nand", MTD_DATAFLASH: "dataflash", MTD_UBIVOLUME: "ubi",
              MTD_MLCNANDFLASH: "mlc-nand"}

PROC_MTD = "/proc/mtd"


class MtdInfo(NamedTuple):
    """What ``MEMGETINFO`` tells about an MTD device."""

    type: int
    flags: int
    size: int
    erasesize: int
    writesize: int
    oobsize: int

    @property
    def nand(self) -> bool:
        """NAND-like: blocks may be bad and must be checked (OpenWrt checks only MTD_NANDFLASH)."""
        return self.type in (MTD_NANDFLASH, MTD_MLCNANDFLASH)

    @property
    def writeable(self) -> bool:
        return bool(self.flags & MTD_WRITEABLE)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))


class Partition(NamedTuple):
    """A line of ``/proc/mtd``."""

    index: int  # type: ignore[assignment]  # the N of mtdN (shadows tuple.index, as /proc/mtd reads)
    name: str
    size: int
    erasesize: int


def _fail(exc: OSError, call: str, offset: int | None = None) -> OSError:
    where = f" at 0x{offset:x}" if offset is not None else ""
    return OSError(exc.errno, f"{call}{where}: {exc.strerror or exc}")


def info(fd: int) -> MtdInfo:
    """``MEMGETINFO`` on an open MTD device."""
    try:
        raw = fcntl.ioctl(fd, MEMGETINFO, bytes(_INFO.size))
    except OSError as exc:
        raise _fail(exc, "MEMGETINFO") from None
    mtype, flags, size, erasesize, writesize, oobsize, _pad = _INFO.unpack(raw)
    return MtdInfo(mtype, flags, size, erasesize, writesize, oobsize)


def erase(fd: int, offset: int, length: int) -> None:
    """Erase ``length`` bytes at ``offset`` (whole erase blocks) with ``MEMERASE64``."""
    try:
        fcntl.ioctl(fd, MEMERASE64, struct.pack("=QQ", offset, length))
    except OSError as exc:
        raise _fail(exc, "MEMERASE64", offset) from None


def unlock(fd: int, offset: int, length: int) -> None:
    """``MEMUNLOCK`` a range; devices without locking answer EOPNOTSUPP, which is not an error."""
    try:
        fcntl.ioctl(fd, MEMUNLOCK, struct.pack("=II", offset, length))
    except OSError as exc:
        # EOPNOTSUPP, ENOTTY, EINVAL, and the kernel-internal ENOTSUPP (524) nand answers: nothing to unlock
        if exc.errno in (95, 25, 22, 524):
            return
        raise _fail(exc, "MEMUNLOCK", offset) from None


def is_bad(fd: int, offset: int) -> bool:
    """``MEMGETBADBLOCK``: whether the erase block holding ``offset`` is marked bad.
    Devices without a bad-block table (NOR, RAM) answer EOPNOTSUPP: never bad."""
    arg = bytearray(struct.pack("=q", offset))
    try:
        return bool(fcntl.ioctl(fd, MEMGETBADBLOCK, arg, True) > 0)
    except OSError as exc:
        if exc.errno == 95:  # EOPNOTSUPP
            return False
        raise _fail(exc, "MEMGETBADBLOCK", offset) from None


def mark_bad(fd: int, offset: int) -> None:
    """``MEMSETBADBLOCK``: mark the erase block holding ``offset`` bad."""
    try:
        fcntl.ioctl(fd, MEMSETBADBLOCK, struct.pack("=q", offset))
    except OSError as exc:
        raise _fail(exc, "MEMSETBADBLOCK", offset) from None


def _mtd_number(word: str) -> int | None:
    """N of ``mtdN``; None for anything else."""
    digits = word[3:]
    return int(digits) if word.startswith("mtd") and digits.isascii() and digits.isdigit() else None


def parse_partitions(text: str) -> list[Partition]:
    """The partitions listed in the text of ``/proc/mtd`` (the header line and odd lines skipped):
    ``mtdN: <size hex> <erasesize hex> "<name>"``."""
    parts = []
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        fields = rest.split(None, 2)
        index = _mtd_number(head)
        if index is None or len(fields) != 3 or not fields[2].startswith('"'):
            continue
        name = fields[2].rstrip()
        try:
            size, erasesize = int(fields[0], 16), int(fields[1], 16)
        except ValueError:
            continue
        if name.endswith('"') and len(name) >= 2:
            parts.append(Partition(index, name[1:-1], size, erasesize))
    return parts


def partitions(proc_mtd: str = PROC_MTD) -> list[Partition]:
    """``/proc/mtd`` as a list of (index, name, size, erasesize); empty when there is no MTD."""
    try:
        with open(proc_mtd, encoding="utf-8", errors="replace") as f:
            return parse_partitions(f.read())
    except FileNotFoundError:
        return []


def find(name_or_path: str, proc_mtd: str = PROC_MTD) -> str:
    """The character device for ``firmware`` (a label in /proc/mtd), ``mtd3`` or ``/dev/mtd3``.

    A label or ``mtdN`` resolves to ``/dev/mtdN`` (``/dev/mtd/N`` on devfs-style systems, as OpenWrt's
    mtd tries both); any other path is returned unchanged. Raises ``FileNotFoundError`` when a label is
    not in ``/proc/mtd``."""
    if "/" in name_or_path:
        return name_or_path
    index: int | None = None
    for part in partitions(proc_mtd):
        if part.name == name_or_path:
            index = part.index
            break
    if index is None:
        index = _mtd_number(name_or_path)
        if index is None:
            raise FileNotFoundError(f"no MTD partition named {name_or_path!r} in {proc_mtd}")
    devfs = f"/dev/mtd/{index}"
    return devfs if os.path.exists(devfs) else f"/dev/mtd{index}"


class Device:
    """An open MTD character device: the small interface the MTD writer drives (a test double implements
    the same methods). ``offset`` arguments are byte offsets in the device."""

    def __init__(self, path: str, write: bool = True) -> None:
        self.path = path
        # O_SYNC as OpenWrt's mtd: a write has reached the flash when it returns (mtdchar writes
        # synchronously anyway).
        self.fd = os.open(path, (os.O_RDWR | os.O_SYNC if write else os.O_RDONLY) | os.O_CLOEXEC)
        try:
            self.info = info(self.fd)
        except OSError:
            os.close(self.fd)
            raise

    def erase(self, offset: int, length: int) -> None:
        erase(self.fd, offset, length)

    def unlock(self, offset: int, length: int) -> None:
        unlock(self.fd, offset, length)

    def is_bad(self, offset: int) -> bool:
        return is_bad(self.fd, offset)

    def mark_bad(self, offset: int) -> None:
        mark_bad(self.fd, offset)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """``pwrite``; returns the bytes written (short only at the end of the device)."""
        return os.pwrite(self.fd, data, offset)

    def read(self, offset: int, into: bytearray | memoryview) -> int:
        """``preadv`` into ``into``; returns the bytes read."""
        return os.preadv(self.fd, [into], offset)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
