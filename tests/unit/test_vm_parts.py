"""The vm tier's host-side pieces that need no QEMU: vmlinux extraction, the cpio writer, the
``wrt.log=`` log channel."""

from __future__ import annotations

import lzma
import os
import stat

import pytest
from wrtvm import initramfs, kernel

from wrtcore import log


def test_extract_vmlinux_skips_streams_that_are_not_elf() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    decoy = lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    bz = b"MZ" + b"\0" * 100 + decoy + b"\x90" * 7 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"tail"
    assert kernel.extract_vmlinux(bz) == elf


def test_extract_vmlinux_without_payload() -> None:
    with pytest.raises(ValueError):
        kernel.extract_vmlinux(b"MZ" + b"\0" * 4096)


def _entries(data: bytes) -> list[tuple[str, int, int, int, bytes]]:
    """(name, mode, rdevmajor, rdevminor, data) of each newc entry."""
    out = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out.append((name, fields[1], fields[9], fields[10], body))


def test_cpio_newc() -> None:
    c = initramfs.Cpio()
    c.dir("bin")
    c.file("bin/busybox", b"\x7fELF!", 0o755)
    c.symlink("sbin", "bin")
    c.chardev("dev/console", 5, 1)
    data = c.finish()
    assert len(data) % 512 == 0
    entries = {e[0]: e for e in _entries(data)}
    assert stat.S_ISDIR(entries["bin"][1])
    assert entries["bin/busybox"][4] == b"\x7fELF!" and entries["bin/busybox"][1] & 0o777 == 0o755
    assert stat.S_ISLNK(entries["sbin"][1]) and entries["sbin"][4] == b"bin"
    assert stat.S_ISCHR(entries["dev/console"][1]) and entries["dev/console"][2:4] == (5, 1)


def test_log_channel_from_kernel_cmdline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRT_LOG_FD", raising=False)
    monkeypatch.setenv("WRT_CMDLINE", "root=/dev/vda2 wrt.log=/dev/null quiet")
    fd = log.channel_from_cmdline()
    try:
        assert fd is not None
        assert os.environ["WRT_LOG_FD"] == str(fd)
        assert os.get_inheritable(fd)  # for the init's children (preinit, stage2, services)
    finally:
        if fd is not None:
            os.close(fd)
        monkeypatch.delenv("WRT_LOG_FD", raising=False)


def test_log_channel_keeps_an_existing_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRT_LOG_FD", "3")
    monkeypatch.setenv("WRT_CMDLINE", "wrt.log=/dev/null")
    assert log.channel_from_cmdline() is None
    assert os.environ["WRT_LOG_FD"] == "3"


def test_log_channel_absent_or_not_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRT_LOG_FD", raising=False)
    for text in ("root=/dev/vda2", "wrt.log=relative/path", "wrt.log=/dev/does-not-exist"):
        monkeypatch.setenv("WRT_CMDLINE", text)
        assert log.channel_from_cmdline() is None
        assert "WRT_LOG_FD" not in os.environ
