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
import struct
import sys
from dataclasses import dataclass

from wrtcore import log, run, syscalls, watchdog
from wrtcore.errors import UpgradeError

SWU_STEP = "stage2.swu_step"  # a .swu bundle's step: imported, and measured in, for a bundle only

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
    modules: tuple[str, ...] = ()  # imported after the pivot besides the entry point (a .swu's installer)


def elf_interpreter(path: str) -> str | None:
    """PT_INTERP of a 64-bit little-endian ELF (the dynamic loader /proc/self/maps names by its
    real path, while the kernel looks it up by this one)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return None
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ptype, _flags, offset, _vaddr, _paddr, filesz = struct.unpack("<IIQQQQ", f.read(40))
            if ptype == 3:  # PT_INTERP
                f.seek(offset)
                return f.read(filesz).rstrip(b"\0").decode()
    return None


def needed_files(python: str, sys_path: list[str], extra_modules: tuple[str, ...] = ()) -> list[str]:
    """Ask a clean child interpreter what the post-pivot entry point (and ``extra_modules``, imported
    lazily after the pivot) loads and maps."""
    entry = ", ".join((ENTRY_MODULE, *extra_modules))
    code = f"import sys; sys.path[:] = {sys_path!r}\n" + _PROBE.format(entry=entry)
    res = run.run([python, "-S", "-E", "-c", code])
    files: list[str] = json.loads(res.stdout)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    landmark = os.path.join(sys.base_prefix, "lib", version, "os.py")
    interp = elf_interpreter(python)
    files = [*files, landmark, os.path.realpath(python), *([interp] if interp else [])]
    return sorted({*files, *soname_links(files)})


def soname_links(files: list[str]) -> list[str]:
    """Symlinks next to the shared libraries in ``files`` that point at them (libffi.so.8 ->
    libffi.so.8.1.2): the loader looks libraries up by soname, /proc/self/maps names the real file."""
    wanted = {f for f in files if ".so" in os.path.basename(f)}
    links: list[str] = []
    for d in sorted({os.path.dirname(f) for f in wanted}):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            if os.path.islink(path) and os.path.realpath(path) in wanted:
                links.append(path)
    return links


def copy_with_links(path: str, prefix: str) -> int:
    """Copy one file (and the symlink chain leading to it) under ``prefix`` at the same path; the
    bytes copied (0 for what was there already or is no regular file)."""
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


def build(prefix: str, *, python: str | None = None, size_mb: int = 256,
          extra_modules: tuple[str, ...] = ()) -> RamfsImage:
    """Mount a tmpfs at ``prefix`` and copy the measured file set into it."""
    python = os.path.realpath(python or sys.executable)
    sys_path = [p for p in sys.path if p and os.path.isdir(p)]
    files = needed_files(python, sys_path, extra_modules)
    os.makedirs(prefix, exist_ok=True)
    syscalls.mount("ramfs-stage2", prefix, "tmpfs", syscalls.MS_NOSUID, f"size={size_mb}m,mode=0755")
    total = 0
    for path in files:
        total += copy_with_links(path, prefix)
    for d in ("mnt", "proc", "sys", "dev", "tmp", "overlay", "boot"):
        os.makedirs(f"{prefix}/{d}", exist_ok=True)
    for sub in ("bin", "usr/bin"):
        os.makedirs(f"{prefix}/{sub}", exist_ok=True)
    link = f"{prefix}/usr/bin/python3"
    if not os.path.lexists(link):
        os.symlink(python, link)
    kept_path = tuple(p for p in sys_path if os.path.isdir(prefix + p))
    image = RamfsImage(prefix, len(files), total, python, kept_path, extra_modules)
    log.get().info("ramfs built", prefix=prefix, files=len(files), bytes=total)
    check(image)
    return image


def bootstrap(image: RamfsImage, call: str) -> str:
    """The -c program run from the ramfs: import the entry point and ``call`` it. If even the
    import fails, PID 1 must not exit: it says why and waits (a hardware watchdog resets the box)."""
    return (f"import sys, signal\nsys.path[:] = {list(image.sys_path)!r}\n"
            f"try:\n    import {ENTRY_MODULE} as m\nexcept BaseException as e:\n"
            f"    print('stage2: cannot start from the ramfs:', repr(e), file=sys.stderr, flush=True)\n"
            f"    while True:\n        signal.pause()\n"
            f"{call}\n")


def check(image: RamfsImage) -> None:
    """Before the pivot: start the ramfs interpreter chrooted into the ramfs and import the entry
    point, and get a logger (its backend is imported only then: every path after the pivot, the last
    reboot included, logs). A ramfs that cannot run stage2 fails here, while the old root is intact."""
    imports = ", ".join((ENTRY_MODULE, *image.modules))
    code = (f"import sys; sys.path[:] = {list(image.sys_path)!r}; import {imports}; "
            "from wrtcore import log; log.get()")
    res = run.run(["chroot", image.prefix, image.python, "-S", "-E", "-c", code], check=False)
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise UpgradeError(f"the ramfs cannot run stage2: {err[-1] if err else res.returncode}")


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
    watchdog.prepare_exec()  # the driver timeout covers the new interpreter's start-up
    env = {k: v for k, v in os.environ.items()
           if k in ("WRT_LOG_FD", "WDTFD", watchdog.ENV_TIMEOUT, watchdog.ENV_FREQUENCY, "PATH", "TERM")}
    code = bootstrap(image, f"m.main({handoff!r})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(image.python, [image.python, "-S", "-E", "-c", code], env)
