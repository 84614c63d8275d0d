"""How sysupgrade hands the upgrade over to upgraded: ``call system sysupgrade`` on the bus (then
following the progress notifications until the device reboots), or, in failsafe where there is no bus,
the hand-over file ``/tmp/sysupgrade`` and a wake-up of preinit waiting on ``/tmp/.failsafe``."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from sysupgrade import paths
from wrtcore.errors import EXIT_FAILURE, EXIT_OK, BusUnavailable, UpgradeError

SOCKET_ENV = "UPGRADED_SOCKET"
UBUS_SID = "0" * 32
REPLY_TIMEOUT = 120.0  # upper bound for upgraded to validate and answer the call
MAX_LINE = 1 << 20
# ubus status codes and the ubus CLI's names for them
UBUS_STATUS = {
    0: "Success", 1: "Invalid command", 2: "Invalid argument", 3: "Method not found", 4: "Not found",
    5: "No response", 6: "Permission denied", 7: "Request timed out", 8: "Operation not supported",
    9: "Unknown error", 10: "Connection failed",
}
# stage2 states in which an accepted upgrade has ended badly (reported before the reboot)
FAILED_STATES = frozenset({"aborted", "failed_after_write", "failed"})


class Say(Protocol):
    def info(self, line: str) -> None: ...

    def error(self, line: str) -> None: ...


def failsafe_handover(image_path: str) -> bytes:
    """``/tmp/sysupgrade`` content: RAM_ROOT, image and command, NUL-separated, no trailing NUL."""
    return b"\0".join(os.fsencode(p) for p in (paths.RAM_ROOT, image_path, paths.STAGE2_COMMAND))


def write_failsafe_handover(image_path: str, root: str) -> None:
    target = paths.rooted(paths.FAILSAFE_HANDOVER, root)
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(failsafe_handover(image_path))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)  # the watcher never sees half a file


def wake_failsafe(root: str) -> bool:
    """OpenWrt unlocks /tmp/.failsafe so that preinit, waiting in failsafe, goes on to the upgrade.
    Here it is a FIFO preinit reads: one line wakes it. False when nobody waits on it."""
    try:
        fd = os.open(paths.rooted(paths.FAILSAFE_LOCK, root), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENOENT: not in failsafe preinit; ENXIO: no reader
        return False
    try:
        os.write(fd, b"sysupgrade\n")
    finally:
        os.close(fd)
    return True


# --- the bus -------------------------------------------------------------------------------------


def socket_path(root: str, env: Mapping[str, str] | None = None) -> str:
    value = (os.environ if env is None else env).get(SOCKET_ENV)
    return value or paths.rooted(paths.UPGRADED_SOCKET, root)


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _send_request(path: str, message: Mapping[str, Any],
                  reply_timeout: float = REPLY_TIMEOUT) -> Iterator[dict[str, Any]]:
    """Subscribe to ``system`` events, ``call system sysupgrade``, yield what arrives until EOF.

    Newline-delimited JSON-RPC 2.0 on a unix stream socket: the call's reply (id 2) and then
    ``system.progress`` notifications are yielded as decoded objects. Raises ``BusUnavailable`` when
    the socket cannot be reached, ``UpgradeError`` on a timeout or an unreadable line. (A private copy
    of the protocol until ``upgraded.client`` settles.)
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(reply_timeout)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise BusUnavailable("Command failed: Connection failed",
                             f"{path}: {exc.strerror or exc}") from exc
    with sock, sock.makefile("rb") as rfile:

        def receive() -> dict[str, Any] | None:
            try:
                line = rfile.readline(MAX_LINE)
            except TimeoutError as exc:
                raise UpgradeError("Command failed: Request timed out") from exc
            except OSError:
                return None  # reset by the peer: the connection is gone, as at the reboot
            if not line:
                return None
            if not line.endswith(b"\n") and len(line) >= MAX_LINE:
                raise UpgradeError("Command failed: reply from upgraded too long")
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise UpgradeError("Command failed: unreadable reply from upgraded") from exc
            if not isinstance(obj, dict):
                raise UpgradeError("Command failed: unreadable reply from upgraded")
            return obj

        try:
            sock.sendall(_encode({"jsonrpc": "2.0", "id": 1, "method": "subscribe",
                                  "params": [UBUS_SID, "system"]}))
            while (msg := receive()) is not None and msg.get("id") != 1:
                yield msg
            if msg is None:
                return
            sock.sendall(_encode({"jsonrpc": "2.0", "id": 2, "method": "call",
                                  "params": [UBUS_SID, "system", "sysupgrade", dict(message)]}))
        except OSError as exc:
            raise BusUnavailable("Command failed: Connection failed", str(exc)) from exc
        while (msg := receive()) is not None:
            if msg.get("id") == 2:
                sock.settimeout(None)  # accepted or not, the rest lasts until the reboot
            yield msg


def _reply_outcome(msg: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(accepted, error message) from the call's reply."""
    if isinstance(msg.get("error"), Mapping):
        return False, f"Command failed: {msg['error'].get('message', 'unknown error')}"
    result = msg.get("result")
    if not isinstance(result, list) or not result or not isinstance(result[0], int):
        return False, "Command failed: unreadable reply from upgraded"
    status = result[0]
    body = result[1] if len(result) > 1 and isinstance(result[1], Mapping) else {}
    if status == 0 and body.get("accepted", True) is not False:
        return True, None
    error = body.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return False, error["message"]
    return False, f"Command failed: {UBUS_STATUS.get(status, f'status {status}')}"


def describe_progress(params: Mapping[str, Any]) -> str:
    words = [str(params[k]) for k in ("state", "event", "step") if params.get(k)]
    progress = params.get("progress")
    if isinstance(progress, Mapping) and progress.get("total"):
        words.append(f"[{progress.get('done', 0)}/{progress['total']}]")
    for key in ("message", "error"):
        if params.get(key):
            words.append(f"{key}={params[key]}")
    return "upgrade: " + " ".join(words)


def request_upgrade(path: str, message: Mapping[str, Any], console: Say) -> int:
    """Send the request, report the answer, follow the progress; the exit code."""
    accepted = False
    failure: str | None = None
    for msg in _send_request(path, message):
        if msg.get("id") == 2 and not accepted:
            accepted, error = _reply_outcome(msg)
            if not accepted:
                console.error(error or "Command failed")
                return EXIT_FAILURE
            console.info("Upgrade accepted; following its progress until the reboot.")
            continue
        if msg.get("method") == "system.progress" and isinstance(msg.get("params"), Mapping):
            params = msg["params"]
            console.info(describe_progress(params))
            if params.get("state") in FAILED_STATES:
                failure = describe_progress(params)
    if not accepted:
        raise BusUnavailable("Command failed: Connection failed", "upgraded closed the connection unanswered")
    if failure is not None:
        console.error(f"Upgrade failed after it was accepted ({failure})")
        return EXIT_FAILURE
    return EXIT_OK


