"""mount_root's pure-ish helpers on files in tmp_path: what rootfs_data holds, the pending wipe, the state."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from preinit.mount_root import (
    PENDING,
    READY,
    STATE_LINK,
    _state,
    identify,
    set_state,
    unpack_targz,
    wipe_pending,
)


def image(tmp_path: Path, head: bytes, size: int = 64 * 1024) -> str:
    path = tmp_path / "rootfs_data"
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(max(size, len(head)))
    return str(path)


def ext4_magic_at_1080() -> bytes:
    sb = bytearray(2048)
    sb[1080:1082] = b"\x53\xef"
    return bytes(sb)


@pytest.mark.parametrize(("head", "kind"), [
    (ext4_magic_at_1080(), "ext4"),
    (b"\xde\xad\xc0\xde" + b"\xff" * 60, "deadcode"),   # what mtd -j / a fresh jffs2 erase leaves
    (gzip.compress(b"config"), "targz"),              # an appended sysupgrade.tgz
    (b"", "none"),                                     # zeros from a fresh flash
    (b"\x53\xef" + bytes(2046), "none"),               # the magic, but not at 1080
    (bytes(1080) + b"\xef\x53", "none"),               # byte-swapped magic
    (b"\xde\xad\xc0", "none"),
    (b"\x85\x19\x03\x20" + bytes(60), "jffs2"),     # clean marker, little-endian flash
    (b"\x19\x85\x20\x03" + bytes(60), "jffs2"),     # big-endian flash
    (bytes(1024) + b"\x10\x20\xf5\xf2", "f2fs"),     # F2FS_SUPER_MAGIC at 1024
    (bytes(1024) + b"\xf2\xf5\x20\x10", "none"),     # the f2fs magic byte-swapped
], ids=["ext4", "deadc0de", "gzip", "zeros", "magic-at-0", "swapped-magic", "short-deadc0de", "jffs2-le",
        "jffs2-be", "f2fs", "f2fs-swapped"])
def test_identify(tmp_path: Path, head: bytes, kind: str) -> None:
    assert identify(image(tmp_path, head)) == kind


def test_identify_a_file_shorter_than_the_superblock(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\x00" * 1081)
    assert identify(str(path)) == "none"
    path.write_bytes(b"")
    assert identify(str(path)) == "none"


def test_identify_a_real_ext4(tmp_path: Path) -> None:
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
    assert mkfs, "mkfs.ext4 not found: install e2fsprogs (apt-get install e2fsprogs)"
    path = image(tmp_path, b"", 4 << 20)
    subprocess.run([mkfs, "-q", "-F", "-L", "rootfs_data", path], check=True, capture_output=True)
    assert identify(path) == "ext4"


def test_identify_a_missing_device_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        identify(str(tmp_path / "missing"))


# --- the overlay's state link ------------------------------------------------------------------------


def test_state_values_are_fstools() -> None:
    assert (STATE_LINK, PENDING, READY) == (".fs_state", "1", "2")


def test_set_state_writes_a_symlink_and_replaces_it(tmp_path: Path) -> None:
    assert _state(str(tmp_path)) is None
    set_state(str(tmp_path), PENDING)
    assert os.readlink(tmp_path / ".fs_state") == "1"
    assert _state(str(tmp_path)) == PENDING
    set_state(str(tmp_path), READY)
    assert os.readlink(tmp_path / ".fs_state") == "2"
    assert _state(str(tmp_path)) == READY


def test_state_of_a_regular_file_is_unknown_and_set_state_replaces_it(tmp_path: Path) -> None:
    (tmp_path / ".fs_state").write_text("2")
    assert _state(str(tmp_path)) is None
    set_state(str(tmp_path), PENDING)
    assert (tmp_path / ".fs_state").is_symlink() and _state(str(tmp_path)) == PENDING


def test_state_of_a_missing_overlay(tmp_path: Path) -> None:
    assert _state(str(tmp_path / "nowhere")) is None


# --- the pending wipe --------------------------------------------------------------------------------


def test_wipe_pending_keeps_only_sysupgrade_tgz(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep-me").write_text("outside the overlay\n")
    files = {
        "upper/etc/config/network": "config\n",
        "upper/etc/.hidden": "x",
        "upper/sysupgrade.tgz": "archive-in-upper",
        "sysupgrade.tgz": "archive",
        "upper/deep/down/sysupgrade.tgz": "deep archive",
        "upper/sysupgrade.tgz.bak": "not the name",
        "work/work/#1": "",
    }
    for rel, text in files.items():
        (overlay / rel).parent.mkdir(parents=True, exist_ok=True)
        (overlay / rel).write_text(text)
    (overlay / "upper/empty").mkdir()
    os.symlink(outside, overlay / "upper/link-to-dir")
    os.symlink(outside / "keep-me", overlay / "upper/link-to-file")
    os.symlink("/nonexistent", overlay / "upper/dangling")
    set_state(str(overlay), PENDING)

    wipe_pending(str(overlay))

    left = sorted(str(p.relative_to(overlay)) for p in overlay.rglob("*"))
    assert left == ["sysupgrade.tgz", "upper", "upper/deep", "upper/deep/down",
                    "upper/deep/down/sysupgrade.tgz", "upper/sysupgrade.tgz"]
    assert (overlay / "upper/sysupgrade.tgz").read_text() == "archive-in-upper"
    assert (overlay / "sysupgrade.tgz").read_text() == "archive"
    assert _state(str(overlay)) is None  # the state link went too: the caller sets it again
    # links were removed, never followed
    assert (outside / "keep-me").read_text() == "outside the overlay\n"


def test_wipe_pending_on_an_empty_overlay(tmp_path: Path) -> None:
    wipe_pending(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    assert tmp_path.is_dir()  # the overlay itself stays


# --- eMMC's config archive at the start of rootfs_data ---------------------------------------------------


@pytest.mark.parametrize("padding", [bytes(4096), b"\xff" * 4096, b"\xde\xad\xc0\xde" * 1024],
                         ids=["zeros", "erased", "deadc0de"])
def test_unpack_targz_takes_the_stream_and_ignores_what_follows(tmp_path: Path, padding: bytes) -> None:
    tar = os.urandom(300_000)  # incompressible: the stream spans several reads
    dev = image(tmp_path, gzip.compress(tar) + padding, 1 << 20)
    dest = tmp_path / "sysupgrade.tar"
    assert unpack_targz(dev, str(dest)) == len(tar)
    assert dest.read_bytes() == tar
    assert identify(dev) == "targz"


def test_unpack_targz_refuses_a_cut_stream_and_writes_nothing(tmp_path: Path) -> None:
    whole = gzip.compress(os.urandom(100_000))
    path = tmp_path / "cut"
    path.write_bytes(whole[:50_000])
    dest = tmp_path / "sysupgrade.tar"
    with pytest.raises(ValueError, match="cut short"):
        unpack_targz(str(path), str(dest))
    assert not dest.exists()


def test_unpack_targz_refuses_a_bomb(tmp_path: Path) -> None:
    dev = image(tmp_path, gzip.compress(bytes(5 << 20)), 1 << 20)
    with pytest.raises(ValueError, match="over 1048576 bytes"):
        unpack_targz(dev, str(tmp_path / "out.tar"), limit=1 << 20)
    assert not (tmp_path / "out.tar").exists()
