"""The steps stage2 runs in PID 1 on the old root: validate and plan, stop, kill, build the ramfs, pivot.

Everything here happens before the first byte is written: any failure ends in ``aborted``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from typing import Any

from stage2 import ramfs, report, terminate
from stage2.formats import fwtool
from stage2.machine import Context, Step
from stage2.plan import Plan, Target, plan_upgrade
from stage2.platforms import emmc_write, flash, nand
from stage2.platforms.profile import ConfigMethod, Kind, Profile, Writer, current
from stage2.report import save_failure
from stage2.states import State
from swu.cpio import is_bundle_file
from wrtcore import blockdev, cmdline, log, mounts, partitions, syscalls
from wrtcore import mtd as mtdio
from wrtcore.errors import InvalidInput, UpgradeError

HANDOFF = "stage2-handoff.json"  # at the ramfs root
# Processes left after the services stopped are not services: a short grace after SIGTERM, then KILL.
STRAGGLER_TERM_TIMEOUT = 1.0


def boot_disk() -> str:
    """The disk the system booted from, as OpenWrt's x86 scripts find it: the root= of the cmdline."""
    root = cmdline.read().get("root", "")
    if not root.startswith("/dev/"):
        raise InvalidInput(f"cannot find the boot disk from root={root!r}",
                           hint="only root=/dev/... is supported by this platform profile")
    return blockdev.disk_of(root)


def check_booted_from(disk: str, target_devs: frozenset[int]) -> None:
    """Write only the disk the running system came from: its read-only root (/rom under the overlay,
    else /) must live on it. A wrong root= can then never point stage2 at another disk."""
    table = mounts.read_mountinfo()
    root = mounts.find(table, "/rom") or mounts.find(table, "/")
    if root is None or root.dev not in target_devs:
        raise InvalidInput(f"{disk} is not the disk this system booted from",
                           hint="its root filesystem is elsewhere; nothing was written")


def payload_length(image: str) -> int:
    """The bytes before the fwtool trailer (metadata and signature are not written to the disk)."""
    try:
        return fwtool.payload_length(image)
    except fwtool.FwtoolError:
        return os.path.getsize(image)


def validating(ctx: Context) -> None:
    if os.getpid() != 1:
        raise UpgradeError("stage2 runs only as PID 1 of the system it upgrades")
    try:
        size = os.path.getsize(ctx.image)
    except OSError as exc:
        raise InvalidInput(f"image {ctx.image}: {exc.strerror}") from exc
    profile = current()  # the command line from this process (WRT_CMDLINE in the sandbox), not the request
    ctx.data["platform"] = profile
    log.get().info("plan", step=f"platform {profile.kind.value} ({profile.source}): {profile.writer.value} "
                   f"writer, configuration by {profile.config_method.value}")
    if profile.writer in (Writer.BLOCK, Writer.EMMC):
        disk = profile.disk or boot_disk()
        check_booted_from(disk, frozenset(blockdev.family(disk)))
        if profile.writer is Writer.EMMC:  # refused here if the tar does not fit; may add partition views
            ctx.data["emmc"] = emmc_write.prepare(ctx.image, profile, ctx.backup)
            for line in ctx.data["emmc"].describe():
                log.get().info("plan", step=line)
        target_devs = frozenset(blockdev.family(disk))
        target = Target(disk=disk, size=blockdev.size(disk))
    else:
        target, target_devs = flash_target(profile)
        if profile.kind is Kind.NAND:
            for line in nand.prepare(ctx.image, profile).plan.describe():  # refused here if it cannot fit
                log.get().info("plan", step=line)
    if is_bundle_file(ctx.image):  # sysupgrade bundle.swu: checked again, must fit (swu_step)
        if profile.writer is not Writer.BLOCK:
            raise InvalidInput(".swu bundles are installed by sysupgrade on block-device platforms only",
                               hint="nothing was written")
        # here, not at the top: the swu stack (signatures: cryptography) costs PID 1 about 15 MiB, which
        # a firmware image does not need
        from stage2 import swu_step

        ctx.data["swu"] = swu_step.prepare(ctx.image, target.disk)
    plan = plan_upgrade(
        image=ctx.image, image_size=size, target=target,
        payload_length=ctx.data["swu"].payload_length if "swu" in ctx.data
        else ctx.data["emmc"].total if "emmc" in ctx.data else payload_length(ctx.image),
        backup=ctx.backup, backup_exists=bool(ctx.backup) and os.path.isfile(ctx.backup or ""),
        env=ctx.env, target_devs=target_devs,
    )
    ctx.data["plan"] = plan
    for line in plan.describe(CONFIG_PLACES.get(profile.config_method)):
        log.get().info("plan", step=line)


