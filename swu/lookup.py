"""SWUpdate's four-step lookup of a top-level item (``images``, ``version``, ...), first match wins:

1. ``software.<board>.<selection>.<mode>.<item>`` (board, selection and mode all known)
2. ``software.<selection>.<mode>.<item>`` (``-e selection,mode``)
3. ``software.<board>.<item>`` (board from ``/etc/hwrevision`` or ``-H``)
4. ``software.<item>``

Each item is looked up on its own, so sections mix (images from the board's mode, ``bootenv`` from the
root). As in SWUpdate, the base of each step is looked up first (following a link when the base itself
is a ``ref`` group) and the item is then looked up under where the base was found (following a link
when the item is a ``ref`` group). A selection or mode that does not exist falls back silently.
"""

from __future__ import annotations

from typing import Any

from swu.libconfig_tree import Found, NodePath, find_root
from swu.model import Target

ROOT = "software"

# Names that cannot be boards, selections or modes (SWUpdate's list).
RESERVED = frozenset({"version", "hardware-compatibility", "uboot", "bootenv", "files", "scripts",
                      "partitions", "images"})


def precedence_bases(target: Target) -> list[NodePath]:
    """The bases searched, most specific first, for ``target``."""
    bases: list[NodePath] = []
    if target.board and target.selection and target.mode:
        bases.append((ROOT, target.board, target.selection, target.mode))
    if target.selection and target.mode:
        bases.append((ROOT, target.selection, target.mode))
    if target.board:
        bases.append((ROOT, target.board))
    bases.append((ROOT,))
    return bases


def find_item(root: dict[str, Any], item: str, target: Target) -> Found | None:
    """Where ``item`` is found for ``target`` (value and node path), or None.

    Raises :class:`swu.libconfig_tree.LinkError` for a broken link met on the way."""
    for base in precedence_bases(target):
        found_base = find_root(root, base)
        if found_base is None:
            continue
        found = find_root(root, (*found_base.path, item))
        if found is not None:
            return found
    return None
