"""``mount_root done`` moving a tmpfs overlay onto the real rootfs_data, and the copy it relies on.

* A sandbox device whose rootfs_data starts ``DE AD C0 DE`` boots on a tmpfs overlay; when the boot is
  done it is formatted ext4 and the running system moves onto it: /overlay is the ext4, the root an
  overlayfs with its upper there, a file written afterwards survives a reboot, and the next boot mounts
  the ext4 directly (its state ready: nothing wiped).
* ``copy_tree`` carries an overlay upper over: files, symlinks, overlayfs whiteouts (character device
  0/0), the opaque mark (a ``trusted.overlay`` extended attribute), owners, modes and times.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from preinit.mount_root import STATE_LINK
from preinit.overlay_switch import copy_tree
from sandbox.device import Boot, Device
from sandbox.images import Images
from wrtcore import blockdev, partitions

pytestmark = pytest.mark.sandbox

KEPT = "config keep 'me'\n"


def rootfs_data_offset(device: Device) -> int:
    disk = str(device.disk_file)
    start = next(e.start for e in partitions.read_table(disk) if e.number == 2)
    return start + blockdev.overlay_offset(blockdev.squashfs_bytes_used(disk, start))


def overlay_mounts(boot: Boot) -> dict[str, tuple[str, str]]:
    """mountpoint -> (fstype, super options) as the device sees them."""
    out = boot.run(["cat", "/proc/self/mountinfo"], check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        sep = fields.index("-")
        found[fields[4]] = (fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else "")
    return found


def test_deadc0de_boots_on_tmpfs_and_done_switches_to_ext4(device: Device, images: Images) -> None:
    offset = rootfs_data_offset(device)
    with open(device.disk_file, "r+b") as f:
        f.seek(offset)
        f.write(b"\xde\xad\xc0\xde" + b"\xff" * 65532)
    boot1 = device.boot()
    boot1.wait_done()
    events = [r.get("event") for r in boot1.records]
    assert "rootfs_data not ready yet, using temporary tmpfs overlay" in events
    assert "switching to tmpfs overlay" in events
    assert "switched from the tmpfs overlay to ext4" in events, events[-20:]
    mounts = overlay_mounts(boot1)
    assert mounts["/overlay"][0] == "ext4"
    assert mounts["/"][0] == "overlay" and "upperdir=/overlay/upper" in mounts["/"][1]
    assert boot1.path("/overlay/" + STATE_LINK).readlink() == Path("2")  # ready
    with open(device.disk_file, "rb") as f:
        f.seek(offset + 1080)
        assert f.read(2) == b"\x53\xef", "rootfs_data is an ext4 now"
    # written after the switch: lands on the ext4 through the new root
    assert boot1.run(["sh", "-c", f"printf %s \"{KEPT}\" > /etc/config/kept && sync"]).returncode == 0
    assert boot1.path("/overlay/upper/etc/config/kept").read_text() == KEPT
    assert boot1.call("system", "reboot")["result"][0] == 0
    assert boot1.wait_end()["signal"] == "SIGHUP"

    boot2 = device.boot()
    boot2.wait_done()
    events = [r.get("event") for r in boot2.records]
    assert "switching to ext4 overlay" in events and "overlay filesystem has not been fully initialized yet" \
        not in events
    assert boot2.path("/etc/config/kept").read_text() == KEPT
    assert overlay_mounts(boot2)["/overlay"][0] == "ext4"


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    where = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run(["mount", "-t", "tmpfs", "wrt-copy", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def test_copy_tree_keeps_whiteouts_opaque_dirs_and_metadata(tmpfs: Path) -> None:
    src = tmpfs / "upper"
    (src / "etc" / "config").mkdir(parents=True)
    (src / "etc" / "config" / "network").write_text("net\n")
    os.chmod(src / "etc" / "config" / "network", 0o600)
    os.chown(src / "etc" / "config" / "network", 1000, 1001)
    os.utime(src / "etc" / "config" / "network", (1_000_000, 1_000_000))
    os.symlink("../tmp/resolv.conf", src / "etc" / "resolv.conf")
    os.mknod(src / "etc" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlayfs whiteout
    (src / "etc" / "opaque").mkdir()
    os.setxattr(src / "etc" / "opaque", "trusted.overlay.opaque", b"y")
    dst = tmpfs / "new" / "upper"

    assert copy_tree(str(src), str(dst)) == 6
    net = os.lstat(dst / "etc" / "config" / "network")
    assert (dst / "etc" / "config" / "network").read_text() == "net\n"
    assert (stat.S_IMODE(net.st_mode), net.st_uid, net.st_gid, int(net.st_mtime)) == (0o600, 1000, 1001,
                                                                                       1_000_000)
    assert os.readlink(dst / "etc" / "resolv.conf") == "../tmp/resolv.conf"
    gone = os.lstat(dst / "etc" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dst / "etc" / "opaque", "trusted.overlay.opaque") == b"y"
