"""The configuration backup's list: which files are kept (reference 3.2); ``sysupgrade.backup`` archives them.

By default (``build_file_list``) it is the sorted, de-duplicated union of

- the *static* list (OpenWrt's ``list_static_conffiles``): every non-blank line not starting with ``#``
  of ``/etc/sysupgrade.conf`` and of each ``/lib/upgrade/keep.d/*`` file is split into words, each word
  is glob-expanded (a pattern without match stays literal, as in the shell) and walked like ``find
  <word> \\( -type f -o -type l \\)``: regular files and symlinks are listed, directories descended,
  symlinks never followed (a symlink loop cannot trap the walk), missing paths ignored; with ``-u`` a
  file byte-identical to ``/rom/<file>`` is left out;
- the changed package conffiles (``sysupgrade.conffiles``: opkg's status, apk's conffiles_static).

With ``-c`` (``/etc``) or ``-o`` (``/``) it is instead every file and symlink under
``/overlay/upper<path>`` (with ``-u``: minus those identical to ``/rom``), without ``/etc/board.json``,
``*-opkg``, ``/etc/urandom.seed``, the installed-packages file and ``/usr/lib/opkg/*``; with ``-o`` also
without the files packages own (their file lists and alternatives' links), except the conffiles (with
``-u`` only the changed ones) and the files of the static list that are not conffiles.

``Selection`` carries the options that shape the list (``-c``/``-o``, ``-u``, ``-k``); ``listing`` is what
``-l`` prints. ``rootfs_type`` tells where ``/`` lives: from a ``tmpfs`` root (a ramdisk) sysupgrade saves
nothing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from sysupgrade import conffiles, paths
from wrtcore import mounts

INSTALLED_PACKAGES = "/etc/backup/installed_packages.txt"  # INSTALLED_PACKAGES in sysupgrade
_GLOB_CHARS = frozenset("*?[")


# --- the static list -----------------------------------------------------------------------------


def list_sources(root: str) -> list[str]:
    """Host paths of the list files: ``/etc/sysupgrade.conf``, then ``keep.d/*`` in name order."""
    sources = [paths.rooted(paths.SYSUPGRADE_CONF, root)]
    keep_d = paths.rooted(paths.KEEP_D, root)
    with contextlib.suppress(OSError):
        sources += [os.path.join(keep_d, n) for n in sorted(os.listdir(keep_d)) if not n.startswith(".")]
    return sources


def read_words(root: str) -> list[str]:
    """Words of the non-blank, non-``#`` lines of every list file (unreadable files are skipped)."""
    words: list[str] = []
    for source in list_sources(root):
        try:
            with open(source, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.strip() or line.startswith("#"):
                continue
            words += line.split()
    return words


def _system_path(path: str) -> str:
    """Absolute, normalised system path (``/etc/config/`` -> ``/etc/config``)."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + norm.lstrip("/")


def expand_word(root: str, word: str) -> list[str]:
    """Shell pathname expansion of one word under ``root``; no match leaves the word as it is."""
    if not _GLOB_CHARS.intersection(word):
        return [word]
    base = paths.rooted("/", root).rstrip("/")
    pattern = glob.escape(base) + "/" + word.lstrip("/")
    found = sorted(glob.glob(pattern))
    if not found:
        return [word]
    return [m[len(base) :] or "/" for m in found]


def find_files(root: str, start: str) -> Iterator[str]:
    """``find <start> \\( -type f -o -type l \\)`` under ``root``, never following symlinks.

    The start itself is looked at with lstat, except that a trailing ``/`` resolves it (as the kernel
    does for ``find dir/``).
    """
    host = paths.rooted(start, root)
    try:
        st = os.lstat(host)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        yield _system_path(start)
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    pending = [(host, _system_path(start))]
    while pending:
        host_dir, sys_dir = pending.pop()
        try:
            with os.scandir(host_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            sys_path = posixpath.join(sys_dir, entry.name)
            try:
                if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                    yield sys_path
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.path, sys_path))
            except OSError:
                continue
        pending.extend(reversed(subdirs))


def same_as_rom(root: str, path: str) -> bool:
    """``test -e /rom/<path> && cmp -s /<path> /rom/<path>`` (both followed if symlinks)."""
    try:
        with open(paths.rooted(path, root), "rb") as live, \
                open(paths.rooted(conffiles.ROM + path, root), "rb") as rom:
            if os.fstat(live.fileno()).st_size != os.fstat(rom.fileno()).st_size:
                return False
            while True:
                a, b = live.read(1 << 16), rom.read(1 << 16)
                if a != b:
                    return False
                if not a:
                    return True
    except OSError:  # missing, a directory, unreadable: not the same, so kept
        return False


def static_files(root: str, skip_unchanged: bool = False) -> list[str]:
    """The sorted static list (``list_static_conffiles``), without ``/rom``'s twins with ``-u``."""
    found: set[str] = set()
    for word in read_words(root):
        for start in expand_word(root, word):
            found.update(find_files(root, start))
    if skip_unchanged:
        found = {p for p in found if not same_as_rom(root, p)}
    return sorted(found)


# --- the overlay list (-c, -o) -------------------------------------------------------------------


def dropped_from_overlay(path: str) -> bool:
    """Overlay files never backed up: board.json, ``*-opkg``, urandom.seed, the package list, opkg's db."""
    return (path in ("/etc/board.json", "/etc/urandom.seed", INSTALLED_PACKAGES)
            or posixpath.basename(path).endswith("-opkg")
            or path.startswith("/usr/lib/opkg/"))


def overlay_files(root: str, overlay_path: str, skip_unchanged: bool = False) -> list[str]:
    """``-c`` (overlay_path ``/etc``) or ``-o`` (``/``): the changed files in the overlay's upper layer."""
    upper = paths.rooted(conffiles.OVERLAY_UPPER, root)
    found = [p for p in find_files(upper, overlay_path) if not dropped_from_overlay(p)]
    if skip_unchanged:
        found = [p for p in found if not same_as_rom(root, p)]
    if overlay_path == "/":
        records = conffiles.read_conffiles(root)
        all_conf = {c.path for c in records}
        kept_conf = set(conffiles.changed_conffiles(root, records)) if skip_unchanged else all_conf
        keep = set(static_files(root)) - all_conf
        owned = conffiles.package_files(root) - kept_conf - keep
        found = [p for p in found if p not in owned]
    return sorted(set(found))


# --- what to back up -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The options that shape the backup: ``-c``/``-o`` (overlay_path), ``-u``, ``-k``."""

    overlay_path: str | None = None  # SAVE_OVERLAY_PATH: "/etc" (-c), "/" (-o), None
    skip_unchanged: bool = False  # SKIP_UNCHANGED (-u)
    installed_packages: bool = False  # SAVE_INSTALLED_PKGS (-k)


def build_file_list(root: str | None = None, selection: Selection | None = None) -> list[str]:
    """The sorted unique list of system paths to back up (``sysupgrade_init_conffiles``)."""
    base = paths.root() if root is None else root
    sel = selection or Selection()
    if sel.overlay_path is not None:
        return overlay_files(base, sel.overlay_path, sel.skip_unchanged)
    return sorted({*static_files(base, sel.skip_unchanged), *conffiles.changed_conffiles(base)})


def listing(root: str, selection: Selection) -> list[str]:
    """What ``-l`` prints: the list, then the installed-packages file with ``-k``."""
    files = build_file_list(root, selection)
    return [*files, INSTALLED_PACKAGES] if selection.installed_packages else files


# --- where / lives -------------------------------------------------------------------------------


def rootfs_type(root: str, mountinfo: str | None = None) -> str | None:
    """The filesystem type of the system's ``/`` (OpenWrt's ``rootfs_type``), None when unknown.

    That is the mount whose mount point is the longest prefix of ``root`` (``/`` itself on a device;
    the mount holding ``WRT_ROOT`` in tests), the last one stacked there, ``rootfs`` entries ignored.
    ``mountinfo`` is the table to read (default ``$WRT_MOUNTINFO``, else ``/proc/self/mountinfo``).
    """
    source = mountinfo or os.environ.get(paths.MOUNTINFO_ENV) or paths.MOUNTINFO
    try:
        with open(source, encoding="utf-8", errors="surrogateescape") as f:
            table = mounts.parse_mountinfo(f.read())
    except (OSError, ValueError, IndexError):
        return None
    target = os.path.realpath(root)
    best: mounts.Mount | None = None
    for m in table:
        point = m.mountpoint.rstrip("/") or "/"
        inside = point == "/" or target == point or target.startswith(point + "/")
        if not inside or m.fstype == "rootfs":
            continue
        if best is None or len(point) >= len(best.mountpoint.rstrip("/") or "/"):
            best = m
    return best.fstype if best else None
