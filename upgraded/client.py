"""Bus client library and the ``upgraded call|list|listen`` commands (shaped like the ubus CLI)."""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from upgraded import rpc
from upgraded.bus import socket_path
from upgraded.rpc import Status
from wrtcore.errors import EXIT_INTERRUPTED, EXIT_INVALID, BusUnavailable, UpgradeError

MAX_REPLY = 16 << 20
_Params = list[Any]  # spelled here: inside Client, ``list`` is the method
DEFAULT_TIMEOUT = 30.0


class BusTimeout(UpgradeError):
    pass


class RpcFailure(UpgradeError):
    """The server answered with a JSON-RPC error (malformed request, unknown method, too large)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code


@dataclass(frozen=True)
class Notification:
    method: str  # "object.event"
    params: dict[str, Any]


class Client:
    def __init__(self, sock: socket.socket, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.sock = sock
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buf = bytearray()
        self._pending: deque[Notification] = deque()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- public calls -----------------------------------------------------------------------------
    def call(self, obj: str, method: str, args: Mapping[str, Any] | None = None,
             sid: str = rpc.DEFAULT_SID) -> tuple[int, dict[str, Any] | None]:
        """(status, body or None). A reply that does not come in time is status 7 (TIMEOUT)."""
        try:
            result = self._request("call", [sid, obj, method, dict(args or {})])
        except BusTimeout:
            return Status.TIMEOUT, None
        if (not isinstance(result, list) or not result or not isinstance(result[0], int)
                or (len(result) > 1 and not isinstance(result[1], dict))):
            raise UpgradeError(f"malformed reply from upgraded: {str(result)[:200]}")
        return result[0], (result[1] if len(result) > 1 else None)

    def list(self, pattern: str = "*", sid: str = rpc.DEFAULT_SID) -> dict[str, dict[str, dict[str, str]]]:
        result = self._request("list", [sid, pattern])
        if not isinstance(result, dict):
            raise UpgradeError(f"malformed reply from upgraded: {str(result)[:200]}")
        return result

    def subscribe(self, obj: str, sid: str = rpc.DEFAULT_SID) -> int:
        result = self._request("subscribe", [sid, obj])
        return int(result[0]) if isinstance(result, list) and result else int(Status.UNKNOWN_ERROR)

    def notifications(self, timeout: float | None = None) -> Iterator[Notification]:
        """Notifications as they arrive; ends after ``timeout`` seconds (None: never).

        Raises BusUnavailable when the bus closes the connection (upgraded stopped or rebooted).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._pending:
                yield self._pending.popleft()
            try:
                msg = self._read(deadline)
            except BusTimeout:
                return
            self._take_notification(msg)

    # -- plumbing ---------------------------------------------------------------------------------
    def _request(self, method: str, params: _Params) -> Any:
        req_id = next(self._ids)
        try:
            self.sock.sendall(rpc.encode_request(req_id, method, params))
        except OSError as exc:
            raise BusUnavailable(f"sending to upgraded failed: {exc}") from None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            msg = self._read(deadline)
            if self._take_notification(msg):
                continue
            if msg.get("id") == req_id or (msg.get("id") is None and "error" in msg):
                err = msg.get("error")
                if isinstance(err, dict):
                    raise RpcFailure(int(err.get("code", 0)), str(err.get("message", "")))
                return msg.get("result")
            # a late answer to a request that timed out: drop it

    def _take_notification(self, msg: dict[str, Any]) -> bool:
        if "id" in msg or not isinstance(msg.get("method"), str):
            return False
        params = msg.get("params")
        self._pending.append(Notification(msg["method"], params if isinstance(params, dict) else {}))
        return True

    def _read(self, deadline: float | None) -> dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise UpgradeError("malformed reply from upgraded") from None
                if isinstance(msg, dict):
                    return msg
                continue
            if len(self._buf) > MAX_REPLY:
                raise UpgradeError("reply from upgraded too large")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BusTimeout("no reply from upgraded in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise BusTimeout("no reply from upgraded in time") from None
            except OSError as exc:
                raise BusUnavailable(f"connection to upgraded lost: {exc}") from None
            if not data:
                raise BusUnavailable("connection closed by upgraded")
            self._buf += data


def connect(path: str | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> Client:
    path = path or socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise BusUnavailable(f"cannot connect to {path}: {exc.strerror or exc}",
                             hint="is upgraded running? UPGRADED_SOCKET selects another socket") from None
    return Client(sock, timeout)


# -- CLI ------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-s", "--socket", help="bus socket (default: $UPGRADED_SOCKET or %(default)s)",
                        default=None)
    common.add_argument("-t", "--timeout", type=float, default=None,
                        help=f"seconds to wait (call/list: default {DEFAULT_TIMEOUT:g}; listen: forever)")
    p = argparse.ArgumentParser(prog="upgraded", description="talk to upgraded's bus")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("call", parents=[common], help="call OBJECT METHOD [JSON]")
    c.add_argument("object")
    c.add_argument("method")
    c.add_argument("message", nargs="?", default=None)
    ls = sub.add_parser("list", parents=[common], help="list objects [PATTERN]")
    ls.add_argument("-v", "--verbose", action="store_true", help="also show methods and arguments")
    ls.add_argument("pattern", nargs="?", default="*")
    li = sub.add_parser("listen", parents=[common], help="print notifications [OBJECT...]")
    li.add_argument("objects", nargs="*")
    return p


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent="\t"), flush=True)


def client_main(argv: list[str]) -> int:
    """``argv`` starts with the subcommand: ["call", "system", "board"], ["list"], ["listen"]."""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "call":
            message: Any = {}
            if args.message is not None:
                try:
                    message = json.loads(args.message)
                except ValueError:
                    message = None
                if not isinstance(message, dict):
                    print("Failed to parse message data", file=sys.stderr)
                    return EXIT_INVALID
            timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
            with connect(args.socket, timeout) as client:
                status, body = client.call(args.object, args.method, message)
            if body is not None:
                _print(body)
            if status != Status.OK:
                print(f"Command failed: {rpc.strerror(status)}", file=sys.stderr)
            return int(status)
        if args.cmd == "list":
            timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
            with connect(args.socket, timeout) as client:
                objects = client.list(args.pattern)
            for name, methods in objects.items():
                print(f"'{name}'" if args.verbose else name)
                if args.verbose:
                    for method, signature in methods.items():
                        print(f'\t"{method}":{json.dumps(signature, separators=(",", ":"))}')
            return 0 if objects else int(Status.NOT_FOUND)
        with connect(args.socket, DEFAULT_TIMEOUT) as client:
            for obj in args.objects or list(client.list()):
                status = client.subscribe(obj)
                if status != Status.OK:
                    print(f"Command failed: {obj}: {rpc.strerror(status)}", file=sys.stderr)
                    return status
            client.timeout = None
            for note in client.notifications(args.timeout):
                print(json.dumps({note.method: note.params}, separators=(",", ":")), flush=True)
        return 0
    except BusUnavailable as exc:
        print(f"Command failed: {rpc.strerror(Status.CONNECTION_FAILED)} ({exc})", file=sys.stderr)
        return int(Status.CONNECTION_FAILED)
    except UpgradeError as exc:
        print(f"Command failed: {exc}", file=sys.stderr)
        return int(Status.UNKNOWN_ERROR)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
