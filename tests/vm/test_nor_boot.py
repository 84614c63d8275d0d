"""Booting from a NOR flash (block2mtd over the VM's disk file, split into ``rootfs`` and ``rootfs_data``
by the initramfs as OpenWrt's mtdsplit does): mount_root finds rootfs_data in /proc/mtd.

* A freshly flashed chip (``DE AD C0 DE`` at the start of rootfs_data): the first boot runs on a tmpfs
  overlay, ``done`` erases the partition into an empty jffs2 (clean markers written, so the kernel queues
  no erase in the background) and moves the running system onto it; a file written to /etc/config then
  survives a reboot (QEMU started again on the same flash file), and that boot mounts the jffs2 directly.
* What ``mtd -j`` leaves after a NOR sysupgrade: a jffs2 holding ``sysupgrade.tgz``, its ``DE AD C0 DE``
  end block, then stale data of an older jffs2. mount_root erases from the end marker on (as OpenWrt's
  kernel patch does; Debian's kernel would read the stale nodes), mounts the jffs2, and the config
  restore finds the archive as /sysupgrade.tgz; ``done`` deletes it.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import time
from pathlib import Path

import pytest
from wrtvm.device import Assets
from wrtvm.images import NOR_ERASE, NOR_SIZE
from wrtvm.runner import VM, Shell

from sandbox import disk
from stage2.formats import jffs2
from tests.vm.booted import shell_after_done

pytestmark = pytest.mark.vm

NOR_CMDLINE = f"wrt.nor=/dev/vda,{NOR_ERASE} root=/dev/mtdblock1"
KEPT = "config keep 'nor'"
RESTORED = "config interface 'lan'\n\toption ipaddr '10.7.7.7'\n"


def nor_vm(assets: Assets, flash: Path, workdir: Path, name: str) -> VM:
    return VM(kernel=assets.kernel.vmlinux, initrd=assets.initrd, disk=flash, workdir=workdir, name=name,
              cmdline_extra=NOR_CMDLINE)


def events(vm: VM) -> list[str]:
    return [str(r.get("event")) for r in vm.records]


def fstype(shell: Shell, mountpoint: str) -> str:
    out = shell.check(f"awk '$2 == \"{mountpoint}\" {{ t = $3 }} END {{ print \"fs=\" t }}' /proc/mounts")
    return out.split("fs=")[-1].split()[0]


def test_fresh_flash_tmpfs_then_jffs2_and_a_change_survives(vm_assets: Assets, tmp_path: Path) -> None:
    start = time.monotonic()
    flash = disk.nor_flash(vm_assets.images.nor_v1, tmp_path / "flash.bin", NOR_SIZE)
    with nor_vm(vm_assets, flash, tmp_path, "boot1") as vm:
        shell = shell_after_done(vm)
        assert "rootfs_data" in shell.check("cat /proc/mtd")
        ev = events(vm)
        assert "rootfs_data not ready yet, using temporary tmpfs overlay" in ev
        assert "switching to tmpfs overlay" in ev
        erased = next(r for r in vm.records if r.get("event") == "rootfs_data erased for jffs2")
        assert "switched from the tmpfs overlay to jffs2" in ev, ev[-20:]
        assert fstype(shell, "/overlay") == "jffs2"
        assert shell.check("readlink /overlay/.fs_state").split()[-1] == "2"
        shell.check(f"echo \"{KEPT}\" > /etc/config/kept && sync")
        first = time.monotonic() - start
        vm.send("upgraded call system reboot\n")
        assert vm.wait_exit(timeout=120) == 0
        assert "rebooting" in events(vm)
        # the partition was erased with clean markers: the jffs2 had no erase queued for its GC thread,
        # which the unmount at reboot would interrupt (block2mtd: "erase failed err = -4", EINTR)
        assert "erase failed" not in vm.console

    with nor_vm(vm_assets, flash, tmp_path, "boot2") as vm:
        shell = shell_after_done(vm)
        ev = events(vm)
        assert "switching to jffs2 overlay" in ev and "rootfs_data not ready yet" not in " ".join(ev)
        assert "overlay filesystem has not been fully initialized yet" not in ev  # ready: nothing wiped
        assert KEPT in shell.check("cat /etc/config/kept")
        assert fstype(shell, "/overlay") == "jffs2"
    print(f"\n  NOR: {erased['blocks']} blocks of rootfs_data erased in done; boot 1 to shell and switch "
          f"{first:.1f} s; test {time.monotonic() - start:.1f} s")


def _tgz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _jffs2_with(name: str, data: bytes) -> bytes:
    meta = jffs2.FileMeta(name, 0o100644, len(data), 1_700_000_000, 1_700_000_000, 1_700_000_000)
    return b"".join(jffs2.config_blocks(meta, data, NOR_ERASE))


def test_config_from_mtd_j_is_restored_and_stale_blocks_erased(vm_assets: Assets, tmp_path: Path) -> None:
    start = time.monotonic()
    flash = disk.nor_flash(vm_assets.images.nor_v2, tmp_path / "flash.bin", NOR_SIZE)
    with open(flash, "r+b") as f:
        f.seek(40)
        (used,) = struct.unpack("<Q", f.read(8))  # squashfs bytes_used: rootfs_data starts after it
        data_at = -(-used // NOR_ERASE) * NOR_ERASE
        fresh = _jffs2_with("sysupgrade.tgz", _tgz({"etc/config/network": RESTORED}))
        stale = _jffs2_with("stale.tgz", gzip.compress(b"an older jffs2's file"))
        f.seek(data_at)
        f.write(fresh + stale)
    with nor_vm(vm_assets, flash, tmp_path, "boot1") as vm:
        shell = shell_after_done(vm)
        ev = events(vm)
        marker = next(r for r in vm.records if r.get("event") == "jffs2 end marker found, erasing the blocks "
                      "after it")
        assert marker["offset"] == len(fresh) - NOR_ERASE  # the EOF block, the last one mtd -j wrote
        assert "switching to jffs2 overlay" in ev
        assert "- config restore -" in vm.console
        assert RESTORED in shell.check("cat /etc/config/network")
        assert shell.run("ls /overlay/stale.tgz /overlay/upper/stale.tgz")[0] != 0  # stale data gone
        assert shell.run("ls /sysupgrade.tgz")[0] != 0  # done deleted the archive after the boot
        assert fstype(shell, "/overlay") == "jffs2"
    print(f"\n  NOR mtd -j: config restored, {marker['blocks']} blocks erased after the end marker; "
          f"test {time.monotonic() - start:.1f} s")
