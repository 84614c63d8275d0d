"""The last upgrade's report as a user finds it on the next boot: a console line, /var/log/last-upgrade.json
with its ``summary``, and ``last_upgrade`` in ``system info``; after a successful upgrade and after one
aborted before writing (a fault injected in ``terminating``: the old firmware boots again)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox.device import Boot, Device
from sandbox.images import Images
from tests.sandbox.conftest import start_upgrade

pytestmark = pytest.mark.sandbox


def published(boot: Boot) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(boot.path("/tmp/log/last-upgrade.json").read_text())
    reply = boot.call("system", "info")
    status, info = reply["result"]
    assert status == 0
    assert info["last_upgrade"] == data, "system info carries the same report"
    return data


def test_report_after_a_successful_upgrade(device: Device, images: Images) -> None:
    boot1 = device.boot()
    boot1.wait_done()
    assert published_absent(boot1)
    start_upgrade(boot1, images.v2)
    assert boot1.wait_end()["signal"] == "SIGHUP"

    boot2 = device.boot()
    line = boot2.wait_console("last upgrade:")
    boot2.wait_socket()
    report = published(boot2)
    s = report["summary"]
    assert (s["outcome"], s["from_version"], s["to_version"], s["running_version"]) == (
        "success", "1.0", "2.0", "2.0")
    assert s["written"] is True and s["error"] is None and s["config_kept"] is True
    assert s["files_restored"] >= 1 and s["seconds"] > 0 and s["first_write_after"] > 0
    # the demo's services: stubborn ignores SIGTERM (killed), the others stop on it
    assert "stubborn" in s["services_killed"] and "holder" in s["services_stopped"]
    assert s["processes_ended"] == len(report["terminated"])
    assert line.startswith("last upgrade: success (1.0 -> 2.0, ") and "running 2.0" in line
    assert f"config kept ({s['files_restored']} files)" in line


def test_report_after_an_upgrade_aborted_before_writing(device: Device, images: Images) -> None:
    boot1 = device.boot(env={"WRT_FAULT_STATE": "terminating"})
    boot1.wait_done()
    start_upgrade(boot1, images.v2)
    assert boot1.wait_end()["signal"] == "SIGHUP"

    boot2 = device.boot()
    line = boot2.wait_console("last upgrade:")
    boot2.wait_socket()
    s = published(boot2)["summary"]
    assert (s["outcome"], s["from_version"], s["to_version"], s["running_version"]) == (
        "aborted", "1.0", "2.0", "1.0")
    assert s["written"] is False and s["failed_state"] == "terminating" and "fault injected" in s["error"]
    assert s["meaning"].startswith("aborted before writing anything")
    assert line.startswith("last upgrade: aborted (1.0 -> 2.0") and "running 1.0" in line
    assert "in terminating: " in line


def published_absent(boot: Boot) -> bool:
    """A first boot has no report: no file, and ``last_upgrade`` is null."""
    reply = boot.call("system", "info")
    return not boot.path("/tmp/log/last-upgrade.json").exists() and reply["result"][1]["last_upgrade"] is None
