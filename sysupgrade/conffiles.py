"""What the package managers know: conffiles with their shipped checksums, files owned by packages,
the installed packages. Pure parsers of the records' text, and readers that apply them under a root.

opkg (``/usr/lib/opkg``):

- ``status``: one stanza per package, ``Key: value`` lines, stanzas separated by blank lines, a line
  starting with a space continuing the field above it. ``Conffiles:`` has an empty value and one
  continuation line per conffile, `` <path> <checksum>`` (OpenWrt's opkg writes the sha256 in hex; an
  older md5 simply never matches, so such a file counts as changed, as with ``sha256sum -c``).
  ``Alternatives:`` is ``<prio>:<link>:<target>`` items separated by ``, ``; the *link* is the path the
  package owns.
- ``info/<pkg>.list``: one installed path per line. Anything after a tab on a line is dropped (some
  opkg versions may append the file mode there).
- ``info/<pkg>.control``: the package's control stanza (``Alternatives:`` again).

apk (``/lib/apk/packages``) -- our assumption, from how OpenWrt's package build writes these files:

- ``<pkg>.conffiles_static``: one line per conffile that existed at build time, ``<path> <sha256 hex>``
  separated by one space, no leading space (``<pkg>.conffiles`` has the paths alone; we do not need it).
- ``<pkg>.list``: one path per line, absolute.
- ``<pkg>.alternatives``: the package's ``<prio>:<link>:<target>`` items separated by blanks.

Both managers are read when both are present (the union: a file is kept if either says so).

"Changed" is OpenWrt's ``list_changed_conffiles``: a conffile that cannot be read is not listed; one
whose sha256 differs from the recorded checksum (or whose record has no usable checksum) is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sysupgrade import paths

OPKG_STATUS = "/usr/lib/opkg/status"
OPKG_INFO = "/usr/lib/opkg/info"
APK_PACKAGES = "/lib/apk/packages"
ROM = "/rom"
OVERLAY_UPPER = "/overlay/upper"


@dataclass(frozen=True)
class Conffile:
    path: str  # absolute path on the system
    checksum: str  # as recorded; "" when the record has none


@dataclass(frozen=True)
class Package:
    name: str
    conffiles: tuple[Conffile, ...] = ()
    alternatives: tuple[str, ...] = ()  # link paths


# --- parsers (text in, data out) -----------------------------------------------------------------


def _conffile(line: str) -> Conffile | None:
    """``<path> [<checksum>]`` (leading blanks allowed), like the shell's ``read file csum``."""
    words = line.split(None, 1)
    if not words:
        return None
    return Conffile(words[0], words[1].strip() if len(words) > 1 else "")


def parse_alternatives(value: str) -> list[str]:
    """The link paths of ``<prio>:<link>:<target>`` items separated by commas and/or blanks."""
    links = []
    for item in value.replace(",", " ").split():
        fields = item.split(":")
        if len(fields) >= 2 and fields[1]:
            links.append(fields[1])
    return links


def _stanzas(text: str) -> Iterator[dict[str, list[str]]]:
    """Each stanza as {key: [value, continuation lines...]}; the value is the text after ``Key:``."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, current = {}, None
        elif line[0] in " \t":
            if current is not None:
                current.append(line)
        else:
            key, sep, value = line.partition(":")
            if not sep:
                current = None
                continue
            current = fields.setdefault(key.strip(), [])
            current.append(value.strip())
    if fields:
        yield fields


def parse_status(text: str) -> list[Package]:
    """The packages of an opkg ``status`` (or ``.control``) text, with conffiles and alternatives."""
    packages = []
    for fields in _stanzas(text):
        name = (fields.get("Package") or [""])[0]
        conffiles = [c for c in map(_conffile, fields.get("Conffiles") or []) if c is not None]
        alternatives = parse_alternatives(" ".join(fields.get("Alternatives") or []))
        packages.append(Package(name, tuple(conffiles), tuple(alternatives)))
    return packages


def parse_conffiles_static(text: str) -> list[Conffile]:
    """apk's ``<pkg>.conffiles_static``: ``<path> <sha256>`` per line."""
    return [c for c in map(_conffile, text.splitlines()) if c is not None]


def parse_file_list(text: str) -> list[str]:
    """A package file list (``.list``): one path per line, anything after a tab dropped."""
    return [p for p in (line.split("\t", 1)[0].strip() for line in text.splitlines()) if p]


