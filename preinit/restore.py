"""Config restore: /sysupgrade.tgz extracted safely over the new root.

Every member is checked before anything is written, with our own rules (the tarfile filters of the
Python in use may have known holes):
* leading '/' stripped as tar does; no '..', nothing under dev/, proc/ or sys/, no name longer
  than half of PATH_MAX (long chains are how realpath checks get fooled);
* regular files, directories, symlinks and hard links only: no device nodes, FIFOs or sockets;
* no member may pass through a symlink that the archive itself created, and the directory it lands
  in must really be inside the root (existing symlinks followed);
* symlink targets must stay inside the root, lexically and really, and may not go through a
  symlink from the archive (absolute targets are taken relative to the root, as the device sees
  them); hard links must name a regular file inside the root, relative to it;
* an existing file at the destination is replaced, never written through (a symlink or a special
  file there is not followed); a special file there refuses the member.
setuid/setgid bits are dropped with a warning. Each refused member is skipped with a one-line warning
and the rest is restored. Then the new firmware's default passwd/group/shadow entries missing from the
restored files are added back (OpenWrt's merge).
"""

from __future__ import annotations

import os
import stat
import tarfile

from wrtcore import log

MERGED = ("etc/passwd", "etc/group", "etc/shadow")
MAX_NAME = 2048
VIRTUAL = ("dev", "proc", "sys")


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def refusal(member: tarfile.TarInfo, root: str, archive_links: set[str]) -> str | None:
    """Why ``member`` must not be extracted under ``root`` (a real path), or None."""
    parts = _parts(member.name)
    if len(member.name) > MAX_NAME or len(member.linkname) > MAX_NAME:
        return "name too long"
    if not parts:
        return "empty name"
    if ".." in parts:
        return "'..' in the name"
    if parts[0] in VIRTUAL:
        return f"lands in /{parts[0]}"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return "device node, FIFO or other special file"
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in archive_links:
            return "passes through a symlink from the archive"
    parent = os.path.realpath(os.path.join(root, *parts[:-1]))
    if not _inside(root, parent):
        return "its directory is outside the root"
    if member.issym():
        rel = [] if member.linkname.startswith("/") else parts[:-1]
        tparts = [*rel, *_parts(member.linkname)]
        if any("/".join(tparts[:i]) in archive_links for i in range(1, len(tparts) + 1)):
            return f"symlink to {member.linkname} goes through a symlink from the archive"
        target = os.path.normpath(os.path.join(root, *tparts)) if tparts else root
        if not _inside(root, target) or not _inside(root, os.path.realpath(target)):
            return f"symlink to {member.linkname} leaves the root"
    if member.islnk():
        lparts = _parts(member.linkname)
        if member.linkname.startswith("/") or ".." in lparts or not lparts:
            return f"hard link to {member.linkname} leaves the root"
        if any("/".join(lparts[:i]) in archive_links for i in range(1, len(lparts) + 1)):
            return "hard link through a symlink from the archive"
        target = os.path.realpath(os.path.join(root, *lparts))
        if not _inside(root, target) or not os.path.isfile(target):
            return f"hard link to {member.linkname}: not a file inside the root"
    dest = os.path.join(root, *parts)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode) and not member.isdir():
        return "would replace a directory"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "would write into a special file"
    return None


def _merge_defaults(root: str, defaults: dict[str, list[str]]) -> None:
    for rel, lines in defaults.items():
        path = os.path.join(root, rel)
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            continue
        names = {line.split(":", 1)[0] for line in text.splitlines() if line}
        missing = [line for line in lines if line and line.split(":", 1)[0] not in names]
        if missing:
            with open(path, "a") as f:
                if text and not text.endswith("\n"):
                    f.write("\n")
                f.write("".join(f"{line}\n" for line in missing))
            log.get().info("restored defaults", file="/" + rel, entries=[m.split(":", 1)[0] for m in missing])


def extract(archive: str, root: str = "/") -> dict[str, list[str]]:
    """Extract ``archive`` under ``root``; returns {"restored": [...], "refused": [...]}."""
    root = os.path.realpath(root)
    defaults: dict[str, list[str]] = {}
    for rel in MERGED:
        try:
            with open(os.path.join(root, rel)) as f:
                defaults[rel] = f.read().splitlines()
        except FileNotFoundError:
            pass
    restored: list[str] = []
    refused: list[str] = []
    archive_links: set[str] = set()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            why = refusal(member, root, archive_links)
            if why is not None:
                refused.append(member.name)
                log.get().warning("archive member refused", member=member.name, reason=why)
                continue
            name = "/".join(_parts(member.name))
            dest = os.path.join(root, name)
            if os.path.lexists(dest) and not (member.isdir() and os.path.isdir(dest)):
                os.unlink(dest)  # replace, never write through what is there
            if member.mode & 0o6000:
                log.get().warning("setuid/setgid bit dropped", member=member.name)
                member.mode &= ~0o6000
            if member.issym():
                archive_links.add(name)
            tar.extract(member, root, filter="tar")
            restored.append(member.name)
    _merge_defaults(root, defaults)
    os.sync()
    return {"restored": restored, "refused": refused}
