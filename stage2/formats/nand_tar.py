"""NAND sysupgrade images: the type by magic, and the sysupgrade tar read as streams.

OpenWrt's ``nand.sh`` (reference 5.4) tells images apart by their first four bytes (after gunzip):
``UBI#`` a ubinized image, ``31 18 10 06`` ubifs, ``hsqs`` squashfs, ``d0 0d fe ed`` FIT, ``CI``
combined; anything else is taken for the sysupgrade tar: a directory ``sysupgrade-<board>/`` holding
``CONTROL`` (non-empty), ``kernel``, ``root`` and optionally ``dtb``. A fwtool trailer after the tar's
end-of-archive blocks is ignored.

``read_index`` finds the members and their sizes without reading their data (a plain tar in /tmp is
seeked through; a gzip'd one is inflated as it goes, memory stays bounded) and ``open_member`` gives
a member's bytes as a stream. ``root_type`` is the type of the ``root`` member by its magic, which
decides whether rootfs is sized exactly (squashfs) or takes all the room (ubifs).
"""

from __future__ import annotations

import contextlib
import enum
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from wrtcore.errors import InvalidInput


class ImageType(enum.Enum):
    UBI = "ubi"
    UBIFS = "ubifs"
    SQUASHFS = "squashfs"
    FIT = "fit"
    COMBINED = "combined"
    GZIP = "gzip"
    UNKNOWN = "unknown"


MAGICS: tuple[tuple[bytes, ImageType], ...] = (
    (b"UBI#", ImageType.UBI),
    (b"\x31\x18\x10\x06", ImageType.UBIFS),
    (b"hsqs", ImageType.SQUASHFS),
    (b"\xd0\x0d\xfe\xed", ImageType.FIT),
    (b"CI", ImageType.COMBINED),
    (b"\x1f\x8b", ImageType.GZIP),
)


def identify(head: bytes) -> ImageType:
    """``identify_magic``: the type of an image from its first bytes."""
    for magic, kind in MAGICS:
        if head.startswith(magic):
            return kind
    return ImageType.UNKNOWN


@dataclass(frozen=True)
class Member:
    name: str  # path in the tar
    size: int


@dataclass(frozen=True)
class SysupgradeTar:
    path: str
    board_dir: str  # "sysupgrade-<board>"
    control: bytes
    kernel: Member | None
    root: Member | None
    dtb: Member | None
    root_type: ImageType

    @property
    def board(self) -> str:
        return self.board_dir.removeprefix("sysupgrade-")


INVALID = "Invalid sysupgrade file."
CONTROL_LIMIT = 64 * 1024  # CONTROL is a few lines of shell variables


def read_index(path: str) -> SysupgradeTar:
    """The sysupgrade tar's board directory and members. Raises ``InvalidInput`` for anything else."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            board_dir = next((m.name.rstrip("/") for m in members
                              if m.isdir() and m.name.rstrip("/").startswith("sysupgrade-")
                              and "/" not in m.name.rstrip("/")), None)
            if board_dir is None:
                board_dir = next((m.name.split("/")[0] for m in members
                                  if m.name.startswith("sysupgrade-") and "/" in m.name), None)
            if board_dir is None:
                raise InvalidInput(f"{path}: no sysupgrade-<board>/ directory", hint=INVALID)
            files = {m.name: m for m in members if m.isfile() and m.name.startswith(board_dir + "/")}

            def member(name: str) -> Member | None:
                m = files.get(f"{board_dir}/{name}")
                return Member(m.name, m.size) if m is not None and m.size > 0 else None

            control = b""
            cm = files.get(f"{board_dir}/CONTROL")
            if cm is not None and 0 < cm.size <= CONTROL_LIMIT:
                f = tar.extractfile(cm)
                control = f.read() if f is not None else b""
            root = member("root")
            root_type = ImageType.UNKNOWN
            if root is not None:
                f = tar.extractfile(files[root.name])
                root_type = identify(f.read(4)) if f is not None else ImageType.UNKNOWN
            index = SysupgradeTar(path, board_dir, control, member("kernel"), root, member("dtb"), root_type)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput(f"{path}: not a sysupgrade tar: {exc}", hint=INVALID) from exc
    if not index.control:
        raise InvalidInput(f"{path}: {board_dir}/CONTROL is missing or empty", hint=INVALID)
    if index.kernel is None and index.root is None:
        raise InvalidInput(f"{path}: {board_dir}/ holds neither kernel nor root")
    return index


@contextlib.contextmanager
def open_member(path: str, member: Member) -> Iterator[BinaryIO]:
    """The bytes of ``member`` as a stream (read in pieces; the tar is not loaded)."""
    with tarfile.open(path, "r:*") as tar:
        f = tar.extractfile(member.name)
        if f is None:
            raise InvalidInput(f"{path}: {member.name} is not a regular file")
        with f:
            yield f  # type: ignore[misc]  # tarfile's reader is a BufferedReader, typed IO[bytes]


def board_matches(index: SysupgradeTar, board: str) -> bool:
    """``nand_do_platform_check``: the tar's directory names the board (``,`` and ``_`` alike)."""
    return index.board in (board.replace(",", "_"), board.replace("_", ","), board)
