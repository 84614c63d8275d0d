"""x86 partition-by-partition writes: the decision, PARTUUID prefixes and grub.cfg's fix
(stage2.platforms.x86)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from sandbox.disk import mbr
from stage2.platforms import x86
from sysupgrade.platform_x86 import GPT_DISK_GUID_OFFSET

MIB = 1 << 20
PARTS = [(MIB, 8 * MIB), (9 * MIB, 64 * MIB)]


def head(signature: int = 0x5EED0001, parts: list[tuple[int, int]] = PARTS) -> bytes:
    return mbr(signature, parts).ljust(x86.HEAD_BYTES, b"\0")


def gpt_head(guid: uuid.UUID) -> bytes:
    raw = bytearray(head(0, []))
    raw[512:520] = b"EFI PART"
    raw[GPT_DISK_GUID_OFFSET:GPT_DISK_GUID_OFFSET + 16] = guid.bytes_le
    entry = 0x400
    raw[entry:entry + 16] = uuid.uuid4().bytes_le
    struct.pack_into("<QQ", raw, entry + 32, 2048, 4095)
    return bytes(raw)


def test_unchanged_layout_is_written_partition_by_partition() -> None:
    disk = head(0x12345678, [*PARTS, (80 * MIB, 10 * MIB)])  # the disk has a third partition of its own
    plan = x86.plan_disk(save_partitions=True, disk_head=disk, image_head=head(), compressed=False)
    assert not plan.whole
    assert plan.parts == (x86.PartWrite(1, MIB, 8 * MIB), x86.PartWrite(2, 9 * MIB, 64 * MIB))
    assert (plan.image_partuuid, plan.disk_partuuid) == ("5eed0001-", "12345678-")
    assert any("fix grub.cfg" in line for line in plan.describe())


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"save_partitions": False}, "sysupgrade -p"),
    ({"compressed": True}, "compressed image"),
    ({"image_head": head(parts=[(MIB, 8 * MIB), (9 * MIB, 65 * MIB)])}, "Partition layout has changed"),
    ({"disk_head": bytes(x86.HEAD_BYTES)}, "Invalid partition table on the boot disk"),
    ({"image_head": bytes(x86.HEAD_BYTES)}, "Invalid partition table in the image"),
])
def test_otherwise_the_whole_disk(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"save_partitions": True, "disk_head": head(), "image_head": head(),
                               "compressed": False, **kwargs}
    plan = x86.plan_disk(**args)  # type: ignore[arg-type]
    assert plan.whole and reason in plan.reason
    assert plan.describe() == [f"write the whole image over the disk ({plan.reason})"]


def test_gpt_prefix_is_the_disk_guid_without_its_last_byte() -> None:
    guid = uuid.UUID("01234567-89ab-cdef-0123-456789abcd00")
    assert x86.partuuid_prefix(gpt_head(guid)) == "01234567-89ab-cdef-0123-456789abcd"


def test_fix_partuuid() -> None:
    cfg = ('menuentry "OpenWrt" {\n  linux /boot/vmlinuz root=PARTUUID=5EED0001-02 rootwait\n}\n'
           'menuentry "failsafe" {\n  linux /boot/vmlinuz failsafe=true root=PARTUUID=5eed0001-02\n}\n')
    fixed = x86.fix_partuuid(cfg, "5eed0001-", "12345678-")
    assert fixed.count("root=PARTUUID=12345678-02") == 2 and "5eed" not in fixed.lower()
    assert x86.fix_partuuid(cfg, "5eed0001-", "5EED0001-") == cfg


def test_same_bytes(tmp_path: Path) -> None:
    image, dev = tmp_path / "image", tmp_path / "dev"
    image.write_bytes(b"\0" * 100 + b"A" * 3 * MIB)
    dev.write_bytes(b"A" * 3 * MIB)
    assert x86.same_bytes(str(image), 100, str(dev), 3 * MIB)
    dev.write_bytes(b"A" * (2 * MIB + 5) + b"B" + b"A" * (MIB - 6))
    assert not x86.same_bytes(str(image), 100, str(dev), 3 * MIB)
