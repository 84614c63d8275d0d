"""sysupgrade CLI: usage errors, the request on the bus (reference 1.1, 3.1, 3.4), exit codes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stage2.formats import fwtool
from sysupgrade import cli

SID = "0" * 32
MBR = b"\xeb\x48\x90" + b"\0" * 1021


class FakeBus:
    """upgraded's side of the protocol for one client: answers subscribe and the call, then reports."""

    def __init__(self, path: str, reply: list[Any] | None = None,
                 notifications: list[dict[str, Any]] | None = None, answer: bool = True) -> None:
        self.path = path
        self.reply = [0, {"accepted": True}] if reply is None else reply
        self.notifications = notifications or []
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        conn.sendall(json.dumps(obj).encode() + b"\n")

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as rfile:
            self.received.append(json.loads(rfile.readline()))
            self._send(conn, {"jsonrpc": "2.0", "id": 1, "result": [0]})
            self.received.append(json.loads(rfile.readline()))
            if not self.answer:
                return
            self._send(conn, {"jsonrpc": "2.0", "id": 2, "result": self.reply})
            for params in self.notifications:
                self._send(conn, {"jsonrpc": "2.0", "method": "system.progress", "params": params})

    @property
    def request(self) -> dict[str, Any]:
        call = self.received[1]
        assert call["method"] == "call" and call["params"][:3] == [SID, "system", "sysupgrade"]
        message: dict[str, Any] = call["params"][3]
        return message

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bus", dir="/tmp"))  # short: sun_path is 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def root(tmp_path: Path, sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("FAILSAFE", "REQUIRE_IMAGE_METADATA", "REQUIRE_IMAGE_SIGNATURE", "WRT_PLATFORM"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WRT_ROOT", str(tmp_path))
    monkeypatch.setenv("UPGRADED_SOCKET", str(sockdir / "upgraded.sock"))
    (tmp_path / "tmp/sysinfo").mkdir(parents=True)
    (tmp_path / "tmp/sysinfo/board_name").write_text("vendor,model\n")
    (tmp_path / "etc/config").mkdir(parents=True)
    (tmp_path / "etc/config/network").write_text("config interface 'lan'\n")
    (tmp_path / "lib/upgrade/keep.d").mkdir(parents=True)
    (tmp_path / "lib/upgrade/keep.d/base-files").write_text("/etc/config/\n")
    return tmp_path


def make_image(path: Path, board: str = "vendor,model", head: bytes = MBR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head)
    fwtool.append_metadata(path, {"metadata_version": "1.1", "supported_devices": [board]})
    return path


@pytest.fixture
def image(root: Path) -> Path:
    return make_image(root / "tmp/fw.img")


@pytest.fixture
def bus(sockdir: Path) -> Iterator[FakeBus]:
    server = FakeBus(str(sockdir / "upgraded.sock"),
                     notifications=[{"state": "stopping_services", "event": "enter"},
                                    {"state": "flashing", "event": "progress",
                                     "progress": {"done": 1, "total": 2}}])
    yield server
    server.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- usage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["-x", "img"], ["-nF", "img"], ["--bogus"], ["-", "img"]])
