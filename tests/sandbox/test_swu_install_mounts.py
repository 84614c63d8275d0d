"""Handlers that mount (``files``/``archive`` with ``device`` and ``filesystem``) and ``raw`` on a loop
device at an offset, through the real description parser and installer."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from swu_corpus import cpio_bytes

from swu import cli
from wrtcore import loop

pytestmark = pytest.mark.sandbox

MiB = 1 << 20


@pytest.fixture
def ext4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control (loop devices)")
    backing = tmp_path / "data.img"
    with open(backing, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(backing)], check=True)
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    dev = loop.attach(str(backing))
    try:
        yield dev
    finally:
        loop.detach(dev)


@contextlib.contextmanager
def mounted(dev: str) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="swu-check-"))
    subprocess.run(["mount", "-t", "ext4", dev, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


def _bundle(path: Path, members: list[tuple[str, bytes]], description: bytes) -> Path:
    path.write_bytes(cpio_bytes([("sw-description", description), *members]))
    return path


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("usr/bin/tool")
        data = b"#!/bin/sh\necho tool\n"
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o4750, 1234, 567, 1_500_000_000
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_files_and_archive_on_a_mounted_device(ext4: str, tmp_path: Path) -> None:
    conf, tgz = b"answer=42\n", _tar()
    desc = f"""software = {{
  version = "1"; hardware-compatibility = ["1.0"];
  files = (
    {{ filename = "app.conf"; path = "/etc/app/app.conf"; device = "{ext4}"; filesystem = "ext4";
       sha256 = "{_sha(conf)}"; properties = {{ create-destination = "true"; }}; }},
    {{ filename = "rootfs.tgz"; type = "archive"; path = "/"; device = "{ext4}"; filesystem = "ext4";
       preserve-attributes = true; sha256 = "{_sha(tgz)}"; }}
  );
}};""".encode()
    bundle = _bundle(tmp_path / "f.swu", [("app.conf", conf), ("rootfs.tgz", tgz)], desc)
    assert cli.main(["-i", str(bundle), "-H", "b:1.0", "--sw-versions-file", str(tmp_path / "v")]) == 0
    with mounted(ext4) as root:
        assert (root / "etc/app/app.conf").read_bytes() == conf
        st = os.stat(root / "usr/bin/tool")
        attrs = (st.st_uid, st.st_gid, st.st_mode & 0o7777, int(st.st_mtime))
        assert attrs == (1234, 567, 0o4750, 1_500_000_000)
    assert os.listdir(tmp_path / "scratch") == []  # the mount point and work directory are gone


def test_file_without_destination_directory_is_refused_and_unmounted(ext4: str, tmp_path: Path) -> None:
    conf = b"x\n"
    desc = f"""software = {{ version = "1"; hardware-compatibility = ["1.0"];
  files = ( {{ filename = "c"; path = "/missing/dir/c"; device = "{ext4}"; filesystem = "ext4";
               sha256 = "{_sha(conf)}"; }} ); }};""".encode()
    bundle = _bundle(tmp_path / "f.swu", [("c", conf)], desc)
    assert cli.main(["-i", str(bundle), "-H", "b:1.0", "--sw-versions-file", str(tmp_path / "v")]) == 1
    with mounted(ext4) as root:  # mountable again: the installer's mount is gone
        assert not (root / "missing").exists()


def test_raw_at_offset_on_a_loop_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\x55" * (8 * MiB))
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    image = os.urandom(3 * MiB + 512)
    dev = loop.attach(str(backing))
    try:
        desc = f"""software = {{ version = "1"; hardware-compatibility = ["1.0"];
  images = ( {{ filename = "k.img"; device = "{dev}"; offset = "1M"; sha256 = "{_sha(image)}"; }} ); }};"""
        bundle = _bundle(tmp_path / "r.swu", [("k.img", image)], desc.encode())
        assert cli.main(["-i", str(bundle), "-H", "b:1.0", "--sw-versions-file", str(tmp_path / "v")]) == 0
    finally:
        loop.detach(dev)
    content = backing.read_bytes()
    assert content[:MiB] == b"\x55" * MiB
    assert content[MiB:MiB + len(image)] == image
    assert content[MiB + len(image):] == b"\x55" * (len(content) - MiB - len(image))
