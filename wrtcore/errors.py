"""The small tree of typed errors the chain raises, and their exit codes.

Exit codes (documented in the README): 0 ok, 1 known failure, 2 invalid input or usage,
3 no bus (upgraded not reachable), 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
EXIT_NO_BUS = 3
EXIT_INTERRUPTED = 130


class UpgradeError(Exception):
    """A known failure: one line of message, an optional hint, an exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InvalidInput(UpgradeError):
    """Bad input: nothing was written."""

    exit_code = EXIT_INVALID


class BusUnavailable(UpgradeError):
    exit_code = EXIT_NO_BUS


class NotPid1(UpgradeError):
    """A destructive step was asked for outside a PID 1 it owns."""


class WriteError(UpgradeError):
    """A write or verify failure on the flash target, with the byte offset where it happened."""

    def __init__(self, message: str, offset: int, written: bool, hint: str | None = None) -> None:
        super().__init__(f"{message} at offset {offset}", hint)
        self.offset = offset
        self.written = written
