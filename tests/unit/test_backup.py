"""Config backup: the file list (reference 3.2) and /tmp/sysupgrade.tgz (reference 3.3)."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from sysupgrade import backup, backup_list

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
    assert backup_list.build_file_list(str(root)) == EXPECTED


def test_file_list_without_sources(tmp_path: Path) -> None:
    assert backup_list.build_file_list(str(tmp_path)) == []


def test_shipped_lists(tmp_path: Path) -> None:
    overlay = REPO / "rootfs-overlay"
    words = backup_list.read_words(str(overlay))
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
    assert backup_list.build_file_list(str(tmp_path)) == ["/etc/loops/a", "/etc/loops/absolute",
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


def test_failed_archive_leaves_nothing(root: Path) -> None:
    dest = root / "no-such-dir" / "sysupgrade.tgz"
    with pytest.raises(backup.BackupError, match=r"^Failed to create the configuration backup\."):
        backup.create_backup(str(root), dest=str(dest))
    assert not dest.parent.exists()


def test_failed_archive_replaces_nothing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = write(root, "/tmp/sysupgrade.tgz", "old")

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup.TarWriter, "add_path", broken)
    with pytest.raises(backup.BackupError):
        backup.create_backup(str(root))
    assert old.read_text() == "old"
    assert sorted(p.name for p in old.parent.iterdir()) == ["sysupgrade.tgz"]


def test_shrinking_file_is_padded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = os.read
    victim = root / "etc/passwd"
    size = victim.stat().st_size

    def read_after_truncate(fd: int, n: int) -> bytes:
        if os.path.samestat(os.fstat(fd), os.stat(victim)) and os.fstat(fd).st_size == size:
            os.truncate(victim, 3)  # shrinks after its header was written
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read_after_truncate)
    lines: list[str] = []
    result = backup.create_backup(str(root), files=["/etc/passwd"], say=lines.append)
    assert lines == [f"Warning: /etc/passwd shrank while it was archived; padded with {size - 3} zero bytes"]
    assert read_member(result.path, "etc/passwd") == b"con" + bytes(size - 3)


def test_unreadable_file_fails_the_backup(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refuse(path: str, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith("etc/passwd"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(backup.BackupError) as exc:
        backup.create_backup(str(root), files=["/etc/extra.conf", "/etc/passwd"])
    assert exc.value.hint == "[Errno 13] /etc/passwd: Permission denied"
    assert sorted(p.name for p in (root / "tmp").iterdir()) == []


def test_hard_links_and_long_names(root: Path) -> None:
    long_dir = root / "etc" / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / "file").write_text("long\n")
    os.link(root / "etc/passwd", root / "etc/passwd-hardlink")
    long_name = "/" + str((long_dir / "file").relative_to(root))
    result = backup.create_backup(str(root), files=["/etc/passwd", "/etc/passwd-hardlink", long_name])
    infos = {m.name: m for m in members(result.path)}
    assert infos["etc/passwd-hardlink"].islnk() and infos["etc/passwd-hardlink"].linkname == "etc/passwd"
    assert read_member(result.path, long_name.lstrip("/")) == b"long\n"


def test_gzip_level_6(root: Path) -> None:
    result = backup.create_backup(str(root))
    with open(result.path, "rb") as f:
        head = f.read(10)
    assert head[:3] == b"\x1f\x8b\x08" and head[8] == 0  # XFL 0: neither level 9 (2) nor fast (4)
    assert backup.GZIP_LEVEL == 6
    with gzip.open(result.path) as f:
        assert len(f.read()) % tarfile.RECORDSIZE == 0  # padded to whole records, as tar does


def test_compressor_failure_is_a_backup_error(root: Path) -> None:
    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

    with pytest.raises(backup.BackupError, match="configuration backup"):
        backup.write_backup(Full(), str(root), EXPECTED * 200, [], print)  # type: ignore[arg-type]


def test_installed_packages_member(root: Path) -> None:
    write(root, "/usr/lib/opkg/info/dropbear.control", "Package: dropbear\n")
    write(root, "/rom/usr/lib/opkg/info/dropbear.control", "Package: dropbear\n")
    result = backup.create_backup(str(root), selection=backup_list.Selection(installed_packages=True))
    names = [m.name for m in members(result.path)]
    assert names[:3] == [backup.DISABLE_SERVICES_MEMBER, "etc/backup/installed_packages.txt", "etc/also.conf"]
    assert read_member(result.path, "etc/backup/installed_packages.txt") == b"dropbear\trom\n"


def test_gnu_tar_extracts_the_same_files(root: Path, tmp_path: Path) -> None:
    result = backup.create_backup(str(root))
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["tar", "xzf", result.path, "-C", str(out)], check=True)
    for path in EXPECTED:
        rel = path.lstrip("/")
        if (root / rel).is_symlink():
            assert os.readlink(out / rel) == os.readlink(root / rel)
        else:
            assert (out / rel).read_bytes() == (root / rel).read_bytes()
            assert stat.S_IMODE((out / rel).stat().st_mode) == stat.S_IMODE((root / rel).stat().st_mode)
    assert (out / backup.DISABLE_SERVICES_MEMBER).read_bytes() == b"exit 0\n"


def test_same_as_rom(tmp_path: Path) -> None:
    write(tmp_path, "/etc/same", "x\n")
    write(tmp_path, "/rom/etc/same", "x\n")
    write(tmp_path, "/etc/differs", "x\n")
    write(tmp_path, "/rom/etc/differs", "y\n")
    write(tmp_path, "/etc/longer", "x\n")
    write(tmp_path, "/rom/etc/longer", "x\n\n")
    write(tmp_path, "/etc/only-here", "x\n")
    os.symlink("same", tmp_path / "etc/link")
    os.symlink("same", tmp_path / "rom/etc/link")
    os.symlink("loop", tmp_path / "etc/loop")
    assert backup_list.same_as_rom(str(tmp_path), "/etc/same")
    assert backup_list.same_as_rom(str(tmp_path), "/etc/link")
    for path in ("/etc/differs", "/etc/longer", "/etc/only-here", "/etc/loop", "/etc"):
        assert not backup_list.same_as_rom(str(tmp_path), path), path


MOUNTINFO = """\
1 0 0:2 / / rw - rootfs rootfs rw
20 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 20 0:30 / /srv rw - tmpfs tmpfs rw
31 30 8:2 / /srv/disk rw - xfs /dev/sda2 rw
32 20 0:31 / /srv/disk rw - btrfs /dev/sda3 rw
"""


@pytest.mark.parametrize(("root_dir", "expected"), [
    ("/", "ext4"), ("/home/x", "ext4"), ("/srv", "tmpfs"), ("/srv/other", "tmpfs"),
    ("/srv/disk/a", "btrfs"), ("/srvx", "ext4"),
])
def test_rootfs_type(tmp_path: Path, root_dir: str, expected: str) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    assert backup_list.rootfs_type(root_dir, str(table)) == expected


def test_rootfs_type_of_a_ramdisk_and_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "mountinfo"
    table.write_text("1 0 0:2 / / rw - rootfs rootfs rw\n2 1 0:3 / / rw - tmpfs tmpfs rw\n")
    monkeypatch.setenv("WRT_MOUNTINFO", str(table))
    assert backup_list.rootfs_type("/") == "tmpfs"
    table.write_text("1 0 0:2 / / rw - rootfs rootfs rw\n")
    assert backup_list.rootfs_type("/") is None
    assert backup_list.rootfs_type("/", str(tmp_path / "missing")) is None
    monkeypatch.delenv("WRT_MOUNTINFO")
    assert backup_list.rootfs_type("/") is not None  # the real /proc/self/mountinfo


def test_dest_that_cannot_be_written(root: Path) -> None:
    (root / "tmp/sysupgrade.tgz").mkdir()
    with pytest.raises(backup.BackupError):
        backup.create_backup(str(root))
    assert (root / "tmp/sysupgrade.tgz").is_dir()
    shutil.rmtree(root / "tmp/sysupgrade.tgz")
