"""The bus's ``system`` object: board, info, validate_firmware_image, sysupgrade, reboot, watchdog.

``sysupgrade`` follows procd (request.py's policy and table, validator.py's helper) with two
improvements: an accepted request is answered with status 0 ``{"accepted": true}`` *before* the host
starts the upgrade, and only one upgrade is taken at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from upgraded import request
from upgraded.bus import Bus, Caller, Method, Reply
from upgraded.request import Rejection, SysupgradeArgs, UpgradeRequest
from upgraded.rpc import Status
from upgraded.validator import ValidatorError, run_validator
from wrtcore import log
from wrtcore.watchdog import Keeper

OBJECT = "system"
MSG_REBOOT_REFUSED = "sysupgrade in progress"

Validate = Callable[[str], dict[str, Any]]
WATCHDOG_SIGNATURE = {"frequency": "int32", "timeout": "int32", "magicclose": "boolean", "stop": "boolean"}
INT32_MAX = 2**31 - 1


class Host(Protocol):
    """What the init provides to the system object."""

    def board(self) -> dict[str, Any]: ...

    def info(self) -> dict[str, Any]: ...

    def start_upgrade(self, req: UpgradeRequest) -> None:
        """Called after the acceptance reply was written, on a thread of its own."""
        ...

    def reboot(self) -> None: ...


def _refuse(rejection: Rejection) -> Reply:
    return Reply(rejection.status, rejection.body())


class SystemObject:
    def __init__(self, host: Host, validate: Validate = run_validator,
                 watchdog: Callable[[], Keeper | None] = lambda: None) -> None:
        self.host = host
        self._validate = validate
        self._watchdog = watchdog
        self._lock = threading.Lock()
        self._busy = False

    @property
    def upgrading(self) -> bool:
        """True from the moment a sysupgrade request is being decided until ``release()``."""
        with self._lock:
            return self._busy

    def release(self) -> None:
        """The upgrade ended without a reboot (or could not start): accept requests again."""
        with self._lock:
            self._busy = False

    def methods(self) -> dict[str, Method]:
        return {
            "board": Method(self._board),
            "info": Method(self._info),
            "validate_firmware_image": Method(self._validate_image, {"path": "string"}, root_only=True),
            "sysupgrade": Method(self._sysupgrade, request.SYSUPGRADE_SIGNATURE, root_only=True),
            "reboot": Method(self._reboot, root_only=True),
            "watchdog": Method(self._watchdog_call, WATCHDOG_SIGNATURE, root_only=True),
        }

    def register(self, bus: Bus) -> None:
        bus.add_object(OBJECT, self.methods())

    # -- methods ----------------------------------------------------------------------------------
    def _board(self, _args: dict[str, Any], _caller: Caller) -> Reply:
        return Reply(Status.OK, self.host.board())

    def _info(self, _args: dict[str, Any], _caller: Caller) -> Reply:
        return Reply(Status.OK, self.host.info())

    def _validate_image(self, args: dict[str, Any], _caller: Caller) -> Reply:
        path = args.get("path")
        if not isinstance(path, str):
            return Reply(Status.INVALID_ARGUMENT)
        try:
            return Reply(Status.OK, self._validate(path))
        except ValidatorError as exc:  # procd sends no body here; a reason costs nothing
            log.get().warning("validate_firmware_image.failed", path=path, detail=exc.detail)
            return _refuse(request.not_validated(exc.detail))

    def _sysupgrade(self, args: dict[str, Any], caller: Caller) -> Reply:
        parsed = request.parse_sysupgrade(args)
        if isinstance(parsed, Rejection):
            log.get().warning("sysupgrade.refused", status=parsed.status.name, reason="path/prefix missing")
            return _refuse(parsed)
        with self._lock:
            if self._busy:
                log.get().warning("sysupgrade.refused", reason=request.MSG_IN_PROGRESS, pid=caller.pid)
                return Reply.error(Status.UNKNOWN_ERROR, request.MSG_IN_PROGRESS)
            self._busy = True
        try:
            outcome = self._decide(parsed)
        except BaseException:
            self.release()
            raise
        if isinstance(outcome, Rejection):
            self.release()
            log.get().warning("sysupgrade.refused", status=outcome.status.name, reason=outcome.message)
            return _refuse(outcome)
        for warning in outcome.warnings:
            log.get().warning("sysupgrade.option_skipped", message=warning)
        log.get().info("sysupgrade.accepted", path=outcome.path, force=outcome.force,
                       backup=outcome.backup, command=outcome.command, pid=caller.pid)
        return Reply(Status.OK, request.accepted_body(outcome), after=lambda: self._start(outcome))

    def _decide(self, args: SysupgradeArgs) -> UpgradeRequest | Rejection:
        try:
            output = self._validate(args.path)
        except ValidatorError as exc:
            return request.not_validated(exc.detail)
        return request.evaluate(args, output)

    def _start(self, req: UpgradeRequest) -> None:
        try:
            self.host.start_upgrade(req)
        except Exception as exc:
            log.get().error("sysupgrade.start_failed", error=repr(exc))
            self.release()

    def _watchdog_call(self, args: dict[str, Any], _caller: Caller) -> Reply:
        """procd's ``system watchdog``: frequency, timeout (int32 > 0), magicclose, stop (booleans)."""
        for key in ("frequency", "timeout"):
            value = args.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 < value <= INT32_MAX):
                return Reply.error(Status.INVALID_ARGUMENT, f"{key} must be a positive int32")
        for key in ("magicclose", "stop"):
            if args.get(key) is not None and not isinstance(args[key], bool):
                return Reply.error(Status.INVALID_ARGUMENT, f"{key} must be a boolean")
        keeper = self._watchdog()
        if keeper is None:
            return Reply(Status.OK, {"status": "offline", "timeout": 0, "frequency": 0, "magicclose": False})
        reply = keeper.configure(frequency=args.get("frequency"), timeout=args.get("timeout"),
                                 magicclose=args.get("magicclose"), stop=args.get("stop"))
        if args:
            log.get().info("watchdog set", **reply)
        return Reply(Status.OK, reply)

    def _reboot(self, _args: dict[str, Any], _caller: Caller) -> Reply:
        if self.upgrading:  # a reboot now could cut the flash short
            return Reply.error(Status.UNKNOWN_ERROR, MSG_REBOOT_REFUSED)
        return Reply(Status.OK, after=self.host.reboot)
