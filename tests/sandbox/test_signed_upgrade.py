"""Signed firmware on the sandbox device: with REQUIRE_IMAGE_SIGNATURE=1 in the platform's policy file,
an image signed (ucert chain, usign signature by Debian's signify-openbsd) with a key in
/etc/opkg/keys is accepted and flashed; the same image unsigned is refused with procd's status and
message, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sandbox.device import Device
from sandbox.images import Images
from tests.sandbox.conftest import start_upgrade
from tests.unit.test_usign import make_signify
from tests.unit.test_validate import sign_image

pytestmark = pytest.mark.sandbox


def test_signature_required_signed_accepted_unsigned_refused(device: Device, images: Images,
                                                             tmp_path: Path) -> None:
    signify = make_signify(tmp_path)
    key = signify.keypair("key-build")
    signed = tmp_path / "signed.img"
    shutil.copyfile(images.v2, signed)
    sign_image(signify, signed, key, certify=True)

    boot1 = device.boot()
    boot1.wait_done()
    signify.install(key, boot1.path("/etc/opkg/keys"))
    boot1.path("/lib/upgrade/platform.conf").write_text("REQUIRE_IMAGE_SIGNATURE=1\n")

    shutil.copyfile(images.v2, boot1.path("/tmp/unsigned.img"))
    reply = boot1.call("system", "sysupgrade", {"prefix": "/tmp/root", "path": "/tmp/unsigned.img"})
    assert reply["result"] == [8, {"error": {"message": "Firmware image is invalid"}}]
    verdict = boot1.call("system", "validate_firmware_image", {"path": "/tmp/unsigned.img"})["result"]
    assert verdict[0] == 0 and verdict[1]["tests"]["fwtool_signature"] is False
    assert not any(r.get("event") == "transition" for r in boot1.records)
    boot1.path("/tmp/unsigned.img").unlink()

    start_upgrade(boot1, signed)
    assert boot1.wait_end()["signal"] == "SIGHUP"
    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())["outcome"] == "success"
