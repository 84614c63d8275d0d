"""The read-back of a block write: the target's cached pages dropped, the image's extent read back
(``O_DIRECT`` when the write used it) and compared with the source re-read, or with the sha256 of each
chunk taken while writing; a mismatch is narrowed to its first differing byte when the source can be
read again (``stage2.writers.block``'s module text says when which is used).

Runs after the pivot in a minimal ramfs: standard library and ``wrtcore`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import BinaryIO

from stage2.writers.chunks import Chunk, Worker
from stage2.writers.source import SourceError, Stream, read_source
from stage2.writers.target import Target, drop_cache, open_target, reason
from wrtcore.errors import WriteError

BUFFERS = 2  # one being read back, one being compared


def verify(info: Target, base: int, direct: bool, chunk_size: int, produced: int, digests: list[bytes],
            source: BinaryIO, start: int | None, length: int | None, compare_source: bool = False,
            decompress: bool = True) -> None:
    """Drop the target's cached pages, read the image's extent back and compare it: with the source
    re-read (``compare_source``), else with the chunk digests taken while writing."""
    try:
        fd, direct = open_target(info, os.O_RDONLY, direct)
    except OSError as exc:
        raise WriteError(f"verify failed: cannot open target: {exc.strerror}", offset=base,
                         written=True) from exc
    align = info.align if direct else 1

    def read(chunk: Chunk) -> None:
        want = -(-chunk.size // align) * align  # O_DIRECT reads whole blocks
        got = 0
        while got < want:
            chunk.error_at = base + chunk.pos + got
            n = os.preadv(fd, [chunk.view[got:want]], base + chunk.pos + got)
            if n == 0 or (direct and n % align):  # end of the target
                got += n
                break
            got += n
        chunk.got = min(got, chunk.size)

    chunks = [Chunk(chunk_size) for _ in range(BUFFERS)]
    expected = Chunk(chunk_size) if compare_source else None
    worker = Worker(read, "verify_image")
    count = len(digests)
    try:
        drop_cache(fd, info, base, produced)
        queued = 0
        for chunk in chunks[:count]:
            chunk.pos, chunk.size = queued * chunk_size, min(chunk_size, produced - queued * chunk_size)
            worker.submit(chunk)
            queued += 1
        for index in range(count):
            chunk = worker.take()
            if chunk.error is not None:
                raise WriteError(f"verify read failed: {reason(chunk.error)}", offset=chunk.error_at,
                                 written=True) from chunk.error
            if expected is not None and start is not None:
                want = read_source(source, start + chunk.pos, expected.view[:chunk.size])
                actual = chunk.view[:chunk.got]
                if chunk.got < chunk.size or want.tobytes() != actual.tobytes():
                    first = first_difference(want, actual)
                    raise WriteError("verify mismatch", offset=base + chunk.pos + first, written=True,
                                     hint=f"first differing byte; chunk {index} of {count}")
            elif chunk.got < chunk.size or hashlib.sha256(chunk.view[:chunk.got]).digest() != digests[index]:
                pos, how = locate(chunk, index, chunk_size, digests, source, start, length, decompress)
                raise WriteError("verify mismatch", offset=base + pos, written=True,
                                 hint=f"{how}; chunk {index} of {count}")
            if queued < count:
                chunk.pos, chunk.size = queued * chunk_size, min(chunk_size, produced - queued * chunk_size)
                worker.submit(chunk)
                queued += 1
    finally:
        worker.close()
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, base, produced, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        for chunk in chunks:
            chunk.close()
        if expected is not None:
            expected.close()


def locate(readback: Chunk, index: int, chunk_size: int, digests: list[bytes], source: BinaryIO,
            start: int | None, length: int | None, decompress: bool = True) -> tuple[int, str]:
    """Image offset of the first byte of chunk ``index`` that differs, regenerating it from the source."""
    if start is None:
        return readback.pos, "first differing chunk (the source cannot be re-read)"
    scratch = Chunk(chunk_size)
    try:
        source.seek(start)
        stream = Stream(source, length, decompress=decompress)
        n = 0
        for _ in range(index + 1):
            n = stream.fill(scratch.view)
        if n != readback.size or hashlib.sha256(scratch.view[:n]).digest() != digests[index]:
            return readback.pos, "first differing chunk (the source changed since it was written)"
        first = first_difference(scratch.view[:n], readback.view[:readback.got])
        return readback.pos + first, "first differing byte"
    except (OSError, ValueError, SourceError):
        return readback.pos, "first differing chunk (the source could not be re-read)"
    finally:
        scratch.close()


def first_difference(expected: memoryview, actual: memoryview) -> int:
    """Index of the first differing byte (``len(actual)`` when it is a short prefix of ``expected``)."""
    step = 4096
    for base in range(0, min(len(expected), len(actual)), step):
        a, b = expected[base:base + step], actual[base:base + step]
        if a != b:
            return base + next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    return min(len(expected), len(actual))
