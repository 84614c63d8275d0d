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
