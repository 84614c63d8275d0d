"""Pure decisions for ``system sysupgrade``: procd's argument policy, validation table and environment.

No I/O here. The JSON the bus hands us is interpreted the way procd sees it after ubus turned it into
blobmsg: parsing is type-strict (a wrong type is the same as absent), JSON ``true``/``false`` are
BOOL (INT8), integers in the int32 range INT32, larger ones INT64, other numbers DOUBLE.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from upgraded.rpc import Status

MSG_INVALID_INPUT = "Validation script provided invalid input"
MSG_BROKEN = "Firmware image is broken and cannot be installed"
MSG_INVALID = "Firmware image is invalid"
MSG_NO_BACKUP = "Firmware image doesn't allow preserving a backup"
MSG_NOT_VALIDATED = "Firmware image couldn't be validated: {detail}"
MSG_IN_PROGRESS = "sysupgrade already in progress"

# blobmsg type numbers, as procd prints them in "has unsupported type: <n>"
BLOBMSG_UNSPEC, BLOBMSG_ARRAY, BLOBMSG_TABLE, BLOBMSG_STRING = 0, 1, 2, 3
BLOBMSG_INT64, BLOBMSG_INT32, BLOBMSG_INT16, BLOBMSG_INT8, BLOBMSG_DOUBLE = 4, 5, 6, 7, 8

_OPTION_NAME = re.compile(r"[A-Za-z0-9_]*")

SYSUPGRADE_SIGNATURE = {"prefix": "string", "path": "string", "force": "boolean",
                        "backup": "string", "command": "string", "options": "object"}


@dataclass(frozen=True)
class Rejection:
    """A refusal: ubus status plus procd's message (None: no reply body, as procd sends for 2)."""

    status: Status
    message: str | None = None

    def body(self) -> dict[str, Any] | None:
        return None if self.message is None else {"error": {"message": self.message}}


@dataclass(frozen=True)
class SysupgradeArgs:
    """The message after procd's blobmsg policy: what survived type-strict parsing."""

    prefix: str
    path: str
    force: bool = False
    backup: str | None = None
    command: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The validator's three flags, once they are known to be JSON booleans."""

    valid: bool
    forceable: bool
    allow_backup: bool


@dataclass(frozen=True)
class UpgradeRequest:
    """An accepted request: what upgraded/stage2 get (argv ``<path> <command>`` plus ``env``)."""

    prefix: str
    path: str
    force: bool
    backup: str | None
    command: str | None
    options: Mapping[str, Any]
    env: Mapping[str, str]
    warnings: tuple[str, ...] = ()


def blobmsg_type(value: Any) -> int:
    """The blobmsg type ubus gives a JSON value."""
    if isinstance(value, bool):
        return BLOBMSG_INT8
    if isinstance(value, int):
        return BLOBMSG_INT32 if -(1 << 31) <= value < (1 << 31) else BLOBMSG_INT64
    if isinstance(value, float):
        return BLOBMSG_DOUBLE
    if isinstance(value, str):
        return BLOBMSG_STRING
    if isinstance(value, dict):
        return BLOBMSG_TABLE
    if isinstance(value, list):
        return BLOBMSG_ARRAY
    return BLOBMSG_UNSPEC


def _string(msg: Mapping[str, Any], key: str) -> str | None:
    value = msg.get(key)
    return value if isinstance(value, str) else None


def parse_sysupgrade(msg: Any) -> SysupgradeArgs | Rejection:
    """procd's policy: missing message, ``path`` or ``prefix`` (absent or mistyped) → 2, no body."""
    if not isinstance(msg, Mapping):
        return Rejection(Status.INVALID_ARGUMENT)
    prefix, path = _string(msg, "prefix"), _string(msg, "path")
    if prefix is None or path is None:
        return Rejection(Status.INVALID_ARGUMENT)
    options = msg.get("options")
    return SysupgradeArgs(prefix=prefix, path=path,
                          force=msg.get("force") is True,  # BOOL only: "force": 1 is ignored
                          backup=_string(msg, "backup"), command=_string(msg, "command"),
                          options=options if isinstance(options, dict) else {})


def parse_verdict(result: Mapping[str, Any]) -> Verdict | Rejection:
    """``valid``, ``forceable`` and ``allow_backup`` must be JSON booleans (0/1 count as missing)."""
    valid, forceable, allow_backup = (result.get(k) for k in ("valid", "forceable", "allow_backup"))
    if not (isinstance(valid, bool) and isinstance(forceable, bool) and isinstance(allow_backup, bool)):
        return Rejection(Status.INVALID_ARGUMENT, MSG_INVALID_INPUT)
    return Verdict(valid, forceable, allow_backup)


def decide(args: SysupgradeArgs, verdict: Verdict) -> Rejection | None:
    """procd's decision table; None means proceed."""
    if not verdict.valid:
        if not verdict.forceable:
            return Rejection(Status.NOT_SUPPORTED, MSG_BROKEN)
        if not args.force:
            return Rejection(Status.NOT_SUPPORTED, MSG_INVALID)
        return None  # forced: procd does not look at allow_backup on this branch
    if not verdict.allow_backup and args.backup is not None:
        return Rejection(Status.NOT_SUPPORTED, MSG_NO_BACKUP)
    return None


def options_env(options: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """``UPGRADE_OPT_<NAME>`` variables as procd sets them, and the messages for skipped options."""
    env: dict[str, str] = {}
    warnings: list[str] = []
    for name, value in options.items():
        if not _OPTION_NAME.fullmatch(name):
            warnings.append(f'Option "{name}" contains invalid characters')
            continue
        kind = blobmsg_type(value)
        if kind not in (BLOBMSG_INT32, BLOBMSG_INT16, BLOBMSG_INT8):
            warnings.append(f'Option "{name}" has unsupported type: {kind}')
            continue
        env["UPGRADE_OPT_" + name.upper()] = str(int(value) & 0xFFFFFFFF)
    return env, warnings


def upgrade_env(args: SysupgradeArgs) -> tuple[dict[str, str], list[str]]:
    env, warnings = options_env(args.options)
    if args.backup is not None:
        env["UPGRADE_BACKUP"] = args.backup
    return env, warnings


def accept(args: SysupgradeArgs) -> UpgradeRequest:
    env, warnings = upgrade_env(args)
    return UpgradeRequest(prefix=args.prefix, path=args.path, force=args.force, backup=args.backup,
                          command=args.command, options=dict(args.options), env=env,
                          warnings=tuple(warnings))


def evaluate(args: SysupgradeArgs, validator_output: Mapping[str, Any]) -> UpgradeRequest | Rejection:
    """Steps 3 and 4 of procd's sysupgrade method, given the validator's JSON object."""
    verdict = parse_verdict(validator_output)
    if isinstance(verdict, Rejection):
        return verdict
    return decide(args, verdict) or accept(args)


def not_validated(detail: str) -> Rejection:
    return Rejection(Status.UNKNOWN_ERROR, MSG_NOT_VALIDATED.format(detail=detail))


def accepted_body(req: UpgradeRequest) -> dict[str, Any]:
    """Better than procd (which never answers on success): an explicit acceptance."""
    body: dict[str, Any] = {"accepted": True}
    if req.warnings:
        body["warnings"] = list(req.warnings)
    return body
