"""Streamed, verified writes to MTD flash (NOR and NAND) through the kernel's ioctls: OpenWrt's ``mtd``.

``write_mtd`` reads the image one erase block at a time (gzip inflated on the fly by
``stage2.writers.source.Stream``) into a chunk of ``CHUNK`` bytes, pads the last block with 0xFF, and
hands the chunk to ``stage2.writers.mtdblocks.Programmer``: on NOR one erase, one write, one read-back
and one compare per chunk (block by block only to find a failure), on NAND block by block with bad
blocks skipped and failing ones marked bad. Memory: two chunks (1 MiB each) plus the config file. When
the image stream breaks, the whole blocks read before the break are written first, as one block at a
time would have: what the error says was written is so.
``jffs2_config`` is ``mtd -j``: at the first erase block of the image that starts ``DE AD C0 DE`` the
config file is written as jffs2 (``stage2.formats.jffs2``) and as many image blocks are dropped as the
jffs2 took. ``jffs2write`` appends a file to an existing jffs2 (``mtd jffs2write``), ``verify_mtd``
compares a device with an image, ``erase_mtd`` and ``unlock_mtd`` are ``mtd erase``/``mtd unlock``.

``hold`` (``stage2.writers.roothead.finder_aligned``): the root's head last, as ``stage2.writers.block``
does on disks. The erase block holding the image's squashfs superblock goes through the pass erased (all
0xFF: no squashfs magic where mtdsplit looks for the rootfs, so the kernel mounts no mix of two
firmwares), on NAND wherever the pass puts it with bad blocks skipped; its data is programmed there, read
back and compared only once every block through the squashfs's ``bytes_used`` end has been written and
verified (or at the image's end). A failure or a cut in between leaves that block erased.

Errors: a bad argument, an unreadable image, a device that is not MTD raise ``InvalidInput`` (nothing
written). Everything else raises ``MtdError``: ``offset`` is the byte offset in the device where it
happened and ``written`` whether the device had been changed (erased or written) before.

The writer drives any object with the ``Flash`` methods: ``wrtcore.mtd.Device`` on a real device.
Runs after the pivot in a minimal ramfs and as the ``mtd`` command, whose start-up counts: standard
library and ``wrtcore`` only, and the jffs2 format and ``hashlib`` imported when they are used.
"""

from __future__ import annotations

import os
import sys
import time

from stage2.writers.mtdblocks import HeldBlock, MtdError, Programmer, first_difference
from stage2.writers.source import SourceError, Stream, source_size
from wrtcore import log
from wrtcore import mtd as mtdio
from wrtcore.errors import InvalidInput

