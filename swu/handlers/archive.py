"""``archive`` (alias ``tar``): a tar stream (plain, gzip, bzip2 or xz, detected) extracted under ``path``,
on the running root or on ``device`` mounted with ``filesystem``. Needs: ``path``.

Members are checked one by one as they arrive, before each is extracted: a name that leaves the
destination (after ``..``, or through a symlink extracted earlier) and a hard link to a file outside it
are refused and stop the install (the error counts the members already extracted). Leading ``/`` are
stripped, as GNU tar does; symlinks may point anywhere (they are never followed while extracting).

``preserve-attributes``: numeric owner, permissions (setuid/setgid included) and times are kept as
stored. Without it, files get the extracting user and tar's safe modes (no setuid/setgid, no group or
world write)."""

from __future__ import annotations

import os
import tarfile

from swu.decompress import Readable
from swu.handlers.base import Call, InstallError, Result, describe, ensure_directory, inside, mounted
from swu.model import Artifact, SwuError

NAMES = ("archive", "tar")
NEEDS = ("path",)


class _Escape(Exception):
    pass


def _checked(member: tarfile.TarInfo, dest: str, preserve: bool) -> tarfile.TarInfo:
    try:
        safe = tarfile.tar_filter(member, dest)
    except tarfile.FilterError as exc:
        raise _Escape(f"archive member {member.name!r} escapes the destination: {exc}") from None
    if member.islnk():
        target = os.path.realpath(os.path.join(dest, member.linkname.lstrip("/")))
        root = os.path.realpath(dest)
        if target != root and not target.startswith(root.rstrip("/") + "/"):
            raise _Escape(f"archive member {member.name!r} is a hard link to {member.linkname!r}, "
                          "outside the destination")
    if preserve:
        return member.replace(name=safe.name, deep=False)
    return safe.replace(uid=os.geteuid(), gid=os.getegid(), uname="", gname="", deep=False)


def extract(src: Readable, dest: str, *, preserve: bool, what: str) -> int:
    """Extract the tar stream ``src`` under ``dest``; returns the number of members extracted."""
    count = 0
    try:
        with tarfile.open(fileobj=src, mode="r|*") as tar:  # type: ignore[call-overload]
            for member in tar:
                checked = _checked(member, dest, preserve)
                tar.extract(checked, dest, set_attrs=True, numeric_owner=True,
                            filter="fully_trusted")
                count += 1
    except _Escape as exc:
        raise InstallError(f"{exc} ({count} members extracted before it)", what, written=count > 0) from None
    except SwuError as exc:
        raise InstallError(f"{exc} ({count} members extracted)", what, written=count > 0) from None
    except (tarfile.TarError, EOFError) as exc:
        raise InstallError(f"bad tar stream: {exc} ({count} members extracted)", what,
                           written=count > 0) from None
    except OSError as exc:
        raise InstallError(f"extracting failed: {exc} ({count} members extracted)", what,
                           written=count > 0) from None
    return count


def install(artifact: Artifact, src: Readable, call: Call) -> Result:
    what = describe(artifact)
    if not artifact.path:
        raise InstallError("archive needs a path", what, written=False)
    with mounted(artifact, call.settings) as root:
        dest = inside(root, artifact.path, what)
        ensure_directory(dest, artifact, what)
        count = extract(src, dest, preserve=artifact.preserve_attributes, what=what)
        call.finish()
    return Result(dest, count)
