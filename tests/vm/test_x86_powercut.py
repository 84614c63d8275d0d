"""Power cuts (QMP ``quit``, then a new QEMU on the same disk) during an x86 upgrade: before the write, at
10 %, 50 % and 90 % of the write, and while saving the config. What the next boot shows follows from
where the cut landed (``wrtvm.powercut``: the region of the image the write had reached, measured on
the host by comparing the disk with the new image); each test checks that boot against it, the report of
the interrupted upgrade that boot publishes included (stage2's in-progress records, turned into an
``interrupted`` report by preinit).
"""

from __future__ import annotations

from typing import Any

import pytest
from wrtvm import machine, powercut, scenario
from wrtvm.device import Assets, Device
from wrtvm.powercut import Outcome, Region
from wrtvm.runner import VM

from stage2.writers import roothead

pytestmark = pytest.mark.vm

CRAWL = 64 << 10  # bytes/s once verified: saving the config cannot finish before the cut
MIB = 1 << 20
HEAD = roothead.HEAD


def _cut(vm: VM, t: scenario.Phases) -> None:
    assert vm.power_cut() == 0
    t("power cut (QMP quit)")


def _show(layout: powercut.Layout, written: int) -> powercut.Expected:
    exp = powercut.expected(layout, written)
    print(f"  cut at byte {written} of {layout.payload} ({100 * written / layout.payload:.1f} %): "
          f"{exp.region.value} -> {exp.outcome.value}")
    return exp


def _boot_after_cut(device: Device, exp: powercut.Expected, before_ip: str,
                    t: scenario.Phases) -> dict[str, Any]:
    """Boot again and check the documented outcome; what the boot showed."""
    if exp.outcome is Outcome.BRICKED:
        vm = device.boot()
        vm.expect(r"initramfs: cannot mount root /dev/vda2", timeout=180)
        t("boot 2: root does not mount")
        assert not any(r.get("event") == "- init complete -" for r in vm.records)
        assert vm.records == []  # neither preinit nor the init ran: nothing on the log channel
        vm.power_cut()
        return {"bricked": True}
    vm, shell = scenario.boot_to_shell(device)
    t("boot 2 to shell")
    report = scenario.report(shell)
    shown: dict[str, Any] = {"version": scenario.version(shell), "ip": scenario.lan_ip(shell),
                             "default_ip": scenario.default_ip(shell), "report": report}
    if exp.outcome is Outcome.OLD_BOOTS:
        assert shown["version"] == "1.0"
        assert shown["ip"] == before_ip  # the overlay is untouched
    else:
        assert shown["version"] == "2.0"
        if exp.region in (Region.DATA, Region.DONE):
            assert shown["ip"] == shown["default_ip"] != before_ip
    report = _check_report(report, exp, shown["version"])
    print(f"  next boot's report: {report['summary']['meaning']}: in {report['failed_state']}, "
          f"{report['details']['written']} written")
    t("checks")
    return shown


def _check_report(report: dict[str, Any] | None, exp: powercut.Expected, running: str) -> dict[str, Any]:
    """What the next boot says about the upgrade the cut interrupted."""
    assert report is not None, "no report of the interrupted upgrade"
    summary = report["summary"]
    assert report["outcome"] == summary["outcome"] == "interrupted", report
    assert (summary["from_version"], summary["to_version"], summary["running_version"]) == ("1.0", "2.0",
                                                                                             running)
    assert summary["failed_state"] == exp.report_state
    assert summary["written_extent"] == report["details"]["written"] == exp.report_written
    assert summary["written"] is (exp.report_written != "nothing")
    assert summary["config_kept"] is False
    return report


def _upgrade_until_flashing(device: Device) -> tuple[VM, scenario.Phases]:
    t = scenario.Phases()
    vm, shell = scenario.boot_to_shell(device)
    t("boot 1 (1.0) to shell")
    scenario.change_config(shell)
    scenario.start_upgrade(device, vm, shell)
    t("sysupgrade to flashing")
    return vm, t


