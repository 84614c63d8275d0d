"""A small QMP client (QEMU Machine Protocol) on a connected unix socket.

The harness listens on a socket in the VM's workdir and QEMU connects to it at start-up (``-chardev
socket,server=off`` + ``-mon mode=control``), so no greeting is ever lost and nothing polls for a socket
file. A reader thread splits the stream into command replies (matched by ``id``) and asynchronous events
(``SHUTDOWN``, ``STOP``, ``BLOCK_IO_ERROR``, ...), kept in ``events``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from typing import Any

Message = dict[str, Any]


class QMPError(RuntimeError):
    """QEMU answered a command with an error, or the connection ended before the answer."""


class QMP:
    def __init__(self, sock: socket.socket, name: str = "qmp") -> None:
        self.name = name
        self._sock = sock
        self._file = sock.makefile("rb")
        self._cond = threading.Condition()
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self.events: list[Message] = []
        self.greeting: Message | None = None
        self.closed = False
        self._thread = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._thread.start()
        self.greeting = self._wait(lambda: self.greeting, 30.0, "the QMP greeting")
        self.execute("qmp_capabilities")

    def _read(self) -> None:
        try:
            for line in self._file:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self._cond:
                    if "QMP" in msg:
                        self.greeting = msg
                    elif "event" in msg:
                        self.events.append(msg)
                    elif "id" in msg:
                        self._replies[str(msg["id"])] = msg
                    self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def _wait(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = check()
                if found is not None:
                    return found
                if self.closed:
                    raise QMPError(f"{self.name}: connection closed while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no {what} within {timeout:.0f} s")
                self._cond.wait(left)

    def execute(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or QMPError with QEMU's description."""
        ident = f"{self.name}-{next(self._ids)}"
        msg: Message = {"execute": command, "id": ident}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise QMPError(f"{self.name}: cannot send {command}: {exc.strerror}") from exc
        reply: Message = self._wait(lambda: self._replies.pop(ident, None), timeout, f"reply to {command}")
        if "error" in reply:
            err = reply["error"]
            raise QMPError(f"{self.name}: {command}: {err.get('class')}: {err.get('desc')}")
        return reply.get("return")

    def quit(self) -> None:
        """``quit``: QEMU stops at once (a power cut for the guest). The connection may end before the
        reply arrives; both count as done."""
        with contextlib.suppress(QMPError):
            self.execute("quit")

    def wait_event(self, name: str, timeout: float = 30.0) -> Message:
        found: Message = self._wait(lambda: next((e for e in self.events if e["event"] == name), None),
                                    timeout, f"event {name}")
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._file.close()
        self._sock.close()