def test_invalid_option(root: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (1, "", f"Invalid option: {argv[0]}\n")


def test_missing_image_prints_help(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-n")
    assert code == 1 and out == "" and err == cli.HELP


def test_help(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "-h") == (0, cli.HELP, "")
    assert run(capsys, "--help", "whatever") == (0, cli.HELP, "")


def test_image_not_found(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, str(root / "tmp/nope.bin")) == (1, "", "Image file not found.\n")
    assert run(capsys, str(root / "tmp")) == (1, "", "Image file not found.\n")


@pytest.mark.parametrize("argv", [["-c", "img"], ["-b", "f"], ["https://example.org/fw.bin"]])
def test_not_implemented_yet(root: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _out, err = run(capsys, *argv)
    assert code == 2 and "not implemented yet" in err


def test_options_stop_at_first_non_option() -> None:
    opts = cli.parse_args(["-n", "img", "-x"])
    assert opts.image == "img" and not opts.save_config


# --- the request ---------------------------------------------------------------------------------


def test_default_request(root: Path, image: Path, bus: FakeBus, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(image))
    assert code == 0, err
    assert out == ""
    assert bus.received[0] == {"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": [SID, "system"]}
    assert bus.received[1]["jsonrpc"] == "2.0" and bus.received[1]["id"] == 2
    request = bus.request
    assert list(request) == ["prefix", "path", "backup", "command", "options"]
    assert request == {"prefix": "/tmp/root", "path": "/tmp/fw.img", "backup": "/tmp/sysupgrade.tgz",
                       "command": "/lib/upgrade/do_stage2",
                       "options": {"save_partitions": 1, "add_provisioning": 0}}
    assert list(request["options"]) == ["save_partitions", "add_provisioning"]
    assert err.splitlines() == [
        "Image signature not present",
        "Saving config files...",
        "Commencing upgrade. Closing all shell sessions.",
        "Upgrade accepted; following its progress until the reboot.",
        "upgrade: stopping_services enter",
        "upgrade: flashing progress [1/2]",
    ]
    with tarfile.open(root / "tmp/sysupgrade.tgz") as tar:
        assert tar.getnames() == ["etc/uci-defaults/10_disable_services", "etc/config/network"]


@pytest.mark.parametrize(("flags", "expected"), [
    (["-n"], {"prefix": "/tmp/root", "path": "/tmp/fw.img", "command": "/lib/upgrade/do_stage2",
              "options": {"save_partitions": 1, "add_provisioning": 0}}),
    (["-F"], {"prefix": "/tmp/root", "path": "/tmp/fw.img", "force": True, "backup": "/tmp/sysupgrade.tgz",
              "command": "/lib/upgrade/do_stage2", "options": {"save_partitions": 1, "add_provisioning": 0}}),
    (["-p"], {"prefix": "/tmp/root", "path": "/tmp/fw.img", "backup": "/tmp/sysupgrade.tgz",
              "command": "/lib/upgrade/do_stage2", "options": {"save_partitions": 0, "add_provisioning": 0}}),
    (["-s"], {"prefix": "/tmp/root", "path": "/tmp/fw.img", "backup": "/tmp/sysupgrade.tgz",
              "command": "/lib/upgrade/do_stage2",
              "options": {"save_partitions": 1, "add_provisioning": 0, "use_curr_part": True}}),
    (["-n", "-F", "-p", "-P", "-s", "-q"],
     {"prefix": "/tmp/root", "path": "/tmp/fw.img", "force": True, "command": "/lib/upgrade/do_stage2",
      "options": {"save_partitions": 0, "add_provisioning": 1, "use_curr_part": True}}),
])
def test_request_variants(root: Path, image: Path, bus: FakeBus, capsys: pytest.CaptureFixture[str],
                          flags: list[str], expected: dict[str, Any]) -> None:
    stale = root / "tmp/sysupgrade.tgz"
    stale.write_bytes(b"stale")
    code, _out, err = run(capsys, *flags, str(image))
    assert code == 0, err
    assert bus.request == expected
    assert list(bus.request) == list(expected)
    assert list(bus.request["options"]) == list(expected["options"])
    assert stale.exists() is ("backup" in expected)
    if "-q" in flags:
        assert "Commencing" not in err


def test_image_outside_tmp_is_copied(root: Path, tmp_path: Path, bus: FakeBus,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    outside = make_image(tmp_path / "downloads/fw.bin")
    code, _out, err = run(capsys, "-n", str(outside))
    assert code == 0, err
    assert err.splitlines()[0] == "Image not in /tmp, copying..."
    assert (root / "tmp/sysupgrade.img").read_bytes() == outside.read_bytes()
    assert bus.request["path"] == "/tmp/sysupgrade.img"


# --- refusals and answers ------------------------------------------------------------------------


def test_image_check_failed(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(root / "tmp/fw.img", board="someone,else")
    code, _out, err = run(capsys, str(image))
    assert code == 1
    assert err.splitlines()[-1] == "Image check failed."
    assert "Device vendor,model not supported by this image" in err
    assert not (root / "tmp/sysupgrade.tgz").exists()


def test_force_overrides_a_forceable_failure(root: Path, bus: FakeBus,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(root / "tmp/fw.img", board="someone,else")
    code, _out, err = run(capsys, "-F", str(image))
    assert code == 0, err
    assert "Image check failed but --force given - will update anyway!" in err.splitlines()
    assert bus.request["force"] is True


def test_force_cannot_override_a_broken_image(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = root / "tmp/empty.img"
    empty.write_bytes(b"")
    code, _out, err = run(capsys, "-F", str(empty))
    assert code == 1 and err.splitlines()[-1] == "Image check failed."


def test_test_mode_stops_before_backup_and_bus(root: Path, image: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "-T", str(image))  # no bus listening
    assert code == 0, err
    assert not (root / "tmp/sysupgrade.tgz").exists()
    assert "Commencing" not in err


def test_refused_by_upgraded(root: Path, image: Path, sockdir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeBus(str(sockdir / "upgraded.sock"),
                     reply=[8, {"error": {"message": "Firmware image is invalid"}}])
    try:
        code, _out, err = run(capsys, str(image))
    finally:
        server.close()
    assert code == 1
    assert err.splitlines()[-1] == "Firmware image is invalid"


def test_refused_without_body(root: Path, image: Path, sockdir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeBus(str(sockdir / "upgraded.sock"), reply=[2])
    try:
        code, _out, err = run(capsys, "-n", str(image))
    finally:
        server.close()
    assert code == 1 and err.splitlines()[-1] == "Command failed: Invalid argument"


def test_failure_after_acceptance(root: Path, image: Path, sockdir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeBus(str(sockdir / "upgraded.sock"),
                     notifications=[{"state": "aborted", "event": "enter", "error": "kill failed"}])
    try:
        code, _out, err = run(capsys, "-n", str(image))
    finally:
        server.close()
    assert code == 1
    assert err.splitlines()[-1].startswith("Upgrade failed after it was accepted")


def test_no_bus(root: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "-n", str(image))
    assert code == 3
    assert err.splitlines()[-1] == "Command failed: Connection failed"


def test_bus_refuses_connection(root: Path, image: Path, sockdir: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sockdir / "upgraded.sock"))  # bound, never listening: ECONNREFUSED
    try:
        code, _out, err = run(capsys, "-n", str(image))
    finally:
        dead.close()
    assert code == 3 and err.splitlines()[-1] == "Command failed: Connection failed"


def test_bus_closes_without_answer(root: Path, image: Path, sockdir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeBus(str(sockdir / "upgraded.sock"), answer=False)
    try:
        code, _out, err = run(capsys, "-n", str(image))
    finally:
        server.close()
    assert code == 3 and err.splitlines()[-1] == "Command failed: Connection failed"


def test_failsafe_handover(root: Path, image: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAILSAFE", "1")
    code, _out, err = run(capsys, str(image))  # no bus needed
    assert code == 0, err
    assert (root / "tmp/sysupgrade").read_bytes() == b"/tmp/root\0/tmp/fw.img\0/lib/upgrade/do_stage2"
    assert (root / "tmp/sysupgrade.tgz").exists()
    assert err.splitlines()[-1] == "Commencing upgrade. Closing all shell sessions."


def test_exit_codes_documented() -> None:
    assert set(cli.EXIT_CODES) == {0, 1, 2, 3, 130}
    assert cli.__doc__ is not None
    for code in (0, 1, 2, 3):
        assert f"- {code}:" in cli.__doc__


def test_entry_point_exits_with_main(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setattr("sys.argv", ["sysupgrade", "-x"])
    with pytest.raises(SystemExit) as exc:
        cli.entry()
    assert exc.value.code == 1
    assert os.environ["WRT_ROOT"] == str(root)
