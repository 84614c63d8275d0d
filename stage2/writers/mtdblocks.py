"""Erase blocks onto MTD flash, each one erased, written, read back and compared: the engine of
``stage2.writers.mtd``.

``Programmer.run`` takes whole erase blocks. On NOR (no bad-block table) a run of blocks is erased,
written and read back with one call each and compared in one go; when any of them fails the blocks are
done again one by one, which finds the block (or the byte) that fails and stops there. On NAND each block
is checked for the bad mark (and skipped), erased, written, read back and compared; a block that fails to
erase, to write or to read back what was written is marked bad and the same data goes to the next block.
The read-back compares a ``bytearray`` with the data: one ``memcmp``, no copy.

A block the writer holds back (the squashfs root's head, ``stage2.writers.roothead``) goes through the pass
``blank``: erased and read back as erased, nothing programmed (a NAND page programmed with 0xFF could not
take its data later without another erase), wherever the pass puts it (bad blocks skipped, failing ones
retired as for any block). ``commit`` later programs its data at exactly that offset, or erases it again
on a failure: the data cannot move once the blocks after it are written.

Standard library and ``wrtcore`` only, no dataclass (a compile at import, which the ``mtd`` command's
start-up pays under emulation).
"""

from __future__ import annotations

import time

from wrtcore import log
from wrtcore import mtd as mtdio
from wrtcore.errors import WriteError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:  # typing.Protocol costs the mtd command's start-up: a type for the checker only
    from typing import Protocol

    from stage2.writers.block import FindHeld

    class Flash(Protocol):
        info: mtdio.MtdInfo

        def erase(self, offset: int, length: int) -> None: ...
        def unlock(self, offset: int, length: int) -> None: ...
        def is_bad(self, offset: int) -> bool: ...
        def mark_bad(self, offset: int) -> None: ...
        def write(self, offset: int, data: bytes | bytearray | memoryview) -> int: ...
        def read(self, offset: int, into: bytearray | memoryview) -> int: ...


class MtdError(WriteError):
    """A failure on the flash: ``offset`` in the device, ``written``: the device was changed before it."""


