"""Page-aligned chunk buffers and the threads that work on them in order: the block writer's writes,
its read-back, and a source's own check (a sha256) beside the writes.

Runs after the pivot in a minimal ramfs: standard library only.
"""

from __future__ import annotations

import contextlib
import mmap
import queue
import threading
from collections.abc import Callable

Check = Callable[[memoryview], None]  # called with each chunk's bytes, in order (see ``block.write_image``)


class Chunk:
    """A page-aligned buffer and the piece of the image it holds."""

    def __init__(self, size: int) -> None:
        self.buf = mmap.mmap(-1, size)
        self.view = memoryview(self.buf)
        self.pos = 0  # offset of this piece in the image
        self.size = 0  # bytes of the image it holds
        self.got = 0  # bytes read back (verify)
        self.error: BaseException | None = None
        self.error_at = 0  # target offset where the failing call started

    def close(self) -> None:
        self.view.release()
        # A traceback may still hold a slice of the buffer; then the mapping goes with the garbage.
        with contextlib.suppress(BufferError):
            self.buf.close()


class Worker:
    """One thread applying ``fn`` to chunks in submission order; stops working after the first failure."""

    def __init__(self, fn: Callable[[Chunk], None], name: str) -> None:
        self._fn = fn
        self._todo: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self.pending = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failed = False
        while (chunk := self._todo.get()) is not None:
            if failed:
                chunk.error = RuntimeError("not attempted after an earlier failure")
            else:
                try:
                    self._fn(chunk)
                except BaseException as exc:
                    chunk.error = exc.with_traceback(None)
                    failed = True
            self._done.put(chunk)

    def submit(self, chunk: Chunk) -> None:
        chunk.error = None
        self.pending += 1
        self._todo.put(chunk)

    def take(self) -> Chunk:
        chunk = self._done.get()
        self.pending -= 1
        return chunk

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join()


class Checks:
    """``check`` applied to the chunks in a thread of its own, in order, while they are written; after the
    first failure the rest are passed over."""

    def __init__(self, check: Check) -> None:
        self._check = check
        self.failure: tuple[int, BaseException] | None = None  # (image offset of the chunk, what it raised)
        self._worker = Worker(self._run, "check_image")
        self._checked: set[int] = set()  # id() of the chunks whose check has returned

    def _run(self, chunk: Chunk) -> None:
        if self.failure is not None:
            return
        try:
            self._check(chunk.view[:chunk.size])
        except BaseException as exc:
            self.failure = (chunk.pos, exc.with_traceback(None))

    def submit(self, chunk: Chunk) -> None:
        self._checked.discard(id(chunk))
        self._worker.submit(chunk)

    def wait(self, chunk: Chunk | None = None) -> tuple[int, BaseException] | None:
        """Wait until ``chunk``'s check (every check when None) has returned; the failure, if any."""
        while self._worker.pending and (chunk is None or id(chunk) not in self._checked):
            self._checked.add(id(self._worker.take()))
        return self.failure

    def close(self) -> None:
        self._worker.close()
