"""Run the firmware image validator the way procd does, and take the first JSON value it prints.

The validator (``/usr/libexec/validate_firmware_image <image>``, or ``$WRT_VALIDATOR`` split like a
shell word list, with the image path appended) gets /dev/null on stdin and stderr and a pipe on
stdout. We read until the first complete JSON value and stop there (procd does not wait for EOF);
unlike procd the read is bounded in size and time, and a validator that is still running when
its time is up is killed with its process group. In a PID 1 the child is spawned through the
installed ``wrtcore.children.Reaper`` so that its status is collected there.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wrtcore import children, log

DEFAULT_VALIDATOR = "/usr/libexec/validate_firmware_image"
DEFAULT_TIMEOUT = 300.0
MAX_OUTPUT = 1 << 20
CHUNK = 64 * 1024

_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_NUMBER_TAIL = re.compile(r"[-+.eE0-9]*")
_ESCAPE_TAIL = re.compile(r"u[0-9a-fA-F]{0,4}")  # json reports a cut \uXXXX at its "u"


class ValidatorError(Exception):
    """The validator could not give an answer; ``detail`` is procd's wording where it has one."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def validator_argv(path: str, environ: Mapping[str, str] | None = None) -> list[str]:
    spec = (os.environ if environ is None else environ).get("WRT_VALIDATOR")
    prefix = shlex.split(spec) if spec else [DEFAULT_VALIDATOR]
    return [*prefix, path]


def _truncated(text: str, exc: json.JSONDecodeError) -> bool:
    """Did decoding fail only because the input stops early (more bytes could complete it)?"""
    if exc.pos >= len(text) or exc.msg.startswith("Unterminated string"):
        return True
    tail = text[exc.pos:]
    if exc.msg.startswith("Invalid \\uXXXX"):
        return bool(_ESCAPE_TAIL.fullmatch(tail))
    return any(lit.startswith(tail) for lit in _LITERALS) or bool(_NUMBER_TAIL.fullmatch(tail))


def first_value(text: str, eof: bool) -> tuple[bool, Any]:
    """(True, value) once ``text`` starts with a complete JSON value; (False, None) if more is needed.

    Raises ValidatorError for input that cannot become JSON, or that ended incomplete at ``eof``.
    """
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        if eof:
            raise ValidatorError("incomplete JSON input")
        return False, None
    try:
        value, end = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError as exc:
        if not _truncated(stripped, exc):
            raise ValidatorError(f"failed to parse JSON: {exc.msg} (char {exc.pos})") from None
        if eof:
            raise ValidatorError("incomplete JSON input") from None
        return False, None
    except RecursionError:
        raise ValidatorError("failed to parse JSON: nesting too deep") from None
    if not eof and end == len(stripped) and isinstance(value, int | float) and not isinstance(value, bool):
        return False, None  # a number at the end of the buffer may still grow
    return True, value


def read_first_value(fd: int, timeout: float = DEFAULT_TIMEOUT, max_output: int = MAX_OUTPUT) -> Any:
    """Read ``fd`` until the first complete JSON value, EOF, ``max_output`` bytes or ``timeout``."""
    deadline = time.monotonic() + timeout
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    text = ""
    total = 0
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ValidatorError(f"no answer within {timeout:g} s")
        if not poller.poll(max(1, int(remaining * 1000))):
            continue
        try:
            data = os.read(fd, CHUNK)
        except OSError as exc:
            raise ValidatorError(f"read() failed: {exc.strerror}") from None
        if not data:
            if total == 0:
                raise ValidatorError("no JSON input")
            return first_value(text + utf8.decode(b"", final=True), eof=True)[1]
        total += len(data)
        if total > max_output:
            raise ValidatorError(f"output exceeds {max_output} bytes")
        text += utf8.decode(data)
        done, value = first_value(text, eof=False)
        if done:
            return value


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _collect(pid: int, wait: Callable[[float | None], bool], deadline: float | None) -> None:
    """Collect the validator in the background; one still running at ``deadline`` is killed first."""
    def watch() -> None:
        if deadline is not None and not wait(max(0.0, deadline - time.monotonic())):
            log.get().warning("validator.killed", pid=pid, reason="still running at its deadline")
            _killpg(pid)
        wait(None)
    threading.Thread(target=watch, name=f"validator-{pid}", daemon=True).start()


def run_validator(path: str, *, argv: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                  max_output: int = MAX_OUTPUT) -> dict[str, Any]:
    """The validator's JSON object for ``path``; ValidatorError with procd's detail otherwise."""
    cmd = list(argv) if argv else validator_argv(path)
    deadline = time.monotonic() + timeout
    reaper = children.installed()
    exited = threading.Event()
    proc: subprocess.Popen[bytes] | None = None
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        if reaper is not None:
            pid = reaper.spawn(cmd, stdin=devnull, stdout=w, stderr=devnull, setsid=True,
                               on_exit=lambda _pid, _status: exited.set())
        else:
            proc = subprocess.Popen(cmd, stdin=devnull, stdout=w, stderr=devnull, start_new_session=True)
            pid = proc.pid
    except OSError as exc:
        os.close(r)
        raise ValidatorError(f"cannot execute {cmd[0]}: {exc.strerror or exc}") from None
    finally:
        os.close(w)
        os.close(devnull)

    def wait(t: float | None) -> bool:
        if proc is None:
            return exited.wait(t)
        try:
            proc.wait(t)
        except subprocess.TimeoutExpired:
            return False
        return True

    log.get().info("validator.run", argv=cmd, pid=pid)
    try:
        value = read_first_value(r, timeout, max_output)
    except ValidatorError as exc:
        log.get().warning("validator.failed", pid=pid, detail=exc.detail)
        _killpg(pid)
        _collect(pid, wait, None)
        raise
    finally:
        os.close(r)
    _collect(pid, wait, deadline)
    if not isinstance(value, dict):
        raise ValidatorError("result is not an JSON object")
    return value
