"""The configuration backup archive (reference 3.3) of the files ``sysupgrade.backup_list`` selects.

The archive is a gzip-compressed (level 6, gzip's and so OpenWrt's default) GNU tar stream whose first
member is the synthetic ``etc/uci-defaults/10_disable_services`` (mode 644, root:root, mtime of
``/etc/rc.d``): one line ``/etc/init.d/<svc> disable`` for every init script without an
``/etc/rc.d/S??<svc>`` start link, then ``exit 0``; with ``-k`` then ``etc/backup/installed_packages.txt``.
The listed files follow with the leading ``/`` stripped; symlinks are stored as symlinks, a second name
of an already stored inode as a hard link, file contents are streamed (never read whole). Building
the tar stream and compressing it run side by side (a compressor thread), as ``tar | gzip`` do. A file
archive is written to a temporary name (mode 0600: it holds ``/etc/shadow``) and renamed into place, so
a failure leaves no partial archive; ``-b -`` streams to stdout.

Decision on files that change while archiving: a listed file that has *vanished*, or is no longer a
regular file or symlink, is skipped with a ``Warning: ...`` line on stderr and the backup goes on (the
list was a snapshot; there is nothing left to keep). A file that exists but *cannot be read* (EACCES,
EIO) fails the backup, as ``tar`` fails OpenWrt's: its content would otherwise be lost silently in the
upgrade. A file that shrinks while it is read is padded with zeros to the size recorded in its header
(as GNU tar does) and warned about; growth after the header is cut off. Any failure of the archive
itself is fatal: ``BackupError`` ("Failed to create the configuration backup.").
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import queue
import stat
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from sysupgrade import conffiles, paths
from sysupgrade.backup_list import INSTALLED_PACKAGES, Selection, build_file_list
from wrtcore.errors import UpgradeError

Say = Callable[[str], None]

DISABLE_SERVICES_MEMBER = "etc/uci-defaults/10_disable_services"
GZIP_LEVEL = 6  # gzip's default, which OpenWrt's `gzip > $CONF_TAR` uses


class BackupError(UpgradeError):
    def __init__(self, hint: str | None = None) -> None:
        super().__init__("Failed to create the configuration backup.", hint)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


def installed_packages_member(root: str) -> Member:
    data = conffiles.render_installed_packages(conffiles.installed_packages(root))
    return Member(INSTALLED_PACKAGES.lstrip("/"), data, int(time.time()))


def synthetic_members(root: str, selection: Selection) -> list[Member]:
    members = [disable_services_member(root)]
    if selection.installed_packages:
        members.append(installed_packages_member(root))
    return members


# --- the compressed stream -----------------------------------------------------------------------


class GzipWriter:
    """A gzip stream written by a compressor thread: ``write`` hands over buffers and returns, so the
    tar stream is built while the previous part is compressed (zlib and the file write release the
    GIL). An error of the thread is raised by the next ``write`` or by ``close``."""

    CHUNK = 256 << 10  # at most QUEUED + 2 chunks in memory: about 1.5 MiB
    QUEUED = 4

    def __init__(self, out: BinaryIO, level: int = GZIP_LEVEL) -> None:
        self._out = out
        self._zip = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip header and trailer
        self._buf = bytearray()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self.QUEUED)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gzip", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so that the producer never blocks on a full queue
            try:
                self._out.write(self._zip.compress(data))
            except BaseException as exc:  # handed to the producer
                self._error = exc
        if self._error is None:
            try:
                self._out.write(self._zip.flush())
                self._out.flush()
            except BaseException as exc:
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= self.CHUNK:
            self._check()
            self._queue.put(bytes(self._buf))
            self._buf.clear()

    def close(self) -> None:
        if self._buf:
            self._queue.put(bytes(self._buf))
            self._buf.clear()
        self._queue.put(None)
        self._thread.join()
        self._check()

    def abandon(self) -> None:
        """Stop the thread after a failure (the output is being thrown away)."""
        self._error = self._error or OSError(errno.ECANCELED, "abandoned")
        self._queue.put(None)
        self._thread.join()


# --- the tar stream ------------------------------------------------------------------------------


BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class _Names:
    """uid/gid -> user and group names, each looked up once (tarfile would ask for every file)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


@dataclass
class BackupResult:
    path: str  # host path of the archive ("-" for stdout)
    added: list[str] = field(default_factory=list)  # system paths stored
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (system path, reason)


class _Skip(Exception):
    """A listed path that is no longer there to archive; the message is the reason."""


