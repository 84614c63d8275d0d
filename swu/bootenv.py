"""The U-Boot environment, byte-compatible with libubootenv's ``fw_printenv``/``fw_setenv``.

Layout (libubootenv ``uboot_env.c``; U-Boot's ``env_internal.h``): one copy is ``size`` bytes, a
little-endian CRC32 then, for a redundant pair, one flags byte, then the data: ``name=value\\0`` pairs
sorted by name (``strcmp``), an empty string ends them (a second ``\\0``), the rest is padding. The CRC
covers the whole data area, padding included.

Redundant copies (two lines in the config): the copy with the valid CRC is current; when both are valid
the one with the greater flags byte is, except that 0 follows 0xFF (an incrementing counter that wrapped).
A write goes to the *other* copy with flags = current flags + 1, so the current one stays intact until the
new one is complete: a power cut leaves one valid copy. This is libubootenv's "incremental" flags scheme,
the one it uses for files, block devices, NAND and UBI; NOR's boolean scheme (active 1 / obsolete 0) is
not written here (MTD env devices are refused: the env on raw flash needs the MTD writer).

Configuration: ``/etc/fw_env.config`` lines ``device offset size [sector-size [sectors]]`` (``#`` comments);
``offset`` is a C integer (``0x`` hex, leading ``0`` octal, negative counts back from the end of a block
device), ``size`` and ``sector-size`` are hexadecimal with or without ``0x`` (libubootenv's ``%lli %zx``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from swu.model import SwuError
from wrtcore import log

DEFAULT_CONFIG = "/etc/fw_env.config"
DEFAULT_LOCK = "/var/lock/fw_printenv.lock"
BLKGETSIZE64 = 0x80081272


@dataclass(frozen=True)
class EnvDevice:
    path: str
    offset: int
    size: int
    sector_size: int = 0


@dataclass(frozen=True)
class EnvConfig:
    devices: tuple[EnvDevice, ...]

    @property
    def redundant(self) -> bool:
        return len(self.devices) == 2

    @property
    def size(self) -> int:
        return self.devices[0].size


@dataclass(frozen=True)
class Copy:
    """One copy as read: whether its CRC holds, its flags byte (redundant only), its variables."""

    valid: bool
    flags: int
    variables: dict[str, str]


@dataclass(frozen=True)
class EnvState:
    """What a reader sees: the current copy's index, whether any copy was valid, the variables."""

    current: int
    valid: bool
    flags: int
    variables: dict[str, str]


