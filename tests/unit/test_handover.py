"""procd's exec contract and failsafe's /tmp/sysupgrade file, as upgraded takes them over."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgraded.handover import (
    FAILSAFE_BACKUP,
    FAILSAFE_FILE,
    Handover,
    from_exec,
    parse_failsafe,
    read_failsafe,
)

IMG = "/tmp/sysupgrade.img"
CMD = "/lib/upgrade/do_stage2"

# --- procd's exec: /sbin/upgraded <path> <command> ---------------------------------------------------


@pytest.mark.parametrize("argv", [[], [IMG], [IMG, CMD, "extra"]], ids=["none", "one", "three"])
def test_exactly_two_arguments_else_procds_message(argv: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        from_exec(argv, {})
    assert str(err.value) == "sysupgrade stage 2 failed, invalid command line"


def test_exec_contract_takes_backup_options_and_watchdog_fd() -> None:
    environ = {
        "UPGRADE_BACKUP": "/tmp/sysupgrade.tgz",
        "UPGRADE_OPT_SAVE_PARTITIONS": "0",
        "UPGRADE_OPT_FORCE": "1",
        "WDTFD": "7",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "UPGRADE_OPTX": "not an option",
    }
    h = from_exec([IMG, CMD], environ)
    assert h == Handover(path=IMG, command=CMD, backup="/tmp/sysupgrade.tgz",
                         env={"UPGRADE_OPT_SAVE_PARTITIONS": "0", "UPGRADE_OPT_FORCE": "1"}, wdt_fd=7)
    assert h.prefix is None


def test_exec_contract_without_the_optional_environment() -> None:
    h = from_exec([IMG, ""], {"UPGRADE_BACKUP": "", "WDTFD": ""})
    assert (h.path, h.command, h.backup, h.env, h.wdt_fd) == (IMG, None, None, {}, None)


@pytest.mark.parametrize("value", ["-1", "seven", "3 ", ""])
def test_a_watchdog_fd_that_is_not_a_number_is_ignored(value: str) -> None:
    assert from_exec([IMG, CMD], {"WDTFD": value}).wdt_fd is None


# --- failsafe: /tmp/sysupgrade = prefix NUL path NUL command ----------------------------------------


def test_three_nul_separated_fields() -> None:
    h = parse_failsafe(b"/tmp/root\0" + IMG.encode() + b"\0" + CMD.encode())
    assert h == Handover(path=IMG, command=CMD, backup=None, prefix="/tmp/root")
    assert h.env == {} and h.wdt_fd is None  # procd drops the options in failsafe


def test_an_empty_command_is_none() -> None:
    h = parse_failsafe(b"/tmp/root\0/tmp/x.img\0")
    assert h is not None and h.command is None and h.path == "/tmp/x.img"


@pytest.mark.parametrize("data", [
    b"/tmp/root\0/tmp/sysupgrade.img",                           # two fields
    b"/tmp/root\0/tmp/sysupgrade.img\0/lib/upgrade/do_stage2\0",  # trailing NUL: four fields
    b"/tmp/root\0/tmp/sysupgrade.img\0do_stage2\0extra",          # four fields
    b"/tmp/root\0\0/lib/upgrade/do_stage2",                       # empty path
    b"\0/tmp/sysupgrade.img\0/lib/upgrade/do_stage2",             # empty prefix
    b"/tmp/root\0tmp/sysupgrade.img\0/lib/upgrade/do_stage2",     # relative path
    b"/tmp/root\0/tmp/\xff\xfe.img\0/lib/upgrade/do_stage2",      # invalid UTF-8
    b"",
    b"\0\0",
], ids=["two-fields", "trailing-nul", "four-fields", "empty-path", "empty-prefix", "relative-path",
        "invalid-utf8", "empty", "only-nuls"])
def test_malformed_failsafe_file_is_ignored(data: bytes) -> None:
    assert parse_failsafe(data) is None


def test_the_default_paths_are_openwrts() -> None:
    assert (FAILSAFE_FILE, FAILSAFE_BACKUP) == ("/tmp/sysupgrade", "/tmp/sysupgrade.tgz")


def test_read_failsafe_keeps_the_backup_when_it_exists(tmp_path: Path) -> None:
    request, backup = tmp_path / "sysupgrade", tmp_path / "sysupgrade.tgz"
    request.write_bytes(b"/tmp/root\0" + IMG.encode() + b"\0" + CMD.encode())
    backup.write_bytes(b"\x1f\x8b")
    h = read_failsafe(str(request), str(backup))
    assert h == Handover(path=IMG, command=CMD, backup=str(backup), prefix="/tmp/root")


def test_read_failsafe_without_a_backup(tmp_path: Path) -> None:
    request = tmp_path / "sysupgrade"
    request.write_bytes(b"/tmp/root\0" + IMG.encode() + b"\0" + CMD.encode())
    (tmp_path / "a-directory.tgz").mkdir()
    h = read_failsafe(str(request), str(tmp_path / "missing.tgz"))
    assert h is not None and h.backup is None
    h = read_failsafe(str(request), str(tmp_path / "a-directory.tgz"))
    assert h is not None and h.backup is None


def test_read_failsafe_no_file_or_malformed_file(tmp_path: Path) -> None:
    backup = tmp_path / "sysupgrade.tgz"
    backup.write_bytes(b"\x1f\x8b")
    assert read_failsafe(str(tmp_path / "sysupgrade"), str(backup)) is None
    bad = tmp_path / "bad"
    bad.write_bytes(b"/tmp/root\0" + IMG.encode() + b"\0" + CMD.encode() + b"\0")
    assert read_failsafe(str(bad), str(backup)) is None
    assert read_failsafe(str(tmp_path), str(backup)) is None  # a directory: unreadable, ignored
