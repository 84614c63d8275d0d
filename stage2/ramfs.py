"""The RAM root stage2 pivots into: exactly what the writer needs, then pivot_root and re-exec.

What is needed is measured, not listed by hand: a child interpreter imports ``stage2.afterpivot`` (the
post-pivot entry point, which imports everything it uses at the top) and reports the files it loaded
(modules and their bytecode) and mapped (the interpreter, shared libraries, extension modules). Those
files are copied to a fresh tmpfs at the same paths. After the pivot, PID 1 execs the interpreter from
the ramfs, so the process that writes the flash maps nothing from the old root.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass

from wrtcore import log, run, syscalls
from wrtcore.errors import UpgradeError

ENTRY_MODULE = "stage2.afterpivot"

_PROBE = r"""
import importlib.util, json, sys
import {entry}
files = set()
for mod in list(sys.modules.values()):
    path = getattr(mod, "__file__", None)
    if path:
        files.add(path)
        if path.endswith(".py"):
            try:
                files.add(importlib.util.cache_from_source(path))
            except Exception:
                pass
with open("/proc/self/maps") as f:
    for line in f:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            files.add(parts[5].strip())
files.add(sys.executable)
print(json.dumps(sorted(files)))
"""


@dataclass(frozen=True)
class RamfsImage:
    prefix: str
    files: int
    bytes: int
    python: str
    sys_path: tuple[str, ...]


def needed_files(python: str, sys_path: list[str]) -> list[str]:
    """Ask a clean child interpreter what the post-pivot entry point loads and maps."""
    code = f"import sys; sys.path[:] = {sys_path!r}\n" + _PROBE.format(entry=ENTRY_MODULE)
    res = run.run([python, "-S", "-E", "-c", code])
    files: list[str] = json.loads(res.stdout)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    landmark = os.path.join(sys.base_prefix, "lib", version, "os.py")
    return sorted({*files, landmark, os.path.realpath(python)})


def _copy(path: str, prefix: str) -> int:
    """Copy one file (and the symlink chain leading to it) under ``prefix`` at the same path."""
    total = 0
    seen = 0
    while os.path.islink(path) and seen < 16:
        dst = prefix + path
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        target = os.readlink(path)
        if not os.path.lexists(dst):
            os.symlink(target, dst)
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        seen += 1
    if not os.path.isfile(path):
        return 0
    dst = prefix + path
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.exists(dst):
        shutil.copy2(path, dst)
        total += os.path.getsize(dst)
    return total


def build(prefix: str, *, python: str | None = None, size_mb: int = 256) -> RamfsImage:
    """Mount a tmpfs at ``prefix`` and copy the measured file set into it."""
    python = os.path.realpath(python or sys.executable)
    sys_path = [p for p in sys.path if p and os.path.isdir(p)]
    files = needed_files(python, sys_path)
    os.makedirs(prefix, exist_ok=True)
    syscalls.mount("ramfs-stage2", prefix, "tmpfs", syscalls.MS_NOSUID, f"size={size_mb}m,mode=0755")
    total = 0
    for path in files:
        total += _copy(path, prefix)
    for d in ("mnt", "proc", "sys", "dev", "tmp", "overlay", "boot"):
        os.makedirs(f"{prefix}/{d}", exist_ok=True)
    for sub in ("bin", "usr/bin"):
        os.makedirs(f"{prefix}/{sub}", exist_ok=True)
    link = f"{prefix}/usr/bin/python3"
    if not os.path.lexists(link):
        os.symlink(python, link)
    kept_path = tuple(p for p in sys_path if os.path.isdir(prefix + p))
    image = RamfsImage(prefix, len(files), total, python, kept_path)
    log.get().info("ramfs built", prefix=prefix, files=len(files), bytes=total)
    return image


def pivot(prefix: str, old_root: str = "/mnt") -> None:
    """pivot_root into ``prefix``; move /proc, /sys, /dev and /tmp along, as OpenWrt's supivot does."""
    if os.getpid() != 1:
        raise UpgradeError("refusing to pivot_root: not PID 1 of this system")
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    os.chdir(prefix)
    syscalls.pivot_root(".", old_root.lstrip("/"))
    os.chdir("/")
    for mnt in ("/proc", "/sys", "/dev", "/tmp", "/overlay"):
        src = old_root + mnt
        if os.path.ismount(src):
            os.makedirs(mnt, exist_ok=True)
            syscalls.mount(src, mnt, None, syscalls.MS_MOVE)


def reexec(image: RamfsImage, handoff: str, keep_fds: tuple[int, ...] = ()) -> None:
    """exec the ramfs interpreter running the post-pivot entry point (never returns on success)."""
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    env = {k: v for k, v in os.environ.items() if k in ("WRT_LOG_FD", "PATH", "TERM")}
    code = (f"import sys; sys.path[:] = {list(image.sys_path)!r}; "
            f"import {ENTRY_MODULE} as m; m.main({handoff!r})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(image.python, [image.python, "-S", "-E", "-c", code], env)
