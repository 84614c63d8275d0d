"""sysupgrade CLI: usage errors, the request on the bus (reference 1.1, 3.1, 3.4), exit codes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stage2.formats import fwtool
from sysupgrade import cli, options

REPO = Path(__file__).resolve().parents[2]
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
    mountinfo = tmp_path / "mountinfo"  # / is not a ramdisk, whatever the host's /tmp is
    mountinfo.write_text("20 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n")
    monkeypatch.setenv("WRT_MOUNTINFO", str(mountinfo))
    monkeypatch.delenv("EDITOR", raising=False)
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
    assert code == 1 and out == "" and err == options.HELP


def test_help(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "-h") == (0, options.HELP, "")
    assert run(capsys, "--help", "whatever") == (0, options.HELP, "")


def test_image_not_found(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, str(root / "tmp/nope.bin")) == (1, "", "Image file not found.\n")
    assert run(capsys, str(root / "tmp")) == (1, "", "Image file not found.\n")


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving tmp_path/www, stopped at the end."""
    import functools
    import http.server
    import threading

    (tmp_path / "www").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_image_url_is_downloaded_to_tmp_and_checked(root: Path, tmp_path: Path, web: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    served = make_image(tmp_path / "www/fw.bin")
    code, _out, err = run(capsys, "-T", f"{web}/fw.bin")
    assert code == 0, err
    assert (root / "tmp/sysupgrade.img").read_bytes() == served.read_bytes()
    assert "Downloading" in err


def test_image_url_http_error_is_refused_before_anything(root: Path, web: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, f"{web}/missing.bin")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"Cannot download {web}/missing.bin: HTTP 404")
    assert not (root / "tmp/sysupgrade.img").exists()


def test_image_url_of_another_scheme_is_invalid_input(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, _err = run(capsys, "ftp://example.org/fw.bin")
    assert code == 2


def test_options_stop_at_first_non_option() -> None:
    opts = options.parse_args(["-n", "img", "-x"])
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


# --- every option, parsed OpenWrt's way ----------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["-i"], {"interactive": True}),
    (["-v", "-v"], {"verbose": 3}),
    (["-q"], {"verbose": 0}),
    (["-n"], {"save_config": False}),
    (["-c"], {"overlay_path": "/etc"}),
    (["-o"], {"overlay_path": "/"}),
    (["-c", "-o"], {"overlay_path": "/"}),
    (["-p"], {"save_partitions": False}),
    (["-P"], {"add_provisioning": True}),
    (["-k"], {"save_installed_pkgs": True}),
    (["-u"], {"skip_unchanged": True}),
    (["-s"], {"use_curr_part": True}),
    (["-F"], {"force": True}), (["--force"], {"force": True}),
    (["-T"], {"test": True}), (["--test"], {"test": True}),
    (["--ignore-minor-compat-version"], {"ignore_minor_compat": True}),
    (["-b", "out.tgz"], {"create_backup": "out.tgz"}), (["--create-backup", "-"], {"create_backup": "-"}),
    (["-r", "in.tgz"], {"restore_backup": "in.tgz"}), (["--restore-backup", "-"], {"restore_backup": "-"}),
    (["-l"], {"list_backup": True}), (["--list-backup"], {"list_backup": True}),
    (["-f", "-n"], {"conf_image": "-n"}),  # the argument is the next word, whatever it is
    (["-h", "-x"], {"help": True}),  # help stops the parsing
])
def test_parse_every_option(argv: list[str], expected: dict[str, Any]) -> None:
    opts = options.parse_args([*argv, "img"] if argv[0] != "-h" else argv)
    changed = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)
               if getattr(opts, f.name) != getattr(options.Options(), f.name) and f.name != "image"}
    assert changed == expected


