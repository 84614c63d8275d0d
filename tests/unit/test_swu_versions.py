"""SWUpdate's compare_versions, installed-version sources, -N/-R/--max-version, hwrevision."""

from __future__ import annotations

from pathlib import Path

import pytest

from swu import hwcompat
from swu.model import SwuError
from swu.versions import check_bundle_version, compare_versions, installed_versions, parse_sw_versions


@pytest.mark.parametrize(("left", "right", "result"), [
    ("1.2.3.4", "1.2.3.4.5", 0), ("4.4", "4.4.0", 0), ("1.10", "1.9", 1), ("1.65536", "1.0", 0),
    ("2.0", "10.0", -1), ("1.0.0-rc1", "1.0.0", -1), ("1.0.0-alpha.2", "1.0.0-alpha.10", -1),
    ("1.0.0+build5", "1.0.0+build9", 0), ("v2", "v10", 1), ("", "0", 0), ("2022.01", "2021.12", 1),
])
def test_compare_versions(left: str, right: str, result: int) -> None:
    assert compare_versions(left, right) == result
    assert compare_versions(right, left) == -result


def test_installed_versions_config_wins(tmp_path: Path) -> None:
    sw = tmp_path / "sw-versions"
    sw.write_text("boot 1.0\nbroken\nkernel 4.4 extra\n")
    assert parse_sw_versions(sw.read_text()) == {"boot": "1.0", "kernel": "4.4"}
    cfg = 'globals: { verbose = true; }; versions = ( { name = "boot"; version = "2.0"; } );'
    assert installed_versions(cfg, sw) == {"boot": "2.0"}
    assert installed_versions("globals: { verbose = true; };", sw)["kernel"] == "4.4"
    with pytest.raises(SwuError):
        installed_versions('versions = ( { name = "x"; } );', sw)


def test_bundle_version_flags() -> None:
    assert check_bundle_version("1.0", no_downgrade="1.0") is None
    assert check_bundle_version("0.9", no_downgrade="1.0")
    assert check_bundle_version("1.0", no_reinstall="1.0.0")
    assert check_bundle_version("1.1", max_version="1.0")
    assert check_bundle_version("1.0", max_version="1.0") is None


def test_hwrevision_sources(tmp_path: Path) -> None:
    path = tmp_path / "hwrevision"
    assert hwcompat.read_hwrevision(path) is None
    path.write_text("myboard  1.3\n")
    assert hwcompat.read_hwrevision(path) == ("myboard", "1.3")
    assert hwcompat.parse_hw_option("b:2.0") == ("b", "2.0")
    with pytest.raises(SwuError):
        hwcompat.parse_hw_option("b")


def test_revision_match() -> None:
    assert hwcompat.revision_matches("1.3", ["1.0", "1.3"])
    assert not hwcompat.revision_matches("1.1", ["1.0", "1.2", "1.3"])
    assert not hwcompat.revision_matches("2", ["2.0"])
    assert hwcompat.revision_matches("rev7", ["#RE:rev[[:digit:]]"])
    assert not hwcompat.revision_matches("x", ["#RE:("])
