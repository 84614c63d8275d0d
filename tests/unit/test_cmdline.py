"""The kernel command line as key/value pairs, from WRT_CMDLINE (the sandbox) or /proc/cmdline."""

from __future__ import annotations

import pytest

from wrtcore.cmdline import parse, read

SANDBOX = "root=/dev/loop2 rootwait console=ttyS0,115200n8 console=tty0 init=/sbin/upgraded quiet"


def test_keys_values_and_flags() -> None:
    assert parse(SANDBOX) == {"root": "/dev/loop2", "rootwait": "", "console": "tty0",
                              "init": "/sbin/upgraded", "quiet": ""}


def test_a_repeated_key_keeps_the_last_value() -> None:
    assert parse("console=ttyS0 console=tty1")["console"] == "tty1"


def test_only_the_first_equals_sign_splits() -> None:
    assert parse("root=PARTUUID=5eed0001-02 opt=a=b=c") == {"root": "PARTUUID=5eed0001-02", "opt": "a=b=c"}


def test_an_empty_value_is_not_a_missing_key() -> None:
    parsed = parse("failsafe= ro")
    assert parsed == {"failsafe": "", "ro": ""}
    assert "rw" not in parsed


@pytest.mark.parametrize("text", ["", "   ", "\n", "\t\n "])
def test_nothing_to_parse(text: str) -> None:
    assert parse(text) == {}


def test_any_whitespace_separates_and_the_trailing_newline_goes() -> None:
    assert parse("a=1\tb=2  c=3\n") == {"a": "1", "b": "2", "c": "3"}


def test_read_prefers_the_sandbox_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRT_CMDLINE", "root=/dev/loop7 failsafe=1")
    assert read() == {"root": "/dev/loop7", "failsafe": "1"}


def test_an_empty_sandbox_variable_is_an_empty_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRT_CMDLINE", "")
    assert read() == {}


def test_read_falls_back_to_proc_cmdline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRT_CMDLINE", raising=False)
    with open("/proc/cmdline") as f:
        expected = parse(f.read())
    assert read() == expected
    assert expected  # a running kernel always has some command line