CONFIG_PLACES = {  # where each platform kind carries the configuration archive over (plan text)
    ConfigMethod.JFFS2: "the firmware partition as jffs2, at the image's first DE AD C0 DE block (mtd -j)",
    ConfigMethod.UBIFS: "the new ubifs rootfs_data volume as sysupgrade.tgz",
    ConfigMethod.EMMC_OVERLAY: "the overlay start, raw (preinit unpacks it, then formats the overlay)",
}


def flash_target(profile: Profile) -> tuple[Target, frozenset[int]]:
    """The MTD partition written (NOR: ``PART_NAME``, NAND: ``CI_UBIPART`` else ``rootfs``) and the
    devices to let go of before writing: its mtdblock and every filesystem on the flash."""
    wanted = profile.part_name if profile.kind is Kind.NOR else profile.ubipart
    parts = {p.name: p for p in mtdio.partitions()}
    part = parts.get(wanted) or (parts.get("rootfs") if profile.kind is Kind.NAND else None)
    if part is None:
        raise InvalidInput(f"cannot find MTD partition {wanted}", hint="nothing was written")
    # the squashfs root (mtdblock of rootfs, or a ubiblock) and the jffs2/ubifs overlay (flash.py)
    devs = set(flash.held_devices(mounts.read_mountinfo(), flash.ubiblock_devices()))
    for path in [f"/dev/mtdblock{part.index}"]:
        with contextlib.suppress(OSError):
            devs.add(blockdev.devnum(path))
    return Target(disk=mtdio.find(part.name), size=part.size), frozenset(devs)


def stopping_services(ctx: Context) -> None:
    ctx.report.services = ctx.stop_services()


def terminating(ctx: Context) -> None:
    result = terminate.terminate_all(spare=set(ctx.spare_pids), term_timeout=STRAGGLER_TERM_TIMEOUT)
    ctx.report.terminated = [asdict(e) for e in result.ended]
    ctx.report.details["terminate"] = {
        k: v for k, v in result.to_dict().items() if k not in ("ended", "survivors")}
    if result.unkillable:
        names = ", ".join(f"{s.pid} ({s.name}, state {s.state})" for s in result.unkillable)
        raise UpgradeError(f"cannot stop every process: {names}",
                           hint="uninterruptible sleep; nothing was written")
    if result.survivors:
        names = ", ".join(f"{s.pid} ({s.name})" for s in result.survivors)
        raise UpgradeError(f"processes survived SIGKILL: {names}")


def preparing_ramfs(ctx: Context) -> None:
    plan: Plan = ctx.data["plan"]
    image = ramfs.build(plan.prefix, extra_modules=(ramfs.SWU_STEP,) if "swu" in ctx.data else ())
    ctx.report.ramfs_bytes = image.bytes
    ctx.data["ramfs"] = image


