"""``swupdate-wrt`` installing ``.swu`` bundles onto the kernel's real MTD and UBI drivers in QEMU (one boot
for the module).

* ``flash`` on NOR (mtdram, 64 KiB erase blocks, addressed by its ``mtdname``): an artifact that starts
  ``1f 8b`` but is not marked ``compressed`` is written as it is, a ``compressed = "zlib"`` one at an
  offset is inflated; the flash is read back with ``dd`` (no code of ours) and compared.
* ``partitions`` + ``ubivol`` on NAND (nandsim, formatted and attached by mtd-utils with a volume of the
  wrong size): the ``partitions`` entry resizes it, the image goes into it; ``ubinfo`` and ``sha256sum``
  of the volume node check the result.
* A bundle whose artifact fails its sha256: as a file, refused (exit 2) before anything is written; as a
  stream, the install fails (exit 1) at the artifact's end and says that bytes were written.
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
from wrtvm import scenario
from wrtvm.device import Assets, Device
from wrtvm.runner import Shell

from tests.swu_corpus import cpio_bytes

pytestmark = pytest.mark.vm

KiB = 1024
NOR_LABEL = "mtdram test device"
NOR_ERASE = 64 * KiB
NAND_SIZE = 180 * KiB  # the volume's size asked by the partitions entry


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle(description: str, artifacts: list[tuple[str, bytes]]) -> bytes:
    return cpio_bytes([("sw-description", description.encode()), *artifacts])


def _desc(body: str) -> str:
    return f'software = {{ version = "2.0"; hardware-compatibility = [ "1.0" ];\n{body}\n}};\n'


def _payload() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The bundles (name -> bytes) and the images they carry."""
    looks_gzip = gzip.compress(os.urandom(150 * KiB))  # starts 1f 8b, stored as it is
    plain = os.urandom(200 * KiB + 17)
    packed = gzip.compress(plain)
    ubi_image = os.urandom(5 * 15 * KiB + 99)
    flash = _desc(
        f'images = ( {{ filename = "boot.bin"; type = "flash"; mtdname = "{NOR_LABEL}"; '
        f'sha256 = "{_sha(looks_gzip)}"; }},\n'
        f'  {{ filename = "data.gz"; type = "flash"; mtdname = "{NOR_LABEL}"; offset = "1M"; '
        f'compressed = "zlib"; sha256 = "{_sha(packed)}"; }} );')
    ubi = _desc(
        f'  partitions = ( {{ name = "rootfs"; device = "mtd0"; size = {NAND_SIZE}; }} );\n'
        '  images = ( { filename = "rootfs.img"; volume = "rootfs"; ubipartition = "mtd0"; '
        f'sha256 = "{_sha(ubi_image)}"; }} );')
    bad = os.urandom(3 * NOR_ERASE)
    corrupt = _desc(f'images = ( {{ filename = "bad.bin"; type = "flash"; mtdname = "{NOR_LABEL}"; '
                    f'sha256 = "{_sha(bad[:-1] + bytes([bad[-1] ^ 0xFF]))}"; }} );')  # last byte differs
    bundles = {"flash.swu": _bundle(flash, [("boot.bin", looks_gzip), ("data.gz", packed)]),
               "ubi.swu": _bundle(ubi, [("rootfs.img", ubi_image)]),
               "bad.swu": _bundle(corrupt, [("bad.bin", bad)])}
    return bundles, {"boot": looks_gzip, "data": plain, "ubi": ubi_image, "bad": bad}


@pytest.fixture(scope="module")
def guest(vm_assets: Assets, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Shell, dict[str, bytes]]]:
    work = tmp_path_factory.mktemp("swu-mtd")
    bundles, images = _payload()
    payload = work / "bundles.tar"
    with tarfile.open(payload, "w") as tar:
        for name, data in bundles.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dev = Device(work / "vm", vm_assets, vm_assets.images.v1, transfer=payload)
    try:
        _vm, sh = scenario.boot_to_shell(dev)
        dev.fetch_transfer(sh, "/tmp/bundles.tar")
        sh.check("mkdir -p /tmp/b && tar -xf /tmp/bundles.tar -C /tmp/b && rm /tmp/bundles.tar")
        sh.check("echo 'test 1.0' > /tmp/hwrevision")
        # nandsim first, so that it is mtd0 (the bundle names it so): 16 MiB, 512-byte pages, 16 KiB blocks
        sh.check("modprobe nandsim first_id_byte=0x20 second_id_byte=0x73 && modprobe ubi", timeout=120)
        sh.check(f"modprobe mtdram total_size=8192 erase_size={NOR_ERASE // KiB}", timeout=120)
        assert "nand" in sh.check("cat /sys/class/mtd/mtd0/type")
        sh.check("ubiformat /dev/mtd0 -y -q && ubiattach -p /dev/mtd0 -d 0 && "
                 "ubimkvol /dev/ubi0 -N rootfs -s 40KiB", timeout=300)
        yield sh, images
    finally:
        dev.close()


