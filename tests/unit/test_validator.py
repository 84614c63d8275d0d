"""Running the image validator like procd (upgraded/validator.py), with real little validators."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from upgraded import validator
from upgraded.validator import ValidatorError, first_value, run_validator
from wrtcore import children

MakeScript = Callable[..., list[str]]

GOOD = {"tests": {"fwtool_signature": True, "fwtool_device_match": True},
        "valid": True, "forceable": True, "allow_backup": True}


@pytest.fixture
def script(tmp_path: Path) -> Iterator[MakeScript]:
    """Write an executable validator; every process group it started is killed afterwards."""
    pidfiles: list[Path] = []

    def make(body: str, name: str = "validate") -> list[str]:
        path = tmp_path / name
        pidfile = tmp_path / f"{name}.pid"
        pidfiles.append(pidfile)
        path.write_text(f"#!/bin/sh\necho $$ > {pidfile}\n{body}\n")
        path.chmod(0o755)
        return [str(path)]

    yield make
    for pidfile in pidfiles:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def echo(doc: object) -> str:
    return f"printf '%s\\n' '{json.dumps(doc)}'"


# -- the first JSON value, chunk by chunk ---------------------------------------------------------
DOCS = [
    json.dumps(GOOD, indent="\t"),
    '{"a": "x\\"y\\\\z\\u00e9\\n", "n": -12.5e+3, "l": [true, false, null, [], {}], "s": ""}',
    '  \n{"deep": [[[[1]]]], "uni": "\u00e9\u4e2d"}',
    "[1, 2.0, -3]",
    '"just a string"',
]


@pytest.mark.parametrize("doc", DOCS)
def test_every_prefix_is_incomplete_never_an_error(doc: str) -> None:
    for cut in range(len(doc.rstrip())):
        prefix = doc[:cut]
        assert first_value(prefix, eof=False) == (False, None), prefix
        with pytest.raises(ValidatorError, match=r"^incomplete JSON input$"):
            first_value(prefix, eof=True)
    assert first_value(doc, eof=False) == (True, json.loads(doc))


def test_value_followed_by_more_output_stops_at_first() -> None:
    assert first_value('{"a": 1}\n{"b": 2} trailing garbage', eof=False) == (True, {"a": 1})


def test_number_at_buffer_end_waits_for_more() -> None:
    assert first_value("12", eof=False) == (False, None)
    assert first_value("12 ", eof=False) == (True, 12)
    assert first_value("12", eof=True) == (True, 12)
    assert first_value("true", eof=False) == (True, True)


@pytest.mark.parametrize("text", ["garbage", "{x}", '{"a" 1}', '{"a": 1 2}', '[1,,]', '{"a": tru}',
                                  '{"a": "x\ny"}', "}"])
def test_garbage_fails_immediately(text: str) -> None:
    with pytest.raises(ValidatorError, match=r"^failed to parse JSON: "):
        first_value(text, eof=False)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValidatorError, match="failed to parse JSON"):
        first_value("[" * 100000 + "]" * 100000, eof=False)


# -- running real validators ----------------------------------------------------------------------
def test_valid_json_then_sleep_returns_without_waiting_for_eof(script: MakeScript) -> None:
    argv = script(echo(GOOD) + "\nexec sleep 30")
    start = time.monotonic()
    assert run_validator("/tmp/img", argv=argv) == GOOD
    assert time.monotonic() - start < 10


def test_image_path_is_appended_and_stdio_is_devnull(script: MakeScript, tmp_path: Path) -> None:
    code = ("import json, os, sys; "
            "print(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read(), "
            "'stderr': os.path.realpath('/proc/self/fd/2')}))")
    argv = script(f'echo chatter >&2\nexec {sys.executable} -c "{code}" "$@"')
    out = run_validator("/tmp/my image.bin", argv=[*argv, "--extra"])
    assert out == {"argv": ["--extra"], "stdin": "", "stderr": "/dev/null"}


def test_wrt_validator_env_is_a_shell_split_prefix(script: MakeScript,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    argv = script('printf \'{"args": "%s|%s"}\\n\' "$1" "$2"')
    monkeypatch.setenv("WRT_VALIDATOR", f"/bin/sh {argv[0]} 'first arg'")
    assert validator.validator_argv("/tmp/x.img") == ["/bin/sh", argv[0], "first arg", "/tmp/x.img"]
    assert run_validator("/tmp/x.img") == {"args": "first arg|/tmp/x.img"}
    monkeypatch.delenv("WRT_VALIDATOR")
    assert validator.validator_argv("/tmp/x.img") == ["/usr/libexec/validate_firmware_image", "/tmp/x.img"]


def test_output_split_across_writes(script: MakeScript, tmp_path: Path) -> None:
    writer = tmp_path / "writer.py"
    writer.write_text("import sys, time\n"
                      f"for c in {json.dumps(GOOD)!r}:\n"
                      "    sys.stdout.write(c)\n"
                      "    sys.stdout.flush()\n"
                      "    time.sleep(0.001)\n")
    assert run_validator("/tmp/img", argv=script(f"exec {sys.executable} {writer}")) == GOOD


@pytest.mark.parametrize(("body", "detail"), [
    ("echo 'this is not json'", r"^failed to parse JSON: "),
    ("echo '<html>oops</html>'; exec sleep 30", "^failed to parse JSON: "),  # must not wait for EOF
    ("echo '[1, 2, 3]'", "^result is not an JSON object$"),
    ("echo '\"valid\"'", "^result is not an JSON object$"),
    ("exit 0", "^no JSON input$"),
    ("exit 3", "^no JSON input$"),
    ("printf '{\"valid\": tr'", "^incomplete JSON input$"),
    ("printf '   \\n'", "^incomplete JSON input$"),
])
def test_bad_validators(script: MakeScript, body: str, detail: str) -> None:
    start = time.monotonic()
    with pytest.raises(ValidatorError, match=detail):
        run_validator("/tmp/img", argv=script(body))
    assert time.monotonic() - start < 10


def test_silent_validator_times_out_and_is_killed(script: MakeScript, tmp_path: Path) -> None:
    argv = script("exec sleep 30")
    with pytest.raises(ValidatorError, match="no answer within"):
        run_validator("/tmp/img", argv=argv, timeout=0.5)
    pid = int((tmp_path / "validate.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # killed, then collected by the background waiter
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("timed-out validator still exists")


def test_output_is_bounded(script: MakeScript) -> None:
    argv = script("printf '['; yes '1,' | head -c 3000000; exec sleep 30")
    with pytest.raises(ValidatorError, match="output exceeds 1048576 bytes"):
        run_validator("/tmp/img", argv=argv)


def test_missing_validator() -> None:
    with pytest.raises(ValidatorError, match="cannot execute /nonexistent/validator"):
        run_validator("/tmp/img", argv=["/nonexistent/validator"])


def test_pid1_mode_spawns_through_the_reaper(script: MakeScript,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    reaper = children.Reaper()
    monkeypatch.setattr(children, "_installed", reaper)

    def no_popen(*_a: object, **_k: object) -> None:
        raise AssertionError("subprocess.Popen used although a reaper is installed")

    monkeypatch.setattr(subprocess, "Popen", no_popen)
    out = run_validator("/tmp/img", argv=script('printf \'{"pid": %s}\\n\' $$'))
    pid = out["pid"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(p == pid for p, _status in reaper.reap()):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the reaper never collected the validator")
