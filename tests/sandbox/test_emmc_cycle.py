"""eMMC upgrades on a sandbox board (sandbox.emmc): a GPT disk with ``kernel`` and ``rootfs`` partitions,
the sysupgrade tar written member by member (stage2.platforms.emmc_write), the configuration raw at the
64 KiB-aligned overlay start after the root, and preinit finding it there (gzip magic) on the next boot.

The host kernel lists no partitions and so no GPT names: ``/lib/upgrade/platform.conf`` names the
profile (``PLATFORM=emmc``, ``CI_ROOTDEV=``), as on a board detection gets wrong; the partitions are
then found by their GPT names on the disk. A report after an abort lives in the old overlay.
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


def _boot(dev: EmmcDevice) -> Boot:
    boot = dev.boot()
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

    boot2 = board.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    boot2.wait_event("config archive found at the start of rootfs_data")
    assert boot2.path("/etc/config/network").read_text() == CHANGED
    boot2.wait_event("config archive removed")
    # the overlay became ext4 where the archive was
    assert board.read_partition("rootfs", 2, saved["offset"] + 1080) == b"\x53\xef"


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
