"""``swupdate-wrt`` end to end on files: SWUpdate's flags, exit codes, check-first installs, signatures."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from swu_corpus import cpio_bytes

from swu import bootenv, cli
from swu.install import Event

ENV = 0x1000


def _bundle(path: Path, members: list[tuple[str, bytes]], description: bytes) -> Path:
    path.write_bytes(cpio_bytes([("sw-description", description), *members]))
    return path


def description(image: bytes, target: Path, extra: str = "", sha: str | None = None) -> bytes:
    digest = sha or hashlib.sha256(image).hexdigest()
    return f"""software = {{
  version = "2.0";
  hardware-compatibility = ["1.0", "1.1"];
  images = ( {{ filename = "rootfs.img"; device = "{target}"; sha256 = "{digest}";
               name = "rootfs"; version = "2.0"; }} );
  bootenv = ( {{ name = "slot"; value = "b"; }} );
  {extra}
}};
""".encode()


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.target = tmp_path / "slot-b.img"
        self.target.write_bytes(bytes(4 << 20))
        self.env = tmp_path / "env.bin"
        self.env.write_bytes(bootenv.encode({"slot": "a"}, ENV, redundant=False))
        self.cfg = tmp_path / "fw_env.config"
        self.cfg.write_text(f"{self.env} 0 {ENV:#x}\n")
        self.versions = tmp_path / "sw-versions"

    def args(self, bundle: Path | str, *more: str) -> list[str]:
        return ["-i", str(bundle), "-H", "board:1.0", "--fw-env-config", str(self.cfg),
                "--sw-versions-file", str(self.versions), *more]

    def slot(self) -> dict[str, str]:
        return bootenv.load(bootenv.read_config(str(self.cfg))).variables


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    return World(tmp_path)


def test_install_writes_slot_env_and_versions(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    image = os.urandom(3 << 20)
    bundle = _bundle(world.tmp / "b.swu", [("rootfs.img", image)], description(image, world.target))
    assert cli.main(world.args(bundle)) == 0
    assert world.target.read_bytes()[:len(image)] == image
    assert world.slot() == {"slot": "b"}
    assert world.versions.read_text() == "rootfs 2.0\n"
    out = capsys.readouterr().out
    assert "[1/1] rootfs.img (install) 100%" in out
    assert "SWUPDATE successful !" in out


def test_check_only_writes_nothing(world: World) -> None:
    image = os.urandom(1 << 20)
    bundle = _bundle(world.tmp / "b.swu", [("rootfs.img", image)], description(image, world.target))
    before = world.target.read_bytes()
    assert cli.main(world.args(bundle, "-c")) == 0
    assert world.target.read_bytes() == before
    assert world.slot() == {"slot": "a"}


def test_corrupt_bundle_file_is_refused_before_writing(world: World) -> None:
    image = os.urandom(3 << 20)
    bundle = _bundle(world.tmp / "b.swu", [("rootfs.img", image)],
                       description(image, world.target, sha="ab" * 32))
    before = world.target.read_bytes()
    assert cli.main(world.args(bundle)) == 2
    assert world.target.read_bytes() == before  # the check pass refused it: nothing written
    assert world.slot() == {"slot": "a"}


def _from_pipe(world: World, bundle: Path) -> subprocess.CompletedProcess[str]:
    """The bundle through a pipe (not seekable: one pass, no check first)."""
    proc = subprocess.run([sys.executable, "-c", "from swu.cli import entry; entry()", *world.args("-")],
                          input=bundle.read_bytes(), capture_output=True, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_corrupt_bundle_from_a_pipe_fails_after_writing(world: World) -> None:
    image = os.urandom(3 << 20)
    bundle = _bundle(world.tmp / "b.swu", [("rootfs.img", image)],
                       description(image, world.target, sha="ab" * 32))
    code = _from_pipe(world, bundle)
    assert code.returncode == 1
    assert "HASH mismatch" in code.stderr and "bytes were written" in code.stderr
    assert world.slot() == {"slot": "a"}  # one pass: the slot is dirty, the environment untouched


def test_stdin_install(world: World) -> None:
    image = os.urandom(1 << 20)
    bundle = _bundle(world.tmp / "b.swu", [("rootfs.img", image)], description(image, world.target))
    res = _from_pipe(world, bundle)
    assert res.returncode == 0, res.stderr
    assert world.target.read_bytes()[:len(image)] == image
    assert world.slot() == {"slot": "b"}


@pytest.mark.parametrize(("flags", "message"), [
    (["-N", "3.0"], "No downgrade"),
    (["-R", "2.0"], "No reinstall"),
    (["--max-version", "1.9"], "Max version"),
    (["-e", "stable"], "Incorrect select option format"),
    (["-H", "board:9.9"], "not compatible"),
])
def test_refusals_exit_2(world: World, capsys: pytest.CaptureFixture[str], flags: list[str],
                        message: str) -> None:
    image = os.urandom(4096)
    bundle = _bundle(world.tmp / "b.swu", [("rootfs.img", image)], description(image, world.target))
    before = world.target.read_bytes()
    assert cli.main([*world.args(bundle), *flags]) == 2
    assert message in capsys.readouterr().err
    assert world.target.read_bytes() == before


def test_unknown_handler_and_usage(world: World) -> None:
    bad = b'software = { version = "1"; hardware-compatibility = ["1.0"];\n' \
          b'images = ( { filename = "x"; type = "nosuch"; } ); };\n'
    bundle = _bundle(world.tmp / "b.swu", [("x", b"x")], bad)
    assert cli.main(world.args(bundle)) == 2
    assert cli.main(["-c"]) == 2  # no -i
    assert cli.main(world.args(world.tmp / "missing.swu")) == 2


def _sign(tmp: Path, content: bytes) -> tuple[Path, bytes]:
    key, crt = tmp / "signer.key", tmp / "signer.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "2", "-subj", "/CN=Test Signer"], check=True, capture_output=True)
    desc = tmp / "desc"
    desc.write_bytes(content)
    argv = ["openssl", "cms", "-sign", "-in", str(desc), "-signer", str(crt), "-inkey", str(key),
            "-outform", "DER", "-nosmimecap", "-binary"]
    sig = subprocess.run(argv, check=True, capture_output=True).stdout
    return crt, sig


def test_signed_bundle(world: World) -> None:
    image = os.urandom(1 << 20)
    desc = description(image, world.target)
    crt, sig = _sign(world.tmp, desc)
    bundle = _bundle(world.tmp / "s.swu", [("sw-description.sig", sig), ("rootfs.img", image)], desc)
    assert cli.main(world.args(bundle, "-k", str(crt))) == 0
    assert world.slot() == {"slot": "b"}
    tampered = _bundle(world.tmp / "t.swu", [("sw-description.sig", sig), ("rootfs.img", image)],
                         desc.replace(b'"b"', b'"c"'))
    world.env.write_bytes(bootenv.encode({"slot": "a"}, ENV, redundant=False))
    assert cli.main(world.args(tampered, "-k", str(crt))) == 2
    assert world.slot() == {"slot": "a"}
    unsigned = _bundle(world.tmp / "u.swu", [("rootfs.img", image)], desc)
    assert cli.main(world.args(unsigned, "-k", str(crt))) == 2


def test_progress_printer_steps(capsys: pytest.CaptureFixture[str]) -> None:
    printer = cli._Printer()
    for done in range(0, 101, 5):
        printer(Event(1, 2, "a", "install", done, 100))
    printer(Event(2, 2, "b", "install", 5 << 26, None))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/2] a (install) 0%"
    assert len([line for line in lines if line.startswith("[1/2]")]) == 11
    assert lines[-1] == "[2/2] b (install) 320 MiB"
