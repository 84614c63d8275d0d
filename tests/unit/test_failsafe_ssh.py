"""Failsafe's dropbear: its command line, and what start() does when keys or the server fail. The
binaries here are scripts standing in for dropbear (the real one runs in the sandbox failsafe test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from preinit import failsafe_ssh


def test_server_argv_allows_the_blank_password_and_names_every_key() -> None:
    argv = failsafe_ssh.server_argv(["/tmp/a", "/tmp/b"], 22, "/usr/sbin/dropbear", "/tmp/run/d.pid")
    assert argv == ["/usr/sbin/dropbear", "-B", "-r", "/tmp/a", "-r", "/tmp/b", "-p", "22",
                    "-P", "/tmp/run/d.pid"]


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return str(path)


@pytest.fixture
def tools(tmp_path: Path) -> dict[str, str]:
    calls = tmp_path / "calls"
    return {
        "calls": str(calls),
        "keygen": script(tmp_path / "dropbearkey", f'echo "keygen $*" >> {calls}\n'
                         '[ "$2" = ecdsa ] && { echo "ecdsa: not supported" >&2; exit 1; }\n'
                         'echo key > "$4"'),
        "server": script(tmp_path / "dropbear", f'echo "server $*" >> {calls}'),
        "failing_server": script(tmp_path / "dropbear-bad",
                                 'echo "Error listening: Address in use" >&2\nexit 1'),
        "key_path": str(tmp_path / "key_{}"),
        "pidfile": str(tmp_path / "run/dropbear.pid"),
    }


def test_keys_are_made_and_the_server_started_with_those_that_were(tools: dict[str, str]) -> None:
    done = failsafe_ssh.start(tools["server"], tools["keygen"], tools["key_path"], 2222, tools["pidfile"])
    ed25519 = tools["key_path"].format("ed25519")
    assert done == {"port": 2222, "keys": [ed25519]}
    calls = Path(tools["calls"]).read_text().splitlines()
    assert calls == [f"keygen -t ed25519 -f {ed25519}",
                     f"keygen -t ecdsa -f {tools['key_path'].format('ecdsa')}",
                     f"server -B -r {ed25519} -p 2222 -P {tools['pidfile']}"]


def test_an_existing_key_is_not_made_again(tools: dict[str, str]) -> None:
    for kind in failsafe_ssh.KEY_TYPES:
        Path(tools["key_path"].format(kind)).write_text("key")
    done = failsafe_ssh.start(tools["server"], tools["keygen"], tools["key_path"], 22, tools["pidfile"])
    assert done is not None and len(done["keys"]) == 2  # type: ignore[arg-type]
    assert [c.split()[0] for c in Path(tools["calls"]).read_text().splitlines()] == ["server"]


def test_a_server_that_fails_is_reported_not_raised(tools: dict[str, str]) -> None:
    done = failsafe_ssh.start(tools["failing_server"], tools["keygen"], tools["key_path"], 22,
                              tools["pidfile"])
    assert done is None


def test_no_key_no_server(tools: dict[str, str], tmp_path: Path) -> None:
    keygen = script(tmp_path / "nokeys", "exit 1")
    done = failsafe_ssh.start(tools["server"], keygen, tools["key_path"], 22, tools["pidfile"])
    assert done is None
    assert not Path(tools["calls"]).exists(), "the server is not started without a host key"


def test_a_firmware_without_dropbear_goes_on_without_ssh(tools: dict[str, str], tmp_path: Path) -> None:
    assert failsafe_ssh.start(str(tmp_path / "absent"), tools["keygen"], tools["key_path"]) is None
    assert not Path(tools["calls"]).exists()
