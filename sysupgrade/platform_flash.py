"""``platform_check_image`` of the flash and eMMC boards (NOR, NAND, eMMC), and which platform this is.

* **NOR** (``mtd write`` of the image to ``firmware``): OpenWrt's default for these targets is the
  image's magic: the firmware partition must start with something the boot loader or the kernel's
  partition parsers know. Accepted: squashfs (``hsqs``: the kernel loaded apart, as in the VM), uImage
  (``27 05 19 56``), FIT (``d0 0d fe ed``), TRX (``HDR0``). Anything else: ``Invalid image type.``,
  status 1 (``-F`` may override).
* **NAND** (``nand_do_platform_check``): a sysupgrade tar whose ``sysupgrade-<board>/CONTROL`` (the
  board name with ``,`` as ``_``, or as it is) is not empty. OpenWrt also takes a bare UBI, ubifs or
  FIT image; stage2 here writes only the tar (``stage2.platforms.nand``), so those are refused here
  with the reason instead of after the pivot. Anything else: ``Invalid sysupgrade file.``, status 1.
* **eMMC** (the same tar, ``stage2.platforms.emmc``): as NAND, and the tar must hold ``root`` (stage2
  writes the overlay's place from it; a kernel-only tar is refused here, where OpenWrt would take it).
  OpenWrt's eMMC boards also take a FIT image on some targets; refused here with the reason.

The platform is ``WRT_PLATFORM`` when set, else what stage2 will detect (``stage2.platforms.profile``:
``/lib/upgrade/platform.conf``'s ``PLATFORM=``, ``/proc/mtd``, ``root=``); every board that is not a
NOR, NAND or eMMC one keeps the x86 check, the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stage2.formats import nand_tar
from stage2.platforms import profile
from wrtcore.errors import InvalidInput

Say = Callable[[str], None]

NOR_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"hsqs", "squashfs"),
    (b"\x27\x05\x19\x56", "uImage"),
    (b"\xd0\x0d\xfe\xed", "FIT"),
    (b"HDR0", "TRX"),
)
INVALID_NOR = "Invalid image type."
INVALID_NAND = "Invalid sysupgrade file."


def nor_image_type(head: bytes) -> str | None:
    """The kind of NOR firmware image ``head`` starts, or None."""
    return next((name for magic, name in NOR_MAGICS if head.startswith(magic)), None)


def check_nor(image: str, say: Say) -> int:
    """0 when the image starts with a known firmware magic, else 1 (``Invalid image type.``)."""
    try:
        with open(image, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        say(f"Cannot read image {image}: {exc.strerror}")
        return 1
    if nor_image_type(head) is None:
        say(INVALID_NOR)
        return 1
    return 0


def check_nand(image: str, board: str, say: Say, platform: str = "NAND") -> int:
    """``nand_do_platform_check``: 0 for a sysupgrade tar for ``board``, else 1."""
    try:
        with open(image, "rb") as f:
            kind = nand_tar.identify(f.read(4))
    except OSError as exc:
        say(f"Cannot read image {image}: {exc.strerror}")
        return 1
    if kind in (nand_tar.ImageType.UBI, nand_tar.ImageType.UBIFS, nand_tar.ImageType.FIT):
        say(f"{kind.value} images are not written on {platform} here: use the sysupgrade tar")
        say(INVALID_NAND)
        return 1
    try:
        index = nand_tar.read_index(image)
    except InvalidInput as exc:
        say(str(exc))
        say(INVALID_NAND)
        return 1
    if not nand_tar.board_matches(index, board):
        say(f"{index.board_dir}/ is for board {index.board}, this device is {board or 'unknown'}")
        say(INVALID_NAND)
        return 1
    return 0


def check_emmc(image: str, board: str, say: Say) -> int:
    """eMMC: the NAND check, and a ``root`` in the tar; 0 when stage2 can write it, else 1."""
    status = check_nand(image, board, say, platform="eMMC")
    if status == 0 and nand_tar.read_index(image).root is None:
        say(f"{image}: the sysupgrade tar holds no root")
        say(INVALID_NAND)
        return 1
    return status


def detect(env: Mapping[str, str], conf: str = profile.PLATFORM_CONF) -> str | None:
    """``nor``, ``nand`` or ``emmc`` when this device is one of those boards (stage2's detection), else
    None."""
    try:
        kind = profile.current(env, conf).kind
    except (InvalidInput, OSError):
        return None
    return kind.value if kind in (profile.Kind.NOR, profile.Kind.NAND, profile.Kind.EMMC) else None
