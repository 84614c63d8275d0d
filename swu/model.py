"""What a ``sw-description`` decides, as frozen data: the contract between the parser (``swu.description``)
that builds an :class:`InstallPlan` and the installer (``swu.install`` and ``swu.handlers``) that executes it.

Names follow SWUpdate's attribute names with dashes as underscores. Nothing here touches the system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class Section(Enum):
    IMAGES = "images"
    FILES = "files"
    SCRIPTS = "scripts"
    BOOTENV = "bootenv"  # a bootenv *file* (``type = "bootloader"`` image); pairs are BootenvVar


class Compression(Enum):
    ZLIB = "zlib"
    ZSTD = "zstd"


@dataclass(frozen=True)
class Artifact:
    """One ``images``/``files``/``scripts`` entry after link resolution, defaults and validation."""

    section: Section
    where: str  # its path in the document, e.g. "software.stable.copy-1.images[0]"
    filename: str  # the cpio member it is read from
    handler: str  # resolved ``type`` (defaults applied: volume -> ubivol, device -> raw, files -> rawfile)
    device: str | None = None
    mtdname: str | None = None
    volume: str | None = None
    ubipartition: str | None = None
    path: str | None = None
    filesystem: str | None = None
    offset: int = 0  # bytes, K/M suffixes already applied
    compressed: Compression | None = None
    installed_directly: bool = False
    sha256: str | None = None  # lowercase hex, over the bytes as stored in the cpio
    name: str | None = None
    version: str | None = None
    install_if_different: bool = False
    install_if_higher: bool = False
    encrypted: bool = False
    data: str | None = None
    preserve_attributes: bool = False
    create_destination: bool = False  # properties.create-destination
    properties: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    hook: str | None = None


@dataclass(frozen=True)
class BootenvVar:
    """A ``bootenv`` pair; ``value`` None (or empty) unsets the variable."""

    name: str
    value: str | None
    where: str


@dataclass(frozen=True)
class UbiPartition:
    """A ``partitions`` entry: resize or create UBI volume ``name`` on ``device`` (``size`` 0 deletes)."""

    name: str
    device: str
    size: int
    where: str
    static: bool = False  # data = "static"


@dataclass(frozen=True)
class Target:
    """Who installs: the board and revision (``/etc/hwrevision`` or ``-H``) and ``-e selection,mode``."""

    board: str | None
    revision: str | None
    selection: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class Skipped:
    artifact: Artifact
    reason: str  # e.g. "install-if-different: foo 1.2 already installed"


@dataclass(frozen=True)
class InstallPlan:
    """Everything to do, in SWUpdate's order: partitions, then images, then files; scripts run in document
    order around them (pre before images, post after); bootenv is written last."""

    target: Target
    version: str | None
    description: str | None
    hardware_compatibility: tuple[str, ...]
    partitions: tuple[UbiPartition, ...] = ()
    images: tuple[Artifact, ...] = ()
    files: tuple[Artifact, ...] = ()
    scripts: tuple[Artifact, ...] = ()
    bootenv: tuple[BootenvVar, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    embedded_script: str | None = None
    bootenv_files: tuple[Artifact, ...] = ()  # ``bootenv`` entries naming an env file (Section.BOOTENV)

    def artifacts(self) -> tuple[Artifact, ...]:
        """Every artifact to install (not the skipped ones), in install order."""
        return (*self.images, *self.files, *self.scripts, *self.bootenv_files)

    def wanted(self) -> frozenset[str]:
        """The cpio member names this plan reads."""
        return frozenset(a.filename for a in self.artifacts())

    def describe(self) -> list[str]:
        """One line per step, for ``-c`` and dry runs."""
        lines = [f"partition {p.name} on {p.device}: {p.size} bytes" for p in self.partitions]
        lines += [f"{a.section.value} {a.filename} -> {a.handler} "
                  f"{a.volume or a.device or a.mtdname or a.path or ''}".rstrip() for a in self.artifacts()]
        lines += [f"skip {s.artifact.filename}: {s.reason}" for s in self.skipped]
        lines += [f"bootenv {v.name}={v.value if v.value is not None else ''}" for v in self.bootenv]
        return lines


class SwuError(Exception):
    """A bundle or description that cannot be installed. ``where`` is a document path or a cpio member."""

    exit_code = 1

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class DescriptionError(SwuError):
    """The description is invalid; ``problems`` holds every finding (``where: message`` lines)."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