class Programmer:
    """Puts erase blocks on the flash one after another: skip bad, erase, write, read back, compare;
    counts what it did."""

    def __init__(self, flash: Flash, name: str, end: int, skip_bad: bool = True, erase: bool = True) -> None:
        self.flash, self.name, self.end, self.skip_bad, self.erase = flash, name, end, skip_bad, erase
        self.size = flash.info.erasesize
        self.nand = flash.info.nand
        self.changed = False  # the device was erased or written
        self.blocks_erased = self.blocks_written = 0
        self.verify_seconds = 0.0
        self.skipped: list[int] = []
        self.marked: list[int] = []
        self.back = bytearray(self.size)
        self.back_range = bytearray(0)

    def run(self, data: memoryview, pos: int) -> int:
        """Write whole erase blocks from the first usable block at ``pos``; returns the offset after them.
        NOR: the whole range at once, block by block only when that fails."""
        count = len(data) // self.size
        if count > 1 and not self.nand and pos + len(data) <= self.end and self._range(data, pos):
            self.blocks_written += count
            return pos + len(data)
        for i in range(count):
            pos = self.block(data[i * self.size:(i + 1) * self.size], pos)
        return pos

    def _range(self, data: memoryview, pos: int) -> bool:
        """Erase, write and read back a range of blocks with one call each; False on any failure (the
        caller then does the blocks one by one, which says where and why)."""
        n, erased = len(data), self.blocks_erased
        if len(self.back_range) != n:
            self.back_range = bytearray(n)
        try:
            if self.erase:
                self.changed = True
                self.flash.erase(pos, n)
                self.blocks_erased += n // self.size
            self.changed = True
            if self.flash.write(pos, data) == n:
                started = time.monotonic()
                same = self.flash.read(pos, self.back_range) == n and self.back_range == data
                self.verify_seconds += time.monotonic() - started
                if same:
                    return True
            failure = "short write or read-back mismatch"
        except OSError as exc:
            failure = exc.strerror or str(exc)
        log.get().warning("mtd_write", note="range failed, doing it block by block", offset=pos, length=n,
                          error=failure)
        self.blocks_erased = erased
        return False

    def block(self, data: bytes | bytearray | memoryview, pos: int, blank: bool = False) -> int:
        """Write one erase block at the first usable block from ``pos``; returns the offset after it.
        ``blank``: only erase it and check that it reads erased (``data`` is then all 0xFF)."""
        while True:
            if pos + self.size > self.end:
                raise MtdError("Insufficient space: the image does not fit the device", offset=pos,
                               written=self.changed, hint=f"device ends at {self.end}")
            if self.nand and self.skip_bad and self._is_bad(pos):
                self.skipped.append(pos)
                log.get().info("mtd_write", note=f"Skipping bad block at 0x{pos:08x}", offset=pos)
                pos += self.size
                continue
            failure = self._program(data, pos, write=not blank)
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

    def commit(self, data: bytes | bytearray | memoryview, pos: int) -> None:
        """Program a block the pass left ``blank`` at ``pos`` (no erase: it reads erased), read it back and
        compare. A failure erases it again, so that no part of it is left, and raises."""
        failure = self._program(data, pos, erase=False)
        if failure is None:
            log.get().info("mtd_write", note="root head written", offset=pos)
            return
        try:
            self.flash.erase(pos, self.size)
            left = "left erased"
        except OSError as exc:
            left = f"erasing it again failed too ({exc.strerror}): it may hold part of its data"
        raise MtdError(f"{failure.message} (the held root head block; {left})", offset=failure.offset,
                       written=True, hint="the firmware on the flash is not whole: write it again")

    def _program(self, data: bytes | bytearray | memoryview, pos: int, write: bool = True,
                 erase: bool = True) -> MtdError | None:
        """Erase (unless ``erase`` False or ``mtd -n``), write (unless ``write`` False) and read back one
        block; the failure, or None."""
        if self.erase and erase:
            try:
                self.flash.erase(pos, self.size)
            except OSError as exc:
                self.changed = True  # a failed erase may have cleared part of the block
                return MtdError(f"Failed to erase block: {exc.strerror}", offset=pos, written=True)
            self.changed = True
            self.blocks_erased += 1
        try:
            n = self.flash.write(pos, data) if write else self.size
        except OSError as exc:
            self.changed = True
            return MtdError(f"Error writing image: {exc.strerror}", offset=pos, written=True)
        self.changed = self.changed or write
        if n != self.size:
            return MtdError(f"Short write: {n} of {self.size} bytes", offset=pos + n, written=True)
        started = time.monotonic()
        try:
            got = self.flash.read(pos, self.back)
        except OSError as exc:
            return MtdError(f"Read-back failed: {exc.strerror}", offset=pos, written=True)
        same = got == self.size and self.back == data  # bytearray first: one memcmp
        self.verify_seconds += time.monotonic() - started
        if not same:
            at = first_difference(self.back[:got], data)
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


class HeldBlock:
    """The erase block held back from the pass (``hold``): its data, where the pass left it erased, and
    the image offset once past which it is programmed."""

    def __init__(self, find: FindHeld) -> None:
        self.find = find
        self.data = b""
        self.commit_at = 0
        self.pos: int | None = None  # device offset of the erased block; None: nothing held (yet)
        self.committed = False

    def takes(self, at: int, block: memoryview, n: int) -> bool:
        """Whether ``block`` (the image's erase block at ``at``, ``n`` bytes of it the image's) is the one
        to hold, not having found one yet; if so its data is kept here and the block turned to 0xFF."""
        if self.pos is not None:
            return False
        held = self.find(at, block[:n])
        if held is None:
            return False
        if not at <= held.start < at + n:
            log.get().warning("mtd_write", note="held bytes outside the erase block they were found in: "
                              "not held", start=held.start, block=at)
            return False
        self.data, self.commit_at = bytes(block), held.commit_at
        block[:] = b"\xff" * len(block)
        return True

    @property
    def pending(self) -> bool:
        return self.pos is not None and not self.committed

    def commit(self, put: Programmer) -> None:
        if self.pos is not None and not self.committed:
            put.commit(self.data, self.pos)
            self.committed = True


def first_difference(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
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
