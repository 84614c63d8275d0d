"""``wrtcore.light_tuple.NamedTuple`` behaves as ``typing.NamedTuple`` for what our records use, and the
``mtd`` command's import chain stays without ``typing`` (its start-up in a TCG guest)."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from wrtcore import light_tuple

ROOT = Path(__file__).resolve().parents[2]


def _make(base: Any) -> Any:
    class Report(base):  # type: ignore[misc]
        """Doc."""

        name: str
        size: int
        offset: int = 0
        note: str = "none"

        @property
        def end(self) -> int:
            return int(self.offset + self.size)

        def twice(self) -> int:
            return int(self.size * 2)

    return Report


@pytest.mark.parametrize("base", [typing.NamedTuple, light_tuple.NamedTuple])
def test_same_behaviour_as_typing(base: type) -> None:
    cls = _make(base)
    r: Any = cls("a", 5)
    assert tuple(r) == ("a", 5, 0, "none")
    assert (r.name, r.size, r.offset, r.note, r.end, r.twice()) == ("a", 5, 0, "none", 5, 10)
    assert r._asdict() == {"name": "a", "size": 5, "offset": 0, "note": "none"}
    moved = r._replace(offset=7)
    assert type(moved) is cls and moved.end == 12
    assert repr(r) == "Report(name='a', size=5, offset=0, note='none')"
    assert cls._fields == ("name", "size", "offset", "note")
    assert cls.__doc__ == "Doc." and cls.__name__ == "Report"
    with pytest.raises(AttributeError):
        r.size = 3  # immutable
    with pytest.raises(AttributeError):
        r.other = 1  # no __dict__
    with pytest.raises(TypeError):
        cls("only-name")
    assert r == ("a", 5, 0, "none") and isinstance(r, tuple)


def test_a_default_before_a_field_without_one_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default follows"):
        class Bad(light_tuple.NamedTuple):
            a: int = 1
            b: int


def test_the_mtd_command_imports_no_typing() -> None:
    code = ("import sys; from mtdtool import cli; "
            "print(sorted(m for m in ('typing', 're', 'contextlib', 'enum', 'functools', 'dataclasses') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"
