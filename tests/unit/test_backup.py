"""Config backup: the file list (reference 3.2) and /tmp/sysupgrade.tgz (reference 3.3)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sysupgrade import backup

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, path: str, text: str = "x\n") -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write(tmp_path, "/etc/sysupgrade.conf",
          "## comment\n\n   \n# /etc/commented\n/etc/extra.conf /etc/also.conf\n/etc/glob-*.txt\n"
          "/etc/missing-file\n/etc/nomatch-*.x\n")
    write(tmp_path, "/lib/upgrade/keep.d/base-files", "/etc/config/\n/etc/passwd\n")
    write(tmp_path, "/lib/upgrade/keep.d/other", "/etc/passwd\n/etc/dropbear\n")
    for path in ("/etc/extra.conf", "/etc/also.conf", "/etc/glob-a.txt", "/etc/glob-b.txt",
                 "/etc/glob-c.bin", "/etc/passwd", "/etc/config/network", "/etc/config/sub/wireless",
                 "/etc/notlisted"):
        write(tmp_path, path, f"content of {path}\n")
    (tmp_path / "etc/dropbear").mkdir()
    (tmp_path / "etc/dropbear/key").write_bytes(b"\x00secret")
    os.symlink("network", tmp_path / "etc/config/link-to-file")
    os.symlink("sub", tmp_path / "etc/config/link-to-dir")
    (tmp_path / "tmp").mkdir()
    return tmp_path


EXPECTED = [
    "/etc/also.conf", "/etc/config/link-to-dir", "/etc/config/link-to-file", "/etc/config/network",
    "/etc/config/sub/wireless", "/etc/dropbear/key", "/etc/extra.conf", "/etc/glob-a.txt",
    "/etc/glob-b.txt", "/etc/passwd",
]


def test_file_list(root: Path) -> None:
    assert backup.build_file_list(str(root)) == EXPECTED


def test_file_list_without_sources(tmp_path: Path) -> None:
    assert backup.build_file_list(str(tmp_path)) == []


def test_shipped_lists(tmp_path: Path) -> None:
    overlay = REPO / "rootfs-overlay"
    words = backup.read_words(str(overlay))
    assert words == ["/etc/config/",  # keep.d/base-files
                     "/etc/hosts", "/etc/inittab", "/etc/group", "/etc/passwd", "/etc/profile",
                     "/etc/shadow", "/etc/shells", "/etc/shinit", "/etc/sysctl.conf", "/etc/rc.local"]
    assert all(line.startswith("#") or not line.strip()
               for line in (overlay / "etc/sysupgrade.conf").read_text().splitlines())


def test_symlink_loops_are_not_followed(tmp_path: Path) -> None:
    write(tmp_path, "/etc/sysupgrade.conf", "/etc/loops/\n")
    loops = tmp_path / "etc/loops"
    loops.mkdir()
    os.symlink(".", loops / "self")
    os.symlink("b", loops / "a")
    os.symlink("a", loops / "b")
    os.symlink(str(loops), loops / "absolute")
    (tmp_path / "tmp").mkdir()
    assert backup.build_file_list(str(tmp_path)) == ["/etc/loops/a", "/etc/loops/absolute",
                                                     "/etc/loops/b", "/etc/loops/self"]
    result = backup.create_backup(str(tmp_path), say=lambda _line: None)
    with tarfile.open(result.path) as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {"etc/loops/a": "b", "etc/loops/b": "a", "etc/loops/self": ".",
                     "etc/loops/absolute": str(loops)}


def members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getmembers()


def read_member(path: str, name: str) -> bytes:
    with tarfile.open(path, "r:gz") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_archive(root: Path) -> None:
    write(root, "/etc/init.d/dropbear", "#!/bin/sh\n")
    write(root, "/etc/init.d/firewall", "#!/bin/sh\n")
    write(root, "/etc/init.d/uhttpd", "#!/bin/sh\n")
    (root / "etc/rc.d").mkdir()
    os.symlink("../init.d/dropbear", root / "etc/rc.d/S19dropbear")
    os.symlink("../init.d/firewall", root / "etc/rc.d/K90firewall")  # stop link only: disabled
    os.utime(root / "etc/rc.d", (1_700_000_000, 1_700_000_000))

    lines: list[str] = []
    result = backup.create_backup(str(root), say=lines.append)
    assert result.path == str(root / "tmp/sysupgrade.tgz")
    assert stat.S_IMODE(os.stat(result.path).st_mode) == 0o600
    assert result.added == EXPECTED and result.skipped == [] and lines == []

    infos = members(result.path)
    first = infos[0]
    assert first.name == "etc/uci-defaults/10_disable_services"
    assert (first.mode, first.uid, first.gid, first.uname, first.gname) == (0o644, 0, 0, "root", "root")
    assert first.mtime == 1_700_000_000 and first.isreg()
    assert read_member(result.path, first.name) == (
        b"/etc/init.d/firewall disable\n/etc/init.d/uhttpd disable\nexit 0\n")

    assert [m.name for m in infos[1:]] == [p.lstrip("/") for p in EXPECTED]
    for path in EXPECTED:
        member = next(m for m in infos if m.name == path.lstrip("/"))
        host = root / path.lstrip("/")
        if host.is_symlink():
            assert member.issym() and member.linkname == os.readlink(host)
        else:
            assert member.isreg() and read_member(result.path, member.name) == host.read_bytes()
    with open(result.path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"


def test_no_init_d_means_exit_0(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    result = backup.create_backup(str(tmp_path), files=[])
    assert read_member(result.path, backup.DISABLE_SERVICES_MEMBER) == b"exit 0\n"
    assert len(members(result.path)) == 1


def test_vanished_and_special_files_are_skipped(root: Path) -> None:
    os.mkfifo(root / "etc/fifo")  # would block a naive open()
    lines: list[str] = []
    files = ["/etc/passwd", "/etc/vanished", "/etc/fifo", "/etc/extra.conf"]
    result = backup.create_backup(str(root), files=files, say=lines.append)
    assert result.added == ["/etc/passwd", "/etc/extra.conf"]
    assert result.skipped == [("/etc/vanished", "vanished"),
                              ("/etc/fifo", "no longer a regular file or symlink")]
    assert lines == ["Warning: /etc/vanished skipped from the backup: vanished",
                     "Warning: /etc/fifo skipped from the backup: no longer a regular file or symlink"]
    assert [m.name for m in members(result.path)][1:] == ["etc/passwd", "etc/extra.conf"]


def test_shrinking_file_is_padded() -> None:
    reader = backup._ExactReader(io.BytesIO(b"abc"), 6)
    assert reader.read(4) + reader.read(4) + reader.read(4) == b"abc\0\0\0"
    assert reader.padded == 3
    grown = backup._ExactReader(io.BytesIO(b"abcdef"), 2)
    assert grown.read() == b"ab" and grown.read() == b""


def test_failed_archive_leaves_nothing(root: Path) -> None:
    dest = root / "no-such-dir" / "sysupgrade.tgz"
    with pytest.raises(backup.BackupError, match=r"^Failed to create the configuration backup\."):
        backup.create_backup(str(root), dest=str(dest))
    assert not dest.parent.exists()


def test_failed_archive_replaces_nothing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = write(root, "/tmp/sysupgrade.tgz", "old")

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup, "_add_path", broken)
    with pytest.raises(backup.BackupError):
        backup.create_backup(str(root))
    assert old.read_text() == "old"
    assert sorted(p.name for p in old.parent.iterdir()) == ["sysupgrade.tgz"]