def checksum_matches(recorded: str, actual: str) -> bool:
    """``sha256sum -c``: the recorded hex (any case) is the file's sha256; md5 or nothing is not."""
    return recorded.lower() == actual


# --- readers (under a root) ----------------------------------------------------------------------


def _read(root: str, path: str) -> str:
    """Text of a system file, "" when it is missing or unreadable."""
    try:
        with open(paths.rooted(path, root), encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return ""


def _names(root: str, directory: str, suffix: str) -> list[str]:
    """Sorted names in a system directory ending in ``suffix`` (regular files only)."""
    host = paths.rooted(directory, root)
    try:
        with os.scandir(host) as it:
            return sorted(e.name for e in it if e.name.endswith(suffix) and e.is_file())
    except OSError:
        return []


def read_conffiles(root: str) -> list[Conffile]:
    """Every conffile record: opkg's status, then apk's ``*.conffiles_static``."""
    found = [c for pkg in parse_status(_read(root, OPKG_STATUS)) for c in pkg.conffiles]
    for name in _names(root, APK_PACKAGES, ".conffiles_static"):
        found += parse_conffiles_static(_read(root, f"{APK_PACKAGES}/{name}"))
    return found


def conffile_paths(root: str) -> set[str]:
    return {c.path for c in read_conffiles(root)}


def sha256_of(host_path: str) -> str:
    h = hashlib.sha256()
    with open(host_path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def is_changed(root: str, conffile: Conffile) -> bool | None:
    """True when the file differs from its record, False when equal, None when it cannot be read."""
    try:
        actual = sha256_of(paths.rooted(conffile.path, root))
    except OSError:
        return None
    return not checksum_matches(conffile.checksum, actual)


def changed_conffiles(root: str, records: Iterable[Conffile] | None = None) -> list[str]:
    """Sorted paths of the readable conffiles whose sha256 differs from the recorded one."""
    records = read_conffiles(root) if records is None else records
    return sorted({c.path for c in records if is_changed(root, c)})


def package_files(root: str) -> set[str]:
    """Every path a package owns: the file lists and the alternatives' links (opkg and apk)."""
    owned: set[str] = set()
    for name in _names(root, OPKG_INFO, ".list"):
        owned.update(parse_file_list(_read(root, f"{OPKG_INFO}/{name}")))
    for pkg in parse_status(_read(root, OPKG_STATUS)):
        owned.update(pkg.alternatives)
    for name in _names(root, OPKG_INFO, ".control"):
        for pkg in parse_status(_read(root, f"{OPKG_INFO}/{name}")):
            owned.update(pkg.alternatives)
    for name in _names(root, APK_PACKAGES, ".list"):
        owned.update(parse_file_list(_read(root, f"{APK_PACKAGES}/{name}")))
    for name in _names(root, APK_PACKAGES, ".alternatives"):
        owned.update(parse_alternatives(_read(root, f"{APK_PACKAGES}/{name}")))
    return owned


def installed_packages(root: str) -> list[tuple[str, str]]:
    """(package, origin) sorted by name; origin ``rom`` when the package's record is in /rom, else
    ``overlay`` when it is in the overlay's upper layer, else ``unknown``. The record is opkg's
    ``info/<pkg>.control``, or apk's ``<pkg>.list`` on a system without opkg."""
    directory, suffix = OPKG_INFO, ".control"
    names = _names(root, OPKG_INFO, ".control")
    if not names and not os.path.isdir(paths.rooted(OPKG_INFO, root)):
        directory, suffix = APK_PACKAGES, ".list"
        names = _names(root, APK_PACKAGES, ".list")
    result = []
    for name in names:
        record = f"{directory}/{name}"
        if os.path.isfile(paths.rooted(ROM + record, root)):
            origin = "rom"
        elif os.path.isfile(paths.rooted(OVERLAY_UPPER + record, root)):
            origin = "overlay"
        else:
            origin = "unknown"
        result.append((name[: -len(suffix)], origin))
    return result


def render_installed_packages(packages: Iterable[tuple[str, str]]) -> bytes:
    """``etc/backup/installed_packages.txt``: ``<pkg>\\t<origin>`` per line."""
    return "".join(f"{name}\t{origin}\n" for name, origin in packages).encode()
