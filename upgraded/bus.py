"""The bus server: a unix stream socket speaking rpc.py's framing, one thread per connection.

Objects register methods with an argument signature (shown by ``list``) and a ``root_only`` flag; the
caller's credentials come from SO_PEERCRED, read once per connection. A bad request is logged and
answered where possible, and never disturbs other connections. ``notify`` pushes events to
subscribers with a bounded send; a subscriber that cannot take it is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

from upgraded import rpc
from upgraded.rpc import Caller, Handler, Method, Reply, Status, permitted
from wrtcore import log

__all__ = ["DEFAULT_SOCKET", "Bus", "Caller", "Handler", "Method", "Reply", "peer_credentials", "permitted",
           "socket_path"]

DEFAULT_SOCKET = "/var/run/upgraded.sock"
CHUNK = 64 * 1024


def socket_path() -> str:
    """The bus socket: ``$UPGRADED_SOCKET`` or /var/run/upgraded.sock."""
    return os.environ.get("UPGRADED_SOCKET") or DEFAULT_SOCKET


def peer_credentials(sock: socket.socket) -> Caller:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(pid, uid, gid)


class _Conn:
    def __init__(self, sock: socket.socket, caller: Caller, send_timeout: float) -> None:
        self.sock = sock
        self.caller = caller
        self.send_timeout = send_timeout
        self.alive = True
        self.thread: threading.Thread | None = None
        self._wlock = threading.Lock()
        sec = int(send_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", sec, int((send_timeout - sec) * 1e6)))

    def send(self, data: bytes) -> bool:
        """Write one line whole, or kill the connection (a partial line would corrupt the stream)."""
        if not self._wlock.acquire(timeout=self.send_timeout):
            self.kill("send lock timeout")
            return False
        try:
            if not self.alive:
                return False
            self.sock.sendall(data, socket.MSG_NOSIGNAL)
            return True
        except OSError as exc:
            self.kill(f"send failed: {exc}")
            return False
        finally:
            self._wlock.release()

    def kill(self, why: str) -> None:
        if self.alive:
            log.get().info("bus.drop", pid=self.caller.pid, reason=why)
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader, which closes the socket


class Bus:
    def __init__(self, path: str | None = None, *, send_timeout: float = 2.0,
                 max_connections: int = 64) -> None:
        self.path = path or socket_path()
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Method]] = {}
        self._subs: dict[str, set[_Conn]] = {}
        self._conns: set[_Conn] = set()
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1

    # -- registry -------------------------------------------------------------------------------
    def add_object(self, name: str, methods: Mapping[str, Method]) -> None:
        with self._lock:
            self._objects[name] = dict(methods)

    def describe(self, pattern: str = "*") -> dict[str, dict[str, dict[str, str]]]:
        with self._lock:
            return {name: {m: dict(meth.signature) for m, meth in methods.items()}
                    for name, methods in sorted(self._objects.items())
                    if fnmatch.fnmatchcase(name, pattern)}

    def call(self, obj: str, method: str, args: dict[str, Any], caller: Caller) -> Reply:
        """Dispatch one call with ubus semantics (4 unknown object, 3 unknown method, 6 denied)."""
        with self._lock:
            methods = self._objects.get(obj)
        meth = methods.get(method) if methods is not None else None
        if meth is None:
            reply = Reply(Status.NOT_FOUND if methods is None else Status.METHOD_NOT_FOUND)
        elif not permitted(meth, caller):
            reply = Reply(Status.PERMISSION_DENIED)
        else:
            try:
                reply = meth.handler(args, caller)
            except Exception as exc:
                log.get().error("bus.handler_failed", object=obj, method=method, error=repr(exc))
                reply = Reply(Status.UNKNOWN_ERROR)
        log.get().info("bus.call", object=obj, method=method, uid=caller.uid, pid=caller.pid,
                       status=Status(reply.status).name)
        return reply

    # -- events ---------------------------------------------------------------------------------
    def notify(self, obj: str, event: str, params: Mapping[str, Any]) -> int:
        """Push ``obj.event`` to the subscribers of ``obj``; returns how many got it."""
        line = rpc.encode_notification(f"{obj}.{event}", params)
        with self._lock:
            targets = list(self._subs.get(obj, ()))
        delivered = 0
        for conn in targets:
            if conn.send(line):
                delivered += 1
            else:
                with self._lock:
                    self._subs.get(obj, set()).discard(conn)
        return delivered

    def subscribers(self, obj: str) -> int:
        with self._lock:
            return len(self._subs.get(obj, ()))

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def _subscribe(self, conn: _Conn, obj: str, on: bool) -> Status:
        with self._lock:
            if obj not in self._objects:
                return Status.NOT_FOUND
            subs = self._subs.setdefault(obj, set())
            if on:
                subs.add(conn)
            else:
                subs.discard(conn)
        return Status.OK

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._listener = _bind(self.path)
        self._inode = os.stat(self.path).st_ino
        self._wake_r, self._wake_w = os.pipe()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="bus-accept", daemon=True)
        self._thread.start()
        log.get().info("bus.listening", path=self.path)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.kill("bus stopping")
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(timeout=self.send_timeout + 1)
        log.get().info("bus.stopped", path=self.path)

    def __enter__(self) -> Bus:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj == self._wake_r:
                        return
                    try:
                        sock, _addr = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:  # EMFILE and kin: back off instead of spinning
                        log.get().error("bus.accept_failed", error=str(exc))
                        self._stopping.wait(0.1)
                        continue
                    self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(True)
            caller = peer_credentials(sock)
            conn = _Conn(sock, caller, self.send_timeout)
        except OSError as exc:
            log.get().warning("bus.admit_failed", error=str(exc))
            sock.close()
            return
        with self._lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns.add(conn)
        if full:
            log.get().warning("bus.too_many_connections", pid=caller.pid, limit=self.max_connections)
            sock.close()
            return
        conn.thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                       name=f"bus-conn-{caller.pid}")
        conn.thread.start()

    def _serve(self, conn: _Conn) -> None:
        try:
            self._read_loop(conn)
        except Exception as exc:
            log.get().error("bus.connection_failed", pid=conn.caller.pid, error=repr(exc))
        finally:
            conn.alive = False
            with self._lock:
                self._conns.discard(conn)
                for subs in self._subs.values():
                    subs.discard(conn)
            conn.sock.close()

    def _read_loop(self, conn: _Conn) -> None:
        buf = bytearray()
        scanned = 0
        while conn.alive:
            try:
                data = conn.sock.recv(CHUNK)
            except OSError as exc:
                log.get().info("bus.recv_failed", pid=conn.caller.pid, error=str(exc))
                return
            if not data:
                if buf.strip():
                    log.get().warning("bus.disconnect_mid_line", pid=conn.caller.pid, pending=len(buf))
                return
            buf += data
            while True:
                nl = buf.find(b"\n", scanned)
                if nl < 0:
                    scanned = len(buf)
                    if len(buf) > rpc.MAX_REQUEST:
                        self._too_large(conn)
                        return
                    break
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                scanned = 0
                if len(line) > rpc.MAX_REQUEST:
                    self._too_large(conn)
                    return
                if line.strip():
                    self._handle(conn, line)

    def _too_large(self, conn: _Conn) -> None:
        log.get().warning("bus.request_too_large", pid=conn.caller.pid, limit=rpc.MAX_REQUEST)
        conn.send(rpc.encode_error(None, rpc.INVALID_REQUEST, "Request too large"))

    def _handle(self, conn: _Conn, line: bytes) -> None:
        after: Callable[[], None] | None = None
        req: rpc.Request | None = None
        try:
            req = rpc.parse_request(line)
            result: Any
            if req.method == "call":
                call = rpc.parse_call(req)
                reply = self.call(call.object, call.method, call.args, conn.caller)
                result, after = rpc.status_result(reply.status, reply.body), reply.after
            elif req.method == "list":
                result = self.describe(rpc.parse_list(req))
            elif req.method in ("subscribe", "unsubscribe"):
                obj = rpc.parse_subscribe(req)
                result = rpc.status_result(self._subscribe(conn, obj, req.method == "subscribe"))
            else:
                raise rpc.RpcError(rpc.METHOD_NOT_FOUND, f"Method not found: {req.method[:64]}", req.id)
        except rpc.RpcError as exc:
            log.get().warning("bus.bad_request", pid=conn.caller.pid, code=exc.code, error=exc.message)
            if req is None or req.has_id:
                conn.send(rpc.encode_error(exc.id, exc.code, exc.message))
            return
        if req.has_id and not conn.send(rpc.encode_result(req.id, result)):
            log.get().warning("bus.reply_undelivered", pid=conn.caller.pid, method=req.method)
        if after is not None:
            threading.Thread(target=_run_deferred, args=(after,), name="bus-deferred", daemon=True).start()


def _run_deferred(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as exc:
        log.get().error("bus.deferred_failed", error=repr(exc))


def _bind(path: str) -> socket.socket:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except TimeoutError:
                raise OSError(errno.EADDRINUSE, "a bus is already served on this socket", path) from None
            except (ConnectionRefusedError, FileNotFoundError):
                log.get().info("bus.stale_socket", path=path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                raise OSError(errno.EADDRINUSE, "a bus is already served on this socket", path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
