"""The two ways an upgrade reaches upgraded besides the bus: procd's exec contract and failsafe's file.

* procd execs ``/sbin/upgraded <path> <command>`` (from inside ``chroot(prefix)``) with ``WDTFD``,
  ``UPGRADE_BACKUP`` and ``UPGRADE_OPT_*`` in the environment.
* In failsafe, ``sysupgrade`` writes ``/tmp/sysupgrade`` = prefix NUL path NUL command (no trailing NUL)
  and the init picks it up when preinit ends. procd then drops the backup and the options; we keep
  ``/tmp/sysupgrade.tgz`` when it exists, so the configuration survives a failsafe upgrade.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

FAILSAFE_FILE = "/tmp/sysupgrade"
FAILSAFE_BACKUP = "/tmp/sysupgrade.tgz"


@dataclass(frozen=True)
class Handover:
    path: str
    command: str | None
    backup: str | None
    env: dict[str, str] = field(default_factory=dict)
    prefix: str | None = None
    wdt_fd: int | None = None


def from_exec(argv: list[str], environ: dict[str, str]) -> Handover:
    """procd's contract: exactly ``<path> <command>``; ValueError otherwise (procd's message)."""
    if len(argv) != 2:
        raise ValueError("sysupgrade stage 2 failed, invalid command line")
    wdt = environ.get("WDTFD", "")
    env = {k: v for k, v in environ.items() if k.startswith("UPGRADE_OPT_")}
    return Handover(path=argv[0], command=argv[1] or None, backup=environ.get("UPGRADE_BACKUP") or None,
                    env=env, wdt_fd=int(wdt) if wdt.isdigit() else None)


def parse_failsafe(data: bytes) -> Handover | None:
    """Three NUL-separated fields; anything else is ignored (None) and the boot goes on."""
    fields = data.split(b"\0")
    if len(fields) != 3 or not all(fields[:2]):
        return None
    try:
        prefix, path, command = (f.decode() for f in fields)
    except UnicodeDecodeError:
        return None
    if not path.startswith("/"):
        return None
    return Handover(path=path, command=command or None, backup=None, prefix=prefix)


def read_failsafe(path: str = FAILSAFE_FILE, backup: str = FAILSAFE_BACKUP) -> Handover | None:
    try:
        with open(path, "rb") as f:
            data = f.read(8192)
    except OSError:
        return None
    found = parse_failsafe(data)
    if found is not None and os.path.isfile(backup):
        found = Handover(found.path, found.command, backup, found.env, found.prefix)
    return found
