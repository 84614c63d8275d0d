"""Stage2 after the pivot: PID 1 re-exec'd from the ramfs releases the old root and writes the flash.

Everything this module needs is imported at the top: ``stage2.ramfs`` measures exactly these imports
to decide what goes into the ramfs, so a lazy import here would be missing after the pivot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import signal
import sys
import time
import traceback

import structlog  # noqa: F401  (wrtcore.log imports it only when set up: the ramfs must hold it)

from stage2 import ramfs, release
from stage2.formats import jffs2  # noqa: F401  (imported by the MTD writer only for mtd -j: the ramfs must hold it)
from stage2.machine import Context, Step, run
from stage2.platforms import emmc, emmc_write, flash_failure, nand, x86
from stage2.platforms.profile import ConfigMethod, Kind, Profile, Writer
from stage2.report import (
    Report,
    peak_rss_kb,
    persist,
    report_dict,
    report_file,
    save_failure,
    save_in_jffs2,
    save_progress,
)
from stage2.states import State
from stage2.writers import block, roothead
from stage2.writers.mtd import write_mtd
from wrtcore import blockdev, log, loop, power, syscalls, watchdog
from wrtcore.errors import UpgradeError

JOURNAL = "/tmp/upgrade-journal.jsonl"
BOOT_MNT = "/boot"


def check_maps() -> int:
    """Refuse to write if this process maps any file that is not on the ramfs (the root, now)."""
    root_dev = os.stat("/").st_dev
    checked = 0
    offenders: list[str] = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/") or parts[5].strip() == "/dev/zero (deleted)":
                continue  # anonymous memory; "/dev/zero (deleted)" is shared anonymous memory
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            checked += 1
            if os.makedev(major, minor) != root_dev:
                offenders.append(parts[5].strip())
    if offenders:
        raise UpgradeError(f"writer still maps files outside the ramfs: {', '.join(sorted(set(offenders)))}")
    return checked


def releasing_root(ctx: Context) -> None:
    target_devs = frozenset(ctx.data["plan"]["target_devs"])
    plan = release.gather_and_plan(ctx.data["plan"]["disk"], target_devs)
    if ctx.data["plan"].get("emmc"):  # its partition views (GPT: not the disk's MBR partitions) are kept
        keep = _emmc_plan(ctx).devices
        plan = dataclasses.replace(plan, detach_loops=tuple(d for d in plan.detach_loops if d not in keep))
    for line in plan.describe():
        log.get().info("release plan", step=line)
    done = release.execute(plan)
    if profile_of(ctx).writer not in DISK_WRITERS:  # the root lived on the flash being written
        release.check_released(target_devs)
    ctx.report.swapped_off = done["swapoff"]
    ctx.report.writer_maps_checked = check_maps()


def flashing(ctx: Context) -> None:
    plan = ctx.data["plan"]
    total = int(plan["payload_length"])
    last = [0.0, -1.0]  # time and whole percent of the last progress record

    def progress(done: int, _total: int | None) -> None:
        ctx.report.written = ctx.report.written or done > 0
        now = time.monotonic()
        percent = done * 100 // total if total else 0
        if now - last[0] >= 0.25 or done == total or percent != last[1]:  # at least one per 1 %
            last[0], last[1] = now, percent
            log.get().info("progress", state="flashing", progress={"done": done, "total": total})

    ctx.report.first_write_after = round(time.time() - ctx.requested_at, 4)
    if plan.get("swu"):  # sysupgrade bundle.swu: imported only then (measured into the ramfs for it)
        importlib.import_module(ramfs.SWU_STEP).flash(ctx, progress)
    else:
        FLASHERS[profile_of(ctx).writer](ctx, progress)
    ctx.report.written = True


# --- the platform dispatch: the profile (stage2.platforms.profile, decided before the pivot) picks the
# writer and the way the configuration is carried over ------------------------------------------------


def profile_of(ctx: Context) -> Profile:
    data = ctx.data["plan"].get("platform")
    return Profile.from_dict(data) if data else Profile(Kind.X86, "default", disk=ctx.data["plan"]["disk"])


def _flash_disk(ctx: Context, progress: block.Progress) -> None:
    """x86: partition by partition when the layout is unchanged and kept, else the whole disk."""
    plan = ctx.data["plan"]
    disk, total = plan["disk"], int(plan["payload_length"])
    with open(ctx.image, "rb") as img, open(disk, "rb") as dsk:
        head, disk_head = img.read(x86.HEAD_BYTES), dsk.read(x86.HEAD_BYTES)
    layout = x86.plan_disk(save_partitions=bool(plan["save_partitions"]), disk_head=disk_head,
                           image_head=head, compressed=head.startswith(b"\x1f\x8b"))
    for line in layout.describe():
        log.get().info("disk plan", step=line)
    ctx.data["disk_plan"] = layout
    if not layout.whole:
        boot_number = int(plan["boot_partition"])
        first, rest = layout.parts[:1], layout.parts[1:]
        parts = x86.write_partitions(ctx.image, disk, dataclasses.replace(layout, parts=first), progress,
                                     on_write=lambda: setattr(ctx.report, "written", True))
        if first and first[0].number == boot_number:  # the new boot partition is whole and verified
            _record_progress(ctx, State.FLASHING)
        parts += x86.write_partitions(ctx.image, disk, dataclasses.replace(layout, parts=rest), progress,
                                      on_write=lambda: setattr(ctx.report, "written", True))
        ctx.report.bytes_written = sum(p.bytes for p in parts)
        ctx.report.details["partitions"] = {str(p.number): "written" if p.written else "unchanged"
                                            for p in parts}
        boot = blockdev.partition(disk, int(plan["boot_partition"]))
        ctx.report.details["grub_partuuid_fixed"] = x86.fix_grub(boot, layout, BOOT_MNT)
        return
    with open(ctx.image, "rb") as src:
        result = block.write_image(src, disk, length=total, progress=progress, hold=roothead.finder(None))
    ctx.report.bytes_written = result.bytes_written
    ctx.report.details["write_seconds"] = round(result.duration, 4)
    ctx.report.details["verify_seconds"] = round(result.verify_duration, 4)


def _flash_mtd(ctx: Context, progress: block.Progress) -> None:
    """NOR: ``mtd -j <backup> write <image> firmware``: the config goes in with the image (jffs2). The
    erase block holding the squashfs's superblock stays erased until the squashfs is written
    (``roothead.finder_aligned``): a cut in between leaves no rootfs for mtdsplit, not a mix of two."""
    plan = ctx.data["plan"]
    with open(ctx.image, "rb") as src:
        result = write_mtd(src, plan["disk"], length=int(plan["payload_length"]), jffs2_config=ctx.backup,
                           progress=progress, hold_for=roothead.finder_aligned)
    ctx.report.bytes_written = result.bytes_written
    ctx.report.details["mtd"] = {"bad_skipped": list(result.bad_skipped),
                                 "bad_marked": list(result.bad_marked), "jffs2_offset": result.jffs2_offset}
    ctx.report.config_kept = bool(ctx.backup) and result.jffs2_offset is not None


def _flash_ubi(ctx: Context, progress: block.Progress) -> None:
    profile = profile_of(ctx)
    prepared = nand.prepare(ctx.image, profile)
    ctx.data["ubi_device"] = prepared.device.number
    result = nand.flash(prepared, progress)
    ctx.report.bytes_written = int(str(result["bytes_written"]))
    ctx.report.details["nand"] = {k: v for k, v in result.items() if k != "bytes_written"}


def _emmc_plan(ctx: Context) -> emmc.EmmcPlan:
    return emmc.EmmcPlan.from_dict(ctx.data["plan"]["emmc"])


def _flash_emmc(ctx: Context, progress: block.Progress) -> None:
    """eMMC: the tar's ``root`` and ``kernel`` to their GPT partitions (``emmc_do_upgrade``)."""
    plan = _emmc_plan(ctx)
    result = emmc_write.flash(plan, progress, on_write=lambda: setattr(ctx.report, "written", True))
    ctx.report.bytes_written = result.bytes_written
    ctx.report.details["write_seconds"] = round(result.seconds, 4)
    ctx.report.details["verify_seconds"] = round(result.verify_seconds, 4)
    ctx.report.details["emmc"] = emmc_write.describe(plan)


