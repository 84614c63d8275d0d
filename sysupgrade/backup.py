"""The configuration backup: which files are kept, and the archive ``/tmp/sysupgrade.tgz``.

The file list (OpenWrt's ``list_static_conffiles``): every non-blank line not starting with ``#`` of
``/etc/sysupgrade.conf`` and of each ``/lib/upgrade/keep.d/*`` file is split into words, each word is
glob-expanded (a pattern without match stays literal, as in the shell) and walked like ``find <word>
\\( -type f -o -type l \\)``: regular files and symlinks are listed, directories are descended, symlinks
are never followed (a symlink loop cannot trap the walk), missing paths are ignored. The result is the
sorted, de-duplicated union, as absolute paths on the system. (Changed package conffiles, ``-c``/``-o``/
``-u``/``-k`` are a later issue.)

The archive is a gzip-compressed GNU tar stream whose first member is the synthetic
``etc/uci-defaults/10_disable_services`` (mode 644, root:root, mtime of ``/etc/rc.d``): one line
``/etc/init.d/<svc> disable`` for every init script without an ``/etc/rc.d/S??<svc>`` start link, then
``exit 0``. The listed files follow with the leading ``/`` stripped; symlinks are stored as symlinks,
file contents are streamed (never read whole). The archive is written to a temporary name (mode 0600:
it holds ``/etc/shadow``) and renamed into place, so a failure leaves no partial archive.

Decision on files that change while archiving: a listed file that has vanished, cannot be opened, or is
no longer a regular file or symlink is skipped with a ``Warning: ...`` line on stderr, and the backup
goes on (the list was a snapshot; the rest of the config is still worth keeping). A file that shrinks
while it is read is padded with zeros to the size recorded in its header (as GNU tar does) and warned
about; growth after the header is cut off. Failing to write the archive itself is fatal:
``BackupError`` ("Failed to create the configuration backup.").
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import posixpath
import stat
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from sysupgrade import paths
from wrtcore.errors import UpgradeError

Say = Callable[[str], None]

DISABLE_SERVICES_MEMBER = "etc/uci-defaults/10_disable_services"
_GLOB_CHARS = frozenset("*?[")


class BackupError(UpgradeError):
    def __init__(self, hint: str | None = None) -> None:
        super().__init__("Failed to create the configuration backup.", hint)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- the file list -------------------------------------------------------------------------------


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


def build_file_list(root: str | None = None) -> list[str]:
    """The sorted unique list of system paths to back up (``list_static_conffiles``)."""
    base = paths.root() if root is None else root
    found: set[str] = set()
    for word in read_words(base):
        for start in expand_word(base, word):
            found.update(find_files(base, start))
    return sorted(found)


# --- the synthetic members -----------------------------------------------------------------------


def _has_start_link(rc_names: Iterable[str], service: str) -> bool:
    return any(len(n) == len(service) + 3 and n[0] == "S" and n[1:3].isdigit() and n[3:] == service
               for n in rc_names)


def disabled_services(root: str) -> list[str]:
    """Init scripts (``/etc/init.d/*``, files and symlinks) without an ``/etc/rc.d/S??<name>`` link.

    OpenWrt asks each script (``<svc> enabled``, which tests ``-x /etc/rc.d/S<START><name>``); reading
    the rc.d names gives the same answer without running scripts, START being whatever the link has.
    """
    init_d = paths.rooted(paths.INIT_D, root)
    try:
        services = sorted(os.listdir(init_d))
    except OSError:
        return []
    try:
        rc_names = os.listdir(paths.rooted(paths.RC_D, root))
    except OSError:
        rc_names = []
    disabled = []
    for name in services:
        if name.startswith("."):
            continue
        try:
            mode = os.lstat(os.path.join(init_d, name)).st_mode
        except OSError:
            continue
        if (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) and not _has_start_link(rc_names, name):
            disabled.append(name)
    return disabled


def disable_services_script(root: str) -> bytes:
    lines = [f"{paths.INIT_D}/{name} disable\n" for name in disabled_services(root)]
    return ("".join(lines) + "exit 0\n").encode()


@dataclass(frozen=True)
class Member:
    """A synthetic archive member (root:root, regular file)."""

    name: str
    data: bytes
    mtime: int
    mode: int = 0o644

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.size = len(self.data)
        info.mode = self.mode
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.type = tarfile.REGTYPE
        return info


def disable_services_member(root: str) -> Member:
    try:
        mtime = int(os.stat(paths.rooted(paths.RC_D, root)).st_mtime)
    except OSError:
        mtime = int(time.time())
    return Member(DISABLE_SERVICES_MEMBER, disable_services_script(root), mtime)


# --- the archive ---------------------------------------------------------------------------------


@dataclass
class BackupResult:
    path: str  # host path of the archive
    added: list[str] = field(default_factory=list)  # system paths stored
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (system path, reason)


class _ExactReader:
    """Reads exactly ``size`` bytes from ``f``: zero padding if the file shrank, then nothing more."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size
        self.padded = 0

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        data = self._f.read(want) if want else b""
        if len(data) < want:
            self.padded += want - len(data)
            data += bytes(want - len(data))
        self._left -= len(data)
        return data


class _Skip(Exception):
    """A listed path that cannot be archived any more; the message is the reason."""


def _prepare(tar: tarfile.TarFile, host: str, arcname: str) -> tuple[tarfile.TarInfo, BinaryIO | None]:
    """Header (and open source for a regular file) of one listed path, or ``_Skip``."""
    try:
        mode = os.lstat(host).st_mode
        if stat.S_ISLNK(mode):
            return tar.gettarinfo(host, arcname=arcname), None
        if not stat.S_ISREG(mode):
            raise _Skip("no longer a regular file or symlink")
        source = os.fdopen(os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    except FileNotFoundError as exc:
        raise _Skip("vanished") from exc
    except OSError as exc:
        raise _Skip(exc.strerror or str(exc)) from exc
    try:
        info = tar.gettarinfo(arcname=arcname, fileobj=source)  # fstat of what was opened
    except OSError as exc:
        source.close()
        raise _Skip(exc.strerror or str(exc)) from exc
    if not (info.isreg() or info.islnk()):
        source.close()
        raise _Skip("no longer a regular file")
    return info, source


def _add_path(tar: tarfile.TarFile, root: str, sys_path: str, result: BackupResult, say: Say) -> None:
    """Add one listed path. What goes wrong before its header is written skips it with a warning;
    what fails after (writing the archive, a read error mid-file) propagates, since a half-written
    member cannot be taken back from a gzip stream."""
    try:
        info, source = _prepare(tar, paths.rooted(sys_path, root), sys_path.lstrip("/"))
    except _Skip as skip:
        result.skipped.append((sys_path, str(skip)))
        say(f"Warning: {sys_path} skipped from the backup: {skip}")
        return
    try:
        if source is not None and info.isreg():
            reader = _ExactReader(source, info.size)
            tar.addfile(info, reader)
            if reader.padded:
                say(f"Warning: {sys_path} shrank while it was archived; "
                    f"padded with {reader.padded} zero bytes")
        else:
            tar.addfile(info)
    finally:
        if source is not None:
            source.close()
    result.added.append(sys_path)


def create_backup(root: str | None = None, dest: str | None = None, files: Sequence[str] | None = None,
                  *, extra_members: Sequence[Member] = (), say: Say | None = None) -> BackupResult:
    """Write the backup archive (default ``/tmp/sysupgrade.tgz`` under ``root``) and return what it holds.

    ``files`` defaults to ``build_file_list(root)``; ``extra_members`` follow ``10_disable_services``
    (the place for ``-k``'s installed-packages list).
    """
    base = paths.root() if root is None else root
    target = dest or paths.rooted(paths.CONF_TAR, base)
    say = say or _stderr
    listed = build_file_list(base) if files is None else list(files)
    result = BackupResult(target)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
                for member in (disable_services_member(base), *extra_members):
                    tar.addfile(member.tarinfo(), io.BytesIO(member.data))
                for sys_path in listed:
                    _add_path(tar, base, sys_path, result, say)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except (OSError, tarfile.TarError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise BackupError(str(exc)) from exc
    return result
