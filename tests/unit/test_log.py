"""wrtcore.log: the JSON records of a light command, written without importing json when they allow."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wrtcore import log

ROOT = Path(__file__).resolve().parents[2]


class Colour(enum.Enum):
    RED = "red"


PLAIN = [
    {"event": "mtd_write", "device": "mtd3", "offset": 0, "size": 67108864, "erasesize": 131072,
     "type": "nor", "compressed": False, "note": "Appending jffs2 data from /tmp/sysupgrade.tgz to firmware"},
    {"result": "ok", "duration": 0.7712, "bad_skipped": 0, "jffs2_offset": None, "flags": [True, False]},
    {"nested": {"a": [1, 2.5, -3, 1e-07, 1e+300], "b": (4, "x y")}, "empty": {}, "none": [], "t": ()},
    {"path": Path("/dev/mtd3"), "colour": Colour.RED, "big": 2**80, "neg": -0.0},
]
ESCAPED = [
    {"note": 'a "quoted" word'},
    {"note": "back\\slash"},
    {"note": "line\nbreak"},
    {"note": "tab\there"},
    {"note": "caf\u00e9"},
    {"note": "\x7f"},
    {"ratio": float("nan")},
    {"ratio": float("inf")},
    {"keys": {1: "int key"}},
    {"keys": {None: "none key"}},
    {"inner": [{"x": "\u2603"}]},
    {"path": Path("/tmp/sn\u00f6w")},
]


@pytest.mark.parametrize("record", PLAIN)
def test_plain_records_are_what_json_writes(record: dict[str, object]) -> None:
    assert log._plain_json(record) == json.dumps(record, default=str)


@pytest.mark.parametrize("record", ESCAPED)
def test_what_json_would_escape_is_left_to_json(record: dict[str, object]) -> None:
    assert log._plain_json(record) is None


@pytest.mark.parametrize("record", PLAIN + ESCAPED)
def test_the_channel_gets_one_valid_line_per_record(record: dict[str, object]) -> None:
    read, write = os.pipe()
    log._sinks[:] = [write]
    try:
        log._json_sink(None, "info", dict(record))
    finally:
        log._sinks.clear()
        os.close(write)
    with os.fdopen(read, "rb") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert got["level"] == "info"
    assert {k: got[k] for k in record} == json.loads(json.dumps(record, default=str))


def test_a_light_command_logging_to_a_channel_loads_no_json() -> None:
    """As the mtd command in the VM (``wrt.log=``): records go out, ``json`` and ``re`` stay unloaded."""
    code = ("import os, sys; from wrtcore import log; log.setup('mtd', console=open(os.devnull, 'w'), "
            "light=True); log.get().info('mtd_write', device='mtd0', size=1024, duration=0.5, "
            "compressed=False, jffs2_offset=None); "
            "print(sorted(m for m in ('json', 're', 'enum', 'functools') if m in sys.modules))")
    read, write = os.pipe()
    try:
        out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                             check=True, pass_fds=(write,),
                             env={"PYTHONPATH": str(ROOT), "WRT_LOG_FD": str(write)}).stdout
    finally:
        os.close(write)
    with os.fdopen(read, "rb") as f:
        record = json.loads(f.read())
    assert out.strip() == "[]"
    assert record["component"] == "mtd"
    assert (record["event"], record["device"], record["size"], record["jffs2_offset"]) == \
        ("mtd_write", "mtd0", 1024, None)


class Shouting(str):
    def __str__(self) -> str:
        return self.upper()

    def __format__(self, spec: str) -> str:
        return self.upper()


def test_a_str_subclass_is_written_as_its_own_text_as_json_does() -> None:
    record = {"word": Shouting("quiet"), Shouting("key"): 1}
    assert log._plain_json(record) == json.dumps(record, default=str) == '{"word": "quiet", "key": 1}'
