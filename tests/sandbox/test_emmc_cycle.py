"""eMMC upgrades on a sandbox board (sandbox.emmc): a GPT disk with ``kernel`` and ``rootfs`` partitions,
the sysupgrade tar written member by member (stage2.platforms.emmc_write), the configuration raw at the
64 KiB-aligned overlay start after the root, and preinit finding it there (gzip magic) on the next boot.

The host kernel lists no partitions and so no GPT names: ``/lib/upgrade/platform.conf`` names the
profile (``PLATFORM=emmc``, ``CI_ROOTDEV=``), as on a board detection gets wrong; the partitions are
then found by their GPT names on the disk. The next boot publishes the outcome: after an abort the
report is in the old overlay (before the pivot, and after it when nothing was written); after a write it
goes raw into the last 256 KiB of the new overlay area, which preinit reads before it formats the overlay.
A GPT partition named ``rootfs_data`` holds the overlay, the archive and the report when there is one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.device import Boot
from sandbox.emmc import EmmcDevice, kernel_standin, squashfs_of, sysupgrade_tar
from sandbox.images import Images
from stage2.formats.report_record import SLOT, decode
from stage2.platforms.emmc import overlay_offset
from tests.sandbox.conftest import start_upgrade

pytestmark = pytest.mark.sandbox

CHANGED = ("config interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n"
           "\toption ipaddr '10.7.7.7'\n")
ALL_STATES = ["validating", "preparing_ramfs", "stopping_services", "terminating", "pivoting",
              "releasing_root", "flashing", "verifying", "saving_config", "finalizing", "rebooting"]


@pytest.fixture
def board(images: Images, tmp_path: Path) -> Iterator[EmmcDevice]:
    """An eMMC board flashed with firmware 1.0."""
    work = tmp_path / "build"
    work.mkdir()
    dev = EmmcDevice(tmp_path / "device", kernel_standin(work / "kernel-1.0", "1.0"),
                     squashfs_of(images.v1, work / "root-1.0.sqfs"))
    try:
        yield dev
    finally:
        dev.close()


def _boot(dev: EmmcDevice, fault: str | None = None) -> Boot:
    """A boot of ``dev`` ready for sysupgrade (``fault``: the stage2 state an exception is injected in)."""
    boot = dev.boot(env={"WRT_FAULT_STATE": fault} if fault else None)
    boot.wait_ready()
    conf = boot.path("/lib/upgrade/platform.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(dev.platform_conf)
    return boot


def _firmware_digest(dev: EmmcDevice) -> str:
    """sha256 of the kernel partition and of the rootfs partition up to the overlay (which the running
    system writes to)."""
    h = hashlib.sha256(dev.read_partition("kernel", dev.gpt["kernel"].size))
    h.update(dev.read_partition("rootfs", overlay_offset(dev.root_size)))
    return h.hexdigest()


def _transitions(boot: Boot) -> list[str]:
    return [r["state"] for r in boot.records if r.get("event") == "transition"]


def test_emmc_upgrade_writes_the_partitions_and_keeps_the_config(board: EmmcDevice, images: Images,
                                                                  tmp_path: Path) -> None:
    tar = sysupgrade_tar(images, tmp_path, "2.0")
    kernel2 = (tmp_path / "kernel-2.0").read_bytes()
    root2 = (tmp_path / "root-2.0.sqfs").read_bytes()
    boot1 = _boot(board)
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, tar)
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, "\n".join(boot1.console[-30:])
    assert _transitions(boot1) == ALL_STATES
    saved = next(r for r in boot1.records if r.get("event") == "configuration saved")
    assert (saved["partition"], saved["offset"]) == ("rootfs", overlay_offset(len(root2)))

    # what the reboot finds on the disk: the new kernel (a gzip magic written as it is) and root,
    # and the gzip'd archive at the 64 KiB boundary after the root
    assert board.read_partition("kernel", len(kernel2)) == kernel2
    assert board.read_partition("rootfs", len(root2)) == root2
    assert board.read_partition("rootfs", 2, saved["offset"]) == b"\x1f\x8b"

    # the final report, raw in the last 256 KiB of the overlay area
    record = next(r for r in boot1.records if r.get("event") == "report saved")
    room = board.gpt["rootfs"].size - saved["offset"]
    assert (record["partition"], record["offset"]) == ("rootfs", saved["offset"] + room - SLOT)
    on_disk = decode(board.read_partition("rootfs", SLOT, record["offset"]))
    assert on_disk is not None and on_disk["outcome"] == "success"

    boot2 = board.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    boot2.wait_event("config archive found at the start of rootfs_data")
    assert boot2.path("/etc/config/network").read_text() == CHANGED
    boot2.wait_event("config archive removed")
    # the overlay became ext4 where the archive was
    assert board.read_partition("rootfs", 2, saved["offset"] + 1080) == b"\x53\xef"
    _assert_published_success(boot2, config_kept=True)
    # taken once: the raw record is gone, the report stays in the overlay for later boots
    assert decode(board.read_partition("rootfs", SLOT, record["offset"])) is None
    assert json.loads(boot2.path("/overlay/upgrade-report.json").read_text())["outcome"] == "success"


def _assert_published_success(boot: Boot, *, config_kept: bool) -> None:
    """The next boot publishes stage2's report: the console line and /var/log/last-upgrade.json."""
    report = json.loads(boot.path("/tmp/log/last-upgrade.json").read_text())
    summary = report["summary"]
    assert (summary["outcome"], summary["from_version"], summary["to_version"],
            summary["running_version"]) == ("success", "1.0", "2.0", "2.0"), summary
    assert summary["config_kept"] is config_kept and summary["error"] is None
    assert summary["seconds"] is not None and summary["seconds"] > 0
    assert boot.wait_console("last upgrade: success (1.0 -> 2.0")


