"""The bus (upgraded/bus.py, rpc.py), the system object (system.py) and the client (client.py).

A real server on a temporary unix socket in the test process, with a fake Host and a fake validator.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from upgraded import client, rpc
from upgraded.bus import Bus, Caller, Method, Reply, permitted
from upgraded.request import UpgradeRequest
from upgraded.rpc import Status
from upgraded.system import SystemObject
from upgraded.validator import ValidatorError
from wrtcore import log
from wrtcore.errors import BusUnavailable

GOOD = {"tests": {"fwtool_signature": True}, "valid": True, "forceable": True, "allow_backup": True}
SYSUPGRADE = {"prefix": "/tmp/root", "path": "/tmp/sysupgrade.img", "backup": "/tmp/sysupgrade.tgz",
              "command": "/lib/upgrade/do_stage2", "options": {"save_partitions": 1, "add_provisioning": 0}}
IN_PROGRESS = [9, {"error": {"message": "sysupgrade already in progress"}}]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


class FakeHost:
    def __init__(self) -> None:
        self.started: list[UpgradeRequest] = []
        self.started_event = threading.Event()
        self.gate = threading.Event()  # start_upgrade blocks until the test opens it
        self.gate.set()
        self.reboots = threading.Event()

    def board(self) -> dict[str, Any]:
        return {"board_name": "test,board", "release": {"version": "24.10.0"}}

    def info(self) -> dict[str, Any]:
        return {"uptime": 1}

    def start_upgrade(self, req: UpgradeRequest) -> None:
        assert self.gate.wait(10), "start_upgrade ran before the reply was delivered"
        self.started.append(req)
        self.started_event.set()

    def reboot(self) -> None:
        self.reboots.set()


class FakeValidator:
    def __init__(self) -> None:
        self.result: dict[str, Any] | ValidatorError = dict(GOOD)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.paths: list[str] = []

    def __call__(self, path: str) -> dict[str, Any]:
        self.paths.append(path)
        self.entered.set()
        assert self.gate.wait(10)
        if isinstance(self.result, ValidatorError):
            raise self.result
        return self.result


class Env:
    def __init__(self, path: str) -> None:
        self.path = path
        self.host = FakeHost()
        self.validator = FakeValidator()
        self.system = SystemObject(self.host, validate=self.validator)
        self.bus = Bus(path, send_timeout=0.5)
        self.system.register(self.bus)
        self.bus.add_object("test", {"boom": Method(self._boom), "echo": Method(self._echo, {"x": "string"})})

    @staticmethod
    def _boom(_args: dict[str, Any], _caller: Caller) -> Reply:
        raise RuntimeError("handler bug")

    @staticmethod
    def _echo(args: dict[str, Any], caller: Caller) -> Reply:
        return Reply(Status.OK, {"args": args, "uid": caller.uid, "pid": caller.pid})

    def raw(self) -> Raw:
        return Raw(self.path)

    def call(self, obj: str, method: str, args: dict[str, Any] | None = None) -> list[Any]:
        with client.connect(self.path, timeout=10) as c:
            status, body = c.call(obj, method, args)
        return [status] if body is None else [status, body]


class Raw:
    """A hand-driven connection: write bytes, read reply lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def request(self, doc: Any) -> dict[str, Any]:
        self.send(json.dumps(doc) + "\n")
        return self.reply()

    def reply(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        msg = json.loads(line)
        assert isinstance(msg, dict)
        return msg

    def at_eof(self) -> bool:
        try:
            return self.file.readline() == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def call_req(obj: str, method: str, args: Any = None, req_id: Any = 1) -> dict[str, Any]:
    params: list[Any] = [rpc.DEFAULT_SID, obj, method] + ([] if args is None else [args])
    return {"jsonrpc": "2.0", "id": req_id, "method": "call", "params": params}


@pytest.fixture(autouse=True)
def quiet_log() -> Iterator[None]:
    """Server logs go to a buffer: stdout/stderr belong to the CLI under test."""
    log.setup("upgraded-test", console=io.StringIO())
    yield
    structlog.reset_defaults()


@pytest.fixture
def env() -> Iterator[Env]:
    sockdir = tempfile.mkdtemp(prefix="upgraded-bus-")
    os.chmod(sockdir, 0o755)  # an unprivileged child must reach the socket
    e = Env(os.path.join(sockdir, "run", "upgraded.sock"))
    e.bus.start()
    try:
        yield e
    finally:
        e.bus.stop()
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(e.path))
            os.rmdir(sockdir)