__all__ = ["CHUNK", "MtdError", "MtdReport", "VerifyReport", "erase_flash", "erase_mtd",
           "jffs2write", "jffs2write_flash", "open_device", "unlock_mtd", "verify_flash", "verify_mtd",
           "write_flash", "write_mtd"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:  # typing, collections.abc: annotations only (see wrtcore.light_tuple)
    from collections.abc import Callable
    from typing import BinaryIO, NamedTuple

    from stage2.formats.jffs2 import Endian, FileMeta
    from stage2.writers.block import FindHeld
    from stage2.writers.mtdblocks import Flash

    Progress = Callable[[int, int | None], None]
else:
    from wrtcore.light_tuple import NamedTuple
CHUNK = 1 << 20  # bytes per erase/write/read-back call on NOR (fewer calls; measured best in the VM)


class MtdReport(NamedTuple):
    """What ``write_mtd`` did (a NamedTuple, as ``VerifyReport``: ``_asdict()`` for reports)."""

    device: str
    bytes_written: int  # bytes programmed into the flash (whole erase blocks)
    image_bytes: int  # bytes of the image read (after inflating)
    blocks_erased: int
    bad_skipped: tuple[int, ...]  # offsets of blocks found marked bad and skipped
    bad_marked: tuple[int, ...]  # offsets of blocks that failed and were marked bad here
    jffs2_offset: int | None  # where the jffs2 config was written; None: not asked, or no marker found
    duration: float
    compressed: bool = False
    verify_seconds: float = 0.0  # of ``duration``: reading back and comparing


class VerifyReport(NamedTuple):
    """What ``verify_mtd`` found (a NamedTuple: a dataclass costs a compile at every start of ``mtd``)."""

    device: str
    bytes_compared: int
    image_md5: str
    flash_md5: str
    first_difference: int | None  # device offset of the first differing byte; None: identical

    @property
    def ok(self) -> bool:
        return self.first_difference is None


def read_config(path: str) -> tuple[FileMeta | None, bytes]:
    from stage2.formats import jffs2

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


class _Jffs2Config:
    """``mtd -j``: watches the image's blocks for the first ``DE AD C0 DE`` one (after ``skip`` bytes)
    and makes the jffs2 blocks of the config file that replace it and the blocks after it."""

    def __init__(self, path: str, skip: int, erasesize: int, endian: Endian) -> None:
        from stage2.formats import jffs2

        self.jffs2, self.path, self.skip, self.erasesize, self.endian = jffs2, path, skip, erasesize, endian
        self.numbers = jffs2.Numbers()
        self.pending = True  # no marker met yet

    def blocks_at(self, block: memoryview, written: int) -> list[bytes] | None:
        """The jffs2 blocks to write in place of ``block`` (the image's block after ``written`` bytes), or
        None: write the image's block."""
        if not self.pending or written < self.skip:
            return None
        if block[:len(self.jffs2.EOF_MARKER)] != self.jffs2.EOF_MARKER:
            self.jffs2.scan_block(block, self.numbers, "", self.endian)
            return None
        self.pending = False
        meta, data = read_config(self.path)
        return self.jffs2.config_blocks(meta, data, self.erasesize, self.endian, self.numbers)


def write_flash(source: BinaryIO, flash: Flash, *, name: str = "", offset: int = 0, length: int | None = None,
                jffs2_config: str | None = None, jffs2_skip: int = 0, skip_bad: bool = True,
                erase: bool = True, endian: Endian = sys.byteorder,
                progress: Progress | None = None, hold: FindHeld | None = None) -> MtdReport:
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
    config = _Jffs2Config(jffs2_config, jffs2_skip, size, endian) if jffs2_config is not None else None
    put = Programmer(flash, name, flash.info.size, skip_bad=skip_bad, erase=erase)
    head = HeldBlock(hold) if hold is not None else None
    per = max(1, CHUNK // size)
    view = memoryview(bytearray(per * size))
    pos, image_bytes, discard, jffs2_at, held = offset, 0, 0, None, 0  # held: blocks in view not written
    started = time.monotonic()
    log.get().info("mtd_write", device=name, offset=offset, size=total, erasesize=size,
                   type=flash.info.type_name, compressed=stream.compressed)
    try:
        flash.unlock(offset, flash.info.size - offset)
    except OSError as exc:
        raise MtdError(f"unlock failed: {exc.strerror}", offset=offset, written=False) from exc
    try:
        while True:
            slot = view[held * size:(held + 1) * size]
            try:
                n = stream.fill(slot)
            except SourceError as exc:
                pos = put.run(view[:held * size], pos)  # the blocks read before the break, as block by block
                raise MtdError(f"image stream broke: {exc}", offset=pos, written=put.changed) from exc
            except Exception:  # the source's own error (a hash mismatch of an archive member, ...): the same
                put.run(view[:held * size], pos)
                raise
            image_bytes += n
            if 0 < n < size:
                slot[n:] = b"\xff" * (size - n)
            done = False  # blocks went to the flash: progress
            if n and discard:
                discard -= 1
            elif n and config and (blocks := config.blocks_at(slot, (put.blocks_written + held) * size)):
                pos, held = put.run(view[:held * size], pos), 0
                log.get().info("mtd_write", note=f"Appending jffs2 data from {jffs2_config} to {name}")
                for i, block in enumerate(blocks):
                    pos = put.block(block, pos)
                    jffs2_at = pos - size if i == 0 else jffs2_at
                discard, done = len(blocks) - 1, True
            elif n and head is not None and head.takes(image_bytes - n, slot, n):
                pos, held = put.run(view[:held * size], pos), 0  # the blocks before it, then it: erased
                head.pos = put.block(slot, pos, blank=True) - size
                pos, done = head.pos + size, True
                log.get().info("mtd_write", note="root head block erased until the squashfs end is written",
                               offset=head.pos, commit_at=head.commit_at)
            elif n:
                held += 1
            if held == per or (n < size and held):
                pos, held, done = put.run(view[:held * size], pos), 0, True
            if head is not None and head.pending and not held and image_bytes >= head.commit_at:
                head.commit(put)  # every image block through commit_at is on the flash, verified
            if progress is not None and (done or n < size):  # n < size: the end (dropped blocks too)
                progress(image_bytes, total)
            if n < size:
                break
    except BaseException:
        if head is not None and head.pending:
            log.get().warning("mtd_write", note="the root head block is left erased", offset=head.pos)
        raise
    if length is not None and image_bytes < length:
        raise MtdError(f"image truncated: {image_bytes} bytes, expected {length}", offset=pos,
                       written=put.changed)
    if image_bytes == 0:
        raise InvalidInput("empty image: nothing to write")
    if head is not None:
        head.commit(put)  # the image ended before the squashfs's bytes_used said
    if config is not None and config.pending:
        log.get().warning("mtd_write", note="no DE AD C0 DE marker in the image: configuration not appended")
    report = MtdReport(name, put.blocks_written * size, image_bytes, put.blocks_erased, tuple(put.skipped),
                       tuple(put.marked), jffs2_at, time.monotonic() - started, stream.compressed,
                       put.verify_seconds)
    log.get().info("mtd_write", device=name, result="ok", bytes=report.bytes_written,
                   bad_skipped=len(report.bad_skipped), bad_marked=len(report.bad_marked),
                   jffs2_offset=jffs2_at, duration=round(report.duration, 4),
                   verify_seconds=round(report.verify_seconds, 4))
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
              endian: Endian = sys.byteorder, hold: FindHeld | None = None,
              hold_for: Callable[[int], FindHeld] | None = None) -> MtdReport:
    """Write the image from ``source`` to the MTD ``device`` (``firmware``, ``mtd3``, ``/dev/mtd3``) at
    ``offset`` (a multiple of the erase size), every block erased, written, read back and compared.

    ``length``: write exactly this many image bytes (after inflating). ``jffs2_config``: path of the
    config archive to write as jffs2 at the first erase block of the image starting ``DE AD C0 DE``, once
    ``jffs2_skip`` bytes have been written (``mtd -j``, ``-s``). ``skip_bad``: skip NAND blocks marked bad.
    ``erase`` False is ``mtd -n``. ``endian``: byte order of the jffs2 (the target CPU's; default this
    machine's). ``progress(done, total)`` after each chunk, ``total`` None when unknown. ``hold``: finds
    the squashfs head whose erase block is written last (see the module's text), called with each image
    block the pass writes (its image offset, its bytes); ``hold_for`` makes one from the erase size.
    """
    with open_device(device) as flash:
        find = hold_for(flash.info.erasesize) if hold_for is not None else hold
        return write_flash(source, flash, name=device, offset=offset, length=length,
                           jffs2_config=jffs2_config, jffs2_skip=jffs2_skip, skip_bad=skip_bad, erase=erase,
                           endian=endian, progress=progress, hold=find)


def verify_flash(source: BinaryIO, flash: Flash, *, name: str = "", offset: int = 0,
                 length: int | None = None, skip_bad: bool = True) -> VerifyReport:
    """``verify_mtd`` on an open ``Flash``."""
    import hashlib

    size = flash.info.erasesize
    try:
        stream = Stream(source, length)
    except SourceError as exc:
        raise InvalidInput(f"cannot read image: {exc}") from exc
    per = 1 if flash.info.nand and skip_bad else max(1, CHUNK // size)  # NAND: bad blocks between
    image, back = bytearray(per * size), bytearray(per * size)
    md5_image, md5_flash = hashlib.md5(), hashlib.md5()
    pos, compared, first = offset, 0, None
    while True:
        try:
            n = stream.fill(memoryview(image))
        except SourceError as exc:
            raise InvalidInput(f"cannot read image: {exc}") from exc
        if n == 0:
            break
        while per == 1 and flash.info.nand and pos < flash.info.size and flash.is_bad(pos):
            pos += size
        if pos + n > flash.info.size:
            raise MtdError("device shorter than the image", offset=flash.info.size, written=False)
        try:
            got = flash.read(pos, memoryview(back)[:n])
        except OSError as exc:
            raise MtdError(f"read failed: {exc.strerror}", offset=pos, written=False) from exc
        md5_image.update(memoryview(image)[:n])
        md5_flash.update(memoryview(back)[:got])
        same = back == image if n == got == len(image) else back[:got] == image[:n]
        if first is None and not same:
            first = pos + first_difference(back[:got], image[:n])
        compared += n
        pos += per * size
    return VerifyReport(name, compared, md5_image.hexdigest(), md5_flash.hexdigest(), first)


def verify_mtd(source: BinaryIO, device: str, *, offset: int = 0, length: int | None = None,
               skip_bad: bool = True) -> VerifyReport:
    """Compare the image from ``source`` with the device from ``offset`` (NAND bad blocks skipped, as the
    writer placed it). The report says where the first difference is; it does not raise for one."""
    with open_device(device, write=False) as flash:
        return verify_flash(source, flash, name=device, offset=offset, length=length, skip_bad=skip_bad)


def jffs2write_flash(path: str, flash: Flash, *, name: str = "", directory: str = "",
                     endian: Endian = sys.byteorder) -> MtdReport:
    """``jffs2write`` on an open ``Flash``."""
    from stage2.formats import jffs2

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
    meta, data = read_config(path)
    blocks = jffs2.append_blocks(meta, data, size, numbers, directory, endian)
    log.get().info("mtd_jffs2write", note=f"Appending {path} to jffs2 partition {name}", offset=pos)
    try:
        flash.unlock(pos, flash.info.size - pos)
    except OSError as exc:
        raise MtdError(f"unlock failed: {exc.strerror}", offset=pos, written=False) from exc
    put = Programmer(flash, name, flash.info.size)
    at = pos
    for b in blocks:
        pos = put.block(b, pos)
    return MtdReport(name, put.blocks_written * size, len(data), put.blocks_erased, tuple(put.skipped),
                     tuple(put.marked), at, time.monotonic() - started, verify_seconds=put.verify_seconds)


def jffs2write(path: str, device: str, *, directory: str = "",
               endian: Endian = sys.byteorder) -> MtdReport:
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
    if not flash.info.nand:  # one call; block by block only to find what fails
        try:
            flash.erase(0, flash.info.size)
            return MtdReport(name, 0, 0, flash.info.size // size, (), (), None, time.monotonic() - started)
        except OSError as exc:
            log.get().warning("mtd_erase", note="erasing the whole device failed, block by block",
                              error=exc.strerror)
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
