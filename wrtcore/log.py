"""Logging for every stage: human lines on the console, JSON records on a channel of their own.

The JSON channel is a file descriptor named by ``WRT_LOG_FD`` (a second serial port in a VM, a pipe or
file in the sandbox; in a VM the init opens the device named by the kernel parameter ``wrt.log=`` and
exports ``WRT_LOG_FD`` to its children) and, when ``journal()`` is given a path, an append-only
journal file that travels with stage2 into the ramfs. Records are shaped like osbuild's monitor
entries: ``event``, ``state``, ``step``, ``progress`` {done,total}, ``duration``, ``result``, plus ``ts``
and ``component``.
"""

from __future__ import annotations

import os
import sys
import time

from wrtcore import cmdline

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:  # annotations only: the mtd command's start-up (see wrtcore.light_tuple)
    from collections.abc import Iterator, MutableMapping
    from contextlib import AbstractContextManager
    from typing import Any

_sinks: list[int] = []
_journal_fd: int | None = None
_component = "wrt"
_light: Any = None  # the console of a light setup (no structlog), or None


def _json_sink(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    fds = [*_sinks, *([_journal_fd] if _journal_fd is not None else [])]
    if not fds:
        return event
    record = {"ts": round(time.time(), 6), "component": _component, "level": method, **event}
    body = _plain_json(record)
    if body is None:  # a string to escape, a float that is not finite, a key that is not a string
        import json  # here: most records never need it (see _plain_json)

        body = json.dumps(record, default=str)
    line = (body + "\n").encode()
    for fd in fds:
        try:  # noqa: SIM105 - no contextlib: the light commands' start-up
            os.write(fd, line)
        except OSError:
            pass
    return event


def _plain_json(value: Any) -> str | None:
    """``json.dumps(value, default=str)`` when it needs no escape, else None.

    The records of a light command (``mtd``) are plain ASCII words and numbers; ``import json`` loads
    ``re``, ``enum`` and ``functools`` (a tenth of that command's start-up under emulation). Anything
    json would escape or convert (control characters, quotes, non-ASCII, NaN, non-string keys) returns
    None and goes through ``json.dumps``; ``tests/unit/test_log.py`` checks both give the same text."""
    if isinstance(value, str):
        plain = value.isascii() and value.isprintable() and '"' not in value and "\\" not in value
        return '"' + value + '"' if plain else None  # concatenation: a str subclass's own text, as json
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value) if value - value == 0 else None  # inf - inf, nan - nan: nan
    if isinstance(value, (list, tuple)):
        items = []
        for v in value:
            text = _plain_json(v)
            if text is None:
                return None
            items.append(text)
        return "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        pairs = []
        for k, v in value.items():
            key = _plain_json(k) if isinstance(k, str) else None  # json converts other keys: its call
            text = _plain_json(v)
            if key is None or text is None:
                return None
            pairs.append(f"{key}: {text}")
        return "{" + ", ".join(pairs) + "}"
    return _plain_json(str(value))


def _console(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    name = event.pop("event", "")
    extras = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("progress",))
    progress = event.get("progress")
    if isinstance(progress, dict) and progress.get("total"):
        extras += f" [{progress.get('done', 0)}/{progress['total']}]"
    return f"{_component}: {name}" + (f" {extras}" if extras else "")


def channel_from_cmdline() -> int | None:
    """Without ``WRT_LOG_FD``: open the device of the kernel's ``wrt.log=`` (e.g. /dev/ttyS1), inheritable,
    and export it as ``WRT_LOG_FD`` for the children. None when absent or not openable (yet: /dev)."""
    if os.environ.get("WRT_LOG_FD"):
        return None
    path = cmdline.read().get("wrt.log", "")
    if not path.startswith("/dev/"):
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_APPEND)
    except OSError:
        return None
    os.set_inheritable(fd, True)
    os.environ["WRT_LOG_FD"] = str(fd)
    return fd


def setup(component: str, console: Any = None, *, light: bool = False) -> None:
    """Configure structlog for this process. Safe to call again (after an exec it must be).

    ``light``: the same records through the same sinks without importing structlog (seconds of start-up
    under emulation), for short commands that bind no context variables (``mtd``)."""
    global _component, _light
    _component = component
    _sinks.clear()
    channel_from_cmdline()
    fd = os.environ.get("WRT_LOG_FD")
    if fd and fd.isdigit():
        _sinks.append(int(fd))
    _light = (console or sys.stderr) if light else None
    if light:
        return
    import structlog  # lazy: a light setup never pays for it

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _json_sink, _console],
        logger_factory=structlog.PrintLoggerFactory(console or sys.stderr),
        cache_logger_on_first_use=False,
    )


def journal(path: str | None) -> None:
    """Also append every record to ``path`` (opened O_APPEND); None closes the journal."""
    global _journal_fd
    if _journal_fd is not None:
        try:  # noqa: SIM105 - as above
            os.close(_journal_fd)
        except OSError:
            pass
        _journal_fd = None
    if path:
        _journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


class _LightLogger:
    """structlog's bound-logger methods over ``_json_sink`` and ``_console``, for a light setup."""

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context

    def bind(self, **context: Any) -> _LightLogger:
        return _LightLogger({**self._context, **context})

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        record = _json_sink(None, method, {"event": event, **self._context, **fields})
        try:  # noqa: SIM105 - as above
            _light.write(_console(None, method, record) + "\n")
        except (OSError, ValueError):
            pass

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


def get(**context: Any) -> Any:
    if _light is not None:
        return _LightLogger(context)
    import structlog  # lazy: see setup()

    return structlog.get_logger().bind(**context)


def step(name: str, **context: Any) -> AbstractContextManager[None]:
    """Time a nested step: the log becomes a timing profile."""
    import contextlib  # here: the light commands never time steps

    return contextlib.contextmanager(_timed)(name, context)


def _timed(name: str, context: dict[str, Any]) -> Iterator[None]:
    log = get()
    start = time.monotonic()
    try:
        yield
    except BaseException as exc:
        log.warning("step", step=name, result="failed", error=str(exc),
                    duration=round(time.monotonic() - start, 4), **context)
        raise
    log.info("step", step=name, result="ok", duration=round(time.monotonic() - start, 4), **context)
