"""The NAND profile: a sysupgrade tar onto UBI volumes, the configuration into ubifs ``rootfs_data``.

``prepare`` (before anything changes) reads the tar's index, finds the UBI device on the ``ubi`` MTD
partition (attaching it if needed) and plans the volumes: a tar that does not fit is refused there.
``flash`` carries the plan out (``stage2.writers.ubi``); ``save_config`` puts ``sysupgrade.tgz`` into
the new ``rootfs_data``. When the board has a raw ``kernel`` MTD partition, the kernel is written there
with the MTD writer instead of a UBI volume (OpenWrt's ``has_kernel=0``).

Also a command, what stage2 does on a NAND board without the rest of the upgrade (the vm tier runs it
in the guest)::

    python -m stage2.platforms.nand TAR [--backup TGZ] [--ubipart ubi] [--rootfs-data-max BYTES]

prints a JSON report; exit codes 0 done, 1 failed (the JSON says whether anything was written and at
which offset), 2 invalid input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from stage2.formats import nand_tar
from stage2.platforms.profile import Kind, Profile
from stage2.writers import mtd as mtdwriter
from stage2.writers import ubi as ubiwriter
from wrtcore import log, ubi
from wrtcore import mtd as mtdio
from wrtcore.errors import EXIT_FAILURE, EXIT_INVALID, InvalidInput, UpgradeError, WriteError

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Prepared:
    index: nand_tar.SysupgradeTar
    device: ubi.Device
    plan: ubiwriter.NandPlan
    kernel_mtd: str | None  # a raw kernel MTD partition gets the kernel instead of a volume


def names_of(profile: Profile) -> ubiwriter.Names:
    return ubiwriter.Names(ubipart=profile.ubipart, kernel=profile.kernpart, rootfs=profile.rootpart,
                           data=profile.datapart)


def _mtd_index(name: str) -> int | None:
    return next((p.index for p in mtdio.partitions() if p.name == name), None)


def prepare(image: str, profile: Profile) -> Prepared:
    names = names_of(profile)
    with open(image, "rb") as f:
        kind = nand_tar.identify(f.read(4))
    if kind in (nand_tar.ImageType.UBI, nand_tar.ImageType.UBIFS, nand_tar.ImageType.FIT):
        raise InvalidInput(f"{image}: a {kind.value} image; only the sysupgrade tar is written on NAND here",
                           hint="nothing was written")
    index = nand_tar.read_index(image)
    ubipart = names.ubipart
    mtd_num = _mtd_index(ubipart)
    if mtd_num is None:  # nand_do_upgrade: no "ubi" partition, UBI lives in "rootfs"
        ubipart, mtd_num = "rootfs", _mtd_index("rootfs")
    if mtd_num is None:
        raise InvalidInput(f"cannot find ubi mtd partition {names.ubipart}", hint="nothing was written")
    kernel_mtd = names.kernel if index.kernel is not None and _mtd_index(names.kernel) is not None else None
    device = ubiwriter.ubi_device(mtd_num)
    plan = ubiwriter.plan_nand(index, device, names, profile.rootfs_data_max,
                               kernel_in_ubi=kernel_mtd is None)
    return Prepared(index, device, plan, kernel_mtd)


def flash(prepared: Prepared, progress: Progress | None = None) -> dict[str, object]:
    """Write the kernel (raw MTD first, as OpenWrt) and the volumes; every write read back."""
    out: dict[str, object] = {"plan": prepared.plan.describe()}
    if prepared.kernel_mtd is not None and prepared.index.kernel is not None:
        with nand_tar.open_member(prepared.index.path, prepared.index.kernel) as src:
            report = mtdwriter.write_mtd(src, prepared.kernel_mtd, length=prepared.index.kernel.size,
                                         progress=progress)
        out["kernel_mtd"] = report._asdict()
    volumes = ubiwriter.write_nand(prepared.index, prepared.device, prepared.plan, progress)
    out["volumes"] = [asdict(v) for v in volumes]
    out["bytes_written"] = sum(v.bytes_written for v in volumes)
    return out


def save_config(profile: Profile, ubi_number: int, backup: str) -> str:
    return ubiwriter.save_config(ubi.read_device(ubi_number), backup, names_of(profile))


def save_file(profile: Profile, ubi_number: int, path: str) -> str:
    """A file (stage2's report) into the new ``rootfs_data`` beside the config, under its own name."""
    return ubiwriter.save_config(ubi.read_device(ubi_number), path, names_of(profile),
                                 name=os.path.basename(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stage2.platforms.nand",
                                     description="write a NAND sysupgrade tar to UBI as stage2 does")
    parser.add_argument("image")
    parser.add_argument("--backup", help="configuration archive to put into rootfs_data")
    parser.add_argument("--ubipart", default="ubi", help="MTD partition holding UBI (CI_UBIPART)")
    parser.add_argument("--rootfs-data-max", type=int, default=None)
    args = parser.parse_args(argv)
    log.setup("nand")
    profile = Profile(Kind.NAND, "command line", ubipart=args.ubipart, rootfs_data_max=args.rootfs_data_max)
    result: dict[str, object] = {"image": args.image}
    code = 0
    try:
        prepared = prepare(args.image, profile)
        result.update(flash(prepared))
        if args.backup:
            result["config"] = save_config(profile, prepared.device.number, args.backup)
        result["outcome"] = "success"
    except InvalidInput as exc:
        result.update(outcome="invalid", error=str(exc), written=False)
        code = EXIT_INVALID
    except WriteError as exc:
        result.update(outcome="failed", error=str(exc), written=exc.written, offset=exc.offset)
        code = EXIT_FAILURE
    except (UpgradeError, OSError) as exc:
        result.update(outcome="failed", error=str(exc), written=True)
        code = EXIT_FAILURE
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
