"""Config restore from real tar.gz archives: what is restored, what is refused, and the passwd merge.

Every archive is written under ``tmp_path`` and extracted into ``tmp_path/box/root``; its parent
``tmp_path/box`` holds decoys (a passwd file, a secret) that a member escaping the root would reach, and
the whole of ``box`` outside ``root`` is compared before and after.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from preinit.restore import extract


@dataclass
class Member:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    devmajor: int = 0
    devminor: int = 0


def archive(path: Path, members: list[Member]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.mode = m.mode
            info.linkname = m.linkname
            info.devmajor, info.devminor = m.devmajor, m.devminor
            info.mtime = 1700000000
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return str(path)


def f(name: str, data: str = "", mode: int = 0o644) -> Member:
    return Member(name, data=(data or f"content of {name}\n").encode(), mode=mode)


@dataclass
class Box:
    """``root`` (the new firmware's root) inside ``parent``, with decoys next to it."""

    parent: Path
    root: Path
    before: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def snapshot(self) -> dict[str, tuple[str, ...]]:
        seen: dict[str, tuple[str, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.parent):
            if Path(dirpath) == self.parent:
                dirnames.remove("root")
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                entry: tuple[str, ...] = (stat.filemode(st.st_mode), str(st.st_nlink))
                if stat.S_ISREG(st.st_mode):
                    entry += (hashlib.sha256(p.read_bytes()).hexdigest(),)
                elif stat.S_ISLNK(st.st_mode):
                    entry += (os.readlink(p),)
                seen[str(p.relative_to(self.parent))] = entry
        return seen

    def assert_outside_unchanged(self) -> None:
        assert self.snapshot() == self.before, "something was written outside the root"


PASSWD = ("root:x:0:0:root:/root:/bin/ash\ndaemon:*:1:1:daemon:/var:/bin/false\n"
          "network:*:101:101:network:/var:/bin/false\nnobody:*:65534:65534:nobody:/var:/bin/false\n"
          "dnsmasq:x:453:453:dnsmasq:/var/run/dnsmasq:/bin/false\n")
GROUP = "root:x:0:\ndaemon:x:1:\nnetwork:x:101:\nnogroup:x:65534:\ndnsmasq:x:453:dnsmasq\n"
SHADOW = "root:::0:99999:7:::\ndaemon:*:0:0:99999:7:::\nnetwork:*:0:0:99999:7:::\ndnsmasq:x:0:0:99999:7:::\n"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    parent = tmp_path / "box"
    root = parent / "root"
    (root / "etc/config").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/shadow").write_text(SHADOW)
    (root / "etc/config/network").write_text("firmware default network\n")
    (parent / "etc").mkdir()
    (parent / "etc/passwd").write_text("decoy:x:0:0::/:/bin/sh\n")
    (parent / "secret").write_text("do not touch\n")
    b = Box(parent, root)
    b.before = b.snapshot()
    return b


# --- what is restored --------------------------------------------------------------------------------


def test_normal_files_directories_and_inner_links_are_restored(box: Box, tmp_path: Path) -> None:
    members = [
        Member("etc/config", tarfile.DIRTYPE, mode=0o755),
        f("etc/config/network", "config interface 'lan'\n"),
        f("etc/config/wireless"),
        f("etc/dropbear/dropbear_ed25519_host_key", "key", mode=0o600),
        f("etc/rc.local", "#!/bin/sh\nexit 0\n", mode=0o755),
        Member("etc/config/link", tarfile.SYMTYPE, linkname="network"),
        Member("etc/hardlink", tarfile.LNKTYPE, linkname="etc/config/wireless"),
    ]
    result = extract(archive(tmp_path / "a.tgz", members), str(box.root))
    assert result == {"restored": [m.name for m in members], "refused": []}
    assert (box.root / "etc/config/network").read_text() == "config interface 'lan'\n"
    assert (box.root / "etc/config/link").resolve() == (box.root / "etc/config/network").resolve()
    assert os.path.samefile(box.root / "etc/hardlink", box.root / "etc/config/wireless")
    assert stat.S_IMODE((box.root / "etc/rc.local").stat().st_mode) == 0o755
    assert stat.S_IMODE((box.root / "etc/dropbear/dropbear_ed25519_host_key").stat().st_mode) == 0o600
    box.assert_outside_unchanged()


def test_setuid_and_setgid_bits_are_dropped(box: Box, tmp_path: Path) -> None:
    members = [f("usr/bin/suid", mode=0o4755), f("usr/bin/sgid", mode=0o2755), f("usr/bin/both", mode=0o6711)]
    result = extract(archive(tmp_path / "a.tgz", members), str(box.root))
    assert result["refused"] == [] and len(result["restored"]) == 3
    for name in ("suid", "sgid", "both"):
        mode = (box.root / "usr/bin" / name).stat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID), name
        assert mode & stat.S_IXUSR
    box.assert_outside_unchanged()


def test_group_and_other_write_bits_are_dropped(box: Box, tmp_path: Path) -> None:
    extract(archive(tmp_path / "a.tgz", [f("etc/world", mode=0o666)]), str(box.root))
    assert stat.S_IMODE((box.root / "etc/world").stat().st_mode) == 0o644


def test_absolute_names_land_inside_the_root(box: Box, tmp_path: Path) -> None:
    name = f"/wrt-restore-test-{os.getpid()}/etc/config/system"
    top = Path(name.split("/etc", 1)[0])
    assert not top.exists()
    result = extract(archive(tmp_path / "a.tgz", [f(name, "system\n")]), str(box.root))
    assert not top.exists(), "an absolute member was written at its absolute path"
    assert (box.root / name.lstrip("/")).read_text() == "system\n"
    assert result["restored"] == [name]
    box.assert_outside_unchanged()


# --- what is refused -----------------------------------------------------------------------------------


def test_escapes_links_out_and_special_files_refused_the_rest_restored(box: Box, tmp_path: Path) -> None:
    evil = [
        f("../secret", "overwritten\n"),
        f("etc/../../secret", "overwritten\n"),
        f("../etc/passwd", "evil::0:0::/:/bin/sh\n"),
        Member("etc/out", tarfile.SYMTYPE, linkname="../../etc"),           # relative, pointing outside
        Member("etc/hl-rel", tarfile.LNKTYPE, linkname="../etc/passwd"),  # hard link to the decoy passwd
        Member("etc/hl-abs", tarfile.LNKTYPE, linkname=str(box.parent / "etc/passwd")),
        Member("etc/hl-sys", tarfile.LNKTYPE, linkname="/etc/passwd"),
        Member("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o666),
        Member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
        Member("etc/fifo", tarfile.FIFOTYPE, mode=0o644),
    ]
    good = [f("etc/config/network", "restored\n"), f("etc/config/system")]
    # the dangerous ones again after the links: through them, a write would land outside
    through = [
        f("etc/out/passwd", "through a link\n"),
        f("etc/abs/secret", "through a link\n"),
        f("etc/hl-rel", "through a hard link\n"),
        f("etc/hl-abs", "through a hard link\n"),
    ]
    # An absolute symlink is the device's own business (it resolves inside the device's root): it is
    # restored as a link, but nothing from the archive may then be written through it.
    absolute = Member("etc/abs", tarfile.SYMTYPE, linkname=str(box.parent))
    members = [good[0], *evil, absolute, good[1], *through]
    result = extract(archive(tmp_path / "a.tgz", members), str(box.root))
    assert result["refused"] == [*(m.name for m in evil), "etc/abs/secret"]
    assert result["restored"] == [good[0].name, "etc/abs", good[1].name,
                                  *(m.name for m in through if m.name != "etc/abs/secret")]
    box.assert_outside_unchanged()
    assert (box.parent / "secret").read_text() == "do not touch\n"
    assert os.readlink(box.root / "etc/abs") == str(box.parent)
    # the refused links were never made, so the later members are plain files inside the root
    assert not (box.root / "etc/out").is_symlink()
    assert (box.root / "etc/out/passwd").read_text() == "through a link\n"
    assert (box.root / "etc/hl-rel").stat().st_nlink == 1
    assert not (box.root / "dev/mem").exists() and not (box.root / "dev/sda").exists()
    assert not (box.root / "etc/fifo").exists()
    assert (box.root / "etc/config/network").read_text() == "restored\n"


def test_a_link_chain_that_climbs_out_is_refused(box: Box, tmp_path: Path) -> None:
    members = [
        Member("a", tarfile.SYMTYPE, linkname="."),           # harmless alone
        Member("b", tarfile.SYMTYPE, linkname="a/.."),        # resolves to the parent of the root
        f("b/secret", "overwritten\n"),
        f("a/../../secret", "overwritten\n"),
    ]
    result = extract(archive(tmp_path / "a.tgz", members), str(box.root))
    assert "b" in result["refused"] and "a/../../secret" in result["refused"]
    box.assert_outside_unchanged()


def test_an_existing_link_out_of_the_new_root_is_not_written_through(box: Box, tmp_path: Path) -> None:
    """The new firmware itself ships a link pointing outside (OpenWrt: /etc/resolv.conf -> /tmp/...):
    the archive's file replaces the link, as tar does, and nothing is written where it pointed."""
    os.symlink(box.parent / "secret", box.root / "etc/resolv.conf")
    box.before = box.snapshot()
    result = extract(archive(tmp_path / "a.tgz", [f("etc/resolv.conf", "nameserver 1.1.1.1\n")]),
                     str(box.root))
    assert result["refused"] == []
    assert not (box.root / "etc/resolv.conf").is_symlink()
    assert (box.root / "etc/resolv.conf").read_text() == "nameserver 1.1.1.1\n"
    box.assert_outside_unchanged()


def test_a_corrupt_archive_raises_and_writes_nothing(box: Box, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 64)
    before = sorted(str(p) for p in box.root.rglob("*"))
    with pytest.raises((tarfile.TarError, OSError, EOFError)):
        extract(str(bad), str(box.root))
    assert sorted(str(p) for p in box.root.rglob("*")) == before
    box.assert_outside_unchanged()


# --- the passwd/group/shadow merge -------------------------------------------------------------------


def test_merge_adds_back_missing_defaults_and_keeps_restored_entries(box: Box, tmp_path: Path) -> None:
    restored_passwd = ("root:x:0:0:root:/root:/bin/bash\n"     # changed shell: kept as restored
                       "network:*:101:101:network:/var:/bin/false\n"
                       "alice:x:1000:1000:Alice:/home/alice:/bin/ash\n")
    restored_group = "root:x:0:alice\nalice:x:1000:\n"
    members = [f("etc/passwd", restored_passwd), f("etc/group", restored_group)]
    extract(archive(tmp_path / "a.tgz", members), str(box.root))
    passwd = (box.root / "etc/passwd").read_text().splitlines()
    assert passwd == [
        "root:x:0:0:root:/root:/bin/bash",
        "network:*:101:101:network:/var:/bin/false",
        "alice:x:1000:1000:Alice:/home/alice:/bin/ash",
        "daemon:*:1:1:daemon:/var:/bin/false",
        "nobody:*:65534:65534:nobody:/var:/bin/false",
        "dnsmasq:x:453:453:dnsmasq:/var/run/dnsmasq:/bin/false",
    ]
    assert (box.root / "etc/group").read_text().splitlines() == [
        "root:x:0:alice", "alice:x:1000:", "daemon:x:1:", "network:x:101:", "nogroup:x:65534:",
        "dnsmasq:x:453:dnsmasq",
    ]
    # not in the archive: the firmware's default stays exactly as it was
    assert (box.root / "etc/shadow").read_text() == SHADOW


def test_merge_with_every_default_present_changes_nothing(box: Box, tmp_path: Path) -> None:
    restored = PASSWD.replace("/bin/ash", "/bin/zsh")
    extract(archive(tmp_path / "a.tgz", [f("etc/passwd", restored)]), str(box.root))
    assert (box.root / "etc/passwd").read_text() == restored


def test_merge_on_a_root_without_defaults_leaves_restored_files_alone(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    extract(archive(tmp_path / "a.tgz", [f("etc/shadow", "root:$1$x:0:0:99999:7:::\n")]), str(root))
    assert (root / "etc/shadow").read_text() == "root:$1$x:0:0:99999:7:::\n"


# --- known defects (xfail strict: they flip to failures once fixed, then drop the marker) ----------------


def test_merge_after_a_restored_file_without_final_newline(box: Box, tmp_path: Path) -> None:
    restored = "root:x:0:0:root:/root:/bin/bash"  # no trailing newline, as editors sometimes leave it
    extract(archive(tmp_path / "a.tgz", [f("etc/passwd", restored)]), str(box.root))
    lines = (box.root / "etc/passwd").read_text().splitlines()
    assert lines[0] == "root:x:0:0:root:/root:/bin/bash"
    assert "daemon:*:1:1:daemon:/var:/bin/false" in lines


def test_a_regular_member_does_not_write_into_an_existing_special_file(box: Box, tmp_path: Path) -> None:
    (box.root / "dev").mkdir()
    fifo = box.root / "dev/mtdblock0"
    os.mkfifo(fifo)  # stands in for a device node: no root needed
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that an open for writing does not block
    try:
        done = threading.Event()
        result: dict[str, list[str]] = {}

        def run() -> None:
            tgz = archive(tmp_path / "a.tgz", [f("dev/mtdblock0", "PAYLOAD")])
            result.update(extract(tgz, str(box.root)))
            done.set()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        assert done.wait(30), "extract hung on the FIFO"
        try:
            leaked = os.read(reader, 4096)
        except BlockingIOError:
            leaked = b""
    finally:
        os.close(reader)
    assert leaked == b"", "the member's bytes went into the existing special file"


def test_a_path_max_symlink_chain_cannot_escape(box: Box, tmp_path: Path) -> None:
    steps = "abcdefghijklmnop"
    path_max = os.pathconf(box.parent, "PC_PATH_MAX")
    component = "d" * ((path_max - len(str(box.root)) - 1) // (len(steps) + 1))
    members: list[Member] = []
    path = ""
    for step in steps:
        members.append(Member(os.path.join(path, component), tarfile.DIRTYPE, mode=0o755))
        members.append(Member(os.path.join(path, step), tarfile.SYMTYPE, linkname=component))
        path = os.path.join(path, component)
    link = os.path.join(*steps, "l" * 254)
    members += [
        Member(link, tarfile.SYMTYPE, linkname=os.path.join(*[".."] * len(steps))),
        Member("escape", tarfile.SYMTYPE, linkname=os.path.join(link, "..")),
        Member("secretlink", tarfile.LNKTYPE, linkname="escape/secret"),
        f("secretlink", "overwritten\n"),
        f("escape/newfile", "new\n"),
    ]
    extract(archive(tmp_path / "a.tgz", members), str(box.root))
    box.assert_outside_unchanged()


# --- one rejection at a time (issue 5): each with a good member after it, which must be restored ---------

ONE_EACH = {
    "dotdot": ([f("../secret", "overwritten\n")], ["../secret"]),
    "dotdot-inside-the-name": ([f("etc/../../secret", "overwritten\n")], ["etc/../../secret"]),
    "symlink-out-then-a-file-through-it": (
        [Member("etc/out", tarfile.SYMTYPE, linkname="../../"), f("etc/out/secret", "through\n")],
        ["etc/out"]),
    "hard-link-outside-relative": ([Member("etc/hl", tarfile.LNKTYPE, linkname="../secret")], ["etc/hl"]),
    "hard-link-outside-absolute": ([Member("etc/hl", tarfile.LNKTYPE, linkname="/../secret")], ["etc/hl"]),
    "char-device": ([Member("etc/mem", tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o666)], ["etc/mem"]),
    "block-device": ([Member("etc/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)], ["etc/sda"]),
    "fifo": ([Member("etc/fifo", tarfile.FIFOTYPE)], ["etc/fifo"]),
}


@pytest.mark.parametrize("case", list(ONE_EACH))
def test_one_rejection(box: Box, tmp_path: Path, case: str) -> None:
    members, refused = ONE_EACH[case]
    good = f("etc/config/network", "restored\n")
    result = extract(archive(tmp_path / "a.tgz", [*members, good]), str(box.root))
    assert result["refused"] == refused
    assert good.name in result["restored"]
    assert (box.root / "etc/config/network").read_text() == "restored\n"
    box.assert_outside_unchanged()
    for m in members:
        if m.name in refused:
            assert not (box.root / m.name).is_symlink()
            made = box.root / m.name
            assert m.type == tarfile.REGTYPE or not made.exists() or made.is_dir()
    if case == "symlink-out-then-a-file-through-it":  # the link was never made: a plain file inside
        assert (box.root / "etc/out/secret").read_text() == "through\n"


def test_setuid_file_kept_without_the_bit_and_a_warning(box: Box, tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        result = extract(archive(tmp_path / "a.tgz", [f("usr/bin/tool", mode=0o4755)]), str(box.root))
    assert result == {"restored": ["usr/bin/tool"], "refused": []}
    mode = (box.root / "usr/bin/tool").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID) and mode & 0o100
    assert [r.get("member") for r in logs if r["event"] == "setuid/setgid bit dropped"] == ["usr/bin/tool"]


def test_merge_adds_new_system_users_and_never_touches_changed_ones(box: Box, tmp_path: Path) -> None:
    """The owner changed root's shell and dnsmasq's home; the new firmware adds ``ntp``: after the
    restore the owner's lines stand as they were and ntp's line is there once."""
    (box.root / "etc/passwd").write_text(PASSWD + "ntp:x:123:123:ntp:/var/run/ntp:/bin/false\n")
    (box.root / "etc/group").write_text(GROUP + "ntp:x:123:ntp\n")
    (box.root / "etc/shadow").write_text(SHADOW + "ntp:x:0:0:99999:7:::\n")
    owners = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\ndnsmasq:x:453:453:dnsmasq:/srv/dns:/bin/false\n",
        "etc/group": "root:x:0:\ndnsmasq:x:453:dnsmasq,admin\n",
        "etc/shadow": "root:$6$salt$hash:19000:0:99999:7:::\ndnsmasq:x:0:0:99999:7:::\n",
    }
    extract(archive(tmp_path / "a.tgz", [f(k, v) for k, v in owners.items()]), str(box.root))
    for rel, text in owners.items():
        got = (box.root / rel).read_text().splitlines()
        assert got[:2] == text.splitlines(), f"{rel}: the owner's lines come first, untouched"
        names = [line.split(":", 1)[0] for line in got]
        assert names.count("ntp") == 1 and names.count("root") == 1 and names.count("dnsmasq") == 1
    assert "ntp:x:123:123:ntp:/var/run/ntp:/bin/false" in (box.root / "etc/passwd").read_text()