def test_emmc_upgrade_without_config_publishes_its_report(board: EmmcDevice, images: Images,
                                                          tmp_path: Path) -> None:
    tar = sysupgrade_tar(images, tmp_path, "2.0")
    root2 = (tmp_path / "root-2.0.sqfs").read_bytes()
    boot1 = _boot(board)
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, tar, "-n")
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, "\n".join(boot1.console[-30:])
    assert _transitions(boot1) == ALL_STATES
    start = overlay_offset(len(root2))
    assert board.read_partition("rootfs", 4096, start) == bytes(4096)  # the old overlay is not kept
    record = next(r for r in boot1.records if r.get("event") == "report saved")
    assert record["offset"] == board.gpt["rootfs"].size - SLOT

    boot2 = board.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert boot2.path("/etc/config/network").read_text() != CHANGED
    _assert_published_success(boot2, config_kept=False)


def test_emmc_bad_tars_are_refused_and_nothing_written(board: EmmcDevice, images: Images,
                                                       tmp_path: Path) -> None:
    other = sysupgrade_tar(images, tmp_path, "2.0", board="some-other,board")
    rootless = sysupgrade_tar(images, tmp_path, "2.0", with_root=False)
    boot1 = _boot(board)
    before = _firmware_digest(board)
    for tar, why in ((other, "sysupgrade-some-other_board/ is for board"),
                     (rootless, "the sysupgrade tar holds no root")):
        shutil.copyfile(tar, boot1.path("/tmp/sysupgrade.img"))
        res = boot1.run(["sysupgrade", "/tmp/sysupgrade.img"], timeout=120)
        assert res.returncode == 1, res.stdout + res.stderr
        assert why in res.stderr and "Invalid sysupgrade file." in res.stderr, res.stderr
        assert boot1.alive() and not _transitions(boot1)
    assert _firmware_digest(board) == before

    # forced past the platform check, stage2 refuses the rootless tar before writing and reboots
    start_upgrade(boot1, rootless, "-F")
    assert boot1.wait_end()["signal"] == "SIGHUP"
    assert _transitions(boot1) == ["validating", "aborted", "rebooting"]
    failed = next(r for r in boot1.records if r.get("event") == "step failed")
    assert failed["state"] == "validating" and failed["written"] is False
    assert "/ has no root (nothing was written)" in failed["error"], failed
    assert _firmware_digest(board) == before
    boot2 = board.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "1.0"
    # the report went into the old overlay before the reboot (eMMC has no boot partition)
    report = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
    assert report["outcome"] == "aborted" and "has no root" in report["error"]


