"""``sw-description`` -> :class:`~swu.model.InstallPlan`: the whole description checked before anything is
touched, every problem reported with its path in the document (:class:`~swu.model.DescriptionError`).

What is decided, as SWUpdate 2022.12 decides it (see ``swu.lookup`` for the precedence,
``swu.libconfig_tree`` for links, ``swu.entries`` for one entry, ``swu.hwcompat``, ``swu.versions``):

* ``version`` is mandatory ("Missing version in configuration file"); ``hardware-compatibility`` is
  mandatory and must accept the target's revision ("SW not compatible with hardware").
* ``bootenv`` is looked up first, the older ``uboot`` only when no ``bootenv`` is found. Pairs with the
  same name: the first one in document order wins (SWUpdate walks lists backwards into a dictionary).
* A list element ``{ ref = "#..."; }`` is replaced by the list (or single group) it names.
* ``install-if-different`` skips an entry whose ``name`` is installed at an equal version
  (``compare_versions`` == 0); ``install-if-higher`` skips it unless its version is greater.
* Nothing left in images, files, partitions, scripts and bootenv pairs: "Found nothing to install".
* When the bundle is signed every image, file, script and bootenv file must carry ``sha256``.
* Script ``filename``s must be unique (scripts are copied by name to one directory).
* ``encrypted`` artifacts are refused (SWUpdate without ``-K``: "no key provided for decryption!").

Deliberate differences (errors here, silent in SWUpdate): broken links (loop, dangling, malformed), the
stricter entry checks listed in ``swu.entries``, an invalid ``#RE:`` revision pattern, reserved names
used as board, selection or mode, a list entry that is not a group.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from swu import hwcompat
from swu.entries import parse_artifact
from swu.hooks import HookError, HookRunner
from swu.libconfig_tree import Found, LinkError, NodePath, apply_link, dotted, find_root, parse_document
from swu.lookup import RESERVED, ROOT, find_item
from swu.model import (
    Artifact,
    BootenvVar,
    DescriptionError,
    InstallPlan,
    Section,
    Skipped,
    Target,
    UbiPartition,
)
from swu.versions import compare_versions

MAX_LIST_LINKS = 10


class _Reader:
    """One pass over the document for one target, collecting problems."""

    def __init__(self, root: dict[str, Any], target: Target) -> None:
        self.root = root
        self.target = target
        self.problems: list[str] = []
        self.hooks: HookRunner | None = None

    def find(self, item: str) -> Found | None:
        try:
            return find_item(self.root, item, self.target)
        except LinkError as exc:
            self.problems.append(f"{dotted(exc.where)}: {exc}")
            return None

    def scalar(self, item: str, kind: type) -> Any:
        found = self.find(item)
        if found is None:
            return None
        if not isinstance(found.value, kind) or isinstance(found.value, bool) != (kind is bool):
            self.problems.append(f"{dotted(found.path)}: must be a {kind.__name__}")
            return None
        return found.value

    def elements(self, found: Found,
                 stack: tuple[NodePath, ...] = ()) -> Iterator[tuple[dict[str, Any], str]]:
        """The groups of a list (links followed, in document order) with their paths."""
        value = found.value
        items: tuple[Any, ...]
        if isinstance(value, dict):
            items, single = (value,), True
        elif isinstance(value, (tuple, list)):
            items, single = tuple(value), False
        else:
            self.problems.append(f"{dotted(found.path)}: must be a list of groups")
            return
        for i, element in enumerate(items):
            where = dotted(found.path) if single else f"{dotted(found.path)}[{i}]"
            if not isinstance(element, dict):
                self.problems.append(f"{where}: must be a group")
                continue
            ref = element.get("ref")
            if not isinstance(ref, str):
                yield element, where
                continue
            try:
                target = apply_link(found.path, ref, found.path)
                if target in stack or target == found.path:
                    raise LinkError(f"link loop: {ref!r} leads back to {dotted(target)}", found.path)
                if len(stack) >= MAX_LIST_LINKS:
                    raise LinkError(f"more than {MAX_LIST_LINKS} nested links", found.path)
                linked = find_root(self.root, target)
                if linked is None:
                    raise LinkError(f"link {ref!r} points to {dotted(target)}, which does not exist",
                                    found.path)
            except LinkError as exc:
                self.problems.append(f"{where}.ref: {exc}")
                continue
            yield from self.elements(linked, (*stack, found.path))

    def hooked(self, attrs: dict[str, Any], where: str) -> dict[str, Any] | None:
        hook = attrs.get("hook")
        if not isinstance(hook, str):
            return attrs
        if self.hooks is None:
            self.problems.append(f"{where}.hook: {hook!r} but there is no embedded-script")
            return None
        try:
            return self.hooks.call(hook, attrs)
        except HookError as exc:
            self.problems.append(f"{where}.hook: {exc}")
            return None


def _skip_reason(artifact: Artifact, installed: Mapping[str, str]) -> str | None:
    if not artifact.name or not artifact.version or artifact.name not in installed:
        return None
    current = installed[artifact.name]
    if artifact.install_if_different and compare_versions(artifact.version, current) == 0:
        return f"install-if-different: {artifact.name} {current} already installed"
    if artifact.install_if_higher and compare_versions(artifact.version, current) <= 0:
        return f"install-if-higher: {artifact.name} {current} installed, not lower than {artifact.version}"
    return None


def _check_target(target: Target, problems: list[str]) -> None:
    if bool(target.selection) != bool(target.mode):
        problems.append("-e: selection and mode must be given together (selection,mode)")
    for label, name in (("board", target.board), ("selection", target.selection), ("mode", target.mode)):
        if name in RESERVED:
            problems.append(f"{label} {name!r} is a reserved name of sw-description")


def _hardware(reader: _Reader, target: Target) -> tuple[str, ...]:
    found = reader.find("hardware-compatibility")
    if found is None:
        reader.problems.append("software: HW compatibility not found (hardware-compatibility is mandatory)")
        return ()
    value = found.value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        reader.problems.append(f"{dotted(found.path)}: must be an array of strings")
        return ()
    for entry in value:
        try:
            hwcompat.compile_entry(entry)
        except Exception as exc:
            reader.problems.append(f"{dotted(found.path)}: invalid pattern {entry!r}: {exc}")
    if target.revision is None:
        reader.problems.append("SW not compatible with hardware: no board revision "
                               "(/etc/hwrevision missing or incomplete; use -H board:revision)")
    elif not hwcompat.revision_matches(target.revision, value):
        reader.problems.append(f"{dotted(found.path)}: SW not compatible with hardware: revision "
                               f"{target.revision!r} not in {list(value)}")
    return tuple(value)


def _partitions(reader: _Reader) -> list[UbiPartition]:
    found = reader.find("partitions")
    result: list[UbiPartition] = []
    for attrs, where in reader.elements(found) if found else ():
        name, device, size = attrs.get("name"), attrs.get("device"), attrs.get("size")
        kind = attrs.get("type", "ubipartition")
        if kind != "ubipartition":
            reader.problems.append(f"{where}.type: feature '{kind}' is not supported in partitions")
        elif not isinstance(name, str) or not name or not isinstance(device, str) or not device:
            reader.problems.append(f"{where}: Partition incompleted in description file (name and device)")
        elif not isinstance(size, int) or isinstance(size, bool) or size < 0:
            reader.problems.append(f"{where}.size: must be a byte count")
        else:
            result.append(UbiPartition(name=name, device=device, size=size, where=where,
                                       static=attrs.get("data") == "static"))
    return result


def build_plan(text: str | bytes, target: Target, installed_versions: Mapping[str, str] | None = None, *,
               signed: bool = False, allow_encrypted: bool = False) -> InstallPlan:
    """Decide what ``text`` (a ``sw-description``) installs on ``target``.

    ``installed_versions``: name -> version, from :func:`swu.versions.installed_versions`. ``signed``:
    the bundle carries a signature (then every artifact needs ``sha256``). Raises
    :class:`DescriptionError` listing every problem."""
    installed = installed_versions or {}
    root = parse_document(text)
    if not isinstance(root.get(ROOT), dict):
        raise DescriptionError([f"sw-description: no '{ROOT}' group"])
    reader = _Reader(root, target)
    _check_target(target, reader.problems)
    version = reader.scalar("version", str)
    if version is None and reader.find("version") is None:
        reader.problems.append("software: Missing version in configuration file")
    description = reader.scalar("description", str)
    hardware = _hardware(reader, target)
    script = reader.scalar("embedded-script", str)
    if script is not None:
        try:
            reader.hooks = HookRunner(script)
        except HookError as exc:
            reader.problems.append(f"software.embedded-script: {exc}")

    lists: dict[Section, list[Artifact]] = {s: [] for s in Section}
    skipped: list[Skipped] = []
    bootenv: dict[str, BootenvVar] = {}
    boot_found = reader.find("bootenv") or reader.find("uboot")
    sources = [(Section.FILES, reader.find("files")), (Section.IMAGES, reader.find("images")),
               (Section.SCRIPTS, reader.find("scripts")), (Section.BOOTENV, boot_found)]
    for section, found in sources:
        for raw, where in reader.elements(found) if found else ():
            attrs = reader.hooked(raw, where)
            if attrs is None:
                continue
            if section is Section.BOOTENV and "filename" not in attrs:
                name, value = attrs.get("name"), attrs.get("value")
                if not isinstance(name, str) or not name:
                    reader.problems.append(f"{where}: bootenv entry needs a name (or a filename)")
                elif value is not None and not isinstance(value, str):
                    reader.problems.append(f"{where}.value: must be a string")
                elif name not in bootenv:
                    bootenv[name] = BootenvVar(name=name, value=value or None, where=where)
                continue
            artifact = parse_artifact(section, attrs, where, reader.problems)
            if artifact is None:
                continue
            reason = _skip_reason(artifact, installed)
            if reason:
                skipped.append(Skipped(artifact, reason))
                continue
            if artifact.encrypted and not allow_encrypted:
                reader.problems.append(f"{where}.encrypted: no key provided for decryption! "
                                       "(encrypted artifacts are not supported)")
            if signed and artifact.sha256 is None:
                reader.problems.append(f"{where}: Hash not set for {artifact.filename} Type "
                                       f"{artifact.handler} (a signed bundle needs sha256 on every artifact)")
            lists[section].append(artifact)
    partitions = _partitions(reader)

    seen_scripts: dict[str, str] = {}
    for artifact in lists[Section.SCRIPTS]:
        if artifact.filename in seen_scripts:
            reader.problems.append(f"{artifact.where}: duplicate script name {artifact.filename!r} "
                                   f"(also {seen_scripts[artifact.filename]})")
        seen_scripts.setdefault(artifact.filename, artifact.where)
    if not (lists[Section.IMAGES] or lists[Section.FILES] or partitions or lists[Section.SCRIPTS]
            or bootenv):
        reader.problems.append("software: Found nothing to install")
    if reader.problems:
        raise DescriptionError(reader.problems)
    return InstallPlan(
        target=target, version=version, description=description, hardware_compatibility=hardware,
        partitions=tuple(partitions), images=tuple(lists[Section.IMAGES]), files=tuple(lists[Section.FILES]),
        scripts=tuple(lists[Section.SCRIPTS]), bootenv=tuple(bootenv.values()), skipped=tuple(skipped),
        embedded_script=script, bootenv_files=tuple(lists[Section.BOOTENV]),
    )