def mtd_index(sh: Shell, label: str) -> int:
    """N of the MTD device named ``label`` in sysfs."""
    out = sh.check(f"grep -lx '{label}' /sys/class/mtd/mtd*/name")
    found = re.findall(r"/mtd(\d+)/name", out)
    assert len(found) == 1, out
    return int(found[0])


OPTIONS = "--hwrevision-file /tmp/hwrevision --sw-versions-file /tmp/sw-versions --fw-env-config /nonexistent"


def swupdate(sh: Shell, bundle: str) -> tuple[int, str]:
    return sh.run(f"TMPDIR=/tmp swupdate-wrt -i /tmp/b/{bundle} {OPTIONS} 2>&1", timeout=600)


def device_sha(sh: Shell, node: str, offset: int, length: int) -> str:
    """sha256 of ``length`` bytes of ``node`` at ``offset`` (a multiple of 1 KiB), read by dd."""
    out = sh.check(f"dd if={node} bs=1024 skip={offset // KiB} 2>/dev/null | head -c {length} | sha256sum")
    return out.split()[0]


def test_flash_handler_writes_nor(guest: tuple[Shell, dict[str, bytes]]) -> None:
    sh, images = guest
    n = mtd_index(sh, NOR_LABEL)
    code, out = swupdate(sh, "flash.swu")
    assert code == 0, out
    assert device_sha(sh, f"/dev/mtd{n}", 0, len(images["boot"])) == _sha(images["boot"])  # not inflated
    assert device_sha(sh, f"/dev/mtd{n}", 1 << 20, len(images["data"])) == _sha(images["data"])
    pad = -len(images["boot"]) % NOR_ERASE  # the rest of the last block is erased (0xFF)
    tail = (f"dd if=/dev/mtd{n} bs=1 skip={len(images['boot'])} count={pad} 2>/dev/null | "
            "tr -d '\\377' | wc -c")
    assert sh.check(tail).strip().splitlines()[-1] == "0"


def test_partitions_and_ubivol(guest: tuple[Shell, dict[str, bytes]]) -> None:
    sh, images = guest
    code, out = swupdate(sh, "ubi.swu")
    assert code == 0, out
    info = sh.check("ubinfo -d 0 -N rootfs")
    leb = int(sh.check("cat /sys/class/ubi/ubi0/eraseblock_size").split()[-1])
    lebs = re.search(r"Size:\s+(\d+) LEBs", info)
    assert lebs and int(lebs.group(1)) == -(-NAND_SIZE // leb), info  # resized from 40 KiB
    vol_id = re.search(r"Volume ID:\s+(\d+)", info)
    assert vol_id, info
    got = sh.check(f"head -c {len(images['ubi'])} /dev/ubi0_{vol_id.group(1)} | sha256sum").split()[0]
    assert got == _sha(images["ubi"])


def test_sha256_mismatch_on_flash(guest: tuple[Shell, dict[str, bytes]]) -> None:
    """A file bundle is checked before anything is written: refused (2), flash unchanged. Streamed through
    a pipe, the mismatch shows at the artifact's end: the blocks before it are written, the install fails
    (1) and says so, and the block holding the last bytes is never written."""
    sh, images = guest
    n = mtd_index(sh, NOR_LABEL)
    before = device_sha(sh, f"/dev/mtd{n}", 0, 3 * NOR_ERASE)
    code, out = swupdate(sh, "bad.swu")
    assert code == 2 and "HASH mismatch" in out, out
    assert device_sha(sh, f"/dev/mtd{n}", 0, 3 * NOR_ERASE) == before

    code, out = sh.run(f"cat /tmp/b/bad.swu | TMPDIR=/tmp swupdate-wrt -i - {OPTIONS} 2>&1", timeout=600)
    assert code == 1, out
    assert "HASH mismatch" in out and "bytes were written" in out, out
    bad = images["bad"]
    assert device_sha(sh, f"/dev/mtd{n}", 0, 2 * NOR_ERASE) == _sha(bad[:2 * NOR_ERASE])
    assert device_sha(sh, f"/dev/mtd{n}", 2 * NOR_ERASE, NOR_ERASE) != _sha(bad[2 * NOR_ERASE:])
