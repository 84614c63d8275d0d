"""``sysupgrade -l`` on a prepared root written from reference 3.2, for each list-shaping option.

The root holds: ``/etc/sysupgrade.conf`` and ``/lib/upgrade/keep.d/*`` (base-files-essential as OpenWrt
ships it, dropbear's directory), a listed directory with a symlink loop and a symlink to a directory,
an opkg status with changed, unchanged, missing and md5-checksummed conffiles plus an alternative,
apk ``conffiles_static`` records (both managers at once: the list is their union), package file
lists, an overlay upper layer with the files ``-c``/``-o`` must drop, and a ``/rom`` for ``-u`` and
``-k``. Every expected list is written out in full: ``-l`` must print exactly it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sysupgrade import cli

ESSENTIAL = ("/etc/hosts /etc/inittab /etc/group /etc/passwd /etc/profile /etc/shadow /etc/shells "
             "/etc/shinit /etc/sysctl.conf /etc/rc.local")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def put(root: Path, path: str, text: str = "") -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text or f"{path}\n")


def link(root: Path, path: str, target: str) -> None:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, host)


def changed(root: Path, path: str, text: str) -> None:
    """A file present both in the overlay's upper layer and (as the merged view) in the root."""
    put(root, path, text)
    put(root, f"/overlay/upper{path}", text)


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    monkeypatch.setenv("WRT_ROOT", str(root))
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("21 1 254:0 / / ro,relatime - squashfs /dev/root ro\n"
                         "22 21 0:20 / / rw,noatime - overlay overlayfs:/overlay rw\n")
    monkeypatch.setenv("WRT_MOUNTINFO", str(mountinfo))

    # the static lists
    put(root, "/etc/sysupgrade.conf",
        "## This file contains files and directories that should\n## be preserved during an upgrade.\n\n"
        "# /etc/example.conf\n/etc/openvpn/\n   \n/etc/custom.txt\n")
    put(root, "/lib/upgrade/keep.d/base-files-essential", ESSENTIAL.replace(" ", "\n") + "\n")
    put(root, "/lib/upgrade/keep.d/dropbear", "/etc/dropbear/\n")
    for path in ESSENTIAL.split():
        if path != "/etc/shinit":  # a listed file that does not exist is not listed
            put(root, path)
    put(root, "/etc/openvpn/client.conf")
    put(root, "/etc/openvpn/keys/ca.crt")
    link(root, "/etc/openvpn/link", "keys")  # a directory symlink: listed, not followed
    link(root, "/etc/openvpn/loop", ".")  # a loop: listed, not followed
    put(root, "/etc/dropbear/authorized_keys")
    put(root, "/etc/dropbear/dropbear_ed25519_host_key")
    put(root, "/etc/notlisted.txt")

    # package records: opkg
    system_sha, hosts_sha = sha("config system\n"), sha("/etc/hosts\n")
    dropbear_sha, user_sha = sha("config dropbear\n"), sha("# user rules\n").upper()
    put(root, "/etc/config/system", "config system\n\toption hostname 'mine'\n")  # changed
    put(root, "/etc/config/dropbear", "config dropbear\n")  # unchanged
    put(root, "/etc/config/firewall", "config defaults\n")  # md5 recorded: counts as changed
    put(root, "/etc/firewall.user", "# user rules\n")  # unchanged
    put(root, "/usr/lib/opkg/status", f"""\
Package: base-files
Version: 1700
Conffiles:
 /etc/config/system {system_sha}
 /etc/hosts {hosts_sha}
 /etc/config/missing {sha("gone")}
Installed-Time: 1700000000

Package: dropbear
Conffiles:
 /etc/config/dropbear {dropbear_sha}

Package: firewall
Conffiles:
 /etc/config/firewall d41d8cd98f00b204e9800998ecf8427e
 /etc/firewall.user {user_sha}

Package: busybox
Alternatives: 200:/usr/bin/vi:/bin/busybox
""")
    put(root, "/usr/lib/opkg/info/base-files.list", "/etc/hosts\n/etc/profile\n/etc/config/system\n")
    put(root, "/usr/lib/opkg/info/dropbear.list", "/etc/config/dropbear\n/usr/sbin/dropbear\n")
    put(root, "/usr/lib/opkg/info/tool.list", "/usr/sbin/tool\t0755\n/etc/custom.txt\n")
    put(root, "/usr/lib/opkg/info/busybox.list", "/bin/busybox\n")
    for pkg in ("base-files", "dropbear", "busybox", "tool", "ghost"):
        put(root, f"/usr/lib/opkg/info/{pkg}.control", f"Package: {pkg}\n")
    # package records: apk
    put(root, "/etc/config/uhttpd", "config uhttpd 'main'\n\tlist listen_http '0.0.0.0:8080'\n")
    put(root, "/etc/uhttpd.crt", "CERT\n")
    uhttpd_sha, crt_sha = sha("config uhttpd main"), sha("CERT\n")
    put(root, "/lib/apk/packages/uhttpd.conffiles_static",
        f"/etc/config/uhttpd {uhttpd_sha}\n/etc/uhttpd.crt {crt_sha}\n")

    # the overlay's upper layer (-c, -o)
    changed(root, "/etc/config/system", "config system\n\toption hostname 'mine'\n")
    changed(root, "/etc/config/dropbear", "config dropbear\n")
    changed(root, "/etc/custom.txt", "/etc/custom.txt\n")
    changed(root, "/etc/hosts", "/etc/hosts\n")
    for dropped in ("/etc/board.json", "/etc/config/firewall-opkg", "/etc/urandom.seed",
                    "/etc/backup/installed_packages.txt", "/usr/lib/opkg/status",
                    "/usr/lib/opkg/info/tool.control"):
        put(root, f"/overlay/upper{dropped}")
    link(root, "/overlay/upper/etc/loop", "loop")
    link(root, "/overlay/upper/usr/bin/vi", "/bin/busybox")  # busybox's alternative
    put(root, "/overlay/upper/usr/sbin/tool")  # tool's file
    put(root, "/overlay/upper/usr/share/mine.txt")  # nobody's file

    # /rom: identical /etc/profile and /etc/custom.txt and /etc/config/dropbear, a different /etc/hosts
    put(root, "/rom/etc/profile", "/etc/profile\n")
    put(root, "/rom/etc/custom.txt", "/etc/custom.txt\n")
    put(root, "/rom/etc/config/dropbear", "config dropbear\n")
    put(root, "/rom/etc/hosts", "127.0.0.1 localhost\n")
    for pkg in ("base-files", "dropbear", "busybox"):
        put(root, f"/rom/usr/lib/opkg/info/{pkg}.control", f"Package: {pkg}\n")
    return root


