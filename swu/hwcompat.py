"""Hardware compatibility: the board and revision, and SWUpdate's revision match.

The running board is the first two whitespace-separated fields of ``/etc/hwrevision`` (``<board>
<revision>``), or ``-H board:rev``, which replaces the file. A revision is accepted when it equals one
entry of ``hardware-compatibility`` exactly (``"2"`` is not ``"2.0"``), or matches one written
``#RE:<POSIX extended regex>`` anywhere in it (unanchored, as ``regexec``). Only the revision is
compared, never the board name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from swu.model import SwuError

HWREVISION = Path("/etc/hwrevision")
REGEX_PREFIX = "#RE:"


def parse_hwrevision(text: str) -> tuple[str, str] | None:
    """``(board, revision)`` from ``/etc/hwrevision`` content, or None when it has fewer than 2 fields."""
    fields = text.split()
    return (fields[0], fields[1]) if len(fields) >= 2 else None


def read_hwrevision(path: Path = HWREVISION) -> tuple[str, str] | None:
    """``(board, revision)`` from ``path``, or None when it is missing, unreadable or incomplete."""
    try:
        return parse_hwrevision(path.read_text(errors="replace"))
    except OSError:
        return None


def parse_hw_option(value: str) -> tuple[str, str]:
    """``-H board:rev`` as ``(board, revision)``; raises :class:`SwuError` on another form."""
    board, sep, revision = value.partition(":")
    if not sep or not board or not revision:
        raise SwuError(f"-H expects <board>:<revision>, got {value!r}")
    return board, revision


def _posix_to_python(pattern: str) -> str:
    """Bracket classes like ``[[:digit:]]`` are the only POSIX ERE syntax Python's ``re`` lacks."""
    classes = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
               "space": r" \t\n\r\f\v", "xdigit": "0-9A-Fa-f", "punct": r"!-/:-@\[-`{-~", "blank": r" \t"}
    for name, chars in classes.items():
        pattern = pattern.replace(f"[:{name}:]", chars)
    return pattern


def compile_entry(entry: str) -> re.Pattern[str] | None:
    """The regex of a ``#RE:`` entry (None for an exact one); raises ``re.error`` when invalid."""
    if not entry.startswith(REGEX_PREFIX):
        return None
    return re.compile(_posix_to_python(entry[len(REGEX_PREFIX):]))


def revision_matches(revision: str, compatible: Sequence[str]) -> bool:
    """Whether ``revision`` is accepted by the ``hardware-compatibility`` list ``compatible``.

    An invalid ``#RE:`` entry matches nothing (SWUpdate logs it and goes on)."""
    for entry in compatible:
        try:
            regex = compile_entry(entry)
        except re.error:
            continue
        if regex is None:
            if entry == revision:
                return True
        elif regex.search(revision):
            return True
    return False