def assert_alive(e: Env, raw: Raw | None = None) -> None:
    """The server still answers: on ``raw`` (same connection) and on a fresh one."""
    if raw is not None:
        assert raw.request(call_req("system", "board", {}, req_id=99)) == {
            "jsonrpc": "2.0", "id": 99, "result": [0, e.host.board()]}
    assert e.call("system", "board") == [0, e.host.board()]


# -- basics ---------------------------------------------------------------------------------------
def test_socket_created_with_parent_and_mode_0666(env: Env) -> None:
    st = os.stat(env.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666


def test_call_and_envelope(env: Env) -> None:
    raw = env.raw()
    assert raw.request(call_req("system", "board", {})) == {
        "jsonrpc": "2.0", "id": 1, "result": [0, env.host.board()]}
    assert raw.request(call_req("system", "info", req_id="abc"))["result"] == [0, {"uptime": 1}]
    reply = raw.request(call_req("test", "echo", {"x": "y"}, req_id=7))
    assert reply["result"] == [0, {"args": {"x": "y"}, "uid": os.getuid(), "pid": os.getpid()}]


def test_many_requests_in_one_write_are_answered_in_order(env: Env) -> None:
    raw = env.raw()
    raw.send("".join(json.dumps(call_req("test", "echo", {"x": str(i)}, req_id=i)) + "\n" for i in range(20)))
    for i in range(20):
        reply = raw.reply()
        assert reply["id"] == i and reply["result"][1]["args"] == {"x": str(i)}


def test_list(env: Env) -> None:
    with client.connect(env.path) as c:
        objects = c.list()
        assert set(objects) == {"system", "test"}
        assert objects["system"]["sysupgrade"] == {
            "prefix": "string", "path": "string", "force": "boolean", "backup": "string",
            "command": "string", "options": "object"}
        assert objects["system"]["validate_firmware_image"] == {"path": "string"}
        assert set(objects["system"]) == {"board", "info", "validate_firmware_image", "sysupgrade", "reboot",
                                          "watchdog"}
        assert objects["system"]["watchdog"] == {"frequency": "int32", "timeout": "int32",
                                                 "magicclose": "boolean", "stop": "boolean"}
        assert list(c.list("sys*")) == ["system"]
        assert c.list("nothing*") == {}


def test_unknown_object_and_method(env: Env) -> None:
    assert env.call("nosuch", "board") == [Status.NOT_FOUND]
    assert env.call("system", "nosuch") == [Status.METHOD_NOT_FOUND]
    assert_alive(env)


def test_handler_exception_is_unknown_error(env: Env) -> None:
    assert env.call("test", "boom") == [Status.UNKNOWN_ERROR]
    assert_alive(env)


# -- bad input: answered where possible, and the server keeps serving ------------------------------
@pytest.mark.parametrize("line", [b"{not json", b'{"jsonrpc": "2.0", "id": 1, "method":', b"\xff\xfe\x00",
                                  b"[" * 100000])
def test_malformed_json(env: Env, line: bytes) -> None:
    raw = env.raw()
    raw.send(line + b"\n")
    reply = raw.reply()
    assert reply["id"] is None and reply["error"]["code"] == rpc.PARSE_ERROR
    assert_alive(env, raw)


@pytest.mark.parametrize(("doc", "code"), [
    ([1, 2], rpc.INVALID_REQUEST),                                                  # batch / not an object
    ({"id": 1, "method": "call", "params": []}, rpc.INVALID_REQUEST),              # no "jsonrpc"
    ({"jsonrpc": "1.0", "id": 1, "method": "call", "params": []}, rpc.INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": 1, "method": 5, "params": []}, rpc.INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": True, "method": "call", "params": []}, rpc.INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": 1, "method": "call", "params": "system"}, rpc.INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": 1, "method": "call", "params": {"o": "system"}}, rpc.INVALID_PARAMS),
    (call_req("system", "board", {}) | {"params": [1, "system", "board", {}]}, rpc.INVALID_PARAMS),
    (call_req("system", "sysupgrade", ["not", "an", "object"]), rpc.INVALID_PARAMS),
    (call_req("system", "sysupgrade", "prefix=/tmp/root"), rpc.INVALID_PARAMS),
    (call_req("system", "board", {}) | {"params": [rpc.DEFAULT_SID, 3, "board", {}]}, rpc.INVALID_PARAMS),
    (call_req("system", "board", {}) | {"params": [rpc.DEFAULT_SID]}, rpc.INVALID_PARAMS),
    ({"jsonrpc": "2.0", "id": 1, "method": "list", "params": [rpc.DEFAULT_SID, 5]}, rpc.INVALID_PARAMS),
    ({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": ["s"]}, rpc.INVALID_PARAMS),
    ({"jsonrpc": "2.0", "id": 1, "method": "exec", "params": []}, rpc.METHOD_NOT_FOUND),
])
def test_wrong_types(env: Env, doc: Any, code: int) -> None:
    raw = env.raw()
    reply = raw.request(doc)
    assert reply["error"]["code"] == code, reply
    assert_alive(env, raw)


def test_jsonrpc_notification_gets_no_reply(env: Env) -> None:
    raw = env.raw()
    note = call_req("test", "echo", {"x": "1"})
    del note["id"]
    raw.send(json.dumps(note) + "\n")
    assert raw.request(call_req("test", "echo", {"x": "2"}, req_id=5))["id"] == 5


def test_request_of_exactly_1_mib_is_served(env: Env) -> None:
    doc = call_req("test", "echo", {"x": ""})
    pad = rpc.MAX_REQUEST - len(json.dumps(doc).encode())
    doc["params"][3]["x"] = "a" * pad
    line = json.dumps(doc).encode()
    assert len(line) == rpc.MAX_REQUEST
    raw = env.raw()
    raw.send(line + b"\n")
    assert raw.reply()["result"][1]["args"]["x"] == "a" * pad


@pytest.mark.parametrize("newline", [True, False])
def test_request_over_1_mib_is_refused_and_connection_closed(env: Env, newline: bool) -> None:
    doc = call_req("test", "echo", {"x": "a" * rpc.MAX_REQUEST})
    raw = env.raw()
    raw.send(json.dumps(doc).encode() + (b"\n" if newline else b""))
    reply = raw.reply()
    assert reply == {"jsonrpc": "2.0", "id": None,
                     "error": {"code": rpc.INVALID_REQUEST, "message": "Request too large"}}
    assert raw.at_eof()
    assert_alive(env)


def test_endless_line_is_not_buffered(env: Env) -> None:
    """The server stops reading after ~1 MiB: a 64 MiB sender is cut off, not buffered."""
    raw = env.raw()
    chunk = b"x" * (1 << 20)
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(64):
            raw.sock.sendall(chunk)
            sent += len(chunk)
    assert sent < 16 << 20
    assert_alive(env)


def test_client_disconnecting_mid_line_and_mid_request(env: Env) -> None:
    raw = env.raw()
    raw.send(b'{"jsonrpc":"2.0","id":1,"method":"call","params":["s","sys')
    raw.close()
    raw = env.raw()  # full request, gone before the reply
    raw.send(json.dumps(call_req("test", "echo", {"x": "y" * 300000})) + "\n")
    raw.close()
    raw = env.raw()  # half-closed: request sent, then shutdown of both directions
    raw.send(json.dumps(call_req("system", "board")) + "\n")
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    assert_alive(env)
    wait_for(lambda: env.bus.connections == 0)


def test_many_clients_at_once(env: Env) -> None:
    results: list[list[Any]] = []

    def worker(i: int) -> None:
        results.append(env.call("test", "echo", {"x": str(i)}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[1]["args"]["x"] for r in results) == sorted(str(i) for i in range(30))


# -- permissions ----------------------------------------------------------------------------------
def test_permission_decision_with_fake_credentials(env: Env) -> None:
    calls: list[int] = []

    def handler(_a: dict[str, Any], c: Caller) -> Reply:
        calls.append(c.uid)
        return Reply()

    m = Method(handler, root_only=True)
    assert permitted(m, Caller(pid=1, uid=0, gid=0))
    assert not permitted(m, Caller(pid=1, uid=1000, gid=1000))
    assert not permitted(m, Caller(pid=1, uid=65534, gid=0))
    assert permitted(Method(handler), Caller(pid=1, uid=1000, gid=1000))
    env.bus.add_object("priv", {"m": m})
    assert env.bus.call("priv", "m", {}, Caller(2, 1000, 1000)).status == Status.PERMISSION_DENIED
    assert calls == []
    for method in ("sysupgrade", "reboot", "validate_firmware_image"):
        reply = env.bus.call("system", method, dict(SYSUPGRADE), Caller(2, 1000, 1000))
        assert reply.status == Status.PERMISSION_DENIED
    assert env.bus.call("system", "board", {}, Caller(2, 1000, 1000)).status == Status.OK
    assert env.bus.call("priv", "m", {}, Caller(3, 0, 0)).status == Status.OK and calls == [0]
    assert env.validator.paths == [] and env.host.started == []


def calls_as_peer(path: str) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    f = s.makefile("rb")
    out: dict[str, Any] = {"uid": os.getuid()}
    for i, (m, a) in enumerate([("sysupgrade", SYSUPGRADE), ("board", {}), ("reboot", {})]):
        s.sendall((json.dumps(call_req("system", m, a, req_id=i)) + "\n").encode())
        out[m] = json.loads(f.readline())["result"]
    return out


def calls_as_nobody(path: str) -> dict[str, Any]:
    """Fork a child that drops to uid/gid 65534 and talks to the bus: a real unprivileged peer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, only os._exit
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(calls_as_peer(path)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "unprivileged child failed"
    result = json.loads(data)
    assert isinstance(result, dict)
    return result


def test_non_root_caller_gets_permission_denied(env: Env) -> None:
    # as root: a forked child that setuid(65534); otherwise this process is itself unprivileged
    out = calls_as_nobody(env.path) if os.geteuid() == 0 else calls_as_peer(env.path)
    assert out["uid"] != 0
    assert out["sysupgrade"] == [Status.PERMISSION_DENIED]
    assert out["reboot"] == [Status.PERMISSION_DENIED]
    assert out["board"] == [0, env.host.board()]
    assert env.validator.paths == [] and env.host.started == [] and not env.host.reboots.is_set()
    assert_alive(env)


# -- the system object ----------------------------------------------------------------------------
def test_sysupgrade_accepted_replies_before_starting(env: Env) -> None:
    env.host.gate.clear()  # start_upgrade may only proceed once we hold the reply
    assert env.call("system", "sysupgrade", SYSUPGRADE) == [0, {"accepted": True}]
    assert not env.host.started
    env.host.gate.set()
    assert env.host.started_event.wait(10)
    req = env.host.started[0]
    assert (req.prefix, req.path, req.backup, req.command) == (
        "/tmp/root", "/tmp/sysupgrade.img", "/tmp/sysupgrade.tgz", "/lib/upgrade/do_stage2")
    assert req.env == {"UPGRADE_OPT_SAVE_PARTITIONS": "1", "UPGRADE_OPT_ADD_PROVISIONING": "0",
                       "UPGRADE_BACKUP": "/tmp/sysupgrade.tgz"}
    assert env.validator.paths == ["/tmp/sysupgrade.img"]


def test_second_sysupgrade_while_one_runs(env: Env) -> None:
    assert env.call("system", "sysupgrade", SYSUPGRADE) == [0, {"accepted": True}]
    assert env.host.started_event.wait(10)
    assert env.call("system", "sysupgrade", SYSUPGRADE) == IN_PROGRESS
    assert env.call("system", "reboot") == [9, {"error": {"message": "sysupgrade in progress"}}]
    assert len(env.host.started) == 1 and len(env.validator.paths) == 1
    env.system.release()
    assert env.call("system", "sysupgrade", SYSUPGRADE) == [0, {"accepted": True}]


def test_second_sysupgrade_while_first_is_validating(env: Env) -> None:
    env.validator.gate.clear()
    first: list[list[Any]] = []
    t = threading.Thread(target=lambda: first.append(env.call("system", "sysupgrade", SYSUPGRADE)))
    t.start()
    assert env.validator.entered.wait(10)
    assert env.call("system", "sysupgrade", SYSUPGRADE) == IN_PROGRESS
    assert_alive(env)  # a validation in progress blocks nobody else
    env.validator.gate.set()
    t.join(10)
    assert first == [[0, {"accepted": True}]]


@pytest.mark.parametrize(("result", "args", "expected"), [
    (GOOD, {"path": "/tmp/x"}, [2]),
    (GOOD, {"prefix": "/tmp/root", "path": 5}, [2]),
    (ValidatorError("no JSON input"), SYSUPGRADE,
     [9, {"error": {"message": "Firmware image couldn't be validated: no JSON input"}}]),
    (GOOD | {"valid": 1}, SYSUPGRADE,
     [2, {"error": {"message": "Validation script provided invalid input"}}]),
    (GOOD | {"valid": False, "forceable": False}, SYSUPGRADE | {"force": True},
     [8, {"error": {"message": "Firmware image is broken and cannot be installed"}}]),
    (GOOD | {"valid": False}, SYSUPGRADE | {"force": 1},
     [8, {"error": {"message": "Firmware image is invalid"}}]),
    (GOOD | {"allow_backup": False}, SYSUPGRADE,
     [8, {"error": {"message": "Firmware image doesn't allow preserving a backup"}}]),
])
def test_sysupgrade_refusals_release_the_slot(env: Env, result: Any, args: dict[str, Any],
                                              expected: list[Any]) -> None:
    env.validator.result = result
    assert env.call("system", "sysupgrade", args) == expected
    assert not env.system.upgrading and env.host.started == []
    env.validator.result = dict(GOOD)
    assert env.call("system", "sysupgrade", SYSUPGRADE) == [0, {"accepted": True}]


def test_forced_invalid_image_ignores_allow_backup(env: Env) -> None:
    env.validator.result = GOOD | {"valid": False, "allow_backup": False}
    assert env.call("system", "sysupgrade", SYSUPGRADE | {"force": True}) == [0, {"accepted": True}]
    assert env.host.started_event.wait(10) and env.host.started[0].force


def test_start_failure_releases_the_slot(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_req: UpgradeRequest) -> None:
        raise RuntimeError("cannot start")

    monkeypatch.setattr(env.host, "start_upgrade", broken)
    assert env.call("system", "sysupgrade", SYSUPGRADE) == [0, {"accepted": True}]
    wait_for(lambda: not env.system.upgrading)


def test_validate_firmware_image(env: Env) -> None:
    assert env.call("system", "validate_firmware_image", {"path": "/tmp/x.img"}) == [0, GOOD]
    assert env.call("system", "validate_firmware_image", {}) == [2]
    assert env.call("system", "validate_firmware_image", {"path": 1}) == [2]
    env.validator.result = ValidatorError("result is not an JSON object")
    assert env.call("system", "validate_firmware_image", {"path": "/tmp/x.img"}) == [
        9, {"error": {"message": "Firmware image couldn't be validated: result is not an JSON object"}}]


def test_reboot_after_reply(env: Env) -> None:
    assert env.call("system", "reboot") == [0]
    assert env.host.reboots.wait(10)


# -- notifications --------------------------------------------------------------------------------
def test_subscribe_and_notify(env: Env) -> None:
    with client.connect(env.path) as c:
        assert c.subscribe("nosuch") == Status.NOT_FOUND
        assert c.subscribe("system") == Status.OK
        assert env.bus.notify("system", "progress", {"state": "flashing", "done": 1, "total": 4}) == 1
        assert env.bus.notify("test", "other", {}) == 0
        # a call made meanwhile still gets its reply; the notification waits in the queue
        assert c.call("system", "info") == (0, {"uptime": 1})
        notes = list(c.notifications(timeout=0.2))
    assert notes == [client.Notification("system.progress", {"state": "flashing", "done": 1, "total": 4})]
    wait_for(lambda: env.bus.subscribers("system") == 0)


def test_dead_and_stuck_subscribers_are_dropped_without_blocking(env: Env) -> None:
    dead = env.raw()
    assert dead.request({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": ["s", "system"]})[
        "result"] == [0]
    stuck = env.raw()  # subscribes and never reads again
    assert stuck.request({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": ["s", "system"]})[
        "result"] == [0]
    assert env.bus.subscribers("system") == 2
    dead.close()
    big = {"blob": "z" * (256 << 10)}
    for _ in range(200):
        start = time.monotonic()
        env.bus.notify("system", "progress", big)
        assert time.monotonic() - start < 3 * env.bus.send_timeout + 1
        if env.bus.subscribers("system") == 0:
            break
    else:
        pytest.fail("stuck subscriber never dropped")
    assert_alive(env)


# -- lifecycle ------------------------------------------------------------------------------------
def test_stale_socket_replaced_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "bus.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    with Bus(path) as bus:
        with pytest.raises(OSError, match="already served"):
            Bus(path).start()
        with client.connect(path) as c:
            assert c.list() == {}
        wait_for(lambda: bus.connections == 0)
    assert not os.path.exists(path)
    Path(path).write_text("not a socket")
    with pytest.raises(FileExistsError):
        Bus(path).start()


def test_stop_closes_idle_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "bus.sock")
    bus = Bus(path)
    bus.start()
    raw = Raw(path)
    wait_for(lambda: bus.connections == 1)
    bus.stop()
    assert raw.at_eof()
    with pytest.raises(BusUnavailable):
        client.connect(path)


# -- the CLI --------------------------------------------------------------------------------------
def test_cli_call(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert client.client_main(["call", "-s", env.path, "system", "board"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == env.host.board() and err == ""
    assert client.client_main(["call", "-s", env.path, "nosuch", "x", "{}"]) == 4
    out, err = capsys.readouterr()
    assert out == "" and err == "Command failed: Not found\n"
    env.validator.result = GOOD | {"valid": False}
    assert client.client_main(["call", "-s", env.path, "system", "sysupgrade", json.dumps(SYSUPGRADE)]) == 8
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": {"message": "Firmware image is invalid"}}
    assert err == "Command failed: Operation not supported\n"
    assert client.client_main(["call", "-s", env.path, "system", "board", "{bad"]) == 2
    assert capsys.readouterr().err == "Failed to parse message data\n"


def test_cli_without_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPGRADED_SOCKET", str(tmp_path / "missing.sock"))
    assert client.client_main(["call", "system", "board"]) == 10
    assert capsys.readouterr().err.startswith("Command failed: Connection failed")
    with pytest.raises(BusUnavailable):
        client.connect()


def test_cli_list_and_listen(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert client.client_main(["list", "-s", env.path]) == 0
    assert capsys.readouterr().out == "system\ntest\n"
    assert client.client_main(["list", "-s", env.path, "-v", "test"]) == 0
    assert capsys.readouterr().out == "'test'\n\t\"boom\":{}\n\t\"echo\":{\"x\":\"string\"}\n"

    def later() -> None:
        wait_for(lambda: env.bus.subscribers("system") == 1)
        env.bus.notify("system", "progress", {"state": "done"})

    t = threading.Thread(target=later)
    t.start()
    assert client.client_main(["listen", "-s", env.path, "-t", "1", "system"]) == 0
    t.join()
    assert capsys.readouterr().out == '{"system.progress":{"state":"done"}}\n'
