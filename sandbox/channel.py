"""The device's JSON log channel as the host reads it: every line copied to a file, every JSON object
handed on. Shared by the sandbox boots and the QEMU runner (whose serial port may add CR and NUL)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def tee_json_lines(fd: int, path: Path, on_record: Callable[[dict[str, Any]], None]) -> None:
    """Read ``fd`` to its end: append each line to ``path``, pass each JSON object to ``on_record``."""
    with os.fdopen(fd, "rb") as f, open(path, "ab") as out:
        for line in f:
            out.write(line)
            out.flush()
            try:
                record = json.loads(line.strip(b"\r\n\0"))
            except ValueError:
                continue
            if isinstance(record, dict):
                on_record(record)
