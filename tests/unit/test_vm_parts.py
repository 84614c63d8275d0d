"""The vm tier's host-side pieces that need no QEMU: vmlinux extraction, the cpio writer, the
``wrt.log=`` log channel, the QEMU command line, the QMP client, the power-cut outcome table."""

from __future__ import annotations

import dataclasses
import json
import lzma
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from wrtvm import initramfs, interactive, kernel, machine, powercut, qmp

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
    out: list[tuple[str, int, int, int, bytes]] = []
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


# -- the QEMU command line, blkdebug, QMP, power-cut outcomes, the interactive hints -----------------------
def _machine(**kw: object) -> machine.Machine:
    drives = (machine.Drive(Path("/d/disk.img")), machine.Drive(Path("/d/t.img")))
    base: dict[str, object] = {"kernel": Path("/k/vmlinux"), "initrd": Path("/k/initrd"), "drives": drives}
    base.update(kw)
    return machine.Machine(**base)  # type: ignore[arg-type]


def test_qemu_argv_sockets_paused_start_and_drives() -> None:
    argv = machine.qemu_argv(_machine(), console="socket,path=/w/c.sock,server=off",
                             log="file,path=/dev/fd/7", qmp="socket,path=/w/q.sock,server=off", paused=True)
    joined = " ".join(argv)
    assert "-chardev socket,path=/w/c.sock,server=off,id=con -serial chardev:con" in joined
    assert "-chardev file,path=/dev/fd/7,id=log -serial chardev:log" in joined  # ttyS1: the JSON log
    assert "-chardev socket,path=/w/q.sock,server=off,id=qmp -mon chardev=qmp,mode=control" in joined
    assert "-S" in argv and "-no-reboot" in argv and "tcg,tb-size=512" in argv
    assert "wrt.log=/dev/ttyS1" in argv[argv.index("-append") + 1]
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0].startswith("id=disk0,if=virtio") and drives[0].endswith("file=/d/disk.img")
    assert drives[1].startswith("id=disk1,") and "werror=report" in drives[1]


def test_qemu_argv_interactive_reboots_and_has_a_monitor() -> None:
    argv = machine.qemu_argv(_machine(reboot=True), console="stdio,mux=on,signal=off", log="file,path=l",
                             console_monitor=True)
    assert "-no-reboot" not in argv and "-S" not in argv
    assert "chardev=con,mode=readline" in argv
    assert not any("mode=control" in a for a in argv)


def test_blkdebug_drive_and_rules() -> None:
    (args,) = [machine.drive_args(0, machine.Drive(Path("/d/disk.img"), Path("/d/rules.conf")))[1]]
    opts = dict(o.split("=", 1) for o in args.split(","))
    assert opts["file.driver"] == "blkdebug" and opts["file.config"] == "/d/rules.conf"
    assert opts["file.image.filename"] == "/d/disk.img" and "file" not in opts
    rules = machine.blkdebug_rules(12345)
    assert rules.startswith("[inject-error]\n") and 'sector = "12345"' in rules and 'errno = "5"' in rules
    assert 'iotype = "write"' in rules


def _fake_qemu(sock: socket.socket) -> None:
    """The server side of QMP: a greeting, then answers; an event before the reply to ``stop``."""
    f = sock.makefile("rwb")
    f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
    f.flush()
    for line in f:
        msg = json.loads(line)
        cmd, ident = msg["execute"], msg["id"]
        if cmd == "quit":
            break
        if cmd == "stop":
            f.write(b'{"event": "STOP", "data": {}}\n')
        if cmd == "nope":
            reply = {"id": ident, "error": {"class": "CommandNotFound", "desc": "no nope"}}
        else:
            reply = {"id": ident, "return": {"cmd": cmd, "args": msg.get("arguments", {})}}
        f.write(json.dumps(reply).encode() + b"\n")
        f.flush()
    f.close()
    sock.close()


def test_qmp_client() -> None:
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=_fake_qemu, args=(theirs,), daemon=True)
    server.start()
    client = qmp.QMP(ours, "t")
    try:
        assert client.greeting is not None and "QMP" in client.greeting
        assert client.execute("block_set_io_throttle", device="disk0", bps_wr=5) == {
            "cmd": "block_set_io_throttle", "args": {"device": "disk0", "bps_wr": 5}}
        client.execute("stop")
        assert client.wait_event("STOP", timeout=5)["event"] == "STOP"
        with pytest.raises(qmp.QMPError, match="CommandNotFound: no nope"):
            client.execute("nope")
        client.quit()  # the server hangs up without a reply: done all the same
        with pytest.raises(qmp.QMPError):
            client.execute("cont")
    finally:
        client.close()
        server.join(timeout=5)


