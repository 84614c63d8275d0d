"""The U-Boot environment against Debian's libubootenv-tool: what we write, fw_printenv reads; what
fw_setenv writes, we read; single and redundant copies, the flags counter and its wrap."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import pytest

from swu import bootenv
from swu.model import SwuError

SIZE = 0x2000


def _config(tmp_path: Path, redundant: bool, image: Path | None = None) -> Path:
    image = image or tmp_path / "env.img"
    if not image.exists():
        image.write_bytes(bytes(2 * SIZE + 0x1000))
    lines = [f"{image} 0x0 {SIZE:#x}"]
    if redundant:
        lines.append(f"{image} {SIZE:#x} {SIZE:x}")  # size in hex without 0x, as libubootenv reads it
    cfg = tmp_path / "fw_env.config"
    cfg.write_text("# test environment\n" + "\n".join(lines) + "\n")
    return cfg


def _printenv(cfg: Path) -> dict[str, str]:
    out = subprocess.run(["fw_printenv", "-c", str(cfg)], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _setenv(cfg: Path, tmp_path: Path, *args: str) -> None:
    empty = tmp_path / "default.env"
    empty.write_text("")
    subprocess.run(["fw_setenv", "-c", str(cfg), "-f", str(empty), *args], capture_output=True, check=True)


@pytest.mark.parametrize("redundant", [False, True])
def test_fw_printenv_reads_what_we_store(tmp_path: Path, redundant: bool) -> None:
    cfg = _config(tmp_path, redundant)
    config = bootenv.read_config(str(cfg))
    assert config.redundant is redundant
    values = {"bootcmd": "run boot_$slot", "slot": "b", "upgrade_available": "1", "empty_ok": "x y=z"}
    bootenv.store(config, values.items(), lock=None)
    assert _printenv(cfg) == values
    bootenv.store(config, [("slot", "a"), ("upgrade_available", None)], lock=None)
    expected = {**values, "slot": "a"}
    del expected["upgrade_available"]
    assert _printenv(cfg) == expected


@pytest.mark.parametrize("redundant", [False, True])
def test_we_read_what_fw_setenv_wrote(tmp_path: Path, redundant: bool) -> None:
    cfg = _config(tmp_path, redundant)
    _setenv(cfg, tmp_path, "bootcount", "3")
    _setenv(cfg, tmp_path, "bootlimit", "5")
    state = bootenv.load(bootenv.read_config(str(cfg)))
    assert state.valid
    assert state.variables == {"bootcount": "3", "bootlimit": "5"}


def test_redundant_writes_alternate_and_count_up(tmp_path: Path) -> None:
    cfg = _config(tmp_path, True)
    config = bootenv.read_config(str(cfg))
    bootenv.store(config, [("a", "1")], lock=None)
    first = bootenv.load(config)
    bootenv.store(config, [("b", "2")], lock=None)
    second = bootenv.load(config)
    assert second.current != first.current
    assert second.flags == (first.flags + 1) & 0xFF
    _setenv(cfg, tmp_path, "c", "3")  # fw_setenv continues from our current copy
    third = bootenv.load(config)
    assert third.current == first.current
    assert third.variables == {"a": "1", "b": "2", "c": "3"}


def test_flags_wrap_from_ff_to_zero(tmp_path: Path) -> None:
    a = bootenv.decode(bootenv.encode({"x": "old"}, SIZE, redundant=True, flags=0xFF), redundant=True)
    b = bootenv.decode(bootenv.encode({"x": "new"}, SIZE, redundant=True, flags=0x00), redundant=True)
    assert bootenv.choose_current([a, b]) == 1
    assert bootenv.choose_current([b, a]) == 0
    # fw_printenv agrees
    image = tmp_path / "env.img"
    image.write_bytes(bootenv.encode({"x": "old"}, SIZE, redundant=True, flags=0xFF)
                      + bootenv.encode({"x": "new"}, SIZE, redundant=True, flags=0x00))
    assert _printenv(_config(tmp_path, True, image)) == {"x": "new"}


def test_corrupt_copy_is_ignored(tmp_path: Path) -> None:
    good = bootenv.encode({"x": "good"}, SIZE, redundant=True, flags=1)
    bad = bytearray(bootenv.encode({"x": "bad"}, SIZE, redundant=True, flags=9))
    bad[20] ^= 0xFF
    copies = [bootenv.decode(bytes(bad), redundant=True), bootenv.decode(good, redundant=True)]
    assert not copies[0].valid
    assert bootenv.choose_current(copies) == 1


def test_layout_is_crc_then_sorted_pairs(tmp_path: Path) -> None:
    blob = bootenv.encode({"b": "2", "a": "1"}, 64, redundant=False)
    assert len(blob) == 64
    assert blob[4:13] == b"a=1\0b=2\0\0"
    assert int.from_bytes(blob[:4], "little") == zlib.crc32(blob[4:])


def test_environment_too_big_is_refused() -> None:
    with pytest.raises(SwuError, match="needs"):
        bootenv.encode({"x": "y" * 100}, 64, redundant=False)


def test_config_parsing() -> None:
    cfg = bootenv.parse_config("# c\n\n/dev/mmcblk0 -0x4000 4000 200\n/dev/mmcblk0 -0x2000 0x4000\n")
    assert cfg.devices[0] == bootenv.EnvDevice("/dev/mmcblk0", -0x4000, 0x4000, 0x200)
    assert cfg.redundant
    assert bootenv.parse_config("/f 010 10\n").devices[0].offset == 8  # C octal
    with pytest.raises(SwuError, match="no environment device"):
        bootenv.parse_config("# nothing\n")
    with pytest.raises(SwuError, match="differ in size"):
        bootenv.parse_config("/a 0 4000\n/a 4000 2000\n")


def test_env_text_file() -> None:
    text = "# comment\nbootcmd=run x\n\nslot=b\nold=\nnoequals\nurl=http://a/?q=1\n"
    assert bootenv.parse_env_text(text) == [("bootcmd", "run x"), ("slot", "b"), ("old", None),
                                            ("url", "http://a/?q=1")]


def test_invalid_names_refused() -> None:
    with pytest.raises(SwuError):
        bootenv.apply({}, [("a=b", "1")])
    with pytest.raises(SwuError):
        bootenv.apply({}, [("", "1")])