@pytest.mark.parametrize(("state", "outcome", "config_kept"), [
    ("releasing_root", "aborted", True),  # after the pivot, nothing written: the old overlay keeps it
    ("flashing", "aborted", True),
    ("verifying", "failed_after_write", False),  # no archive yet: a fresh overlay over the new root
    ("saving_config", "failed_after_write", False),
    ("finalizing", "failed_after_write", True),  # the archive is at the overlay start already
])
def test_emmc_failure_after_the_pivot_is_published(board: EmmcDevice, images: Images, tmp_path: Path,
                                                   state: str, outcome: str, config_kept: bool) -> None:
    tar = sysupgrade_tar(images, tmp_path, "2.0")
    boot1 = _boot(board, state)
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, tar)
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, "\n".join(boot1.console[-30:])
    assert [r["state"] for r in boot1.records if r.get("event") == "step failed"] == [state]
    assert not [r for r in boot1.records if r.get("event") == "report not saved"]
    saved = [r for r in boot1.records if r.get("event") == "report saved"]
    # aborted: a view of the old overlay (mounted); after a write: the raw record in partition rootfs
    assert [r["partition"].startswith("/dev/loop") if outcome == "aborted" else r["partition"] == "rootfs"
            for r in saved] == [True], saved

    boot2 = board.boot()
    boot2.wait_ready()
    version = "1.0" if outcome == "aborted" else "2.0"
    assert boot2.path("/etc/openwrt_version").read_text().strip() == version
    report = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
    summary = report["summary"]
    assert (summary["outcome"], summary["failed_state"], summary["written"]) == (
        outcome, state, outcome != "aborted"), summary
    assert (summary["from_version"], summary["running_version"]) == ("1.0", version)
    assert "fault injected" in summary["error"]
    assert boot2.wait_console(f"last upgrade: {outcome} (1.0 -> ")
    assert (boot2.path("/etc/config/network").read_text() == CHANGED) is config_kept


@pytest.fixture
def data_board(images: Images, tmp_path: Path) -> Iterator[EmmcDevice]:
    """An eMMC board flashed with firmware 1.0 and a 16 MiB GPT partition named rootfs_data."""
    work = tmp_path / "build"
    work.mkdir()
    dev = EmmcDevice(tmp_path / "device", kernel_standin(work / "kernel-1.0", "1.0"),
                     squashfs_of(images.v1, work / "root-1.0.sqfs"), data_size=16 << 20)
    try:
        yield dev
    finally:
        dev.close()


def test_emmc_rootfs_data_partition_holds_the_overlay_config_and_report(data_board: EmmcDevice,
                                                                        images: Images,
                                                                        tmp_path: Path) -> None:
    """A GPT partition named rootfs_data: preinit mounts the overlay there (not after the squashfs),
    stage2 puts the archive at its start and the report at its end."""
    dev = data_board
    root1 = tmp_path / "build" / "root-1.0.sqfs"
    tar = sysupgrade_tar(images, tmp_path, "2.0")
    boot1 = _boot(dev)
    assert dev.read_partition("rootfs_data", 2, 1080) == b"\x53\xef"  # formatted on the first boot
    assert not any(dev.read_partition("rootfs", 4096, overlay_offset(root1.stat().st_size)))
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, tar)
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, "\n".join(boot1.console[-30:])
    saved = next(r for r in boot1.records if r.get("event") == "configuration saved")
    assert (saved["partition"], saved["offset"]) == ("rootfs_data", 0)
    record = next(r for r in boot1.records if r.get("event") == "report saved")
    assert (record["partition"], record["offset"]) == ("rootfs_data", (16 << 20) - SLOT)

    boot2 = dev.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert boot2.path("/etc/config/network").read_text() == CHANGED
    _assert_published_success(boot2, config_kept=True)
    assert dev.read_partition("rootfs_data", 2, 1080) == b"\x53\xef"
    root2 = (tmp_path / "root-2.0.sqfs").stat().st_size
    assert not any(dev.read_partition("rootfs", 4096, overlay_offset(root2)))


def test_emmc_abort_after_the_pivot_reports_in_the_rootfs_data_partition(data_board: EmmcDevice,
                                                                         images: Images,
                                                                         tmp_path: Path) -> None:
    tar = sysupgrade_tar(images, tmp_path, "2.0")
    boot1 = _boot(data_board, "flashing")
    boot1.path("/etc/config/network").write_text(CHANGED)
    start_upgrade(boot1, tar)
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, "\n".join(boot1.console[-30:])
    assert not [r for r in boot1.records if r.get("event") == "report not saved"]

    boot2 = data_board.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "1.0"
    assert boot2.path("/etc/config/network").read_text() == CHANGED  # the old overlay, intact
    summary = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())["summary"]
    assert (summary["outcome"], summary["failed_state"], summary["written"]) == ("aborted", "flashing", False)