LAYOUT = powercut.Layout(boot_start=1 << 20, root_start=9 << 20, squashfs_end=(9 << 20) + 1000,
                         data_start=(9 << 20) + 65536, payload=20 << 20)


def test_power_cut_sector_is_the_last_before_a_chunk_boundary() -> None:
    assert powercut.cut_sector(LAYOUT, 0.5) == (10 << 20) // 512 - 1
    assert powercut.cut_sector(LAYOUT, 0.9) == (18 << 20) // 512 - 1  # 18.0 MiB: 0.9 * 20 MiB rounded down
    with pytest.raises(ValueError):
        powercut.cut_sector(LAYOUT, 0.01)


def test_power_cut_regions_and_outcomes() -> None:
    # the squashfs ends 1000 bytes in: its head is written once the first 1 MiB of the root partition is
    assert LAYOUT.head_written == 10 << 20
    cases = [(0, "BOOT", "OLD_BOOTS"), ((9 << 20) - 1, "BOOT", "OLD_BOOTS"), (9 << 20, "ROOT", "BRICKED"),
             ((9 << 20) + 999, "ROOT", "BRICKED"), ((10 << 20) - 1, "ROOT", "BRICKED"),
             (10 << 20, "DATA", "NEW_BOOTS"),
             ((20 << 20) - 1, "DATA", "NEW_BOOTS"), (20 << 20, "DONE", "NEW_BOOTS")]
    for written, region, outcome in cases:
        exp = powercut.expected(LAYOUT, written)
        assert (exp.region.name, exp.outcome.name) == (region, outcome), written
    assert set(powercut.EXPECTED) == set(powercut.Region)
    # a squashfs ending past a chunk boundary: between the head's write and rootfs_data's superblock
    long = dataclasses.replace(LAYOUT, squashfs_end=(10 << 20) + 1000, data_start=(10 << 20) + 65536,
                               chunk=1000 + (1 << 20))
    assert long.head_written == (10 << 20) + 1000
    assert powercut.expected(long, (10 << 20) + 999).region.name == "ROOT"
    assert powercut.expected(long, (10 << 20) + 1000).region.name == "ROOT_END"
    assert powercut.expected(long, (10 << 20) + 65536 + 2048).region.name == "DATA"


def test_power_cut_layout_and_disk_comparison(tmp_path: Path) -> None:
    from sandbox import disk
    from stage2.formats import fwtool

    image = tmp_path / "fw.img"
    with open(image, "wb") as f:
        f.write(disk.mbr(1, [(1 << 20, 2 << 20), (3 << 20, 4 << 20)]))
        f.seek(3 << 20)
        f.write(b"hsqs" + bytes(36) + (300_000).to_bytes(8, "little"))
        f.seek((7 << 20) - 1)
        f.write(b"\x01")
    fwtool.append_metadata(image, {"version": {}})
    layout = powercut.layout_of(image)
    assert layout == powercut.Layout(boot_start=1 << 20, root_start=3 << 20, squashfs_end=(3 << 20) + 300_000,
                                     data_start=(3 << 20) + 327_680, payload=7 << 20)
    target = tmp_path / "disk.img"
    data = bytearray(image.read_bytes()[:layout.payload])
    target.write_bytes(data)
    assert powercut.same_bytes(target, image, 0, layout.payload)
    data[(3 << 20) + 5] ^= 0xFF
    target.write_bytes(data)
    assert not powercut.same_bytes(target, image, 0, layout.payload, block=4096)
    assert powercut.same_bytes(target, image, 0, (3 << 20) + 5)
    assert powercut.same_bytes(target, image, (3 << 20) + 6, layout.payload)
    target.write_bytes(data[:100])
    assert not powercut.same_bytes(target, image, 0, 101)


def test_interactive_hints_and_argv(tmp_path: Path) -> None:
    text = interactive.hints(tmp_path, 4242)
    assert "dd if=/dev/vdb of=/tmp/fw.img bs=1M && truncate -s 4242 /tmp/fw.img" in text
    assert "sysupgrade -v /tmp/fw.img" in text and str(tmp_path / "qmp.sock") in text
