"""Platform profiles: which writer flashes the image and how the configuration is carried over.

* ``x86`` (combined disk): the whole disk, or partition by partition (``stage2.platforms.x86``); config
  as ``sysupgrade.tgz`` in the new boot partition. Detected: the disk of ``root=`` (``/dev/...``,
  ``PARTUUID=``).
* ``emmc``: the ``kernel``/``rootfs`` GPT partitions; config raw at the 64 KiB-aligned overlay start
  after rootfs (``stage2.platforms.emmc``). Detected: ``root=`` on a disk with GPT partitions named
  ``kernel`` and ``rootfs`` (``find_mmc_part``).
* ``nor``: ``mtd write`` to ``PART_NAME`` (``firmware``); config by ``mtd -j`` (jffs2 appended at the
  ``DE AD C0 DE`` block). Detected: ``/proc/mtd`` lists ``firmware``.
* ``nand``: UBI volumes on ``CI_UBIPART`` (``ubi``); config as ``sysupgrade.tgz`` in the ubifs
  ``rootfs_data``. Detected: ``/proc/mtd`` lists ``ubi``.

A root on a block disk (not ``mtdblock``/``ubiblock``/``ubi``) means a disk profile; otherwise the MTD
partitions decide (``ubi`` before ``firmware``, as ``nand_do_upgrade`` falls back to ``rootfs``).

**Override**: ``/lib/upgrade/platform.conf`` (the file where the validator already reads
``REQUIRE_IMAGE_*``; ``KEY=VALUE`` lines, no shell run) may name the profile and OpenWrt's variables
for boards detection gets wrong:

    PLATFORM=nand            # x86 | emmc | nor | nand
    PART_NAME=firmware       # nor: the MTD partition written
    CI_UBIPART=ubi           # nand: MTD partition holding UBI
    CI_KERNPART=kernel       # nand: kernel volume / emmc: kernel GPT partition name
    CI_ROOTPART=rootfs       # nand: rootfs volume / emmc: rootfs GPT partition name
    CI_DATAPART=rootfs_data  # nand: data volume / emmc: data GPT partition name (optional)
    CI_ROOTDEV=/dev/mmcblk0  # disk profiles: the disk (default: the disk of root=)
    ROOTFS_DATA_MAX=67108864 # nand: cap of rootfs_data in bytes (fw_printenv rootfs_data_max)

Pure: ``decide(facts, settings)``; ``gather()`` reads /proc/mtd, the command line and sysfs.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from wrtcore import cmdline, partitions
from wrtcore import mtd as mtdio
from wrtcore.errors import InvalidInput

PLATFORM_CONF = "/lib/upgrade/platform.conf"
KEYS = ("PLATFORM", "PART_NAME", "CI_UBIPART", "CI_KERNPART", "CI_ROOTPART", "CI_DATAPART", "CI_ROOTDEV",
        "ROOTFS_DATA_MAX")
FLASH_ROOTS = ("/dev/mtdblock", "/dev/ubiblock", "/dev/ubi", "ubi", "/dev/mtd")


class Kind(enum.Enum):
    X86 = "x86"
    EMMC = "emmc"
    NOR = "nor"
    NAND = "nand"


class Writer(enum.Enum):
    BLOCK = "block"
    MTD = "mtd"
    UBI = "ubi"
    EMMC = "emmc"  # the sysupgrade tar's members to GPT partitions (stage2.platforms.emmc_write)


class ConfigMethod(enum.Enum):
    BOOT_PARTITION = "boot_partition"
    EMMC_OVERLAY = "emmc_overlay"
    JFFS2 = "jffs2"
    UBIFS = "ubifs"


WRITERS = {Kind.X86: Writer.BLOCK, Kind.EMMC: Writer.EMMC, Kind.NOR: Writer.MTD, Kind.NAND: Writer.UBI}
CONFIG_METHODS = {Kind.X86: ConfigMethod.BOOT_PARTITION, Kind.EMMC: ConfigMethod.EMMC_OVERLAY,
                  Kind.NOR: ConfigMethod.JFFS2, Kind.NAND: ConfigMethod.UBIFS}


@dataclass(frozen=True)
class Profile:
    kind: Kind
    source: str  # "detected: <why>" or "override: <file>"
    disk: str | None = None  # disk profiles: the whole disk written
    part_name: str = "firmware"
    ubipart: str = "ubi"
    kernpart: str = "kernel"
    rootpart: str = "rootfs"
    datapart: str = "rootfs_data"
    rootfs_data_max: int | None = None

    @property
    def writer(self) -> Writer:
        return WRITERS[self.kind]

    @property
    def config_method(self) -> ConfigMethod:
        return CONFIG_METHODS[self.kind]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        return cls(**{**data, "kind": Kind(data["kind"])})


@dataclass(frozen=True)
class Facts:
    """What detection looks at, gathered by ``gather`` (or made up by tests)."""

    mtd: tuple[mtdio.Partition, ...] = ()
    root: str = ""  # root= of the kernel command line
    root_disk: str | None = None  # the disk holding root=, when it is a block disk
    part_names: Mapping[str, str] = field(default_factory=dict)  # GPT PARTNAME -> device, on root_disk


def parse_settings(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (quotes stripped, comments and unknown keys ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].strip().partition("=")
        if sep and key.strip() in KEYS:
            out[key.strip()] = value.strip().strip("'\"")
    return out


def read_settings(path: str = PLATFORM_CONF) -> dict[str, str]:
    try:
        with open(path) as f:
            return parse_settings(f.read(65536))
    except OSError:
        return {}


def _is_flash_root(root: str) -> bool:
    return not root or root == "/dev/root" or root.startswith(FLASH_ROOTS)


def decide(facts: Facts, settings: Mapping[str, str] | None = None, conf: str = PLATFORM_CONF) -> Profile:
    """The profile for these facts; ``settings`` (the override file's) win. Raises ``InvalidInput``."""
    settings = settings or {}
    names: dict[str, Any] = {}
    for key, attr in (("PART_NAME", "part_name"), ("CI_UBIPART", "ubipart"), ("CI_KERNPART", "kernpart"),
                      ("CI_ROOTPART", "rootpart"), ("CI_DATAPART", "datapart")):
        if settings.get(key):
            names[attr] = settings[key]
    if settings.get("ROOTFS_DATA_MAX"):
        try:
            names["rootfs_data_max"] = int(settings["ROOTFS_DATA_MAX"], 0)
        except ValueError:
            raise InvalidInput(f"{conf}: ROOTFS_DATA_MAX={settings['ROOTFS_DATA_MAX']!r} is not a number"
                               ) from None
    disk = settings.get("CI_ROOTDEV") or facts.root_disk
    mtd_names = {p.name for p in facts.mtd}
    wanted = settings.get("PLATFORM", "")
    if wanted:
        try:
            kind = Kind(wanted)
        except ValueError:
            raise InvalidInput(f"{conf}: PLATFORM={wanted!r} is not one of "
                               f"{', '.join(k.value for k in Kind)}") from None
        source = f"override: {conf}"
    elif disk and (settings.get("CI_ROOTDEV") or not _is_flash_root(facts.root)):
        emmc = {names.get("kernpart", "kernel"), names.get("rootpart", "rootfs")} <= set(facts.part_names)
        kind = Kind.EMMC if emmc else Kind.X86
        source = f"detected: root={facts.root} on {disk}" + (" with GPT kernel/rootfs" if emmc else "")
    elif names.get("ubipart", "ubi") in mtd_names:
        kind, source = Kind.NAND, f"detected: MTD partition {names.get('ubipart', 'ubi')}"
    elif names.get("part_name", "firmware") in mtd_names:
        kind, source = Kind.NOR, f"detected: MTD partition {names.get('part_name', 'firmware')}"
    else:
        raise InvalidInput(f"cannot determine the platform (root={facts.root or 'none'}, "
                           f"MTD partitions: {', '.join(sorted(mtd_names)) or 'none'})",
                           hint=f"name it with PLATFORM= in {conf}")
    if kind in (Kind.X86, Kind.EMMC):
        if not disk:
            raise InvalidInput(f"cannot find the boot disk from root={facts.root!r}",
                               hint=f"set CI_ROOTDEV= in {conf}")
        names["disk"] = disk
    return Profile(kind=kind, source=source, **names)


# --- gathering the facts (reads the running system) -------------------------------------------------


def gpt_names(disk: str) -> dict[str, str]:
    """PARTNAME -> /dev/<partition> for the kernel's partitions of ``disk`` (``find_mmc_part``)."""
    found: dict[str, str] = {}
    base = f"/sys/class/block/{os.path.basename(disk)}"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return found
    for name in entries:
        try:
            with open(f"{base}/{name}/uevent") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        values = dict(line.partition("=")[::2] for line in lines)
        if values.get("DEVTYPE") == "partition" and values.get("PARTNAME"):
            found[values["PARTNAME"]] = f"/dev/{name}"
    return found


def root_disk(root: str) -> str | None:
    """The whole disk of ``root=``: ``/dev/...`` (kernel partition or loop view), or ``PARTUUID=``."""
    if _is_flash_root(root):
        return None
    if root.startswith("/dev/"):
        try:
            return partitions.disk_of(root)
        except OSError:
            return None
    if root.upper().startswith("PARTUUID="):
        # stage 1 reads PARTUUID= the same way; imported here only: this runs before the pivot
        from sysupgrade.platform_x86 import find_boot_disk

        return find_boot_disk(root)
    return None


def gather(env: Mapping[str, str] | None = None, proc_mtd: str = mtdio.PROC_MTD) -> Facts:
    root = cmdline.read(env).get("root", "")
    disk = root_disk(root)
    return Facts(mtd=tuple(mtdio.partitions(proc_mtd)), root=root, root_disk=disk,
                 part_names=gpt_names(disk) if disk else {})


def current(env: Mapping[str, str] | None = None, conf: str = PLATFORM_CONF) -> Profile:
    """The running system's profile (override file first, then detection)."""
    return decide(gather(env), read_settings(conf), conf)
