"""Package records: opkg's status and file lists, apk's conffiles_static (reference 3.2)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sysupgrade import conffiles
from sysupgrade.conffiles import Conffile, Package

STATUS = """\
Package: base-files
Version: 1700-r1
Depends: libc, netifd
Status: install user installed
Architecture: x86_64
Conffiles:
 /etc/config/system 0123abcd
 /etc/hosts   ABCDEF
 /etc/no-checksum
Installed-Time: 1700000000

Package: busybox
Alternatives: 200:/usr/bin/vi:/bin/busybox, 300:/bin/sh:/bin/busybox
Description: a long
 description spanning lines: /not/a/conffile 123

Package: last-without-blank-line
Conffiles:
 /etc/config/last 99"""


def test_parse_status() -> None:
    assert conffiles.parse_status(STATUS) == [
        Package("base-files", (Conffile("/etc/config/system", "0123abcd"), Conffile("/etc/hosts", "ABCDEF"),
                               Conffile("/etc/no-checksum", ""))),
        Package("busybox", (), ("/usr/bin/vi", "/bin/sh")),
        Package("last-without-blank-line", (Conffile("/etc/config/last", "99"),)),
    ]


def test_parse_status_empty() -> None:
    assert conffiles.parse_status("") == []
    assert conffiles.parse_status("\n\n garbage\nnot a field\n") == []


def test_parse_conffiles_static() -> None:
    text = "/etc/config/uhttpd 5d41\n\n/etc/uhttpd.key\n"
    assert conffiles.parse_conffiles_static(text) == [Conffile("/etc/config/uhttpd", "5d41"),
                                                      Conffile("/etc/uhttpd.key", "")]


def test_parse_alternatives() -> None:
    links = ["/usr/bin/a", "/usr/bin/b"]
    assert conffiles.parse_alternatives("100:/usr/bin/a:/x, 200:/usr/bin/b:/y") == links
    assert conffiles.parse_alternatives("100:/usr/bin/a:/x 200:/usr/bin/b:/y\n") == links
    assert conffiles.parse_alternatives("broken ::x") == []


def test_parse_file_list() -> None:
    assert conffiles.parse_file_list("/usr/bin/a\n/usr/bin/b\t0755\n\n") == ["/usr/bin/a", "/usr/bin/b"]


def test_checksum_matches() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert conffiles.checksum_matches(digest, digest)
    assert conffiles.checksum_matches(digest.upper(), digest)
    assert not conffiles.checksum_matches(digest[:32], digest)  # an md5-sized record
    assert not conffiles.checksum_matches("", digest)


def write(root: Path, path: str, data: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(data)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_changed_conffiles(tmp_path: Path) -> None:
    write(tmp_path, "/etc/same", "same\n")
    write(tmp_path, "/etc/edited", "edited\n")
    (tmp_path / "etc/a-directory").mkdir()  # unreadable as a file: not listed, like `[ -r ]`
    os.symlink("same", tmp_path / "etc/link-to-same")  # followed, as sha256sum does
    same, original = sha("same\n"), sha("original\n")
    write(tmp_path, "/usr/lib/opkg/status",
          f"Package: p\nConffiles:\n /etc/same {same}\n /etc/edited {original}\n /etc/missing {original}\n"
          f" /etc/a-directory {original}\n /etc/link-to-same {same}\n")
    write(tmp_path, "/lib/apk/packages/q.conffiles_static", f"/etc/apk-edited {original}\n/etc/same {same}\n")
    write(tmp_path, "/etc/apk-edited", "changed\n")
    write(tmp_path, "/lib/apk/packages/q.conffiles", "/etc/not-read\n")
    assert conffiles.changed_conffiles(str(tmp_path)) == ["/etc/apk-edited", "/etc/edited"]
    assert conffiles.conffile_paths(str(tmp_path)) == {
        "/etc/same", "/etc/edited", "/etc/missing", "/etc/a-directory", "/etc/link-to-same",
        "/etc/apk-edited"}


def test_no_package_manager(tmp_path: Path) -> None:
    assert conffiles.changed_conffiles(str(tmp_path)) == []
    assert conffiles.package_files(str(tmp_path)) == set()
    assert conffiles.installed_packages(str(tmp_path)) == []


def test_package_files(tmp_path: Path) -> None:
    write(tmp_path, "/usr/lib/opkg/info/a.list", "/usr/bin/a\n/etc/a.conf\t0644\n")
    write(tmp_path, "/usr/lib/opkg/info/b.control", "Package: b\nAlternatives: 1:/usr/bin/from-control:/x\n")
    write(tmp_path, "/usr/lib/opkg/status", "Package: c\nAlternatives: 1:/usr/bin/from-status:/y\n")
    write(tmp_path, "/lib/apk/packages/d.list", "/usr/bin/d\n")
    write(tmp_path, "/lib/apk/packages/d.alternatives", "100:/usr/bin/from-apk:/usr/bin/d\n")
    assert conffiles.package_files(str(tmp_path)) == {
        "/usr/bin/a", "/etc/a.conf", "/usr/bin/from-control", "/usr/bin/from-status", "/usr/bin/d",
        "/usr/bin/from-apk"}


def test_installed_packages_opkg(tmp_path: Path) -> None:
    for name in ("zlib", "base-files", "luci", "orphan"):
        write(tmp_path, f"/usr/lib/opkg/info/{name}.control", f"Package: {name}\n")
    write(tmp_path, "/rom/usr/lib/opkg/info/base-files.control", "Package: base-files\n")
    write(tmp_path, "/rom/usr/lib/opkg/info/zlib.control", "Package: zlib\n")
    write(tmp_path, "/overlay/upper/usr/lib/opkg/info/zlib.control", "Package: zlib\n")  # upgraded: still rom
    write(tmp_path, "/overlay/upper/usr/lib/opkg/info/luci.control", "Package: luci\n")
    packages = conffiles.installed_packages(str(tmp_path))
    assert packages == [("base-files", "rom"), ("luci", "overlay"), ("orphan", "unknown"), ("zlib", "rom")]
    assert conffiles.render_installed_packages(packages) == (
        b"base-files\trom\nluci\toverlay\norphan\tunknown\nzlib\trom\n")


def test_installed_packages_apk(tmp_path: Path) -> None:
    write(tmp_path, "/lib/apk/packages/busybox.list", "/bin/busybox\n")
    write(tmp_path, "/lib/apk/packages/busybox.conffiles_static", "")
    write(tmp_path, "/lib/apk/packages/extra.list", "/usr/bin/extra\n")
    write(tmp_path, "/rom/lib/apk/packages/busybox.list", "/bin/busybox\n")
    write(tmp_path, "/overlay/upper/lib/apk/packages/extra.list", "/usr/bin/extra\n")
    assert conffiles.installed_packages(str(tmp_path)) == [("busybox", "rom"), ("extra", "overlay")]
