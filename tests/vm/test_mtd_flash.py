"""Our ``mtd`` on the Linux kernel's real MTD drivers in QEMU (one boot for the whole module):

* NOR (mtdram): write and verify, plain and gzip; cross-checked with the kernel's bytes (``head -c`` of
  /dev/mtdN and md5sum, no code of ours); a device too small: an error with its offset, nothing written
  when the size is known in advance.
* NAND (nandsim) with bad blocks injected at load time, a weak erase block and a weak page: the bad ones
  skipped, the failing ones marked bad with the data moved on, and nanddump (mtd-utils) reading the
  image back while skipping bad blocks.
* ``mtd -j``: a NOR image with OpenWrt's ``DE AD C0 DE`` padding, then the kernel's jffs2 mounts the
  partition at the marker (``mtdpart``) and shows /sysupgrade.tgz with the same bytes, and the file
  ``mtd jffs2write`` appended next to it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterator

import pytest
from wrtvm.device import Assets, Device
from wrtvm.runner import Shell

from stage2.formats import jffs2

pytestmark = pytest.mark.vm

KiB = 1024
MiB = 1024 * KiB
NOR_ERASE = 64 * KiB
NOR_SIZE = 8 * MiB
NAND_BLOCK = 128 * KiB  # nandsim 0x20 0xaa 0x00 0x15: 256 MiB, 2 KiB pages, 128 KiB blocks
NAND_BAD = (2, 5)
NAND_WEAK_BLOCK = 7  # its first erase fails
NAND_WEAK_PAGE_BLOCK = 9  # the first program of its first page fails

FILES: dict[str, bytes] = {}


def _files() -> dict[str, bytes]:
    if FILES:
        return FILES
    rnd = os.urandom
    image = rnd(3 * MiB + 12345)
    # an OpenWrt NOR image: kernel+squashfs, 0xFF to the erase size, DE AD C0 DE blocks, a trailer
    body = rnd(700 * KiB + 5)
    body += b"\xff" * (-len(body) % NOR_ERASE)
    nor = body + b"".join(jffs2.EOF_MARKER + b"\xff" * (NOR_ERASE - 4) for _ in range(4)) + b"FWx0" * 16
    FILES.update({
        "image.bin": image,
        "image.bin.gz": gzip.compress(image, 6),
        "nand.bin": rnd(12 * NAND_BLOCK),
        "nor.bin": nor,
        "sysupgrade.tgz": rnd(150 * KiB + 77),  # three blocks of jffs2 nodes
        "extra.conf": b"option extra 1\n" * 300,
    })
    return FILES


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def shell(vm_assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shell]:
    work = tmp_path_factory.mktemp("mtd")
    bundle = work / "files.tar"
    with tarfile.open(bundle, "w") as tar:
        for name, data in _files().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dev = Device(work / "vm", vm_assets, vm_assets.images.v1, transfer=bundle)
    try:
        vm = dev.boot()
        vm.wait_event("- init complete -", timeout=120)
        vm.wait_event("- done -", timeout=120)  # preinit's last step: the console is quiet from now
        sh = Shell(vm)
        sh.wait_ready(timeout=90)
        dev.fetch_transfer(sh, "/tmp/files.tar")
        sh.check("mkdir -p /tmp/t && tar -xf /tmp/files.tar -C /tmp/t && rm /tmp/files.tar")
        sh.check(f"modprobe mtdram total_size={NOR_SIZE // KiB} erase_size={NOR_ERASE // KiB}")
        bad = ",".join(str(b) for b in NAND_BAD)
        sh.check("modprobe nandsim first_id_byte=0x20 second_id_byte=0xaa third_id_byte=0x00 "
                 f"fourth_id_byte=0x15 badblocks={bad} weakblocks={NAND_WEAK_BLOCK}:0 "
                 f"weakpages={NAND_WEAK_PAGE_BLOCK * NAND_BLOCK // 2048}:0", timeout=120)
        sh.check("modprobe jffs2")
        yield sh
    finally:
        dev.close()


def mtd_index(sh: Shell, label: str) -> int:
    out = sh.check("cat /proc/mtd")
    m = re.search(rf'^mtd(\d+): [0-9a-f]+ [0-9a-f]+ "{re.escape(label)}"', out, re.M)
    assert m, out
    return int(m.group(1))


def md5_in(out: str) -> str:
    """The digest md5sum printed (the console may carry a kernel line too)."""
    m = re.search(r"\b[0-9a-f]{32}\b", out)
    assert m, out
    return m.group(0)


def flash_md5(sh: Shell, dev: str, length: int) -> str:
    return md5_in(sh.check(f"head -c {length} {dev} | md5sum"))


def test_nor_write_and_verify(shell: Shell) -> None:
    n = mtd_index(shell, "mtdram test device")
    image = _files()["image.bin"]
    code, out = shell.run(f"mtd write /tmp/t/image.bin mtd{n} 2>&1", timeout=300)
    assert code == 0, out
    assert f"Writing from /tmp/t/image.bin to mtd{n}" in out and "Unlocking" in out
    assert flash_md5(shell, f"/dev/mtd{n}", len(image)) == md5(image)
    pad = -len(image) % NOR_ERASE
    tail = f"dd if=/dev/mtd{n} bs=1 skip={len(image)} count={pad} 2>/dev/null | tr -d '\\377' | wc -c"
    assert shell.check(tail).strip().splitlines()[-1] == "0"  # the last block padded with 0xFF
    code, out = shell.run(f"mtd verify /tmp/t/image.bin mtd{n} 2>&1", timeout=300)
    assert code == 0 and "Success" in out, out
    assert f"{md5(image)} - /tmp/t/image.bin" in out and f"{md5(image)} - mtd{n}" in out
    # a different file does not verify
    code, out = shell.run(f"mtd verify /tmp/t/nand.bin mtd{n} 2>&1", timeout=300)
    assert code == 1 and "Failed" in out, out


def test_nor_gzip_streamed(shell: Shell) -> None:
    n = mtd_index(shell, "mtdram test device")
    image = _files()["image.bin"]
    shell.check(f"mtd -q -q erase mtd{n}", timeout=300)
    assert flash_md5(shell, f"/dev/mtd{n}", len(image)) == md5(b"\xff" * len(image))
    code, out = shell.run(f"cat /tmp/t/image.bin.gz | mtd -q write - mtd{n} 2>&1", timeout=300)
    assert code == 0, out
    assert "Writing from <stdin>" in out
    assert flash_md5(shell, f"/dev/mtd{n}", len(image)) == md5(image)


def test_nor_device_too_small(shell: Shell) -> None:
    n = mtd_index(shell, "mtdram test device")
    before = flash_md5(shell, f"/dev/mtd{n}", NOR_SIZE)
    shell.check(f"head -c {NOR_SIZE + 1} /dev/urandom > /tmp/big.bin")
    code, out = shell.run(f"mtd -q write /tmp/big.bin mtd{n} 2>&1", timeout=300)
    assert code == 1, out
    assert "Insufficient space" in out and "at offset 0" in out and "nothing was written" in out, out
    assert flash_md5(shell, f"/dev/mtd{n}", NOR_SIZE) == before
    # streamed, the size is not known: it stops at the end of the device and says so
    code, out = shell.run(f"cat /tmp/big.bin | mtd -q write - mtd{n} 2>&1", timeout=300)
    assert code == 1, out
    assert f"at offset {NOR_SIZE}" in out and "the device was changed" in out, out
    shell.check("rm /tmp/big.bin")


def test_nand_bad_blocks_skipped_and_failures_marked(shell: Shell) -> None:
    n = mtd_index(shell, "NAND simulator partition 0")
    data = _files()["nand.bin"]
    info = shell.check(f"mtdinfo /dev/mtd{n}")
    assert "Bad blocks are allowed:          true" in info or "Bad blocks are allowed" in info, info
    assert re.search(r"Amount of eraseblocks:\s+2048", info), info
    code, out = shell.run(f"mtd write /tmp/t/nand.bin mtd{n} 2>&1", timeout=600)
    assert code == 0, out
    for b in NAND_BAD:
        assert f"Skipping bad block at 0x{b * NAND_BLOCK:08x}" in out, out
    for b in (NAND_WEAK_BLOCK, NAND_WEAK_PAGE_BLOCK):
        assert f"Marked block at 0x{b * NAND_BLOCK:08x} bad" in out, out
    # mtd-utils reads the flash back skipping bad blocks: exactly our image
    shell.check(f"nanddump -q --bb=skipbad -l {len(data)} -f /tmp/dump.bin /dev/mtd{n}", timeout=300)
    assert md5_in(shell.check("md5sum /tmp/dump.bin")) == md5(data)
    code, out = shell.run(f"mtd verify /tmp/t/nand.bin mtd{n} 2>&1", timeout=300)
    assert code == 0 and "Success" in out, out
    # the kernel counts a block bad only when its marker could be written: block 9 refuses every program,
    # so it is in the bad block table (nanddump skipped it above) but not in the count
    bad = shell.check(f"cat /sys/class/mtd/mtd{n}/bad_blocks").strip().splitlines()[-1]
    assert int(bad) >= len(NAND_BAD) + 1, bad


def test_jffs2_config_append_mounts_in_the_kernel(shell: Shell) -> None:
    n = mtd_index(shell, "mtdram test device")
    files = _files()
    nor, config, extra = files["nor.bin"], files["sysupgrade.tgz"], files["extra.conf"]
    marker = nor.index(jffs2.EOF_MARKER)
    assert marker % NOR_ERASE == 0
    shell.check(f"mtd -q -q erase mtd{n}", timeout=300)
    code, out = shell.run(f"mtd -j /tmp/t/sysupgrade.tgz write /tmp/t/nor.bin mtd{n} 2>&1", timeout=300)
    assert code == 0, out
    assert f"Appending jffs2 data from /tmp/t/sysupgrade.tgz to mtd{n}" in out, out
    assert flash_md5(shell, f"/dev/mtd{n}", marker) == md5(nor[:marker])
    # rootfs_data begins at the marker, as the kernel's mtdsplit would cut it
    shell.check(f"mtdpart add /dev/mtd{n} rootfs_data {marker} {NOR_SIZE - marker}")
    data_mtd = mtd_index(shell, "rootfs_data")
    code, out = shell.run("mtd jffs2write /tmp/t/extra.conf rootfs_data 2>&1", timeout=300)
    assert code == 0 and "Appending /tmp/t/extra.conf to jffs2 partition rootfs_data" in out, out
    shell.check("mkdir -p /mnt/jffs2")
    code, out = shell.run(f"mount -t jffs2 mtd{data_mtd} /mnt/jffs2 2>&1", timeout=300)
    assert code == 0, out + shell.check("dmesg | tail -20")
    try:
        listing = shell.check("ls -ln /mnt/jffs2")
        assert "sysupgrade.tgz" in listing and "extra.conf" in listing, listing
        assert md5_in(shell.check("md5sum /mnt/jffs2/sysupgrade.tgz")) == md5(config)
        assert md5_in(shell.check("md5sum /mnt/jffs2/extra.conf")) == md5(extra)
        assert shell.check("cmp /mnt/jffs2/sysupgrade.tgz /tmp/t/sysupgrade.tgz && echo same"
                           ).strip().endswith("same")
    finally:
        shell.run("umount /mnt/jffs2", timeout=120)
        shell.run(f"mtdpart del /dev/mtd{n} {data_mtd}")
