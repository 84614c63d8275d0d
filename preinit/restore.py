"""Config restore: /sysupgrade.tgz extracted safely over the new root.

Safe means: no member lands outside the root (absolute names, '..', links pointing out, hard links to
outside), no device nodes or FIFOs, setuid/setgid bits dropped with a warning. Each refused member is
skipped with a one-line warning; the rest of the archive is still restored. Then the new firmware's
default passwd/group/shadow entries missing from the restored files are added back (OpenWrt's merge).
"""

from __future__ import annotations

import os
import tarfile

from wrtcore import log

MERGED = ("etc/passwd", "etc/group", "etc/shadow")


def _merge_defaults(root: str, defaults: dict[str, list[str]]) -> None:
    for rel, lines in defaults.items():
        path = os.path.join(root, rel)
        try:
            with open(path) as f:
                current = f.read().splitlines()
        except FileNotFoundError:
            continue
        names = {line.split(":", 1)[0] for line in current if line}
        missing = [line for line in lines if line and line.split(":", 1)[0] not in names]
        if missing:
            with open(path, "a") as f:
                f.write("".join(f"{line}\n" for line in missing))
            log.get().info("restored defaults", file="/" + rel, entries=[m.split(":", 1)[0] for m in missing])


def extract(archive: str, root: str = "/") -> dict[str, list[str]]:
    """Extract ``archive`` under ``root``; returns {"restored": [...], "refused": [...]}."""
    defaults: dict[str, list[str]] = {}
    for rel in MERGED:
        try:
            with open(os.path.join(root, rel)) as f:
                defaults[rel] = f.read().splitlines()
        except FileNotFoundError:
            pass
    restored: list[str] = []
    refused: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            try:
                safe = tarfile.data_filter(member, root)
            except tarfile.FilterError as exc:
                refused.append(member.name)
                log.get().warning("archive member refused", member=member.name, reason=str(exc))
                continue
            if member.mode & 0o6000:
                log.get().warning("setuid/setgid bit dropped", member=member.name)
            tar.extract(safe, root, filter="data")
            restored.append(member.name)
    _merge_defaults(root, defaults)
    os.sync()
    return {"restored": restored, "refused": refused}
