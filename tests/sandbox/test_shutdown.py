"""The init's ordinary reboot (``system reboot`` on the bus): services stopped (SIGTERM, then SIGKILL
for the one that ignores it), every other process ended, filesystems read-only, reboot(2) - which ends
the device's PID namespace (the host sees SIGHUP). Proof that the overlay was left clean: its ext4 has
no journal recovery pending, unlike after a power cut (the device's PID 1 SIGKILLed)."""

from __future__ import annotations

import struct

import pytest

from sandbox.device import Device
from sandbox.images import Images
from wrtcore import blockdev, partitions

pytestmark = pytest.mark.sandbox

EXT4_INCOMPAT_RECOVER = 0x4
CHANGED = "config interface 'lan'\n\toption ipaddr '10.1.2.3'\n"


def overlay_needs_recovery(device: Device) -> bool:
    """The rootfs_data ext4's needs_recovery flag, read from the disk file (superblock at 1024,
    s_feature_incompat at 0x60)."""
    disk = str(device.disk_file)
    start = next(e.start for e in partitions.read_table(disk) if e.number == 2)
    data = start + blockdev.overlay_offset(blockdev.squashfs_bytes_used(disk, start))
    with open(disk, "rb") as f:
        f.seek(data + 1024)
        sb = f.read(1024)
    assert sb[0x38:0x3A] == b"\x53\xef", "rootfs_data holds an ext4"
    (incompat,) = struct.unpack_from("<I", sb, 0x60)
    return bool(incompat & EXT4_INCOMPAT_RECOVER)


def test_ordinary_reboot_stops_everything_and_leaves_the_overlay_clean(device: Device,
                                                                       images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_done()
    boot1.path("/etc/config/network").write_text(CHANGED)
    sleeper = boot1.run(["sh", "-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"])
    assert sleeper.returncode == 0
    assert overlay_needs_recovery(device), "a mounted, written ext4 has recovery pending"
    reply = boot1.call("system", "reboot")
    assert reply["result"][0] == 0
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}, "reboot(2) ends the namespace"

    events = [r.get("event") for r in boot1.records]
    order = [events.index(e) for e in ("- shutdown -", "- SIGTERM/SIGKILL processes -", "filesystems",
                                       "rebooting")]
    assert order == sorted(order), events[-30:]
    procs = next(r for r in boot1.records if r.get("event") == "- SIGTERM/SIGKILL processes -")
    assert procs["survivors"] == [] and procs["ended"] >= 1
    stopped = {r["service"]: r["outcome"] for r in boot1.records if r.get("event") == "service.stopped"}
    assert stopped.get("stubborn") == "killed" and stopped.get("holder") == "term", stopped
    assert events.index("- shutdown -") < min(i for i, e in enumerate(events) if e == "service.stopped")
    assert boot1.run(["true"]).returncode != 0, "the device is gone"
    fs = next(r for r in boot1.records if r.get("event") == "filesystems")["done"]
    results = {d["mountpoint"]: d["result"] for d in fs}
    assert results["/"] == "read-only"
    assert results["/overlay"] in ("unmounted", "read-only"), results
    assert not overlay_needs_recovery(device), "the overlay's journal was closed cleanly"

    boot2 = device.boot()
    boot2.wait_done()
    assert boot2.path("/etc/config/network").read_text() == CHANGED
    boot2.kill()  # a power cut, for contrast: the journal is left open
    assert overlay_needs_recovery(device)
