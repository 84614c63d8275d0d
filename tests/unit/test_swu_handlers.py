"""Each handler on plain files and directories (no root): what it writes, what it refuses, whether a
failure says bytes were written."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from swu.cpio import MemberHeader, MemberReader
from swu.decompress import decompressing
from swu.handlers import archive, bootloader, mtd, raw, rawfile, scripts
from swu.handlers.base import Call, InstallError, Settings
from swu.model import Artifact, Compression, Section


def _member(data: bytes, sha256: str | None = None, name: str = "img") -> MemberReader:
    reader = MemberReader(io.BytesIO(data), MemberHeader(name, len(data), 0o100644, 0, 0, False, 0))
    if sha256:
        reader.expect_sha256(sha256)
    return reader


def _call(tmp_path: Path, member: MemberReader | None = None) -> Call:
    return Call(Settings(tmpdir=str(tmp_path)), None, member.skip if member else (lambda: None))


def _art(handler: str, section: Section = Section.IMAGES, filename: str = "img", **kw: object) -> Artifact:
    return Artifact(section=section, where="software.images[0]", filename=filename,
                    handler=handler, **kw)  # type: ignore[arg-type]


def test_raw_writes_at_offset_and_leaves_the_rest(tmp_path: Path) -> None:
    target = tmp_path / "disk.img"
    target.write_bytes(b"\xaa" * (3 << 20))
    data = os.urandom((1 << 20) + 123)
    art = _art("raw", device=str(target), offset=4096)
    result = raw.install(art, _member(data), _call(tmp_path))
    content = target.read_bytes()
    assert result.written == len(data)
    assert content[4096:4096 + len(data)] == data
    assert content[:4096] == b"\xaa" * 4096
    assert content[4096 + len(data):] == b"\xaa" * (len(content) - 4096 - len(data))


@pytest.mark.parametrize("method", [Compression.ZLIB, Compression.ZSTD])
def test_raw_decompresses(tmp_path: Path, method: Compression) -> None:
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    data = os.urandom(300_000) + bytes(3 << 20)
    stored = gzip.compress(data) if method is Compression.ZLIB else zstandard.ZstdCompressor().compress(data)
    art = _art("raw", device=str(target), compressed=method)
    member = _member(stored, hashlib.sha256(stored).hexdigest())
    raw.install(art, decompressing(member, method, "x"), _call(tmp_path, member))
    assert target.read_bytes() == data


def test_raw_sha256_mismatch_mid_stream_reports_written(tmp_path: Path) -> None:
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    data = os.urandom(3 << 20)
    with pytest.raises(InstallError, match=r"HASH mismatch.*bytes were written") as info:
        raw.install(_art("raw", device=str(target)), _member(data, "00" * 32), _call(tmp_path))
    assert info.value.written


def test_raw_sha256_mismatch_in_first_chunk_of_small_file(tmp_path: Path) -> None:
    target = tmp_path / "disk.img"
    target.write_bytes(b"")
    with pytest.raises(InstallError, match=r"HASH mismatch.*nothing was written") as info:
        raw.install(_art("raw", device=str(target)), _member(b"tiny", "00" * 32), _call(tmp_path))
    assert not info.value.written
    assert target.read_bytes() == b""


def test_raw_missing_device(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"nothing was written"):
        raw.install(_art("raw", device=str(tmp_path / "nope")), _member(b"x"), _call(tmp_path))


def test_rawfile_needs_destination_dir_unless_create_destination(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "dir" / "file.txt"
    with pytest.raises(InstallError, match=r"does not exist"):
        rawfile.install(_art("rawfile", path=str(dest)), _member(b"hello"), _call(tmp_path))
    member = _member(b"hello")
    rawfile.install(_art("rawfile", path=str(dest), create_destination=True), member, _call(tmp_path, member))
    assert dest.read_bytes() == b"hello"


def test_rawfile_bad_hash_keeps_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "file.txt"
    dest.write_bytes(b"old")
    member = _member(b"new content", "11" * 32)
    with pytest.raises(InstallError, match=r"HASH mismatch.*nothing was written"):
        rawfile.install(_art("rawfile", path=str(dest)), member, _call(tmp_path, member))
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_000_000
    return info, data


def test_archive_extracts_with_preserve_attributes(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    dest.mkdir()
    blob = _tar([_file("bin/tool", b"#!/bin/sh\n", 0o4755), _file("etc/conf", b"x=1\n")])
    member = _member(blob)
    result = archive.install(_art("archive", path=str(dest), preserve_attributes=True), member,
                             _call(tmp_path, member))
    assert result.written == 2
    st = os.stat(dest / "bin/tool")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert int(st.st_mtime) == 1_000_000
    assert (dest / "etc/conf").read_bytes() == b"x=1\n"


def test_archive_without_preserve_drops_setuid(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    dest.mkdir()
    member = _member(_tar([_file("tool", b"x", 0o4777)]))
    archive.install(_art("tar", path=str(dest)), member, _call(tmp_path, member))
    assert stat.S_IMODE(os.stat(dest / "tool").st_mode) == 0o755


@pytest.mark.parametrize("bad", ["../escape", "a/../../escape"])
def test_archive_member_that_escapes_is_refused(tmp_path: Path, bad: str) -> None:
    dest = tmp_path / "root"
    dest.mkdir()
    member = _member(_tar([_file(bad, b"evil")]))
    with pytest.raises(InstallError, match=r"escapes the destination.*0 members"):
        archive.install(_art("archive", path=str(dest)), member, _call(tmp_path, member))
    assert not (tmp_path / "escape").exists()


def test_archive_symlink_then_member_through_it_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    dest.mkdir()
    (tmp_path / "outside").mkdir()
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
    member = _member(_tar([(link, None), _file("link/pwned", b"evil")]))
    with pytest.raises(InstallError, match=r"escapes the destination.*1 members extracted"):
        archive.install(_art("archive", path=str(dest)), member, _call(tmp_path, member))
    assert not (tmp_path / "outside" / "pwned").exists()


def test_archive_hardlink_outside_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    dest.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("s")
    hard = tarfile.TarInfo("h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../secret"
    member = _member(_tar([(hard, None)]))
    with pytest.raises(InstallError, match=r"hard link|escapes"):
        archive.install(_art("archive", path=str(dest)), member, _call(tmp_path, member))
    assert not (dest / "h").exists()


def test_archive_garbage_is_a_clear_error(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    dest.mkdir()
    with pytest.raises(InstallError, match=r"bad tar stream"):
        archive.install(_art("archive", path=str(dest)), _member(os.urandom(2000)), _call(tmp_path))


def test_bootloader_file_is_deferred(tmp_path: Path) -> None:
    member = _member(b"# env\nslot=b\nupgrade_available=1\nold=\n")
    result = bootloader.install(_art("bootloader", section=Section.BOOTENV), member, _call(tmp_path, member))
    assert result.env_changes == (("slot", "b"), ("upgrade_available", "1"), ("old", None))


def test_flash_to_a_missing_mtd_partition_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"Could not open mtd device: no-such-label.*nothing was written"):
        mtd.install(_art("flash", mtdname="no-such-label"), _member(b"x"), _call(tmp_path))


def _spooled(tmp_path: Path, handler: str, body: bytes, **kw: object) -> scripts.Script:
    art = _art(handler, section=Section.SCRIPTS, filename=f"s-{handler}", **kw)
    member = _member(body)
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return scripts.spool(art, member, _call(tmp_path, member), str(workdir))


def test_shellscript_gets_phase_and_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = _spooled(tmp_path, "shellscript", f'echo "$@" >> {out}\n'.encode(), data="extra")
    scripts.run_script(script, scripts.Phase.PRE)
    scripts.run_script(script, scripts.Phase.POST)
    assert out.read_text() == "preinst extra\npostinst extra\n"


def test_failing_script_stops(tmp_path: Path) -> None:
    script = _spooled(tmp_path, "preinstall", b"#!/bin/sh\nexit 3\n")
    with pytest.raises(InstallError, match=r"exit status 3"):
        scripts.run_script(script, scripts.Phase.PRE)


def test_lua_script_phases(tmp_path: Path) -> None:
    body = b"function preinst() return true end\nfunction postinst() return false end\n"
    ok = _spooled(tmp_path, "lua", body)
    scripts.run_script(ok, scripts.Phase.PRE)
    with pytest.raises(InstallError, match=r"returned failure"):
        scripts.run_script(ok, scripts.Phase.POST)


def test_script_phases() -> None:
    assert scripts.runs_in("preinstall", scripts.Phase.PRE)
    assert not scripts.runs_in("preinstall", scripts.Phase.POST)
    assert scripts.runs_in("postinstall", scripts.Phase.POST)
    assert scripts.runs_in("shellscript", scripts.Phase.PRE) and scripts.runs_in("lua", scripts.Phase.POST)
