"""stage2's guard that it writes only the disk the running system booted from."""

from __future__ import annotations

import os

import pytest

from stage2 import before
from wrtcore import mounts
from wrtcore.errors import InvalidInput

SQUASHFS = os.makedev(7, 2)
OTHER = os.makedev(8, 1)


def table(rom_dev: int | None, root_dev: int) -> list[mounts.Mount]:
    rows = [mounts.Mount(1, 0, root_dev, "/", "/", ("rw",), "overlay", "overlayfs:/overlay")]
    if rom_dev is not None:
        rows.append(mounts.Mount(2, 1, rom_dev, "/", "/rom", ("ro",), "squashfs", "/dev/loop2"))
    return rows


@pytest.mark.parametrize(("rom", "root"), [(SQUASHFS, os.makedev(0, 40)), (None, SQUASHFS)])
def test_the_boot_disk_passes(monkeypatch: pytest.MonkeyPatch, rom: int | None, root: int) -> None:
    monkeypatch.setattr(mounts, "read_mountinfo", lambda pid="self": table(rom, root))
    before.check_booted_from("/dev/loop0", frozenset({os.makedev(7, 0), SQUASHFS}))


def test_another_disk_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mounts, "read_mountinfo", lambda pid="self": table(OTHER, os.makedev(0, 40)))
    with pytest.raises(InvalidInput, match="is not the disk this system booted from"):
        before.check_booted_from("/dev/loop0", frozenset({os.makedev(7, 0), SQUASHFS}))


def test_pid1_loads_the_swu_stack_only_for_a_bundle() -> None:
    """The init imports stage2's steps when an upgrade starts: signatures (cryptography), libconf and the
    handlers must not come along for a firmware image (about 13 MiB of PID 1's memory)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import upgraded.upgrade, stage2.before; "
            "print(sorted(m for m in ('cryptography', 'libconf', 'swu.signature', 'swu.install', "
            "'stage2.swu_step') if m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
