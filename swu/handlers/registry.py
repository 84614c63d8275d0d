"""The handler names a ``sw-description`` may use: one tuple, shared by the parser and the installer.

The parser refuses any other ``type`` (SWUpdate: "feature '<type>' required for '<file>' in
sw-description is absent!"); the installer maps each name to its implementation. ``uboot`` is the
older name of ``bootloader`` (a U-Boot environment file), ``tar`` an alias of ``archive``.
"""

from __future__ import annotations

KNOWN_HANDLERS: tuple[str, ...] = (
    "raw", "flash", "ubivol", "ubipartition", "rawfile", "archive", "tar", "bootloader", "uboot",
    "shellscript", "preinstall", "postinstall", "lua",
)

SCRIPT_HANDLERS: frozenset[str] = frozenset({"lua", "shellscript", "preinstall", "postinstall"})
