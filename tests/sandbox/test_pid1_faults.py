"""PID 1 never exits: an exception injected in each stage2 state ends the device by reboot(2).

The parent sees the device's PID 1 die of SIGHUP (reboot in a PID namespace), never exit. The next
boot publishes the report: ``aborted`` before anything was written (the old firmware boots, config
intact), ``failed_after_write`` after.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.device import Device
from sandbox.images import Images
from stage2.states import BEFORE_WRITE, FORWARD, State
from tests.sandbox.conftest import start_upgrade
from wrtcore.errors import WriteError

pytestmark = pytest.mark.sandbox

FAULT_STATES = [s for s in FORWARD if s is not State.IDLE]


def expected_outcome(state: State) -> str:
    if state is State.REBOOTING:
        return "success"  # the report was saved in finalizing; the reboot still happens
    return "aborted" if state in BEFORE_WRITE or state is State.FLASHING else "failed_after_write"


@pytest.mark.parametrize("state", FAULT_STATES, ids=[s.value for s in FAULT_STATES])
def test_fault_in_state_ends_in_reboot(device: Device, images: Images, state: State) -> None:
    boot1 = device.boot(env={"WRT_FAULT_STATE": state.value})
    boot1.wait_ready()
    start_upgrade(boot1, images.v2)
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, "PID 1 must end by reboot(2)"
    assert any(r.get("event") == "rebooting" for r in boot1.records)
    if state is not State.REBOOTING:
        failed = [r for r in boot1.records if r.get("event") == "step failed"]
        assert [r["state"] for r in failed] == [state.value]
        assert "fault injected" in failed[0]["error"]

    boot2 = device.boot()
    boot2.wait_ready()
    report = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
    assert report["outcome"] == expected_outcome(state)
    version = boot2.path("/etc/openwrt_version").read_text().strip()
    assert version == ("1.0" if report["outcome"] == "aborted" else "2.0")
    if report["outcome"] != "success":
        assert report["failed_state"] == state.value


def _hole_bytes_before(path: Path, end: int) -> int:
    """Bytes of ``path`` in [0, end) not allocated yet (SEEK_HOLE/SEEK_DATA)."""
    import os

    holes = 0
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = end
            holes += min(data, end) - pos
            if data >= end:
                break
            pos = os.lseek(fd, data, os.SEEK_HOLE)
    return holes


def test_write_error_is_reported_with_its_offset(images: Images, tmpfs_dir: Path, tmp_path: Path) -> None:
    """The disk lives on a tmpfs that runs out of space part way through the write: a real ENOSPC
    from the loop device's backing file, surfacing as an I/O error at a known offset."""
    import subprocess

    dev = Device(tmp_path / "device", images.v1, disk_dir=tmpfs_dir)
    try:
        boot1 = dev.boot()
        boot1.wait_ready()
        target_offset = 60 << 20  # in the zeros after the new squashfs, inside the root partition
        allowed = _hole_bytes_before(dev.disk_file, target_offset)
        used = int(subprocess.run(["df", "--output=used", "-B1", str(tmpfs_dir)], capture_output=True,
                                  text=True, check=True).stdout.split()[1])
        # a margin for what the device still writes before the flash (the overlay's journal when it
        # is remounted read-only): running out there would fail releasing_root, not the flash
        margin = 4 << 20
        subprocess.run(["mount", "-o", f"remount,size={used + allowed + margin}", str(tmpfs_dir)], check=True)
        start_upgrade(boot1, images.v2)
        assert boot1.wait_end()["signal"] == "SIGHUP"
        failed = [r for r in boot1.records if r.get("event") == "step failed"]
        assert [r["state"] for r in failed] == ["flashing"]
        offset = failed[0]["offset"]
        assert failed[0]["written"] is True
        # where the space ran out, give or take what the device allocated or discarded meanwhile
        assert abs(offset - (target_offset + margin)) <= (8 << 20), offset
        assert any(r.get("event") == "transition" and r.get("state") == "failed_after_write"
                   for r in boot1.records)
        subprocess.run(["mount", "-o", "remount,size=1g", str(tmpfs_dir)], check=True)
        boot2 = dev.boot()
        boot2.wait_ready()
        report = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
        assert report["outcome"] == "failed_after_write"
        assert report["offset"] == offset
        assert "No space left" in report["error"] or "Input/output" in report["error"]
    finally:
        dev.close()


def test_write_error_class_carries_offset() -> None:
    err = WriteError("write failed: Input/output error", offset=4096, written=True)
    assert err.offset == 4096 and err.written and "at offset 4096" in str(err)


FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
_IOCTL = "import fcntl, os, sys; fd = os.open('/boot', os.O_RDONLY); fcntl.ioctl(fd, int(sys.argv[1]), 0)"


def test_unkillable_process_aborts_before_writing(device: Device, images: Images) -> None:
    """A process in uninterruptible sleep (writing to a frozen filesystem) survives SIGKILL: the
    upgrade aborts before anything is written and the report names it."""
    boot1 = device.boot()
    boot1.wait_done()
    root_before = _root_digest(device)
    frozen = boot1.run(["python3", "-c", _IOCTL, str(FIFREEZE)])
    assert frozen.returncode == 0, frozen.stderr
    try:
        started = boot1.run(["sh", "-c", "setsid sh -c 'echo stuck > /boot/stuck' </dev/null >/dev/null 2>&1"
                             " & echo $!"])
        nspid = int(started.stdout.strip())
        state = boot1.run(["sh", "-c", f"cut -d' ' -f3 /proc/{nspid}/stat"]).stdout.strip()
        assert state == "D", f"the writer should be in uninterruptible sleep, is {state!r}"
        start_upgrade(boot1, images.v2)
        boot1.wait_event("transition", state="aborted", timeout=120)
    finally:
        boot1.run(["python3", "-c", _IOCTL, str(FITHAW)])
    assert boot1.wait_end()["signal"] == "SIGHUP"
    failed = [r for r in boot1.records if r.get("event") == "step failed"]
    assert [r["state"] for r in failed] == ["terminating"]
    assert "uninterruptible" in failed[0]["error"] and "(sh, state D)" in failed[0]["error"]
    assert failed[0]["written"] is False
    assert not any(r.get("event") == "transition" and r.get("state") == "flashing" for r in boot1.records)
    assert _root_digest(device) == root_before, "the root partition's squashfs must be untouched"

    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "1.0"
    report = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
    assert report["outcome"] == "aborted" and report["written"] is False
    assert f"{nspid} (sh, state D)" in report["error"]


def _root_digest(device: Device) -> str:
    """sha256 of the squashfs at the start of the root partition, read from the disk file."""
    import hashlib

    from wrtcore import blockdev, partitions

    start = next(e.start for e in partitions.read_table(str(device.disk_file)) if e.number == 2)
    size = blockdev.squashfs_bytes_used(str(device.disk_file), start)
    with open(device.disk_file, "rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(size)).hexdigest()