FLASHERS = {Writer.BLOCK: _flash_disk, Writer.MTD: _flash_mtd, Writer.UBI: _flash_ubi,
            Writer.EMMC: _flash_emmc}
DISK_WRITERS = (Writer.BLOCK, Writer.EMMC)  # the old root is let go of by unmounting; no check_released


def _record_progress(ctx: Context, state: State) -> None:
    """The in-progress record (``stage2.report``) into the new boot partition: a power cut from here on
    leaves the next boot a report of how far the upgrade got. Best effort: the record only explains a
    cut, a failure to save it does not stop the upgrade."""
    plan = ctx.data["plan"]
    boot = blockdev.partition(plan["disk"], int(plan["boot_partition"]))
    try:
        with contextlib.suppress(OSError):
            blockdev.flush_buffers(boot)  # what the writer wrote is read through this device's cache
        save_progress(ctx.report, boot, state.value)
    except (OSError, UpgradeError) as exc:
        log.get().warning("in-progress record not saved", state=state.value, partition=boot, error=str(exc))


def _flush_partitions(disk: str) -> None:
    """The whole-disk write bypassed the partitions' caches: drop them and re-read the table."""
    for part in blockdev.partitions(disk):
        with contextlib.suppress(OSError):
            blockdev.flush_buffers(part)
    try:
        blockdev.reread_partitions(disk)
    except OSError as exc:
        log.get().warning("partition table not re-read", disk=disk, error=exc.strerror)