class TarWriter:
    """A GNU-format tar stream of listed system paths, written to ``out`` (the gzip writer)."""

    def __init__(self, out: GzipWriter | BinaryIO, root: str, say: Say) -> None:
        self._out = out
        self._root = root
        self._say = say
        self._names = _Names()
        self._inodes: dict[tuple[int, int], str] = {}
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.size += len(data)

    def _header(self, info: tarfile.TarInfo) -> None:
        self._write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))

    def add_member(self, member: Member) -> None:
        self._header(member.tarinfo())
        self._write(member.data)
        self._pad(len(member.data))

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._write(bytes(BLOCK - size % BLOCK))

    def _info(self, arcname: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname, info.gname = self._names.user(st.st_uid), self._names.group(st.st_gid)
        info.mtime = int(st.st_mtime)
        return info

    def add_path(self, sys_path: str, result: BackupResult) -> None:
        """Add one listed path (see the module's decision on files that change meanwhile)."""
        try:
            self._add(sys_path)
        except _Skip as skip:
            result.skipped.append((sys_path, str(skip)))
            self._say(f"Warning: {sys_path} skipped from the backup: {skip}")
            return
        result.added.append(sys_path)

    def _add(self, sys_path: str) -> None:
        host = paths.rooted(sys_path, self._root)
        arcname = sys_path.lstrip("/")
        try:
            st = os.lstat(host)
            if stat.S_ISLNK(st.st_mode):
                info = self._info(arcname, st)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(host)
                self._header(info)
                return
            if not stat.S_ISREG(st.st_mode):
                raise _Skip("no longer a regular file or symlink")
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise _Skip("vanished") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink since the lstat
                raise _Skip("no longer a regular file") from exc
            raise OSError(exc.errno, f"{sys_path}: {exc.strerror}") from exc
        try:
            self._add_regular(fd, sys_path, arcname)
        finally:
            os.close(fd)

    def _add_regular(self, fd: int, sys_path: str, arcname: str) -> None:
        st = os.fstat(fd)  # what was opened, not what the name pointed at before
        if not stat.S_ISREG(st.st_mode):
            raise _Skip("no longer a regular file")
        info = self._info(arcname, st)
        inode = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and inode in self._inodes:
            info.type, info.linkname = tarfile.LNKTYPE, self._inodes[inode]
            self._header(info)
            return
        if st.st_nlink > 1:
            self._inodes[inode] = arcname
        info.size = st.st_size
        self._header(info)
        left = st.st_size
        while left:
            try:
                data = os.read(fd, min(left, GzipWriter.CHUNK))
            except OSError as exc:
                raise OSError(exc.errno, f"{sys_path}: {exc.strerror}") from exc
            if not data:
                self._say(f"Warning: {sys_path} shrank while it was archived; padded with {left} zero bytes")
                data = bytes(left)
            self._write(data)
            left -= len(data)
        self._pad(st.st_size)

    def finish(self) -> None:
        """The end-of-archive blocks, padded to a whole record as tar does."""
        self._write(bytes(2 * BLOCK))
        if self.size % RECORD:
            self._write(bytes(RECORD - self.size % RECORD))


def write_backup(out: BinaryIO, root: str, files: Sequence[str], members: Sequence[Member],
                 say: Say, level: int = GZIP_LEVEL, result: BackupResult | None = None) -> BackupResult:
    """The whole archive into ``out`` (not closed). Raises ``BackupError`` on failure."""
    result = result or BackupResult("-")
    gz = GzipWriter(out, level)
    try:
        tar = TarWriter(gz, root, say)
        for member in members:
            tar.add_member(member)
        for sys_path in files:
            tar.add_path(sys_path, result)
        tar.finish()
        gz.close()
    except (OSError, tarfile.TarError, ValueError) as exc:
        gz.abandon()
        raise BackupError(str(exc)) from exc
    except BaseException:
        gz.abandon()
        raise
    return result


def create_backup(root: str | None = None, dest: str | None = None, files: Sequence[str] | None = None,
                  *, selection: Selection | None = None, extra_members: Sequence[Member] = (),
                  say: Say | None = None, level: int = GZIP_LEVEL) -> BackupResult:
    """Write the backup archive (default ``/tmp/sysupgrade.tgz`` under ``root``) and return what it holds.

    ``files`` defaults to ``build_file_list(root, selection)``; the synthetic members are
    ``10_disable_services``, ``-k``'s list when ``selection`` asks for it, then ``extra_members``.
    A ``dest`` that exists and is not a regular file (a FIFO, a device) is written to directly.
    """
    base = paths.root() if root is None else root
    sel = selection or Selection()
    target = dest or paths.rooted(paths.CONF_TAR, base)
    say = say or _stderr
    listed = build_file_list(base, sel) if files is None else list(files)
    members = [*synthetic_members(base, sel), *extra_members]
    result = BackupResult(target)
    try:
        direct = not stat.S_ISREG(os.stat(target).st_mode)
    except OSError:
        direct = False
    tmp = target if direct else f"{target}.{os.getpid()}.tmp"
    try:
        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if direct else os.O_CREAT | os.O_TRUNC)
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise BackupError(str(exc)) from exc
    try:
        with os.fdopen(fd, "wb") as raw:
            write_backup(raw, base, listed, members, say, level, result)
            if not direct:
                raw.flush()
                os.fsync(raw.fileno())
        if not direct:
            os.replace(tmp, target)
    except BaseException as exc:
        if not direct:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise BackupError(str(exc)) from exc
        raise
    return result