@pytest.mark.parametrize("argv", [["-b"], ["-n", "-r"], ["-f"], ["-b", ""]])
def test_option_without_its_argument(root: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    word = next(w for w in argv if w in ("-b", "-r", "-f"))
    assert run(capsys, *argv) == (1, "", f"Option {word} needs an argument\n")


def test_invalid_option_after_valid_ones(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "-n", "-k", "-z", "img") == (1, "", "Invalid option: -z\n")


@pytest.mark.parametrize("argv", [["-b", "out.tgz", "img"], ["-r", "in.tgz", "img"],
                                  ["--create-backup", "-", "-n", "img"]])
def test_image_with_backup_command(root: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert run(capsys, *argv) == (1, "", options.BOTH_IMAGE_AND_BACKUP + "\n")
    assert options.BOTH_IMAGE_AND_BACKUP == (
        "-b|--create-backup and -r|--restore-backup do not perform a firmware upgrade.\n"
        "Do not specify both -b|-r and a firmware image.")


@pytest.mark.parametrize("argv", [["-c", "-l"], ["-o", "-b", "x"], ["-n", "-c", "img"]])
def test_overlay_options_need_the_upper_etc(root: Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str]) -> None:
    assert run(capsys, *argv) == (1, "", "Cannot find '/overlay/upper/etc', required for '-c' or '-o'\n")


@pytest.mark.parametrize("argv", [["-u", "-l"], ["-u", "-b", "x"], ["-u", "img"]])
def test_skip_unchanged_needs_rom(root: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert run(capsys, *argv) == (1, "", "'/rom/' is required by '-u'\n")


def test_validator_env_carries_the_options() -> None:
    env = cli.validator_env(options.parse_args(["-n", "-F", "--ignore-minor-compat-version", "img"]), {})
    assert env == {"SAVE_CONFIG": "0", "FORCE": "1", "IGNORE_MINOR_COMPAT": "1"}
    assert cli.validator_env(options.parse_args(["img"]), {}) == {
        "SAVE_CONFIG": "1", "FORCE": "0", "IGNORE_MINOR_COMPAT": "0"}


# --- -l ------------------------------------------------------------------------------------------


def test_list_backup(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/config/sub").mkdir()
    os.symlink("..", root / "etc/config/sub/up")  # a loop: listed, never followed
    assert run(capsys, "-l") == (0, "/etc/config/network\n/etc/config/sub/up\n", "")
    assert run(capsys, "-k", "--list-backup") == (
        0, "/etc/config/network\n/etc/config/sub/up\n/etc/backup/installed_packages.txt\n", "")
    assert run(capsys, "-l", "img") == (0, "/etc/config/network\n/etc/config/sub/up\n", "")  # as OpenWrt


def test_list_overlay(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "overlay/upper/etc/config").mkdir(parents=True)
    (root / "overlay/upper/etc/config/wireless").write_text("x")
    (root / "overlay/upper/etc/board.json").write_text("{}")
    (root / "rom").mkdir()
    assert run(capsys, "-c", "-u", "-l") == (0, "/etc/config/wireless\n", "")


# --- -b ------------------------------------------------------------------------------------------


def archive_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_create_backup(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "backup.tgz"
    assert run(capsys, "-b", str(out)) == (0, "", "Saving config files...\n")
    assert archive_names(out) == ["etc/uci-defaults/10_disable_services", "etc/config/network"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert run(capsys, "-q", "-b", str(out)) == (0, "", "")
    assert run(capsys, "-v", "--create-backup", str(out)) == (
        0, "", "Saving config files...\netc/config/network\n")


def test_create_backup_with_installed_packages(root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (root / "usr/lib/opkg/info").mkdir(parents=True)
    (root / "usr/lib/opkg/info/luci.control").write_text("Package: luci\n")
    out = tmp_path / "backup.tgz"
    assert run(capsys, "-k", "-b", str(out))[0] == 0
    assert archive_names(out) == ["etc/uci-defaults/10_disable_services", "etc/backup/installed_packages.txt",
                                  "etc/config/network"]
    with tarfile.open(out) as tar:
        member = tar.extractfile("etc/backup/installed_packages.txt")
        assert member is not None and member.read() == b"luci\tunknown\n"


def test_create_backup_of_the_overlay(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "overlay/upper/etc/config").mkdir(parents=True)
    (root / "overlay/upper/etc/config/network").write_text("config interface 'lan'\n")
    (root / "overlay/upper/etc/dropbear").mkdir()
    (root / "overlay/upper/etc/dropbear/key-opkg").write_text("x")
    out = tmp_path / "backup.tgz"
    assert run(capsys, "-o", "-b", str(out))[0] == 0
    assert archive_names(out) == ["etc/uci-defaults/10_disable_services", "etc/config/network"]


def test_create_backup_to_stdout(root: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code = cli.main(["-v", "-v", "-b", "-"])  # -b - is quiet whatever -v says
    out, err = capsysbinary.readouterr()
    assert (code, err) == (0, b"")
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:gz") as tar:
        assert tar.getnames() == ["etc/uci-defaults/10_disable_services", "etc/config/network"]


def test_create_backup_failure(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "missing-dir/backup.tgz"
    code, _out, err = run(capsys, "-b", str(out))
    assert code == 1
    assert err.splitlines()[0] == "Saving config files..."
    assert "No such file or directory" in err.splitlines()[1]
    assert err.splitlines()[-1] == "Failed to create the configuration backup."
    assert not out.parent.exists()


def test_create_backup_ignores_test_mode(root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "backup.tgz"  # -b is done before -T is looked at, as in OpenWrt
    assert run(capsys, "-T", "-b", str(out))[0] == 0 and out.exists()


# --- the ramdisk ---------------------------------------------------------------------------------


@pytest.fixture
def ramdisk(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    table = root / "mountinfo"
    table.write_text("1 0 0:2 / / rw - rootfs rootfs rw\n20 1 0:20 / / rw - tmpfs tmpfs rw\n")
    return root


def test_create_backup_on_a_ramdisk(ramdisk: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "backup.tgz"
    out.write_bytes(b"old")
    assert run(capsys, "-b", str(out)) == (0, "", "Cannot save config while running from ramdisk.\n")
    assert not out.exists()


def test_upgrade_from_a_ramdisk(ramdisk: Path, image: Path, bus: FakeBus,
                                capsys: pytest.CaptureFixture[str]) -> None:
    stale = ramdisk / "tmp/sysupgrade.tgz"
    stale.write_bytes(b"stale")
    code, _out, err = run(capsys, str(image))
    assert code == 0, err
    assert err.splitlines()[:3] == ["Image signature not present",
                                    "Cannot save config while running from ramdisk.",
                                    "Commencing upgrade. Closing all shell sessions."]
    assert not stale.exists()
    assert bus.request["backup"] == "/tmp/sysupgrade.tgz"  # still sent, as OpenWrt does


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_abort_on_a_ramdisk(ramdisk: Path, image: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"\ny\n")  # keep config: default (yes); abort: yes
    code, _out, err = run(capsys, "-i", str(image))  # no bus: an attempt to use it would exit 3
    assert code == 0
    assert err.splitlines()[1:] == ["Keep config files over reflash (Y/n): Cannot save config while running "
                                    "from ramdisk.", "Abort (y/N): "]


def test_do_not_abort_on_a_ramdisk(ramdisk: Path, image: Path, bus: FakeBus, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"y\nno\n")
    code, _out, err = run(capsys, "-i", str(image))
    assert code == 0, err
    assert "Abort (y/N): Commencing upgrade. Closing all shell sessions." in err
    assert bus.request["backup"] == "/tmp/sysupgrade.tgz"


# --- -i ------------------------------------------------------------------------------------------


def test_interactive_no_config(root: Path, image: Path, bus: FakeBus, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    stale = root / "tmp/sysupgrade.tgz"
    stale.write_bytes(b"stale")
    stdin(monkeypatch, b"n\n")
    code, _out, err = run(capsys, "-i", str(image))
    assert code == 0, err
    assert "Keep config files over reflash (Y/n): Commencing upgrade. Closing all shell sessions." in err
    assert "backup" not in bus.request and not stale.exists()


def test_interactive_defaults(root: Path, image: Path, bus: FakeBus, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"")  # end of input: every default
    code, _out, err = run(capsys, "-i", str(image))
    assert code == 0, err
    assert ("Keep config files over reflash (Y/n): Edit config file list (y/N): Saving config files..."
            in err.splitlines())
    assert bus.request["backup"] == "/tmp/sysupgrade.tgz" and (root / "tmp/sysupgrade.tgz").exists()


def test_interactive_overrides_no_config(root: Path, image: Path, bus: FakeBus,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    stdin(monkeypatch, b"  yes\nN\n")  # leading blanks skipped like `read`; "N" is not "n...": default
    code, _out, err = run(capsys, "-i", "-n", str(image))
    assert code == 0, err
    assert "Keep config files over reflash (y/N): Edit config file list (y/N): Saving config files..." in err
    assert bus.request["backup"] == "/tmp/sysupgrade.tgz"


def test_interactive_edit_list(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/config/wireless").write_text("x")
    (root / "etc/dropbear").mkdir()
    (root / "etc/dropbear/key").write_text("k")
    editor = tmp_path / "editor"
    editor.write_text("#!/bin/sh\nsed -i /network/d \"$1\"\necho /etc/dropbear/ >> \"$1\"\n")
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    stdin(monkeypatch, b"y\n")
    out = tmp_path / "backup.tgz"
    code, _out, err = run(capsys, "-i", "-b", str(out))
    assert code == 0, err
    assert archive_names(out) == ["etc/uci-defaults/10_disable_services", "etc/config/wireless",
                                  "etc/dropbear/key"]
    assert not (root / "tmp/sysupgrade.conffiles").exists()


# --- -r ------------------------------------------------------------------------------------------


def test_restore_missing_archive(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "-r", "/nonexistent.tgz") == (1, "", "Backup archive '/nonexistent.tgz' not found.\n")


def fresh_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    other = tmp_path / "new-root"
    (other / "tmp").mkdir(parents=True)
    monkeypatch.setenv("WRT_ROOT", str(other))
    return other


def test_backup_then_restore(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/config/secret").write_text("s")
    (root / "etc/config/secret").chmod(0o600)
    os.symlink("network", root / "etc/config/link")
    out = tmp_path / "backup.tgz"
    assert run(capsys, "-b", str(out))[0] == 0
    new = fresh_root(tmp_path, monkeypatch)
    assert run(capsys, "-r", str(out))[::2] == (0, "Restoring config files...\n")
    assert (new / "etc/config/network").read_text() == "config interface 'lan'\n"
    assert stat.S_IMODE((new / "etc/config/secret").stat().st_mode) == 0o600
    assert os.readlink(new / "etc/config/link") == "network"
    assert (new / "etc/uci-defaults/10_disable_services").read_text() == "exit 0\n"


def test_restore_from_stdin(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "backup.tgz"
    assert run(capsys, "-b", str(out))[0] == 0
    new = fresh_root(tmp_path, monkeypatch)
    stdin(monkeypatch, out.read_bytes())
    assert run(capsys, "-q", "-r", "-")[::2] == (0, "")
    assert (new / "etc/config/network").read_text() == "config interface 'lan'\n"
    assert sorted(p.name for p in (new / "tmp").iterdir()) == []  # the spooled copy is gone


def test_restore_an_archive_made_by_gnu_tar(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    (src / "etc/config").mkdir(parents=True)
    (src / "etc/config/wireless").write_text("config wifi-device 'radio0'\n")
    os.symlink("wireless", src / "etc/config/wlan")
    archive = tmp_path / "gnu.tgz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(src), "etc"], check=True)
    new = fresh_root(tmp_path, monkeypatch)
    assert run(capsys, "-r", str(archive))[0] == 0
    assert (new / "etc/config/wireless").read_text() == "config wifi-device 'radio0'\n"
    assert os.readlink(new / "etc/config/wlan") == "wireless"


def test_restore_refuses_escapes(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("../escaped", b"x"), ("etc/ok", b"ok")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    new = fresh_root(tmp_path, monkeypatch)
    assert run(capsys, "-r", str(archive))[0] == 0
    assert (new / "etc/ok").read_bytes() == b"ok" and not (tmp_path / "escaped").exists()


def test_restore_a_broken_archive(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"\x1f\x8bnot really gzip")
    code, _out, err = run(capsys, "-r", str(broken))
    damaged = "Failed to restore the configuration backup: damaged or not a .tar.gz archive\n"
    assert (code, err) == (1, "Restoring config files...\n" + damaged)
    (root / "etc/config/big").write_bytes(os.urandom(100_000))
    truncated = tmp_path / "truncated.tgz"
    subprocess.run(["tar", "czf", str(truncated), "-C", str(root), "etc"], check=True)
    truncated.write_bytes(truncated.read_bytes()[:50_000])  # cut inside etc/config/big
    code, _out, err = run(capsys, "-q", "-r", str(truncated))
    assert (code, err) == (1, damaged)


def test_backup_and_restore_through_a_pipe(root: Path, tmp_path: Path) -> None:
    """``sysupgrade -b - | sysupgrade -r -`` as real processes with real stdin and stdout."""
    new = tmp_path / "piped-root"
    (new / "tmp").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    producer = subprocess.Popen([sys.executable, "-m", "sysupgrade.cli", "-b", "-"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    consumer = subprocess.run([sys.executable, "-m", "sysupgrade.cli", "-r", "-"],
                              env={**env, "WRT_ROOT": str(new)}, stdin=producer.stdout,
                              capture_output=True, timeout=60, check=False)
    assert producer.stdout is not None
    producer.stdout.close()
    assert producer.wait(60) == 0
    assert producer.stderr is not None and producer.stderr.read() == b""
    assert consumer.returncode == 0, consumer.stderr
    assert consumer.stderr == b"Restoring config files...\n"
    assert (new / "etc/config/network").read_text() == "config interface 'lan'\n"


# --- -f ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"PK\x03\x04 a zip", b"", None])
def test_config_file_must_be_gzip(root: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  content: bytes | None) -> None:
    cfg = tmp_path / "config.tgz"
    if content is not None:
        cfg.write_bytes(content)
    code, _out, err = run(capsys, "-f", str(cfg), str(image))  # no bus: it must stop before
    assert code == 1
    assert err.splitlines()[-1] == "Invalid config file. Please use only .tar.gz files"
    assert not (root / "tmp/sysupgrade.tgz").exists()


def test_config_file_url(root: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "-f", "http://192.168.1.2/cfg.tgz", str(image))
    assert code == 1
    assert err.splitlines()[-2:] == [
        "A config archive cannot be fetched from a URL (http://192.168.1.2/cfg.tgz): download it and give "
        "its path", "Invalid config file. Please use only .tar.gz files"]


def gnu_tgz(tmp_path: Path) -> Path:
    src = tmp_path / "cfgsrc/etc"
    src.mkdir(parents=True)
    (src / "x").write_text("x")
    archive = tmp_path / "cfg.tgz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(src.parent), "etc"], check=True)
    return archive


def test_config_file_is_used(root: Path, image: Path, tmp_path: Path, bus: FakeBus,
                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = gnu_tgz(tmp_path)
    code, _out, err = run(capsys, "-n", "-f", str(cfg), str(image))  # -f forces SAVE_CONFIG
    assert code == 0, err
    assert "Saving config files..." not in err
    assert (root / "tmp/sysupgrade.tgz").read_bytes() == cfg.read_bytes()
    assert bus.request["backup"] == "/tmp/sysupgrade.tgz"


def test_config_file_with_test_mode(root: Path, image: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = gnu_tgz(tmp_path)
    code, _out, err = run(capsys, "-T", "-f", str(cfg), str(image))  # no bus
    assert code == 0, err
    assert (root / "tmp/sysupgrade.tgz").read_bytes() == cfg.read_bytes()  # copied even with -T


def test_config_file_already_in_place(root: Path, image: Path, bus: FakeBus,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    target = root / "tmp/sysupgrade.tgz"
    target.write_bytes(b"\x1f\x8b rest")
    code, _out, err = run(capsys, "-f", str(target), str(image))
    assert code == 0, err
    assert target.read_bytes() == b"\x1f\x8b rest"


# --- the upgrade's backup ------------------------------------------------------------------------


def test_backup_failure_aborts_the_upgrade(root: Path, image: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (root / "tmp/sysupgrade.tgz").mkdir()  # cannot be written
    code, _out, err = run(capsys, str(image))  # no bus: reaching it would exit 3
    assert code == 1
    assert err.splitlines()[-1] == "Failed to create the configuration backup."


def test_upgrade_backup_with_options(root: Path, image: Path, bus: FakeBus,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (root / "overlay/upper/etc/config").mkdir(parents=True)
    (root / "overlay/upper/etc/config/network").write_text("x")
    (root / "rom/etc/config").mkdir(parents=True)
    code, _out, err = run(capsys, "-c", "-u", "-k", "-v", str(image))
    assert code == 0, err
    assert archive_names(root / "tmp/sysupgrade.tgz") == [
        "etc/uci-defaults/10_disable_services", "etc/backup/installed_packages.txt", "etc/config/network"]
    assert "etc/config/network" in err.splitlines()  # -v: the names, like tar's v


def test_interactive_edit_without_an_editor(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDITOR", str(tmp_path / "no-such-editor"))
    stdin(monkeypatch, b"y\n")
    out = tmp_path / "backup.tgz"
    code, _out, err = run(capsys, "-i", "-b", str(out))
    assert code == 0, err
    missing = f"{tmp_path / 'no-such-editor'}: No such file or directory"
    assert err.splitlines() == [f"Edit config file list (y/N): {missing}", "Saving config files..."]
    assert archive_names(out) == ["etc/uci-defaults/10_disable_services", "etc/config/network"]