def verifying(ctx: Context) -> None:
    if profile_of(ctx).writer is not Writer.BLOCK:  # the MTD, UBI and eMMC writers read everything back
        return
    plan = ctx.data["plan"]
    disk = plan["disk"]
    _flush_partitions(disk)
    root = blockdev.partition(disk, int(plan["root_partition"]))
    try:
        blockdev.squashfs_bytes_used(root)
    except ValueError as exc:
        raise UpgradeError(f"new root partition {root} has no squashfs after the write") from exc
    boot = blockdev.partition(disk, int(plan["boot_partition"]))
    with open(boot, "rb") as f:
        f.seek(1080)
        if f.read(2) != b"\x53\xef":
            raise UpgradeError(f"new boot partition {boot} holds no ext4 filesystem")
    _record_progress(ctx, State.SAVING_CONFIG)  # written in full and verified: the config comes next


def saving_config(ctx: Context) -> None:
    if not ctx.backup:
        log.get().info("no configuration kept", reason="no backup requested")
        return
    SAVERS[profile_of(ctx).config_method](ctx)


def _save_config_jffs2(ctx: Context) -> None:
    """NOR: written with the image by ``_flash_mtd`` (``mtd -j``)."""
    if not ctx.report.config_kept:
        raise UpgradeError("no DE AD C0 DE block in the image: the configuration could not be appended")


def _save_config_ubifs(ctx: Context) -> None:
    assert ctx.backup
    nand.save_config(profile_of(ctx), int(ctx.data["ubi_device"]), ctx.backup)
    ctx.report.config_kept = True


def _save_config_boot_partition(ctx: Context) -> None:
    """x86: ``sysupgrade.tgz`` into the new boot partition."""
    assert ctx.backup
    plan = ctx.data["plan"]
    boot = blockdev.partition(plan["disk"], int(plan["boot_partition"]))
    os.makedirs(BOOT_MNT, exist_ok=True)
    syscalls.mount(boot, BOOT_MNT, "ext4", syscalls.MS_NOATIME)
    try:
        dst = f"{BOOT_MNT}/sysupgrade.tgz"
        shutil.copyfile(ctx.backup, dst + ".new")
        with open(dst + ".new", "rb+") as f:
            os.fsync(f.fileno())
        os.rename(dst + ".new", dst)
        with open(dst, "rb") as a, open(ctx.backup, "rb") as b:
            if a.read() != b.read():
                raise UpgradeError("configuration archive read back differs from the original")
    finally:
        syscalls.umount(BOOT_MNT)
    ctx.report.config_kept = True


def _save_config_emmc(ctx: Context) -> None:
    """eMMC: ``emmc_copy_config``, the archive raw at the overlay start (preinit unpacks it on boot)."""
    assert ctx.backup
    emmc_write.save_config(_emmc_plan(ctx), ctx.backup)
    ctx.report.config_kept = True


SAVERS = {ConfigMethod.BOOT_PARTITION: _save_config_boot_partition, ConfigMethod.JFFS2: _save_config_jffs2,
          ConfigMethod.UBIFS: _save_config_ubifs, ConfigMethod.EMMC_OVERLAY: _save_config_emmc}


def finalizing(ctx: Context) -> None:
    ctx.report.details["writer_peak_rss_kb"] = peak_rss_kb()
    ctx.report.outcome = "success"
    ctx.report.finished_at = time.time()
    syscalls.sync()
    plan = ctx.data["plan"]
    writer = profile_of(ctx).writer
    jffs2_at = ctx.report.details.get("mtd", {}).get("jffs2_offset")  # where mtd -j put the config
    if writer is Writer.BLOCK:
        persist(ctx.report, blockdev.partition(plan["disk"], int(plan["boot_partition"])))
    elif writer is Writer.MTD and jffs2_at is not None:  # appended: the next boot's /overlay shows it
        save_in_jffs2(ctx.report, plan["disk"], int(jffs2_at))
    elif writer is Writer.UBI and "ubi_device" in ctx.data:  # the new ubifs rootfs_data, beside the config
        try:
            nand.save_file(profile_of(ctx), int(ctx.data["ubi_device"]), report_file(ctx.report))
        except (OSError, UpgradeError) as exc:
            log.get().error("report not saved", error=str(exc))
    elif writer is Writer.EMMC and plan.get("emmc"):  # rootfs_data is made on the next boot: a raw
        _save_report_emmc(ctx)  # record that preinit reads first
    else:  # NOR without mtd -j, a .swu on eMMC: rootfs_data is made on the next boot
        log.get().info("upgrade report not persisted", reason="no new rootfs_data to put it in")


