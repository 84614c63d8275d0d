"""UBI on a real NAND driver (nandsim) in the guest: a sysupgrade tar written by our UBI writer.

One VM for the module. In the guest: nandsim (256 MiB, 128 KiB blocks; its MTD partition is named by
the driver, so ``--ubipart`` names it as ``CI_UBIPART`` would), formatted by mtd-utils' ``ubiformat``
and holding stale volumes of the wrong sizes made by ``ubimkvol``; then ``python -m
stage2.platforms.nand`` (what stage2 runs on a NAND board) attaches it through ``UBI_IOCATT``, removes
``rootfs_data``, resizes ``kernel`` and ``rootfs``, writes them from the tar, creates ``rootfs_data``
and puts the config archive into it through the kernel's ubifs. Checked with independent readers:
``ubinfo`` for the volumes, ``sha256sum`` of the volume nodes, the kernel's ubifs mounting
``rootfs_data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from wrtvm import device as devicemod
from wrtvm.runner import Shell

pytestmark = pytest.mark.vm

BOARD = "qemu-nand"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_payload(where: Path) -> dict[str, str]:
    """The sysupgrade tar (random kernel, a real squashfs root) and a config archive, packed into one
    tar for the transfer disk; returns their sha256s."""
    rng = os.urandom
    kernel = rng(400_000)
    tree = where / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "openwrt_version").write_text("nand-2.0\n")
    (tree / "blob").write_bytes(rng(700_000))
    squash = where / "root.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(squash), "-noappend", "-quiet", "-comp", "gzip"], check=True)
    root = squash.read_bytes()
    backup = rng(40_000)
    upgrade = io.BytesIO()
    with tarfile.open(fileobj=upgrade, mode="w", format=tarfile.GNU_FORMAT) as tar:
        d = tarfile.TarInfo(f"sysupgrade-{BOARD}")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        _add(tar, f"sysupgrade-{BOARD}/CONTROL", b"BOARD=qemu-nand\n")
        _add(tar, f"sysupgrade-{BOARD}/kernel", kernel)
        _add(tar, f"sysupgrade-{BOARD}/root", root)
    outer = where / "payload.tar"
    with tarfile.open(outer, "w") as tar:
        _add(tar, "sysupgrade.tar", upgrade.getvalue())
        _add(tar, "sysupgrade.tgz", backup)
    return {"kernel": _sha(kernel), "root": _sha(root), "backup": _sha(backup),
            "kernel_len": str(len(kernel)), "root_len": str(len(root)), "payload": str(outer)}


@pytest.fixture(scope="module")
def guest(vm_assets: devicemod.Assets, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Shell, dict[str, str]]]:
    work = tmp_path_factory.mktemp("ubi")
    sums = build_payload(work)
    dev = devicemod.Device(work / "vm", vm_assets, vm_assets.images.v1, transfer=Path(sums["payload"]))
    try:
        vm = dev.boot()
        vm.wait_event("- init complete -", timeout=120)
        vm.wait_event("- done -", timeout=60)
        shell = Shell(vm)
        shell.wait_ready(timeout=60)
        dev.fetch_transfer(shell, "/tmp/payload.tar")
        shell.check("cd /tmp && tar xf payload.tar && rm payload.tar && cd /")
        shell.check("modprobe zstd && modprobe nandsim first_id_byte=0x20 second_id_byte=0xaa "
                    "third_id_byte=0x00 fourth_id_byte=0x15 && modprobe ubi && modprobe ubifs", timeout=120)
        mtd = shell.check("cat /proc/mtd")
        num, name = next((line.split(":")[0], line.split('"')[1]) for line in mtd.splitlines()
                         if line.startswith("mtd0:"))
        shell.check(f"ubiformat /dev/{num} -y -q", timeout=300)
        # a previous firmware's volumes, of other sizes than the new image needs; then detached, so
        # that our writer has to attach it itself
        shell.check(f"ubiattach -p /dev/{num} -d 0 && ubimkvol /dev/ubi0 -N kernel -s 1MiB && "
                    "ubimkvol /dev/ubi0 -N rootfs -s 20MiB && ubimkvol /dev/ubi0 -N rootfs_data -s 30MiB && "
                    "ubidetach -d 0", timeout=120)
        sums["ubipart"] = name
        yield shell, sums
    finally:
        dev.close()


def _json(out: str) -> dict[str, object]:
    line = next(line for line in reversed(out.splitlines()) if line.startswith("{"))
    data: dict[str, object] = json.loads(line)
    return data


def _volumes(shell: Shell) -> dict[str, dict[str, str]]:
    """``ubinfo -a`` (mtd-utils) per volume name: its fields."""
    out = shell.check("ubinfo -d 0 -a")
    vols: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Volume ID":
            current = {"id": value.split()[0]}
        current[key] = value
        if key == "Name":
            vols[value] = current
    return vols


def test_nand_upgrade_writes_volumes_and_config(guest: tuple[Shell, dict[str, str]]) -> None:
    shell, sums = guest
    code, out = shell.run("python3 -m stage2.platforms.nand /tmp/sysupgrade.tar --backup /tmp/sysupgrade.tgz"
                          f" --ubipart '{sums['ubipart']}'", timeout=600)
    report = _json(out)
    assert code == 0, out
    assert report["outcome"] == "success", report
    plan = report["plan"]
    assert isinstance(plan, list)
    assert plan[0] == "remove volume rootfs_data"
    assert any(p.startswith("resize volume kernel") for p in plan), plan
    assert any(p.startswith("resize volume rootfs") for p in plan), plan

    vols = _volumes(shell)
    leb = int(shell.check("cat /sys/class/ubi/ubi0/eraseblock_size").split()[-1])
    assert set(vols) == {"kernel", "rootfs", "rootfs_data"}, vols
    # exact sizes: whole LEBs for kernel and rootfs, rootfs_data takes the rest
    kernel_lebs = -(-int(sums["kernel_len"]) // leb)
    root_lebs = -(-int(sums["root_len"]) // leb)
    assert vols["kernel"]["Size"].startswith(f"{kernel_lebs} LEBs"), vols["kernel"]
    assert vols["rootfs"]["Size"].startswith(f"{root_lebs} LEBs"), vols["rootfs"]
    assert int(vols["rootfs_data"]["Size"].split()[0]) > 1000

    for name in ("kernel", "rootfs"):
        node = f"/dev/ubi0_{vols[name]['id']}"
        length = sums[f"{'kernel' if name == 'kernel' else 'root'}_len"]
        got = shell.check(f"head -c {length} {node} | sha256sum").split()[0]
        assert got == sums["kernel" if name == "kernel" else "root"], name

    # the kernel's ubifs mounts rootfs_data and finds the config archive, same bytes
    shell.check("mkdir -p /tmp/data && mount -t ubifs ubi0:rootfs_data /tmp/data")
    try:
        got = shell.check("sha256sum /tmp/data/sysupgrade.tgz").split()[0]
        assert got == sums["backup"]
    finally:
        shell.check("umount /tmp/data")


def test_no_room_for_rootfs_data_is_refused_with_nothing_changed(guest: tuple[Shell, dict[str, str]]) -> None:
    shell, sums = guest
    before = shell.check("ubinfo -d 0 -a | grep -E 'Name|Size'")
    code, out = shell.run("python3 -m stage2.platforms.nand /tmp/sysupgrade.tar --rootfs-data-max 4096"
                          f" --ubipart '{sums['ubipart']}'", timeout=300)
    report = _json(out)
    assert code == 2, out
    assert report["written"] is False
    assert "cannot initialize rootfs_data" in str(report["error"])
    assert shell.check("ubinfo -d 0 -a | grep -E 'Name|Size'") == before