def _c_int(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body.lower().startswith("0x"):
        return sign * int(body[2:], 16)
    if len(body) > 1 and body.startswith("0"):
        return sign * int(body[1:], 8)
    return sign * int(body, 10)


def _hex(text: str) -> int:
    body = text[2:] if text.lower().startswith("0x") else text
    return int(body, 16)


def parse_config(text: str, where: str = DEFAULT_CONFIG) -> EnvConfig:
    """The first one or two device lines of an ``fw_env.config``."""
    devices: list[EnvDevice] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if line.startswith("#") or len(fields) < 3:
            continue
        try:
            dev = EnvDevice(fields[0], _c_int(fields[1]), _hex(fields[2]),
                            _hex(fields[3]) if len(fields) > 3 else 0)
        except ValueError:
            raise SwuError(f"line {number}: bad number in {line.strip()!r}", where) from None
        if dev.size <= 5:
            raise SwuError(f"line {number}: environment size {dev.size} is too small", where)
        devices.append(dev)
        if len(devices) == 2:
            break
    if not devices:
        raise SwuError("no environment device configured", where)
    if len(devices) == 2 and devices[0].size != devices[1].size:
        raise SwuError("the two environment copies differ in size", where)
    return EnvConfig(tuple(devices))


def read_config(path: str = DEFAULT_CONFIG) -> EnvConfig:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_config(f.read(), path)
    except OSError as exc:
        raise SwuError(f"cannot read U-Boot environment config: {exc.strerror}", path) from None


def _header(redundant: bool) -> int:
    return 5 if redundant else 4


def encode(variables: Mapping[str, str], size: int, *, redundant: bool, flags: int = 0) -> bytes:
    """One copy of ``size`` bytes holding ``variables`` (sorted as libubootenv stores them)."""
    data = bytearray()
    for name in sorted(variables, key=lambda n: n.encode()):
        check_name(name)
        data += f"{name}={variables[name]}".encode() + b"\0"
    data += b"\0"
    room = size - _header(redundant)
    if len(data) > room:
        raise SwuError(f"U-Boot environment needs {len(data)} bytes, the configured size holds {room}")
    data += bytes(room - len(data))
    crc = struct.pack("<I", zlib.crc32(data))
    return crc + (bytes([flags & 0xFF]) if redundant else b"") + bytes(data)


def check_name(name: str) -> None:
    if not name or "=" in name or "\0" in name:
        raise SwuError(f"invalid U-Boot variable name {name!r}")


def decode(blob: bytes, *, redundant: bool) -> Copy:
    head = _header(redundant)
    data = blob[head:]
    valid = len(blob) > head and struct.unpack_from("<I", blob)[0] == zlib.crc32(data)
    flags = blob[4] if redundant and len(blob) > 4 else 0
    variables: dict[str, str] = {}
    if valid:
        for entry in data.split(b"\0"):
            if not entry:
                break
            name, sep, value = entry.partition(b"=")
            if sep and name != b".flags":
                variables[name.decode(errors="replace")] = value.decode(errors="replace")
    return Copy(valid, flags, variables)


def choose_current(copies: list[Copy]) -> int:
    """libubootenv's rule for which of two copies is current (incremental flags)."""
    a, b = copies
    if a.valid != b.valid:
        return 0 if a.valid else 1
    if not a.valid:
        return 0
    if a.flags == 0xFF and b.flags == 0:
        return 1
    if b.flags == 0xFF and a.flags == 0:
        return 0
    return 1 if b.flags > a.flags else 0


def _resolve_offset(dev: EnvDevice, fd: int) -> int:
    if dev.offset >= 0:
        return dev.offset
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        size = int(struct.unpack("=Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0])
    else:
        size = st.st_size
    return size + dev.offset


def _check_kind(dev: EnvDevice) -> None:
    name = os.path.basename(dev.path)
    if name.startswith(("mtd", "ubi")):
        raise SwuError("U-Boot environment on MTD/UBI is not supported by this writer", dev.path)


def _read_copy(dev: EnvDevice, redundant: bool) -> Copy:
    _check_kind(dev)
    try:
        fd = os.open(dev.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SwuError(f"cannot open U-Boot environment: {exc.strerror}", dev.path) from None
    try:
        blob = os.pread(fd, dev.size, _resolve_offset(dev, fd))
    finally:
        os.close(fd)
    if len(blob) != dev.size:
        return Copy(False, 0, {})
    return decode(blob, redundant=redundant)


def load(config: EnvConfig) -> EnvState:
    copies = [_read_copy(dev, config.redundant) for dev in config.devices]
    current = choose_current(copies) if config.redundant else 0
    chosen = copies[current]
    return EnvState(current, chosen.valid, chosen.flags, dict(chosen.variables))


@contextlib.contextmanager
def locked(path: str | None = DEFAULT_LOCK) -> Iterator[None]:
    """fw_setenv's advisory lock (best effort, as libubootenv: a missing lock directory is no error)."""
    fd = -1
    if path:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)


def _write_copy(dev: EnvDevice, blob: bytes) -> None:
    try:
        fd = os.open(dev.path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SwuError(f"cannot open U-Boot environment for writing: {exc.strerror}", dev.path) from None
    try:
        offset = _resolve_offset(dev, fd)
        try:
            done = os.pwrite(fd, blob, offset)
            if done != len(blob):
                raise OSError(5, f"short write ({done} of {len(blob)} bytes)")
            os.fsync(fd)
            back = os.pread(fd, len(blob), offset)
        except OSError as exc:
            raise SwuError(f"writing the U-Boot environment at offset {offset} failed: {exc.strerror}",
                           dev.path) from None
        if back != blob:
            raise SwuError(f"U-Boot environment read back differs at offset {offset}", dev.path)
    finally:
        os.close(fd)


def apply(variables: Mapping[str, str], changes: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """``variables`` with ``changes`` applied in order: a value sets, None or "" unsets."""
    result = dict(variables)
    for name, value in changes:
        check_name(name)
        if value is None or value == "":
            result.pop(name, None)
        else:
            result[name] = value
    return result


def store(config: EnvConfig, changes: Iterable[tuple[str, str | None]],
          lock: str | None = DEFAULT_LOCK) -> dict[str, str]:
    """Apply ``changes`` to the environment and write it (the non-current copy when redundant), read it
    back and check it; returns the variables now stored. An environment with no valid copy starts empty
    (fw_setenv needs ``-f`` for that)."""
    with locked(lock):
        state = load(config)
        variables = apply(state.variables if state.valid else {}, changes)
        target = 1 - state.current if config.redundant else 0
        flags = (state.flags + 1) & 0xFF if config.redundant else 0
        blob = encode(variables, config.size, redundant=config.redundant, flags=flags)
        _write_copy(config.devices[target], blob)
        log.get().info("bootenv", step="store", device=config.devices[target].path, copy=target,
                       variables=len(variables))
    return variables


_LINE = re.compile(r"^([^=\s][^=]*)=(.*)$")


def parse_env_text(text: str) -> list[tuple[str, str | None]]:
    """A U-Boot environment text file (``env import -t`` / ``fw_setenv -s`` style): ``name=value`` lines,
    ``#`` comments and blank lines skipped, ``name=`` unsets. A line without ``=`` is ignored (as
    libubootenv's loader does)."""
    changes: list[tuple[str, str | None]] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        changes.append((m.group(1), m.group(2) or None))
    return changes
