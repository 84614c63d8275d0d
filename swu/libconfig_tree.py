"""The parsed ``sw-description`` tree and SWUpdate's links (``ref``) through it.

The tree is what ``libconf`` returns: groups are dicts, lists ``( )`` tuples, arrays ``[ ]`` lists.
A node is named by its *node path*, the names from the root (``("software", "myboard", "images")``).

Links, as SWUpdate's ``set_find_path``/``find_root`` follow them: a link is ``"#"`` then ``/``-separated
components (empty ones ignored, at least 3 characters in all). The base is the node path of the setting
that holds the link, without its last name (so ``.`` is the level that contains it); ``..`` drops one
more name (an error at the root); a first component that is a name restarts from the root (absolute);
every other name is appended. A path whose target is a group with a string ``ref`` is followed again.

Deliberate differences from SWUpdate, which fails *silently* (the lookup falls back to the next
precedence level, or a list element is dropped): a loop, a chain longer than :data:`MAX_LINKS`, a
malformed link and a dangling link are errors (:class:`LinkError`) here, so that a typo cannot make a
bundle install something other than what its author meant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import libconf

from swu.model import DescriptionError

NodePath = tuple[str, ...]
MAX_LINKS = 9  # SWUpdate's MAX_LINKS_DEPTH is 10 calls, i.e. 9 links followed


class LinkError(Exception):
    """A link that cannot be followed; ``where`` is the node path of the setting that holds it."""

    def __init__(self, message: str, where: NodePath) -> None:
        super().__init__(message)
        self.where = where


def dotted(path: Sequence[str | int]) -> str:
    """``("software", "images", 0, "filename")`` as ``software.images[0].filename``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _StrictParser(libconf.Parser):  # type: ignore[misc]
    """libconf's parser with libconfig's own checks that libconf omits: no duplicate setting names in a
    group, arrays of one scalar type. Includes are never read (the tokenizer refuses ``@include``)."""

    def setting_list_or_empty(self) -> Any:
        result = libconf.AttrDict()
        while (setting := self.setting()) is not None:
            if setting[0] in result:
                raise libconf.ConfigParseError(f"duplicate setting name {setting[0]!r}")
            result[setting[0]] = setting[1]
        return result

    def array(self) -> Any:
        values = super().array()
        if values is not None and len({type(v) for v in values}) > 1:
            raise libconf.ConfigParseError(f"array {values!r} mixes element types")
        return values


def parse_document(text: str | bytes) -> dict[str, Any]:
    """The libconfig tree of ``text``; raises :class:`DescriptionError` with the syntax error's line."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise DescriptionError([f"sw-description: not UTF-8 text ({exc.reason} at byte {exc.start})"]) \
                from None
    try:
        tokens = libconf.TokenStream(libconf.Tokenizer("sw-description").tokenize(text))
        tree = _StrictParser(tokens).parse()
    except libconf.ConfigParseError as exc:
        raise DescriptionError([f"sw-description: syntax error: {exc}"]) from None
    except (ValueError, IndexError, TypeError) as exc:  # libconf's tokenizer raises these on some input
        raise DescriptionError([f"sw-description: syntax error: {exc}"]) from None
    return dict(tree)


def lookup(root: dict[str, Any], path: NodePath) -> Any:
    """The node at ``path`` by plain descent through groups (no links), or None."""
    node: Any = root
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return None
        node = node[name]
    return node


def link_of(node: Any) -> str | None:
    """The ``ref`` string of a group, or None when ``node`` is not a group with a string ``ref``."""
    if isinstance(node, dict):
        ref = node.get("ref")
        if isinstance(ref, str):
            return ref
    return None


def apply_link(base: NodePath, ref: str, where: NodePath) -> NodePath:
    """The node path ``ref`` names when the setting holding it is at ``base``."""
    if not ref.startswith("#") or len(ref) < 3:
        raise LinkError(f"link {ref!r} must start with '#' and name a path", where)
    parts = [p for p in ref[1:].split("/") if p]
    if not parts:
        raise LinkError(f"link {ref!r} names no path", where)
    nodes = list(base[:-1])
    for i, part in enumerate(parts):
        if part == "..":
            if not nodes:
                raise LinkError(f"link {ref!r} goes above the root", where)
            nodes.pop()
        elif part != ".":
            if i == 0:
                nodes = []
            nodes.append(part)
    return tuple(nodes)


@dataclass(frozen=True)
class Found:
    """A node reached by :func:`find_root`: its value and the node path it was found at."""

    value: Any
    path: NodePath


def find_root(root: dict[str, Any], path: NodePath) -> Found | None:
    """The node at ``path``, following the link when it is a group with ``ref`` (repeatedly).

    None when nothing is there; :class:`LinkError` for a link that loops, is too long, malformed or
    dangling."""
    seen = [path]
    node = lookup(root, path)
    while (ref := link_of(node)) is not None:
        target = apply_link(path, ref, path)
        if target in seen:
            chain = " -> ".join(dotted(p) for p in [*seen[seen.index(target):], target])
            raise LinkError(f"link loop: {chain}", path)
        if len(seen) > MAX_LINKS:
            raise LinkError(f"more than {MAX_LINKS} links in a row", path)
        node = lookup(root, target)
        if node is None:
            raise LinkError(f"link {ref!r} points to {dotted(target)}, which does not exist", path)
        seen.append(target)
        path = target
    return None if node is None else Found(node, path)
