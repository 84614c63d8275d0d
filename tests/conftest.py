"""Shared pytest wiring: under CI (CI=true) a skipped test is a failure, as DESIGN.md asks."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) skipped; skips count as failures here", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
