"""The ``flash``, ``ubivol`` and ``partitions`` adapters without MTD: the MTD writer's own file-backed fake
flash (tests/unit/test_mtd_writer.py), a fake sysfs and /proc/mtd for UBI. The kernel's drivers are
exercised in tests/vm/test_swu_on_flash.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path

import pytest

from swu.cpio import MemberHeader, MemberReader
from swu.decompress import decompressing
from swu.handlers import mtd, ubi
from swu.handlers.base import Call, InstallError, Settings
from swu.handlers.source import ArtifactSource
from swu.model import Artifact, Compression, Section, UbiPartition
from tests.unit.test_mtd_writer import E, FakeFlash
from wrtcore import ubi as ubicore

LEB = 126976


def _member(data: bytes, sha256: str | None = None) -> MemberReader:
    reader = MemberReader(io.BytesIO(data), MemberHeader("img", len(data), 0o100644, 0, 0, False, 0))
    if sha256:
        reader.expect_sha256(sha256)
    return reader


def _art(handler: str, **kw: object) -> Artifact:
    return Artifact(section=Section.IMAGES, where="software.images[0]", filename="img", handler=handler,
                    **kw)  # type: ignore[arg-type]


def _call(tmp_path: Path, progress: list[tuple[int, int | None]] | None = None) -> Call:
    def report(_name: str, done: int, total: int | None) -> None:
        if progress is not None:
            progress.append((done, total))
    return Call(Settings(tmpdir=str(tmp_path)), report)


# --- flash --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nand", [False, True])
def test_flash_writes_blocks_and_pads_with_ff(tmp_path: Path, nand: bool) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 8, nand=nand)
    data = os.urandom(2 * E + 100)
    seen: list[tuple[int, int | None]] = []
    result = mtd.write_to(flash, "kernel", _art("flash", mtdname="kernel"),
                          _member(data, hashlib.sha256(data).hexdigest()), _call(tmp_path, seen))
    content = flash.content()
    assert result.written == len(data)
    assert content[:len(data)] == data
    assert content[len(data):3 * E] == b"\xff" * (3 * E - len(data))
    assert content[3 * E:] == b"\x5a" * (5 * E)  # blocks after the image untouched
    assert seen[-1] == (len(data), len(data))


def test_flash_keeps_an_artifact_that_starts_like_gzip(tmp_path: Path) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 4)
    data = gzip.compress(b"payload" * 1000)  # a raw artifact that happens to be gzip: written as it is
    mtd.write_to(flash, "kernel", _art("flash", mtdname="kernel"), _member(data), _call(tmp_path))
    assert flash.content()[:len(data)] == data


def test_flash_inflates_only_when_compressed(tmp_path: Path) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 4)
    plain = os.urandom(E + 7)
    stored = gzip.compress(plain)
    member = _member(stored, hashlib.sha256(stored).hexdigest())
    result = mtd.write_to(flash, "kernel", _art("flash", mtdname="kernel", compressed=Compression.ZLIB),
                          decompressing(member, Compression.ZLIB, "x"), _call(tmp_path))
    assert result.written == len(plain)
    assert flash.content()[:len(plain)] == plain


def test_flash_skips_a_bad_nand_block(tmp_path: Path) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 6, nand=True)
    flash.bad.add(E)
    data = os.urandom(2 * E)
    mtd.write_to(flash, "rootfs", _art("flash", device="mtd3"), _member(data), _call(tmp_path))
    content = flash.content()
    assert content[:E] == data[:E]
    assert content[E:2 * E] == b"\x5a" * E  # the bad block was not touched
    assert content[2 * E:3 * E] == data[E:]


def test_flash_too_big_writes_nothing(tmp_path: Path) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 2)
    with pytest.raises(InstallError, match=r"Insufficient space.*nothing was written"):
        mtd.write_to(flash, "kernel", _art("flash", mtdname="kernel"), _member(os.urandom(2 * E + 1)),
                     _call(tmp_path))
    assert flash.erased == []


def test_flash_unaligned_offset_writes_nothing(tmp_path: Path) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 4)
    with pytest.raises(InstallError, match=r"multiple of the erase size.*nothing was written"):
        mtd.write_to(flash, "kernel", _art("flash", mtdname="kernel", offset=512), _member(b"x" * 10),
                     _call(tmp_path))
    assert flash.erased == []


@pytest.mark.parametrize(("size", "written"), [(E // 2, False), (3 * E, True)])
def test_flash_sha256_mismatch_says_what_was_written(tmp_path: Path, size: int, written: bool) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 4)
    with pytest.raises(InstallError, match=r"HASH mismatch") as info:
        mtd.write_to(flash, "kernel", _art("flash", mtdname="kernel"), _member(os.urandom(size), "00" * 32),
                     _call(tmp_path))
    assert info.value.written is written
    assert (flash.erased != []) is written
    assert flash.erased[-1:] != [3 * E]  # the block holding the last bytes is never written


def test_flash_write_failure_reports_offset(tmp_path: Path) -> None:
    flash = FakeFlash(tmp_path / "flash.bin", 4)
    flash.fail_write.add(E)
    with pytest.raises(InstallError, match=rf"from offset {E}\)") as info:
        mtd.write_to(flash, "kernel", _art("flash", mtdname="kernel"), _member(os.urandom(2 * E)),
                     _call(tmp_path))
    assert info.value.written and info.value.offset == E


# --- ubivol -------------------------------------------------------------------------------------------


def _sysfs(root: Path, devices: dict[int, tuple[int, dict[str, int]]], avail: int = 100) -> Path:
    """ubiN on mtdM with volumes name -> reserved LEBs."""
    for number, (mtd_num, volumes) in devices.items():
        dev = root / f"ubi{number}"
        dev.mkdir(parents=True)
        for name, value in (("mtd_num", mtd_num), ("eraseblock_size", LEB), ("avail_eraseblocks", avail),
                            ("total_eraseblocks", 1000), ("min_io_size", 2048), ("dev", f"250:{number}")):
            (dev / name).write_text(f"{value}\n")
        for vol_id, (name, lebs) in enumerate(volumes.items()):
            v = dev / f"ubi{number}_{vol_id}"
            v.mkdir()
            for attr, val in (("name", name), ("reserved_ebs", lebs), ("usable_eb_size", LEB),
                              ("data_bytes", 0), ("type", "dynamic"), ("dev", f"250:{vol_id + 1}")):
                (v / attr).write_text(f"{val}\n")
    return root


def _layout(tmp_path: Path, devices: dict[int, tuple[int, dict[str, int]]]) -> ubi.Layout:
    proc = tmp_path / "proc_mtd"
    proc.write_text('dev:    size   erasesize  name\nmtd0: 00800000 00020000 "ubi"\n'
                    'mtd1: 00800000 00020000 "ubi2"\n')
    return ubi.Layout(sysfs=str(_sysfs(tmp_path / "sysfs", devices)), proc_mtd=str(proc))


def test_ubivol_finds_the_volume_on_its_partition(tmp_path: Path) -> None:
    layout = _layout(tmp_path, {0: (0, {"rootfs": 10}), 1: (1, {"rootfs": 20})})
    vol = ubi.find_volume(_art("ubivol", volume="rootfs", ubipartition="ubi2"), layout)
    assert (vol.device, vol.reserved_ebs) == (1, 20)


def test_ubivol_ambiguous_or_missing_volume_writes_nothing(tmp_path: Path) -> None:
    layout = _layout(tmp_path, {0: (0, {"rootfs": 10}), 1: (1, {"rootfs": 20})})
    with pytest.raises(InstallError, match=r"exists on ubi0, ubi1: set ubipartition.*nothing was written"):
        ubi.find_volume(_art("ubivol", volume="rootfs"), layout)
    with pytest.raises(InstallError, match=r"'kernel' not found on ubi.*nothing was written"):
        ubi.find_volume(_art("ubivol", volume="kernel", ubipartition="ubi"), layout)
    with pytest.raises(InstallError, match=r"no MTD partition 'nand9'"):
        ubi.find_volume(_art("ubivol", volume="rootfs", ubipartition="nand9"), layout)


def test_ubivol_too_big_for_the_volume_writes_nothing(tmp_path: Path) -> None:
    layout = _layout(tmp_path, {0: (0, {"rootfs": 1})})
    art = _art("ubivol", volume="rootfs", ubipartition="ubi")
    with pytest.raises(InstallError, match=r"does not fit UBI volume rootfs.*nothing was written"):
        ubi.install(art, _member(bytes(LEB + 1)), _call(tmp_path), layout)


def test_ubivol_length_needs_decompressed_size_when_compressed() -> None:
    stored = gzip.compress(b"x" * 5000)
    member = _member(stored)
    source = ArtifactSource(decompressing(member, Compression.ZLIB, "x"))
    art = _art("ubivol", volume="rootfs", compressed=Compression.ZLIB)
    with pytest.raises(InstallError, match=r"decompressed-size"):
        ubi.data_length(art, source)
    sized = _art("ubivol", volume="rootfs", compressed=Compression.ZLIB,
                 properties={"decompressed-size": "5000"})
    assert ubi.data_length(sized, source) == 5000
    assert ubi.data_length(_art("ubivol", volume="r"), ArtifactSource(_member(b"abc"))) == 3


def test_ubivol_update_feeds_exactly_the_announced_bytes(tmp_path: Path) -> None:
    """The volume node is a plain file here; ``UBI_IOCVOLUP`` fails on it, before any byte is written."""
    node = tmp_path / "ubi0_0"
    node.write_bytes(b"old")
    with pytest.raises(InstallError, match=r"UBI_IOCVOLUP.*nothing was written"):
        ubi.update(str(node), _art("ubivol", volume="r"), ArtifactSource(_member(b"new")), 3, _call(tmp_path))
    assert node.read_bytes() == b"old"


# --- partitions ---------------------------------------------------------------------------------------


def _device(volumes: dict[str, int], avail: int) -> ubicore.Device:
    vols = tuple(ubicore.Volume(0, i, name, lebs, LEB, 0, "dynamic", f"250:{i + 1}")
                 for i, (name, lebs) in enumerate(volumes.items()))
    return ubicore.Device(0, 4, LEB, avail, 1000, 2048, "250:0", vols)


def _entry(name: str, size: int, static: bool = False) -> UbiPartition:
    return UbiPartition(name, "ubi", size, f"software.partitions[{name}]", static)


def test_partitions_plan_creates_resizes_keeps_and_removes() -> None:
    dev = _device({"rootfs": 10, "data": 5, "old": 3}, avail=4)
    changes = ubi.plan_partitions([_entry("old", 0), _entry("rootfs", 12 * LEB), _entry("data", 5 * LEB),
                                   _entry("new", LEB + 1), _entry("gone", 0)], {"ubi": dev})
    assert [(c.action, c.entry.name, c.lebs, c.vol_id) for c in changes] == [
        ("remove", "old", 0, 2), ("resize", "rootfs", 12, 0), ("keep", "data", 5, 1),
        ("create", "new", 2, None), ("none", "gone", 0, None)]


def test_partitions_that_do_not_fit_are_refused_before_any_change() -> None:
    dev = _device({"rootfs": 10}, avail=4)
    with pytest.raises(InstallError, match=r"new: 5 eraseblocks wanted, ubi0 has 2 free.*nothing was"):
        ubi.plan_partitions([_entry("rootfs", 12 * LEB), _entry("new", 5 * LEB)], {"ubi": dev})


def test_static_partitions_are_refused() -> None:
    with pytest.raises(InstallError, match=r"static UBI volumes"):
        ubi.plan_partitions([_entry("rootfs", LEB, static=True)], {"ubi": _device({}, 10)})