STATIC = [
    "/etc/custom.txt", "/etc/dropbear/authorized_keys", "/etc/dropbear/dropbear_ed25519_host_key",
    "/etc/group", "/etc/hosts", "/etc/inittab", "/etc/openvpn/client.conf", "/etc/openvpn/keys/ca.crt",
    "/etc/openvpn/link", "/etc/openvpn/loop", "/etc/passwd", "/etc/profile", "/etc/rc.local",
    "/etc/shadow", "/etc/shells", "/etc/sysctl.conf",
]
CHANGED_CONFFILES = ["/etc/config/firewall", "/etc/config/system", "/etc/config/uhttpd"]


def listed(capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    code = cli.main([*flags, "-l"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return out.splitlines()


def test_default(system: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(capsys) == sorted(STATIC + CHANGED_CONFFILES)


def test_skip_unchanged(system: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = sorted(set(STATIC + CHANGED_CONFFILES) - {"/etc/profile", "/etc/custom.txt"})
    assert listed(capsys, "-u") == expected


def test_installed_packages_path_is_appended(system: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(capsys, "-k") == [*sorted(STATIC + CHANGED_CONFFILES), "/etc/backup/installed_packages.txt"]


def test_changed_etc(system: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(capsys, "-c") == ["/etc/config/dropbear", "/etc/config/system", "/etc/custom.txt",
                                    "/etc/hosts", "/etc/loop"]


def test_changed_etc_skip_unchanged(system: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(capsys, "-c", "-u") == ["/etc/config/system", "/etc/hosts", "/etc/loop"]


def test_changed_everything(system: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # /usr/bin/vi (busybox's alternative) and /usr/sbin/tool (tool's list) are packages' files;
    # /etc/custom.txt is tool's too, but sysupgrade.conf keeps it; conffiles stay, changed or not
    assert listed(capsys, "-o") == ["/etc/config/dropbear", "/etc/config/system", "/etc/custom.txt",
                                    "/etc/hosts", "/etc/loop", "/usr/share/mine.txt"]


def test_changed_everything_skip_unchanged(system: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # -u: dropbear's config and custom.txt equal /rom; /etc/hosts differs from /rom but is an
    # unchanged conffile of base-files, which owns it, and keep.d does not save conffiles
    assert listed(capsys, "-o", "-u") == ["/etc/config/system", "/etc/loop", "/usr/share/mine.txt"]


def test_installed_packages_content(system: Path) -> None:
    from sysupgrade import conffiles

    assert conffiles.installed_packages(str(system)) == [
        ("base-files", "rom"), ("busybox", "rom"), ("dropbear", "rom"), ("ghost", "unknown"),
        ("tool", "overlay")]
