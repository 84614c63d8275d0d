"""What goes into the ramfs: ELF interpreters, soname links, the measured file set, the bootstrap program.

The project is installed editable (a path finder, not a path entry), so a child started with ``-S`` finds
our packages only if the repository is on the ``sys_path`` it is given, as the device's site-packages is.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import stage2
from stage2.ramfs import (
    ENTRY_MODULE,
    RamfsImage,
    bootstrap,
    copy_with_links,
    elf_interpreter,
    needed_files,
    soname_links,
)
from wrtcore.run import CommandFailed

REPO = Path(stage2.__file__).resolve().parents[1]
PYTHON = os.path.realpath(sys.executable)
SYS_PATH = [str(REPO), *(p for p in sys.path if p and os.path.isdir(p))]


def elf64(path: Path, interp: bytes | None) -> None:
    """A minimal little-endian ELF64 header with one program header (PT_INTERP, or PT_LOAD if None)."""
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5], header[6] = 2, 1, 1  # 64-bit, little endian, version
    struct.pack_into("<HHI", header, 16, 3, 62, 1)  # ET_DYN, x86-64, EV_CURRENT
    struct.pack_into("<Q", header, 32, phoff)
    struct.pack_into("<HH", header, 54, phentsize, 1)
    data = interp or b""
    phdr = struct.pack("<IIQQQQQQ", 3 if interp else 1, 4, phoff + phentsize, 0, 0, len(data), len(data), 1)
    path.write_bytes(bytes(header) + phdr + data)


# --- elf_interpreter -----------------------------------------------------------------------------------


def test_interpreter_of_this_python_exists() -> None:
    interp = elf_interpreter(sys.executable)
    assert interp is not None and interp.startswith("/")
    assert os.path.exists(interp)
    assert "ld-" in os.path.basename(interp)


def test_interpreter_of_a_handmade_elf(tmp_path: Path) -> None:
    elf64(tmp_path / "a.out", b"/lib/ld-musl-x86_64.so.1\0")
    assert elf_interpreter(str(tmp_path / "a.out")) == "/lib/ld-musl-x86_64.so.1"


def test_static_elf_has_no_interpreter(tmp_path: Path) -> None:
    elf64(tmp_path / "static", None)
    assert elf_interpreter(str(tmp_path / "static")) is None


def test_not_an_elf64_has_no_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert elf_interpreter(str(script)) is None
    elf32 = tmp_path / "elf32"
    elf32.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(57))
    assert elf_interpreter(str(elf32)) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert elf_interpreter(str(empty)) is None


# --- soname_links --------------------------------------------------------------------------------------


def test_soname_links_point_at_listed_libraries(tmp_path: Path) -> None:
    lib = tmp_path.resolve() / "lib"
    lib.mkdir()
    real = lib / "libffi.so.8.1.2"
    real.write_bytes(b"\x7fELF")
    (lib / "libother.so.1.0").write_bytes(b"\x7fELF")
    os.symlink("libffi.so.8.1.2", lib / "libffi.so.8")
    os.symlink("libffi.so.8", lib / "libffi.so")           # a chain still ends at the listed library
    os.symlink("libother.so.1.0", lib / "libother.so.1")  # points at a library nobody maps
    os.symlink("/nonexistent.so", lib / "libdangling.so")
    elsewhere = tmp_path.resolve() / "elsewhere"
    elsewhere.mkdir()
    os.symlink(real, elsewhere / "libffi.so.8")            # not next to it: not looked at
    assert sorted(soname_links([str(real), "/proc/self/maps"])) == [str(lib / "libffi.so"),
                                                                     str(lib / "libffi.so.8")]


def test_soname_links_of_nothing_or_a_missing_dir() -> None:
    assert soname_links([]) == []
    assert soname_links(["/nonexistent-dir/libx.so.1"]) == []


# --- needed_files (a real child interpreter) -------------------------------------------------------------


@pytest.fixture(scope="module")
def needed() -> list[str]:
    return needed_files(PYTHON, SYS_PATH)


def test_needed_files_include_the_interpreter_and_its_loader(needed: list[str]) -> None:
    assert PYTHON in needed
    loader = elf_interpreter(PYTHON)
    assert loader is not None and loader in needed  # the PT_INTERP name, which the kernel looks up


def test_needed_files_include_the_entry_point_and_what_it_imports(needed: list[str]) -> None:
    assert ENTRY_MODULE == "stage2.afterpivot"
    for rel in ("stage2/afterpivot.py", "stage2/machine.py", "stage2/writers/block.py",
                "stage2/writers/source.py", "wrtcore/syscalls.py"):
        assert str(REPO / rel) in needed, rel
    assert any(p.endswith("/transitions/core.py") for p in needed)
    assert any(p.endswith(".pyc") and "afterpivot" in p for p in needed)


def test_needed_files_include_mapped_shared_libraries(needed: list[str]) -> None:
    names = {os.path.basename(p) for p in needed}
    assert any(n.startswith("libpython") or n.startswith("libc.so") or n.startswith("libc-") for n in names)
    assert any(n.endswith(".so") and "cpython" in n for n in names)  # extension modules (lib-dynload)
    assert any(p.endswith("/os.py") for p in needed)  # the landmark by which python finds its prefix


def test_needed_files_are_absolute_existing_and_sorted(needed: list[str]) -> None:
    assert needed == sorted(set(needed))
    missing = [p for p in needed if not (p.startswith("/") and os.path.lexists(p))]
    assert missing == []


def test_needed_files_nothing_from_tests(needed: list[str]) -> None:
    assert not [p for p in needed if "/tests/" in p or "pytest" in p]


def test_needed_files_fails_when_the_entry_point_cannot_be_imported() -> None:
    stdlib_only = [p for p in SYS_PATH if "site-packages" not in p and p != str(REPO)]
    with pytest.raises(CommandFailed, match="No module named 'stage2'"):
        needed_files(PYTHON, stdlib_only)


# --- copying into the ramfs ------------------------------------------------------------------------------


def test_copy_keeps_the_symlink_chain_and_counts_bytes(tmp_path: Path) -> None:
    src = tmp_path.resolve() / "src/lib"
    src.mkdir(parents=True)
    (src / "libz.so.1.3").write_bytes(b"z" * 1000)
    os.symlink("libz.so.1.3", src / "libz.so.1")
    prefix = str(tmp_path.resolve() / "ramfs")
    assert copy_with_links(str(src / "libz.so.1"), prefix) == 1000
    assert os.readlink(prefix + str(src / "libz.so.1")) == "libz.so.1.3"
    assert Path(prefix + str(src / "libz.so.1.3")).read_bytes() == b"z" * 1000
    assert copy_with_links(str(src / "libz.so.1.3"), prefix) == 0  # already there: not counted twice
    assert copy_with_links(str(src / "missing"), prefix) == 0


# --- the bootstrap program -----------------------------------------------------------------------------


def image(sys_path: list[str]) -> RamfsImage:
    return RamfsImage(prefix="/tmp/root", files=1, bytes=1, python=PYTHON, sys_path=tuple(sys_path))


def test_bootstrap_compiles() -> None:
    code = bootstrap(image(SYS_PATH), "m.main('/handoff.json')")
    compile(code, "<bootstrap>", "exec")
    assert f"import {ENTRY_MODULE} as m" in code and code.rstrip().endswith("m.main('/handoff.json')")


def test_bootstrap_runs_the_call_after_importing_the_entry_point() -> None:
    code = bootstrap(image(SYS_PATH), "print(m.__name__, m.JOURNAL)")
    res = subprocess.run([PYTHON, "-S", "-E", "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "stage2.afterpivot /tmp/upgrade-journal.jsonl"


def test_bootstrap_that_cannot_import_says_why_and_does_not_exit(tmp_path: Path) -> None:
    """PID 1 must never exit: a ramfs missing the entry point prints the reason and waits."""
    code = bootstrap(image([str(tmp_path)]), "raise SystemExit('must not be reached')")
    proc = subprocess.Popen([PYTHON, "-S", "-E", "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        assert ready, "no message within 30 s"
        line = proc.stderr.readline().decode()
        assert line.startswith("stage2: cannot start from the ramfs:") and "ModuleNotFoundError" in line
        assert proc.poll() is None, "the bootstrap exited"
    finally:
        proc.kill()
        proc.wait()
