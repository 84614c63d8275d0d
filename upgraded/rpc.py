"""The bus wire format: ubus status codes and newline-delimited JSON-RPC 2.0 in ubus's envelope.

One JSON value per line, UTF-8. Requests::

    {"jsonrpc":"2.0","id":1,"method":"call","params":[SID,"system","sysupgrade",{...}]}
    {"jsonrpc":"2.0","id":2,"method":"list","params":[SID,"sys*"]}
    {"jsonrpc":"2.0","id":3,"method":"subscribe","params":[SID,"system"]}

Replies carry ``"result": [STATUS]`` or ``[STATUS, {body}]`` for ``call`` and ``subscribe``, and
``{objname: {method: {argname: type}}}`` for ``list``. Notifications pushed to subscribers have no id:
``{"jsonrpc":"2.0","method":"system.progress","params":{...}}``. Envelope errors are JSON-RPC errors.
Everything here is pure: no sockets. The call model (``Caller``, ``Method``, ``Reply``) lives here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

JSONRPC = "2.0"
MAX_REQUEST = 1 << 20  # bytes in one request line, newline excluded
DEFAULT_SID = "00000000000000000000000000000000"

# JSON-RPC 2.0 error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class Status(IntEnum):
    """ubus status codes (libubus ``enum ubus_msg_status``)."""

    OK = 0
    INVALID_COMMAND = 1
    INVALID_ARGUMENT = 2
    METHOD_NOT_FOUND = 3
    NOT_FOUND = 4
    NO_DATA = 5
    PERMISSION_DENIED = 6
    TIMEOUT = 7
    NOT_SUPPORTED = 8
    UNKNOWN_ERROR = 9
    CONNECTION_FAILED = 10
    NO_MEMORY = 11
    PARSE_ERROR = 12
    SYSTEM_ERROR = 13


_STRERROR = {
    Status.OK: "Success",
    Status.INVALID_COMMAND: "Invalid command",
    Status.INVALID_ARGUMENT: "Invalid argument",
    Status.METHOD_NOT_FOUND: "Method not found",
    Status.NOT_FOUND: "Not found",
    Status.NO_DATA: "No response",
    Status.PERMISSION_DENIED: "Permission denied",
    Status.TIMEOUT: "Request timed out",
    Status.NOT_SUPPORTED: "Operation not supported",
    Status.UNKNOWN_ERROR: "Unknown error",
    Status.CONNECTION_FAILED: "Connection failed",
    Status.NO_MEMORY: "Out of memory",
    Status.PARSE_ERROR: "Parsing message data failed",
    Status.SYSTEM_ERROR: "System error",
}


def strerror(status: int) -> str:
    """The text the ubus CLI prints after ``Command failed:`` (libubus ``ubus_strerror``)."""
    try:
        return _STRERROR[Status(status)]
    except ValueError:
        return f"Unknown error: {status}"


class RpcError(Exception):
    """A JSON-RPC level error: answered with ``{"error":{"code","message"}}``."""

    def __init__(self, code: int, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True)
class Request:
    method: str
    params: Any
    id: Any = None
    has_id: bool = True  # False: a JSON-RPC notification, which gets no reply


@dataclass(frozen=True)
class Call:
    sid: str
    object: str
    method: str
    args: dict[str, Any]


# -- the call model: who calls, what a method declares, what it answers ---------------------------
@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Reply:
    """A method's answer. ``after`` runs (in its own thread) once the reply has been written."""

    status: Status = Status.OK
    body: Mapping[str, Any] | None = None
    after: Callable[[], None] | None = None

    @classmethod
    def error(cls, status: Status, message: str) -> Reply:
        return cls(status, {"error": {"message": message}})


Handler = Callable[[dict[str, Any], Caller], Reply]


@dataclass(frozen=True)
class Method:
    handler: Handler
    signature: Mapping[str, str] = field(default_factory=dict)  # argname -> "string", "boolean", ...
    root_only: bool = False


def permitted(method: Method, caller: Caller) -> bool:
    return not method.root_only or caller.uid == 0


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int | float)
                                                       and not isinstance(value, bool))


def parse_request(line: bytes | str) -> Request:
    """Decode one request line; raises RpcError for malformed JSON or an invalid envelope."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RpcError(PARSE_ERROR, f"Parse error: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "Invalid request: not an object")
    has_id = "id" in doc
    req_id = doc.get("id")
    if not _valid_id(req_id):
        raise RpcError(INVALID_REQUEST, "Invalid request: bad id")
    if doc.get("jsonrpc") != JSONRPC:
        raise RpcError(INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"', req_id)
    method = doc.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, 'Invalid request: "method" must be a string', req_id)
    params = doc.get("params", [])
    if not isinstance(params, list | dict):
        raise RpcError(INVALID_REQUEST, 'Invalid request: "params" must be an array', req_id)
    return Request(method=method, params=params, id=req_id, has_id=has_id)


def _params(req: Request, lo: int, hi: int, usage: str) -> list[Any]:
    p = req.params
    if not isinstance(p, list) or not lo <= len(p) <= hi:
        raise RpcError(INVALID_PARAMS, f"Invalid params: expected {usage}", req.id)
    if not isinstance(p[0], str):
        raise RpcError(INVALID_PARAMS, "Invalid params: session id must be a string", req.id)
    return p


def parse_call(req: Request) -> Call:
    """``params``: [SID, object, method] or [SID, object, method, {args}]."""
    p = _params(req, 3, 4, "[sid, object, method, {args}]")
    if not isinstance(p[1], str) or not isinstance(p[2], str):
        raise RpcError(INVALID_PARAMS, "Invalid params: object and method must be strings", req.id)
    args = p[3] if len(p) == 4 else {}
    if not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: message must be an object", req.id)
    return Call(sid=p[0], object=p[1], method=p[2], args=args)


def parse_list(req: Request) -> str:
    """``params``: [SID] or [SID, pattern]; returns the glob pattern ("*" when absent)."""
    p = _params(req, 1, 2, "[sid, pattern]")
    if len(p) == 2 and not isinstance(p[1], str):
        raise RpcError(INVALID_PARAMS, "Invalid params: pattern must be a string", req.id)
    return p[1] if len(p) == 2 else "*"


def parse_subscribe(req: Request) -> str:
    """``params``: [SID, object]; returns the object name."""
    p = _params(req, 2, 2, "[sid, object]")
    if not isinstance(p[1], str):
        raise RpcError(INVALID_PARAMS, "Invalid params: object must be a string", req.id)
    return p[1]


def _line(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str) + "\n").encode()


def status_result(status: int, body: Mapping[str, Any] | None = None) -> list[Any]:
    """ubus's reply tuple: [STATUS] with no body, [STATUS, body] otherwise."""
    return [int(status)] if body is None else [int(status), dict(body)]


def encode_result(req_id: Any, result: Any) -> bytes:
    return _line({"jsonrpc": JSONRPC, "id": req_id, "result": result})


def encode_error(req_id: Any, code: int, message: str) -> bytes:
    return _line({"jsonrpc": JSONRPC, "id": req_id, "error": {"code": code, "message": message}})


def encode_request(req_id: int, method: str, params: list[Any]) -> bytes:
    return _line({"jsonrpc": JSONRPC, "id": req_id, "method": method, "params": params})


def encode_notification(method: str, params: Mapping[str, Any]) -> bytes:
    return _line({"jsonrpc": JSONRPC, "method": method, "params": dict(params)})
