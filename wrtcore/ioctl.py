"""One ioctl on a path: open, call, close (the shape every block and loop device request takes)."""

from __future__ import annotations

import fcntl
import os
from typing import Any


def on_path(path: str, request: int, arg: Any = 0, flags: int = os.O_RDONLY) -> Any:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, request, arg)
    finally:
        os.close(fd)
