"""Service declarations: the JSON files of ``/etc/upgraded/services.d``, validated as a whole.

Each ``*.json`` declares one service::

    {"name": "dnsmasq", "command": ["/usr/sbin/dnsmasq", "-k"], "term_timeout": 5,
     "respawn": true, "respawn_threshold": 3600, "respawn_timeout": 5, "respawn_retry": 5,
     "env": {"KEY": "value"}, "stdout": "/var/log/dnsmasq.log", "stderr": "/var/log/dnsmasq.log"}

Only ``name`` and ``command`` are required; the defaults are procd's. ``load_dir`` validates the whole
directory before anything starts and reports every problem with its file and key
(``ServiceConfigError``, one ``ConfigIssue`` each); ``parse_spec`` checks one decoded document. The
result is a list of frozen ``ServiceSpec`` for the supervisor (``upgraded.services``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrtcore import log
from wrtcore.errors import InvalidInput

DEFAULT_DIR = "/etc/upgraded/services.d"
MAX_FILE_BYTES = 64 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

DEFAULTS: dict[str, Any] = {
    "term_timeout": 5.0,
    "respawn": True,
    "respawn_threshold": 3600.0,
    "respawn_timeout": 5.0,
    "respawn_retry": 5,
}
KNOWN_KEYS = frozenset({"name", "command", "env", "stdout", "stderr", *DEFAULTS})


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: tuple[str, ...]
    term_timeout: float = 5.0
    respawn: bool = True
    respawn_threshold: float = 3600.0
    respawn_timeout: float = 5.0
    respawn_retry: int = 5
    env: Mapping[str, str] = field(default_factory=dict)
    stdout: str | None = None
    stderr: str | None = None
    source: str = ""


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ServiceConfigError(InvalidInput):
    """The service directory is invalid; ``issues`` lists every problem found, with file and key."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        first = str(self.issues[0]) if self.issues else "invalid service configuration"
        more = f" (and {len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(f"invalid service configuration: {first}{more}",
                         hint="; ".join(str(i) for i in self.issues[1:]) or None)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_spec(data: Any, source: str) -> tuple[ServiceSpec | None, list[ConfigIssue]]:
    """Validate one decoded JSON document. Returns the spec (None if invalid) and every issue found."""
    issues: list[ConfigIssue] = []

    def bad(key: str | None, message: str) -> None:
        issues.append(ConfigIssue(source, key, message))

    if not isinstance(data, dict):
        bad(None, f"expected a JSON object, got {type(data).__name__}")
        return None, issues
    for key in sorted(set(data) - KNOWN_KEYS):
        bad(key, "unknown key")

    name = data.get("name")
    if name is None:
        bad("name", "missing")
    elif not isinstance(name, str) or not NAME_RE.match(name):
        bad("name", "must be 1-64 characters of [A-Za-z0-9_.@-], starting with a letter or digit")

    command = data.get("command")
    if command is None:
        bad("command", "missing")
    elif not isinstance(command, list) or not command:
        bad("command", "must be a non-empty list of strings")
    elif not all(isinstance(a, str) for a in command) or not command[0] or any("\0" in a for a in command):
        bad("command", "every element must be a string without NUL, the first non-empty")

    values = dict(DEFAULTS)
    for key in ("term_timeout", "respawn_threshold", "respawn_timeout"):
        if key in data:
            value = data[key]
            if not _number(value) or not 0 <= value <= 86400:
                bad(key, "must be a number of seconds between 0 and 86400")
            else:
                values[key] = float(value)
    if "respawn" in data:
        if not isinstance(data["respawn"], bool):
            bad("respawn", "must be true or false")
        else:
            values["respawn"] = data["respawn"]
    if "respawn_retry" in data:
        retry = data["respawn_retry"]
        if not isinstance(retry, int) or isinstance(retry, bool) or not 0 <= retry <= 1_000_000:
            bad("respawn_retry", "must be an integer >= 0 (0: retry forever)")
        else:
            values["respawn_retry"] = retry

    env: dict[str, str] = {}
    if "env" in data:
        raw_env = data["env"]
        if not isinstance(raw_env, dict):
            bad("env", "must be an object of string values")
        else:
            for k, v in raw_env.items():
                if not k or "=" in k or "\0" in k or not isinstance(v, str) or "\0" in v:
                    bad(f"env.{k}", "names must be non-empty without '=' or NUL, values strings without NUL")
                else:
                    env[k] = v

    streams: dict[str, str | None] = {"stdout": None, "stderr": None}
    for key in streams:
        if key in data and data[key] is not None:
            path = data[key]
            if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
                bad(key, "must be an absolute path")
            else:
                streams[key] = path

    if issues:
        return None, issues
    assert isinstance(name, str) and isinstance(command, list)
    return ServiceSpec(
        name=name, command=tuple(command), term_timeout=values["term_timeout"],
        respawn=values["respawn"], respawn_threshold=values["respawn_threshold"],
        respawn_timeout=values["respawn_timeout"], respawn_retry=values["respawn_retry"],
        env=env, stdout=streams["stdout"], stderr=streams["stderr"], source=source,
    ), issues


def load_dir(directory: str | os.PathLike[str] = DEFAULT_DIR) -> list[ServiceSpec]:
    """Every ``*.json`` in ``directory`` (sorted), validated as a whole.

    Raises ``ServiceConfigError`` listing every issue in every file (unreadable, oversized, bad JSON,
    bad keys, duplicate names). A missing directory declares no services.
    """
    base = Path(directory)
    if not base.is_dir():
        log.get().info("services.none", directory=str(base))
        return []
    specs: list[ServiceSpec] = []
    issues: list[ConfigIssue] = []
    seen: dict[str, str] = {}
    for path in sorted(base.glob("*.json")):
        source = str(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            issues.append(ConfigIssue(source, None, f"cannot read: {exc.strerror or exc}"))
            continue
        if len(raw) > MAX_FILE_BYTES:
            issues.append(ConfigIssue(source, None, f"larger than {MAX_FILE_BYTES} bytes"))
            continue
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            issues.append(ConfigIssue(source, None, f"not UTF-8: {exc.reason} at byte {exc.start}"))
            continue
        except json.JSONDecodeError as exc:
            issues.append(ConfigIssue(source, None, f"invalid JSON: {exc.msg} (line {exc.lineno})"))
            continue
        spec, found = parse_spec(data, source)
        issues.extend(found)
        if spec is None:
            continue
        if spec.name in seen:
            issues.append(ConfigIssue(source, "name",
                                      f"duplicate service {spec.name!r} (also in {seen[spec.name]})"))
            continue
        seen[spec.name] = source
        specs.append(spec)
    if issues:
        raise ServiceConfigError(issues)
    return specs

