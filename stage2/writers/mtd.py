"""Streamed, verified writes to MTD flash (NOR and NAND) through the kernel's ioctls: OpenWrt's ``mtd``.

``write_mtd`` reads the image one erase block at a time (gzip inflated on the fly by
``stage2.writers.source.Stream``; memory stays at two erase blocks plus the config file), pads the last
block with 0xFF, and for each block: skips it when NAND marks it bad, erases it, writes it, reads it back
and compares. On NAND a block that fails to erase, to write or to read back what was written is marked bad
and the same data goes to the next block; on NOR (no bad-block table) any such failure stops the write.
``jffs2_config`` is ``mtd -j``: at the first erase block of the image that starts ``DE AD C0 DE`` the
config file is written as jffs2 (``stage2.formats.jffs2``) and as many image blocks are dropped as the
jffs2 took. ``jffs2write`` appends a file to an existing jffs2 (``mtd jffs2write``), ``verify_mtd``
compares a device with an image, ``erase_mtd`` and ``unlock_mtd`` are ``mtd erase``/``mtd unlock``.

Errors: a bad argument, an unreadable image, a device that is not MTD raise ``InvalidInput`` (nothing
written). Everything else raises ``MtdError``: ``offset`` is the byte offset in the device where it
happened and ``written`` whether the device had been changed (erased or written) before.

The writer drives any object with the ``Flash`` methods: ``wrtcore.mtd.Device`` on a real device.
Runs after the pivot in a minimal ramfs: standard library and ``wrtcore`` only.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from stage2.formats import jffs2
from stage2.writers.source import SourceError, Stream, source_size
from wrtcore import log
from wrtcore import mtd as mtdio
from wrtcore.errors import InvalidInput, WriteError

Progress = Callable[[int, int | None], None]


class MtdError(WriteError):
    """A failure on the flash: ``offset`` in the device, ``written``: the device was changed before it."""


class Flash(Protocol):
    info: mtdio.MtdInfo

    def erase(self, offset: int, length: int) -> None: ...
    def unlock(self, offset: int, length: int) -> None: ...
    def is_bad(self, offset: int) -> bool: ...
    def mark_bad(self, offset: int) -> None: ...
    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int: ...
    def read(self, offset: int, into: bytearray | memoryview) -> int: ...


@dataclass(frozen=True)
class MtdReport:
    device: str
    bytes_written: int  # bytes programmed into the flash (whole erase blocks)
    image_bytes: int  # bytes of the image read (after inflating)
    blocks_erased: int
    bad_skipped: tuple[int, ...]  # offsets of blocks found marked bad and skipped
    bad_marked: tuple[int, ...]  # offsets of blocks that failed and were marked bad here
    jffs2_offset: int | None  # where the jffs2 config was written; None: not asked, or no marker found
    duration: float
    compressed: bool = False


@dataclass(frozen=True)
class VerifyReport:
    device: str
    bytes_compared: int
    image_md5: str
    flash_md5: str
    first_difference: int | None  # device offset of the first differing byte; None: identical

    @property
    def ok(self) -> bool:
        return self.first_difference is None


@dataclass
class _Put:
    """Puts erase blocks on the flash one after another: skip bad, erase, write, read back, compare."""

    flash: Flash
    name: str
    end: int
    skip_bad: bool = True
    erase: bool = True
    quiet: bool = False
    changed: bool = False
    blocks_erased: int = 0
    blocks_written: int = 0
    skipped: list[int] = field(default_factory=list)
    marked: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.size = self.flash.info.erasesize
        self.nand = self.flash.info.nand
        self.back = bytearray(self.size)

    def block(self, data: bytes | bytearray | memoryview, pos: int) -> int:
        """Write one erase block at the first usable block from ``pos``; returns the offset after it."""
        while True:
            if pos + self.size > self.end:
                raise MtdError("Insufficient space: the image does not fit the device", offset=pos,
                               written=self.changed, hint=f"device ends at {self.end}")
            if self.nand and self.skip_bad and self._is_bad(pos):
                self.skipped.append(pos)
                log.get().info("mtd_write", note=f"Skipping bad block at 0x{pos:08x}", offset=pos)
                pos += self.size
                continue
            failure = self._program(data, pos)
            if failure is None:
                self.blocks_written += 1
                return pos + self.size
            if not self.nand:
                raise failure
            self._retire(pos, failure)
            pos += self.size

    def _is_bad(self, pos: int) -> bool:
        try:
            return self.flash.is_bad(pos)
        except OSError as exc:
            raise MtdError(f"Failed to get erase block status: {exc.strerror}", offset=pos,
                           written=self.changed) from exc

    def _program(self, data: bytes | bytearray | memoryview, pos: int) -> MtdError | None:
        """Erase, write and read back one block; the failure, or None."""
        if self.erase:
            try:
                self.flash.erase(pos, self.size)
            except OSError as exc:
                self.changed = True  # a failed erase may have cleared part of the block
                return MtdError(f"Failed to erase block: {exc.strerror}", offset=pos, written=True)
            self.changed = True
            self.blocks_erased += 1
        try:
            n = self.flash.write(pos, data)
        except OSError as exc:
            self.changed = True
            return MtdError(f"Error writing image: {exc.strerror}", offset=pos, written=True)
        self.changed = True
        if n != self.size:
            return MtdError(f"Short write: {n} of {self.size} bytes", offset=pos + n, written=True)
        try:
            got = self.flash.read(pos, self.back)
        except OSError as exc:
            return MtdError(f"Read-back failed: {exc.strerror}", offset=pos, written=True)
        if got != self.size or self.back != data:
            at = _first_difference(self.back[:got], data)
            return MtdError("Verify failed: the flash does not hold what was written", offset=pos + at,
                            written=True)
        return None

    def _retire(self, pos: int, failure: MtdError) -> None:
        log.get().warning("mtd_write", note=f"marking block at 0x{pos:08x} bad", error=failure.message)
        try:
            self.flash.mark_bad(pos)
        except OSError as exc:
            # Writing the marker into a block that refuses programs fails too, while the kernel's bad
            # block table has taken it (nand_block_markbad_lowlevel): what counts is that it reads bad.
            if self._is_bad(pos):
                log.get().warning("mtd_write", note="marker not written, block in the bad block table",
                                  offset=pos, error=exc.strerror)
                self.marked.append(pos)
                return
            raise MtdError(f"{failure.message}; marking the block bad failed: {exc.strerror}", offset=pos,
                           written=True) from exc
        self.marked.append(pos)


def _first_difference(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # bisect on slices: C-speed compares, O(log n) of them
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    return lo


def _config(path: str) -> tuple[jffs2.FileMeta | None, bytes]:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        log.get().warning("mtd_write", note=f"File {path} does not exist")
        return None, b""
    meta = jffs2.FileMeta(os.path.basename(path), st.st_mode, len(data), int(st.st_atime),
                          int(st.st_mtime), int(st.st_ctime))
    return meta, data


def write_flash(source: BinaryIO, flash: Flash, *, name: str = "", offset: int = 0, length: int | None = None,
                jffs2_config: str | None = None, jffs2_skip: int = 0, skip_bad: bool = True,
                erase: bool = True, endian: jffs2.Endian = jffs2.NATIVE,
                progress: Progress | None = None) -> MtdReport:
    """``write_mtd`` on an open ``Flash``."""
    size = flash.info.erasesize
    if size <= 0 or offset < 0 or offset % size or (length is not None and length < 0):
        raise InvalidInput(f"offset {offset} is not a multiple of the erase size {size}")
    if not flash.info.writeable:
        raise InvalidInput(f"{name}: the MTD device is read-only")
    _start, available = source_size(source)
    try:
        stream = Stream(source, length)
    except SourceError as exc:
        raise InvalidInput(f"cannot read image: {exc}") from exc
    total = length if length is not None else (None if stream.compressed else available)
    if total is not None and not stream.compressed and available is not None and available < total:
        raise InvalidInput(f"image truncated: {available} bytes, expected {total}")
    if total is not None and jffs2_config is None and offset + -(-total // size) * size > flash.info.size:
        raise MtdError("Insufficient space: the image does not fit the device", offset=offset, written=False,
                       hint=f"{total} bytes at {offset}, device size {flash.info.size}")
    meta, data = _config(jffs2_config) if jffs2_config is not None else (None, b"")
    put = _Put(flash, name, flash.info.size, skip_bad=skip_bad, erase=erase)
    numbers = jffs2.Numbers()
    chunk = bytearray(size)
    view = memoryview(chunk)
    pos, image_bytes, discard, jffs2_at = offset, 0, 0, None
    want_config = jffs2_config is not None
    started = time.monotonic()
    log.get().info("mtd_write", device=name, offset=offset, size=total, erasesize=size,
                   type=flash.info.type_name, compressed=stream.compressed)
    try:
        flash.unlock(offset, flash.info.size - offset)
    except OSError as exc:
        raise MtdError(f"unlock failed: {exc.strerror}", offset=offset, written=False) from exc
    while True:
        try:
            n = stream.fill(view)
        except SourceError as exc:
            raise MtdError(f"image stream broke: {exc}", offset=pos, written=put.changed) from exc
        if n == 0:
            break
        image_bytes += n
        if n < size:
            view[n:] = b"\xff" * (size - n)
        if discard:
            discard -= 1
            continue
        if want_config and put.blocks_written * size >= jffs2_skip:
            if chunk.startswith(jffs2.EOF_MARKER):
                blocks = jffs2.config_blocks(meta, data, size, endian, numbers)
                log.get().info("mtd_write", note=f"Appending jffs2 data from {jffs2_config} to {name}")
                for i, block in enumerate(blocks):
                    at = put.block(block, pos)
                    if i == 0:
                        jffs2_at = at - size
                    pos = at
                discard, want_config = len(blocks) - 1, False
                continue
            jffs2.scan_block(chunk, numbers, "", endian)
        pos = put.block(view, pos)
        if progress is not None:
            progress(image_bytes, total)
    if length is not None and image_bytes < length:
        raise MtdError(f"image truncated: {image_bytes} bytes, expected {length}", offset=pos,
                       written=put.changed)
    if image_bytes == 0:
        raise InvalidInput("empty image: nothing to write")
    if want_config:
        log.get().warning("mtd_write", note="no DE AD C0 DE marker in the image: configuration not appended")
    report = MtdReport(name, put.blocks_written * size, image_bytes, put.blocks_erased, tuple(put.skipped),
                       tuple(put.marked), jffs2_at, time.monotonic() - started, stream.compressed)
    log.get().info("mtd_write", device=name, result="ok", bytes=report.bytes_written,
                   bad_skipped=len(report.bad_skipped), bad_marked=len(report.bad_marked),
                   jffs2_offset=jffs2_at, duration=round(report.duration, 4))
    return report


def open_device(device: str, write: bool = True) -> mtdio.Device:
    """``firmware``, ``mtd3`` or a path, opened; ``InvalidInput`` when it is not an MTD device."""
    try:
        path = mtdio.find(device)
    except FileNotFoundError as exc:
        raise InvalidInput(f"Could not open mtd device: {device}", hint=str(exc)) from None
    try:
        return mtdio.Device(path, write)
    except OSError as exc:
        raise InvalidInput(f"Could not open mtd device: {device}", hint=exc.strerror) from None


def write_mtd(source: BinaryIO, device: str, *, offset: int = 0, length: int | None = None,
              jffs2_config: str | None = None, skip_bad: bool = True,
              progress: Progress | None = None, jffs2_skip: int = 0, erase: bool = True,
              endian: jffs2.Endian = jffs2.NATIVE) -> MtdReport:
    """Write the image from ``source`` to the MTD ``device`` (``firmware``, ``mtd3``, ``/dev/mtd3``) at
    ``offset`` (a multiple of the erase size), every block erased, written, read back and compared.

    ``length``: write exactly this many image bytes (after inflating). ``jffs2_config``: path of the
    config archive to write as jffs2 at the first erase block of the image starting ``DE AD C0 DE``, once
    ``jffs2_skip`` bytes have been written (``mtd -j``, ``-s``). ``skip_bad``: skip NAND blocks marked bad.
    ``erase`` False is ``mtd -n``. ``endian``: byte order of the jffs2 (the target CPU's; default this
    machine's). ``progress(done, total)`` after each block, ``total`` None when unknown.
    """
    with open_device(device) as flash:
        return write_flash(source, flash, name=device, offset=offset, length=length,
                           jffs2_config=jffs2_config, jffs2_skip=jffs2_skip, skip_bad=skip_bad, erase=erase,
                           endian=endian, progress=progress)


def verify_flash(source: BinaryIO, flash: Flash, *, name: str = "", offset: int = 0,
                 length: int | None = None, skip_bad: bool = True) -> VerifyReport:
    """``verify_mtd`` on an open ``Flash``."""
    size = flash.info.erasesize
    try:
        stream = Stream(source, length)
    except SourceError as exc:
        raise InvalidInput(f"cannot read image: {exc}") from exc
    image, back = bytearray(size), bytearray(size)
    md5_image, md5_flash = hashlib.md5(), hashlib.md5()
    pos, compared, first = offset, 0, None
    while True:
        try:
            n = stream.fill(memoryview(image))
        except SourceError as exc:
            raise InvalidInput(f"cannot read image: {exc}") from exc
        if n == 0:
            break
        while flash.info.nand and skip_bad and pos < flash.info.size and flash.is_bad(pos):
            pos += size
        if pos + n > flash.info.size:
            raise MtdError("device shorter than the image", offset=flash.info.size, written=False)
        try:
            got = flash.read(pos, memoryview(back)[:n])
        except OSError as exc:
            raise MtdError(f"read failed: {exc.strerror}", offset=pos, written=False) from exc
        md5_image.update(memoryview(image)[:n])
        md5_flash.update(memoryview(back)[:got])
        if first is None and (got != n or back[:n] != image[:n]):
            first = pos + _first_difference(back[:got], image[:n])
        compared += n
        pos += size
    return VerifyReport(name, compared, md5_image.hexdigest(), md5_flash.hexdigest(), first)


def verify_mtd(source: BinaryIO, device: str, *, offset: int = 0, length: int | None = None,
               skip_bad: bool = True) -> VerifyReport:
    """Compare the image from ``source`` with the device from ``offset`` (NAND bad blocks skipped, as the
    writer placed it). The report says where the first difference is; it does not raise for one."""
    with open_device(device, write=False) as flash:
        return verify_flash(source, flash, name=device, offset=offset, length=length, skip_bad=skip_bad)


def jffs2write_flash(path: str, flash: Flash, *, name: str = "", directory: str = "",
                     endian: jffs2.Endian = jffs2.NATIVE) -> MtdReport:
    """``jffs2write`` on an open ``Flash``."""
    size = flash.info.erasesize
    block = bytearray(size)
    numbers = jffs2.Numbers(target_ino=0 if directory else jffs2.ROOT_INO)
    pos = 0
    started = time.monotonic()
    while True:  # the existing jffs2: blocks that start with the node magic
        if pos + size > flash.info.size:
            raise MtdError("Error: No room for additional data", offset=pos, written=False)
        if flash.info.nand and flash.is_bad(pos):
            pos += size
            continue
        try:
            flash.read(pos, block)
        except OSError as exc:
            raise MtdError(f"read failed: {exc.strerror}", offset=pos, written=False) from exc
        magic = jffs2.node_magic(block, endian)
        if magic == 0x8519:
            raise MtdError("Error: wrong endianness filesystem", offset=pos, written=False)
        if magic != jffs2.MAGIC:
            break
        jffs2.scan_block(block, numbers, directory, endian)
        pos += size
    meta, data = _config(path)
    blocks = jffs2.append_blocks(meta, data, size, numbers, directory, endian)
    log.get().info("mtd_jffs2write", note=f"Appending {path} to jffs2 partition {name}", offset=pos)
    try:
        flash.unlock(pos, flash.info.size - pos)
    except OSError as exc:
        raise MtdError(f"unlock failed: {exc.strerror}", offset=pos, written=False) from exc
    put = _Put(flash, name, flash.info.size)
    at = pos
    for b in blocks:
        pos = put.block(b, pos)
    return MtdReport(name, put.blocks_written * size, len(data), put.blocks_erased, tuple(put.skipped),
                     tuple(put.marked), at, time.monotonic() - started)


def jffs2write(path: str, device: str, *, directory: str = "",
               endian: jffs2.Endian = jffs2.NATIVE) -> MtdReport:
    """Append the file ``path`` to the jffs2 on ``device`` (in ``directory`` of its root, created when
    missing), after its last jffs2 block, followed by a new end-of-filesystem block."""
    with open_device(device) as flash:
        return jffs2write_flash(path, flash, name=device, directory=directory, endian=endian)


def erase_flash(flash: Flash, *, name: str = "", skip_bad: bool = True) -> MtdReport:
    """``erase_mtd`` on an open ``Flash``: every block; the first failure raises after trying the rest."""
    size = flash.info.erasesize
    started = time.monotonic()
    erased, skipped, failed = 0, [], []
    try:
        flash.unlock(0, flash.info.size)
    except OSError as exc:
        raise MtdError(f"unlock failed: {exc.strerror}", offset=0, written=False) from exc
    for pos in range(0, flash.info.size, size):
        if flash.info.nand and skip_bad and flash.is_bad(pos):
            skipped.append(pos)
            continue
        try:
            flash.erase(pos, size)
            erased += 1
        except OSError as exc:
            log.get().warning("mtd_erase", note=f"Failed to erase block on {name} at 0x{pos:x}",
                              error=exc.strerror)
            failed.append(pos)
    if failed:
        raise MtdError(f"Failed to erase {len(failed)} block(s) on {name}", offset=failed[0],
                       written=erased > 0 or len(failed) > 0)
    return MtdReport(name, 0, 0, erased, tuple(skipped), (), None, time.monotonic() - started)


def erase_mtd(device: str, *, skip_bad: bool = True) -> MtdReport:
    with open_device(device) as flash:
        return erase_flash(flash, name=device, skip_bad=skip_bad)


def unlock_mtd(device: str) -> None:
    with open_device(device) as flash:
        try:
            flash.unlock(0, flash.info.size)
        except OSError as exc:
            raise MtdError(f"unlock failed: {exc.strerror}", offset=0, written=False) from exc
