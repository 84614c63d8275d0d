"""The ``mtd`` command line: OpenWrt's options and usage, and its refusals before anything is written.
Writes on real MTD devices are in tests/vm/test_mtd_flash.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mtdtool import cli


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    code = cli.main(argv, err=err, stdin=io.BytesIO())
    return code, err.getvalue()


def test_options_as_openwrt_parses_them() -> None:
    o = cli.parse(["-qq", "-n", "-r", "-f", "-e", "rootfs_data", "-e", "mtd5", "-j", "/tmp/sysupgrade.tgz",
                   "-s", "0x10000", "-p", "65536", "-d", "etc", "write", "-", "firmware"])
    assert (o.quiet, o.no_erase, o.reboot) == (2, True, True)
    assert o.erase == ["rootfs_data", "mtd5"]
    assert (o.jffs2, o.skip, o.offset, o.directory) == ("/tmp/sysupgrade.tgz", 0x10000, 65536, "etc")
    assert (o.command, o.args) == ("write", ["-", "firmware"])


@pytest.mark.parametrize("argv", [[], ["write", "img"], ["write", "a", "b", "c"], ["bogus", "mtd0"],
                                  ["-x", "erase", "mtd0"], ["-s", "ten", "erase", "mtd0"],
                                  ["erase", "mtd0:mtd1"]])
def test_usage_errors_exit_2_with_the_usage(argv: list[str]) -> None:
    code, err = run(argv)
    assert code == 2
    assert "Usage: mtd [<options> ...] <command>" in err


def test_a_device_that_is_not_mtd_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "plain"
    target.write_bytes(b"\x00" * 4096)
    image = tmp_path / "img"
    image.write_bytes(b"\x11" * 100)
    code, err = run(["write", str(image), str(target)])
    assert code == 1
    assert f"Could not open mtd device: {target}" in err
    assert target.read_bytes() == b"\x00" * 4096


def test_an_unknown_label_is_refused() -> None:
    code, err = run(["erase", "no-such-partition-label"])
    assert code == 1 and "Could not open mtd device: no-such-partition-label" in err


@pytest.mark.parametrize("argv", [["-qq", "-p65536", "write", "-", "fw"], ["-e", "a", "-eb", "-nr", "erase"],
                                  ["--", "-q", "x"], ["-q", "-", "x"], ["write", "-q", "x"], ["-j"],
                                  ["-qz", "x"], ["-f", "-s", "0x10", "-d", "etc", "jffs2write", "f", "d"]])
def test_option_parsing_is_getopts(argv: list[str]) -> None:
    """The hand-written parser (getopt imports gettext: seconds under emulation) against getopt itself."""
    import getopt
    try:
        expected: object = getopt.getopt(argv, "frnqe:d:s:j:p:")
    except getopt.GetoptError as exc:
        expected = str(exc)
    try:
        got: object = cli.options(argv)
    except cli.Usage as exc:
        got = str(exc)
    assert got == expected


def test_the_command_imports_no_heavy_module() -> None:
    """Start-up is most of a small write under emulation: structlog alone takes seconds there."""
    import subprocess
    import sys
    code = ("import sys; from mtdtool import cli; from wrtcore import log; log.setup('mtd', light=True); "
            "log.get().info('x'); print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={"PATH": "/usr/bin:/bin"}).stdout.split())
    assert "mtdtool.cli" in loaded and "stage2.writers.mtd" in loaded
    heavy = {"structlog", "getopt", "gettext", "ctypes", "subprocess", "threading", "hashlib",
             "stage2.formats.jffs2", "asyncio"}
    assert loaded & heavy == set()


def test_light_log_records_are_structlogs(tmp_path: Path) -> None:
    """The light mode writes the same JSON records as the structlog set-up (time stamps aside)."""
    import json
    import subprocess
    import sys
    records = []
    for light in (False, True):
        out = tmp_path / f"log-{light}.jsonl"
        code = ("import io; from wrtcore import log; "
                f"log.setup('mtd', console=io.StringIO(), light={light}); "
                "log.get(a=1).bind(b=2).warning('ev', progress={'done': 1, 'total': 2}, c='x')")
        with open(out, "wb") as sink:
            subprocess.run([sys.executable, "-c", code], check=True, pass_fds=(sink.fileno(),),
                           env={"PATH": "/usr/bin:/bin", "WRT_LOG_FD": str(sink.fileno())})
        (record,) = [json.loads(line) for line in out.read_text().splitlines()]
        record.pop("ts")
        records.append(record)
    assert records[0] == records[1]
    assert records[1]["event"] == "ev" and records[1]["level"] == "warning" and records[1]["c"] == "x"