def test_power_cut_before_the_write(vm_device: Device, vm_assets: Assets) -> None:
    t = scenario.Phases()
    vm, shell = scenario.boot_to_shell(vm_device)
    t("boot 1 (1.0) to shell")
    scenario.change_config(shell)
    vm_device.fetch_transfer(shell)
    vm.send("sysupgrade /tmp/sysupgrade.img\n")
    vm.wait_event("transition", timeout=180, state="releasing_root")  # pivoted; the write comes next
    t("sysupgrade to releasing_root")
    _cut(vm, t)
    assert not any(r.get("event") == "progress" for r in vm.records)
    layout, old = powercut.layout_of(vm_assets.images.v2), powercut.layout_of(vm_assets.images.v1)
    disk, new = vm_device.disk_file, vm_assets.images.v2
    # the boot partition's first chunk is not the new one, the old root is intact: nothing was written
    assert not powercut.same_bytes(disk, new, layout.boot_start, layout.boot_start + MIB)
    assert powercut.same_bytes(disk, vm_assets.images.v1, old.root_start, old.squashfs_end)
    exp = powercut.BEFORE_WRITE
    print(f"  cut before the write: {exp.outcome.value}")
    _boot_after_cut(vm_device, exp, scenario.CHANGED_IP, t)
    t.total()


@pytest.mark.parametrize("fraction", [0.10, 0.50, 0.90], ids=["10pct", "50pct", "90pct"])
def test_power_cut_during_the_write(vm_device: Device, vm_assets: Assets, fraction: float) -> None:
    """The cut lands exactly at the chunk boundary at or before the point: blkdebug fails the last sector
    before it and ``werror=stop`` freezes the VM there (QMP STOP), then QMP ``quit``."""
    layout = powercut.layout_of(vm_assets.images.v2)
    sector = powercut.cut_sector(layout, fraction)
    boundary = (sector + 1) * 512
    rules = vm_device.workdir / "blkdebug.conf"
    rules.write_text(machine.blkdebug_rules(sector))
    t = scenario.Phases()
    vm, shell = scenario.boot_to_shell(vm_device, blkdebug=rules, stop_on_error=True)
    t("boot 1 (1.0) to shell")
    scenario.change_config(shell)
    scenario.start_upgrade(vm_device, vm, shell)
    t("sysupgrade to flashing")
    stopped = vm.qmp.wait_event("STOP", timeout=180)
    assert any(e["event"] == "BLOCK_IO_ERROR" for e in vm.qmp.events), vm.qmp.events
    print(f"  frozen at byte {boundary} ({100 * boundary / layout.payload:.1f} %), {stopped['event']}")
    _cut(vm, t)
    disk, old = vm_device.disk_file, powercut.layout_of(vm_assets.images.v1)
    # written: everything before the chunk in flight; the chunk lies in one region, so how much of it
    # landed does not change the outcome
    if boundary - MIB > layout.root_start:  # the boot partition was finished: it holds the record now
        assert powercut.same_bytes(disk, vm_assets.images.v2, 0, layout.boot_start)
        root_from = layout.root_start
        if boundary - MIB < layout.head_written:  # the squashfs's head is held back: zeros, no superblock
            assert powercut.read(disk, layout.root_start, HEAD) == bytes(HEAD)
            root_from += HEAD
        assert powercut.same_bytes(disk, vm_assets.images.v2, root_from, boundary - MIB)
    else:
        assert powercut.same_bytes(disk, vm_assets.images.v2, 0, boundary - MIB)
    assert powercut.region_of(layout, boundary - MIB) == powercut.region_of(layout, boundary - 1)
    if boundary < old.squashfs_end:  # what lies after the boundary is still the old squashfs
        end = old.squashfs_end
        assert powercut.same_bytes(disk, vm_assets.images.v1, max(boundary, old.root_start + HEAD), end)
    exp = _show(layout, boundary - 1)
    _boot_after_cut(vm_device, exp, scenario.CHANGED_IP, t)
    t.total()


def test_power_cut_while_saving_the_config(vm_device: Device, vm_assets: Assets) -> None:
    vm, t = _upgrade_until_flashing(vm_device)
    vm.wait_event("transition", timeout=180, state="verifying")
    vm.throttle(0, CRAWL)
    vm.wait_event("transition", timeout=120, state="saving_config")
    _cut(vm, t)
    layout = powercut.layout_of(vm_assets.images.v2)
    # the root and rootfs_data's place hold the new image (saving the config touches only the boot part)
    assert powercut.same_bytes(vm_device.disk_file, vm_assets.images.v2, layout.root_start, layout.payload)
    exp = _show(layout, layout.payload)
    assert exp.region is Region.DONE and exp.outcome is Outcome.NEW_BOOTS
    # the archive's writes crawl: the cut comes before its rename reached the disk, so: defaults
    shown = _boot_after_cut(vm_device, exp, scenario.CHANGED_IP, t)
    assert shown["ip"] == shown["default_ip"]
    t.total()
