"""Versions as SWUpdate compares them, and the installed versions it compares against.

``compare_versions`` follows SWUpdate's ``core/artifacts_versions.c``:

* both strings made only of digits and dots ("old style"): up to four dot-separated fields, each taken
  modulo 65536 (SWUpdate masks with 0xffff), packed into 64 bits, missing fields 0, fields past the
  fourth ignored, empty fields skipped (``1.2.3.4 == 1.2.3.4.5``, ``4.4 == 4.4.0``, ``1.65536 == 1.0``);
* else both parse as semantic versions ``MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD]`` (SWUpdate's
  bundled semver.c accepts the short forms): numbers first, then a version without pre-release is
  greater than one with, pre-release identifiers compared in order (numeric ones as numbers, numeric
  lower than alphanumeric), build metadata ignored;
* else plain byte-wise ``strcmp``.

Installed versions come from a ``-f`` configuration's ``versions`` list (``{ name; version; }``), or
when the configuration has none from ``/etc/sw-versions`` (``<name> <version>`` lines; other lines
skipped).
"""

from __future__ import annotations

import re
from pathlib import Path

import libconf

from swu.model import SwuError

SW_VERSIONS = Path("/etc/sw-versions")
_OLD_STYLE = re.compile(r"[0-9.]*")
_SEMVER = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?")


def _old_style_number(version: str) -> int:
    fields = [f for f in version.split(".") if f]
    number = 0
    for text in fields[:4]:
        number = (number << 16) | (int(text) & 0xFFFF)
    if 0 < len(fields) < 4:
        number <<= 16 * (4 - len(fields))
    return number


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _semver(version: str) -> tuple[tuple[int, int, int], list[str] | None] | None:
    match = _SEMVER.fullmatch(version)
    if not match:
        return None
    major, minor, patch, pre, _build = match.groups()
    return (int(major), int(minor or 0), int(patch or 0)), (pre.split(".") if pre else None)


def _compare_prerelease(left: list[str] | None, right: list[str] | None) -> int:
    if left is None or right is None:
        return _sign((left is None) - (right is None))
    for a, b in zip(left, right, strict=False):
        if a == b:
            continue
        if a.isdigit() and b.isdigit():
            return _sign(int(a) - int(b))
        if a.isdigit() != b.isdigit():
            return -1 if a.isdigit() else 1
        return -1 if a < b else 1
    return _sign(len(left) - len(right))


def compare_versions(left: str, right: str) -> int:
    """-1, 0 or 1 as ``left`` is lower than, equal to or greater than ``right`` (SWUpdate's rules)."""
    if _OLD_STYLE.fullmatch(left) and _OLD_STYLE.fullmatch(right):
        return _sign(_old_style_number(left) - _old_style_number(right))
    sem_left, sem_right = _semver(left), _semver(right)
    if sem_left is not None and sem_right is not None:
        if sem_left[0] != sem_right[0]:
            return -1 if sem_left[0] < sem_right[0] else 1
        return _compare_prerelease(sem_left[1], sem_right[1])
    a, b = left.encode(), right.encode()
    return (a > b) - (a < b)


def parse_sw_versions(text: str) -> dict[str, str]:
    """``/etc/sw-versions`` content: ``<name> <version>`` per line; lines without both are skipped.
    A later line for the same name wins."""
    versions: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            versions[fields[0]] = fields[1]
    return versions


def read_sw_versions(path: Path = SW_VERSIONS) -> dict[str, str]:
    """The installed versions from ``path``; empty when it does not exist."""
    try:
        return parse_sw_versions(path.read_text(errors="replace"))
    except FileNotFoundError:
        return {}


def versions_from_config(text: str) -> dict[str, str] | None:
    """The ``versions`` list of a swupdate.cfg (``-f``), or None when the file has no such list.

    Raises :class:`SwuError` when the file is not libconfig or an entry lacks ``name``/``version``."""
    try:
        config = libconf.loads(text)
    except Exception as exc:  # libconf raises several types (ConfigParseError, ValueError, IndexError)
        raise SwuError(f"configuration is not valid libconfig: {exc}") from None
    entries = config.get("versions")
    if entries is None:
        return None
    if isinstance(entries, dict):
        entries = (entries,)
    versions: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("version"), str):
            raise SwuError("needs string name and version", f"versions[{i}]")
        versions[entry["name"]] = entry["version"]
    return versions


def installed_versions(config_text: str | None = None, sw_versions: Path = SW_VERSIONS) -> dict[str, str]:
    """SWUpdate's source of truth: the config's ``versions`` list if present, else ``sw_versions``."""
    if config_text is not None:
        from_config = versions_from_config(config_text)
        if from_config is not None:
            return from_config
    return read_sw_versions(sw_versions)


def check_bundle_version(version: str | None, *, no_downgrade: str | None = None,
                         no_reinstall: str | None = None, max_version: str | None = None) -> str | None:
    """Why ``-N``/``-R``/``--max-version`` refuse a bundle of ``version`` (the description's), or None.

    ``-N v``: refuse a version lower than v (equal accepted). ``-R v``: refuse the same version.
    ``--max-version v``: refuse a greater version. A bundle without a version passes (as SWUpdate)."""
    if not version:
        return None
    if no_downgrade is not None and compare_versions(version, no_downgrade) < 0:
        return f"No downgrade: version {version} is lower than {no_downgrade}"
    if no_reinstall is not None and compare_versions(version, no_reinstall) == 0:
        return f"No reinstall: version {version} is already installed"
    if max_version is not None and compare_versions(version, max_version) > 0:
        return f"Max version exceeded: version {version} is higher than {max_version}"
    return None


def write_sw_versions(path: Path, versions: dict[str, str]) -> None:
    """Write ``versions`` as ``/etc/sw-versions`` (atomically: temporary file, fsync, rename)."""
    import os
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as out:
        out.writelines(f"{name} {version}\n" for name, version in sorted(versions.items()))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
