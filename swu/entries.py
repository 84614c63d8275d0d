"""One ``images``/``files``/``scripts``/``bootenv``-file entry: its attributes checked and turned into an
:class:`~swu.model.Artifact` (defaults applied), every problem recorded with the entry's path.

Stricter than SWUpdate, deliberately (SWUpdate ignores or zeroes these): a known attribute of the wrong
type, an image or file without ``filename``, a file without ``path``, a malformed ``sha256``, an offset
that is not a number, ``volume`` together with ``device``, and a ``path`` or ``filename`` that leaves its
root (absolute member name or a ``..`` component) are errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from swu.cpio import validate_member_name
from swu.handlers.registry import KNOWN_HANDLERS, SCRIPT_HANDLERS
from swu.model import Artifact, Compression, Section

STRING_ATTRS = frozenset({"filename", "name", "version", "path", "volume", "ubipartition", "device",
                          "mtdname", "filesystem", "type", "data", "sha256", "hook", "ivt"})
BOOL_ATTRS = frozenset({"installed-directly", "preserve-attributes", "install-if-different",
                        "install-if-higher", "encrypted", "create-destination"})
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_OFFSET = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([KMG](?:iB)?)?")
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

# Which handlers each section may use (SWUpdate's handler masks, for the handlers we have).
SECTION_HANDLERS: Mapping[Section, frozenset[str]] = {
    Section.IMAGES: frozenset(KNOWN_HANDLERS) - SCRIPT_HANDLERS - {"ubipartition"},
    Section.FILES: frozenset({"rawfile", "archive", "tar", "raw"}),
    Section.SCRIPTS: SCRIPT_HANDLERS,
    Section.BOOTENV: frozenset({"bootloader", "uboot"}),
}


def parse_offset(value: object) -> int | None:
    """``offset`` as bytes: a number, or a string in C notation (``0x``, leading 0 = octal) with an
    optional ``K``/``M``/``G`` suffix (powers of 1024, ``KiB`` also accepted). None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return 0
    match = _OFFSET.fullmatch(text)
    if not match:
        return None
    digits = match.group(1)
    if digits[:2] in ("0x", "0X"):
        number = int(digits, 16)
    elif len(digits) > 1:
        number = int(digits, 8) if digits[0] == "0" else int(digits)
    else:
        number = int(digits)
    return number * _SUFFIX[match.group(2)[0]] if match.group(2) else number


def path_problem(path: str) -> str | None:
    """Why a ``files`` ``path`` may not be used, or None."""
    if not path:
        return "path is empty"
    if "\0" in path:
        return "path contains NUL"
    if ".." in path.split("/"):
        return f"path {path!r} escapes its root ('..')"
    return None


def _properties(value: object, where: str, problems: list[str]) -> dict[str, str | tuple[str, ...]]:
    props: dict[str, str | tuple[str, ...]] = {}
    if not isinstance(value, dict):
        problems.append(f"{where}.properties: must be a group")
        return props
    for key, item in value.items():
        if isinstance(item, str):
            props[key] = item
        elif isinstance(item, (list, tuple)) and all(isinstance(v, str) for v in item):
            props[key] = tuple(item)
        else:
            problems.append(f"{where}.properties.{key}: must be a string or a list of strings")
    return props


def _typed(attrs: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in STRING_ATTRS and not isinstance(value, str):
            problems.append(f"{where}.{key}: must be a string")
        elif key in BOOL_ATTRS and not isinstance(value, bool):
            problems.append(f"{where}.{key}: must be true or false")
        else:
            clean[key] = value
    return clean


def _compression(value: object, where: str, problems: list[str]) -> Compression | None:
    if value is None or value is False:
        return None
    if value is True:
        return Compression.ZLIB  # the deprecated boolean form means zlib
    if isinstance(value, str):
        try:
            return Compression(value)
        except ValueError:
            pass
    problems.append(f"{where}.compressed: '{value}' unknown (zlib, zstd, or true for zlib)")
    return None


def _handler(section: Section, a: Mapping[str, Any], where: str, problems: list[str]) -> str:
    handler: str | None = a.get("type")
    if not handler:
        if section is Section.SCRIPTS:
            handler = "lua"
        elif section is Section.FILES:
            handler = "rawfile"
        elif section is Section.BOOTENV:
            handler = "bootloader"
        elif a.get("volume"):
            handler = "ubivol"
        elif a.get("device"):
            handler = "raw"
        else:
            problems.append(f"{where}: no type, volume or device: cannot choose a handler")
            return ""
    if handler not in KNOWN_HANDLERS:
        problems.append(f"{where}: feature '{handler}' required for '{a.get('filename', '')}' "
                        f"in sw-description is absent!")
    elif handler not in SECTION_HANDLERS[section]:
        problems.append(f"{where}: feature '{handler}' is not allowed in {section.value}")
    return handler


def parse_artifact(section: Section, attrs: Mapping[str, Any], where: str,
                   problems: list[str]) -> Artifact | None:
    """The artifact ``attrs`` describes, or None after appending its problems to ``problems``."""
    before = len(problems)
    a = _typed(attrs, where, problems)
    filename = a.get("filename")
    if not filename:
        problems.append(f"{where}: filename is mandatory")
    elif (why := validate_member_name(filename)) is not None:
        problems.append(f"{where}.filename: {why}")
    if section is Section.FILES:
        path = a.get("path")
        if path is None:
            problems.append(f"{where}: path is mandatory for files")
        elif (why := path_problem(path)) is not None:
            problems.append(f"{where}.path: {why}")
        elif not a.get("device") and not path.startswith("/"):
            problems.append(f"{where}.path: must be absolute when no device is mounted")
    elif a.get("path") is not None and (why := path_problem(a["path"])) is not None:
        problems.append(f"{where}.path: {why}")
    if a.get("volume") and a.get("device"):
        problems.append(f"{where}: volume and device exclude each other")
    sha = a.get("sha256")
    if sha is not None and not _SHA256.fullmatch(sha):
        problems.append(f"{where}.sha256: not 64 hex digits")
    offset = parse_offset(a.get("offset", 0))
    if offset is None:
        problems.append(f"{where}.offset: {a.get('offset')!r} is not a byte count (number, K/M/G suffix)")
    compressed = _compression(a.get("compressed"), where, problems)
    props = _properties(a["properties"], where, problems) if "properties" in a else {}
    handler = _handler(section, a, where, problems)
    if len(problems) > before or not isinstance(filename, str):
        return None
    return Artifact(
        section=section, where=where, filename=filename, handler=handler,
        device=a.get("device"), mtdname=a.get("mtdname"), volume=a.get("volume"),
        ubipartition=a.get("ubipartition"), path=a.get("path"), filesystem=a.get("filesystem"),
        offset=offset or 0, compressed=compressed, installed_directly=a.get("installed-directly", False),
        sha256=sha.lower() if sha else None, name=a.get("name") or None, version=a.get("version") or None,
        install_if_different=a.get("install-if-different", False),
        install_if_higher=a.get("install-if-higher", False), encrypted=a.get("encrypted", False),
        data=a.get("data"), preserve_attributes=a.get("preserve-attributes", False),
        create_destination=props.get("create-destination") == "true", properties=props,
        hook=a.get("hook"),
    )