def handoff_dict(ctx: Context) -> dict[str, Any]:
    plan: Plan = ctx.data["plan"]
    return {
        "image": ctx.image, "backup": ctx.backup, "env": ctx.env, "command": ctx.command,
        "fault_state": ctx.fault_state, "requested_at": ctx.requested_at, "report": ctx.report.to_dict(),
        "plan": {"payload_length": plan.payload_length, "disk": plan.target.disk, "size": plan.target.size,
                 "boot_partition": plan.target.boot_partition, "root_partition": plan.target.root_partition,
                 "save_partitions": plan.save_partitions, "target_devs": sorted(plan.target_devs),
                 "platform": ctx.data["platform"].to_dict() if "platform" in ctx.data else None,
                 "emmc": ctx.data["emmc"].to_dict() if "emmc" in ctx.data else None,
                 "swu": ctx.data["swu"].to_dict() if "swu" in ctx.data else None},
    }


def record_before_write(ctx: Context, plan: Plan) -> None:
    """The in-progress record (``stage2.report``), saved while the old root is intact, so that a power
    cut from here on leaves the next boot something to report: in the old boot partition (required: if
    it cannot be saved, the upgrade stops here with nothing written; a record found there later proves
    the write had not reached it) and in the old overlay (best effort; it outlives a cut while the boot
    partition is being overwritten). MTD, UBI and eMMC boards have no boot partition: there the old overlay
    (their rootfs_data: jffs2, ubifs, or eMMC's ext4 after the root) holds the record alone, best effort."""
    profile: Profile | None = ctx.data.get("platform")
    if profile is None:
        return
    if profile.writer is not Writer.BLOCK:
        ctx.report.recorded_in = State.RELEASING_ROOT.value
        report.save_overlay_record(ctx.report)
        return
    partition = partitions.device(plan.target.disk, plan.target.boot_partition)
    report.save_progress(ctx.report, partition, State.RELEASING_ROOT.value)
    report.save_overlay_record(ctx.report)


def pivoting(ctx: Context) -> None:
    plan: Plan = ctx.data["plan"]
    image: ramfs.RamfsImage = ctx.data["ramfs"]
    # Nothing writes to the old overlay any more (services stopped, processes killed): its dirty pages
    # go to the disk now, so that a cut from here on finds what the owner changed whole. Without it a
    # cut before the release's read-only remount found a config file just replaced by rename (sed -i,
    # uci commit) empty: the rename on disk, its data still in the page cache (CI saw it).
    started = time.monotonic()
    syscalls.sync()
    ctx.report.details["sync_seconds"] = round(time.monotonic() - started, 4)
    record_before_write(ctx, plan)
    ctx.report.details["pivot_at"] = time.time()
    ctx.report.details["pid1_peak_rss_kb_before_pivot"] = report.peak_rss_kb()
    with open(f"{plan.prefix}/{HANDOFF}", "w") as f:
        json.dump(handoff_dict(ctx), f)
    ramfs.pivot(plan.prefix)
    log_fd = os.environ.get("WRT_LOG_FD", "")
    ramfs.reexec(image, f"/{HANDOFF}", keep_fds=(int(log_fd),) if log_fd.isdigit() else ())


def report_failure(ctx: Context) -> None:
    """aborted / failed_after_write before the pivot: the old boot partition keeps the report; on MTD,
    UBI and eMMC boards (no boot partition) the old overlay, still writable here, keeps it."""
    plan: Plan | None = ctx.data.get("plan")
    ctx.notify({"event": "outcome", "outcome": ctx.report.outcome, "error": ctx.report.error})
    profile: Profile | None = ctx.data.get("platform")
    if profile is not None and profile.writer is not Writer.BLOCK:
        ctx.report.finished_at = time.time()
        report.save_overlay_record(ctx.report)
        return
    disk: str | None = plan.target.disk if plan else None
    if disk is None:
        with contextlib.suppress(UpgradeError, OSError):
            disk = boot_disk()
    save_failure(ctx.report, disk, plan.target.boot_partition if plan else 1)


def steps() -> dict[State, Step]:
    return {
        State.VALIDATING: validating,
        State.STOPPING_SERVICES: stopping_services,
        State.TERMINATING: terminating,
        State.PREPARING_RAMFS: preparing_ramfs,
        State.PIVOTING: pivoting,
        State.ABORTED: report_failure,
        State.FAILED_AFTER_WRITE: report_failure,
    }