def _save_report_emmc(ctx: Context) -> bool:
    """eMMC: the report as a raw record at the end of the new overlay area (``emmc_write.save_report``),
    where preinit reads it before it formats the overlay. Best effort: False when not saved (logged)."""
    try:
        emmc_write.save_report(_emmc_plan(ctx), report_dict(ctx.report))
    except (OSError, ValueError, UpgradeError) as exc:
        log.get().error("report not saved", error=str(exc))
        return False
    return True


def _report_failure_emmc(ctx: Context) -> None:
    """eMMC after the pivot. Written: the report raw in the new overlay area; unless the configuration
    archive is already at the overlay start, the start is zeroed first, so that the next boot makes a
    fresh overlay over the new root (the old one's files must not shadow it) and takes the report.
    Nothing written: into the old overlay, replacing the in-progress record there."""
    plan = _emmc_plan(ctx)
    ctx.report.finished_at = time.time()
    if ctx.report.written:
        if not ctx.report.config_kept:
            try:
                emmc_write.clear_overlay_start(plan)
            except (OSError, UpgradeError) as exc:
                log.get().error("overlay start not cleared", error=str(exc))
        _save_report_emmc(ctx)
        return
    found = None
    try:
        found = emmc_write.old_overlay(plan)
        if found is None:
            raise UpgradeError("no ext4 overlay after the old root")
        persist(ctx.report, found[0])
    except (OSError, ValueError, UpgradeError) as exc:
        log.get().error("report not saved", where="old overlay", error=str(exc))
    finally:
        if found is not None and found[1]:
            with contextlib.suppress(OSError):
                loop.detach(found[0])


def report_failure(ctx: Context) -> None:
    plan = ctx.data["plan"]
    profile = profile_of(ctx)
    if profile.writer is Writer.EMMC:
        if plan.get("emmc"):
            _report_failure_emmc(ctx)
        else:  # a .swu bundle: no eMMC plan, no place known
            log.get().error("report not saved", reason="no eMMC plan")
        return
    if profile.writer is Writer.MTD:
        jffs2_at = ctx.report.details.get("mtd", {}).get("jffs2_offset")  # set when mtd -j wrote it
        flash_failure.save_nor(ctx.report, plan["disk"], jffs2_at)
        return
    if profile.writer is Writer.UBI:
        number = ctx.data.get("ubi_device")
        flash_failure.save_ubi(ctx.report, profile, int(number) if number is not None else None)
        return
    save_failure(ctx.report, plan["disk"], int(plan["boot_partition"]))


def rebooting(ctx: Context) -> None:
    log.get().info("upgrade finished", outcome=ctx.report.outcome, error=ctx.report.error)
    power.reboot(f"sysupgrade {ctx.report.outcome}")


def steps() -> dict[State, Step]:
    return {
        State.RELEASING_ROOT: releasing_root,
        State.FLASHING: flashing,
        State.VERIFYING: verifying,
        State.SAVING_CONFIG: saving_config,
        State.FINALIZING: finalizing,
        State.ABORTED: report_failure,
        State.FAILED_AFTER_WRITE: report_failure,
        State.REBOOTING: rebooting,
    }


def main(handoff: str) -> None:
    """Entry point after the re-exec. PID 1: never returns, every path ends in reboot(2)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        log.setup("stage2")
        log.journal(JOURNAL)
        with open(handoff) as f:
            data = json.load(f)
        ctx = Context(image=data["image"], backup=data["backup"], env=data["env"], command=data["command"],
                      report=Report.from_dict(data["report"]), fault_state=data["fault_state"],
                      requested_at=data["requested_at"])
        ctx.data["plan"] = data["plan"]
        keeper = watchdog.adopt(dict(os.environ)) if "WDTFD" in os.environ else None
        log.get().info("resumed from ramfs", pid=os.getpid(), python=sys.executable,
                       watchdog=keeper.fd if keeper else None)
        run(ctx, steps(), initial=State.PIVOTING)
    except BaseException:
        with contextlib.suppress(Exception):
            log.get().critical("stage2 crashed", traceback=traceback.format_exc())
    power.reboot("stage2 ended without rebooting")
