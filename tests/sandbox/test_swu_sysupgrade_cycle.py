"""``sysupgrade bundle.swu`` on the sandbox device: a signed bundle whose raw image is the v2 disk
replaces the running system through stage2 (config kept); a bundle with a wrong sha256 is refused by
stage 1 with nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox import disk as diskmod
from sandbox.device import Boot, Device
from sandbox.images import Images
from tests.sandbox.test_upgrade_cycle import disk_digest
from tests.swu_corpus import cms_sign, cpio_bytes, make_signer, sha

pytestmark = pytest.mark.sandbox

CHANGED = ("config interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n"
           "\toption ipaddr '10.9.8.7'\n")


def _description(device: str, digest: str) -> bytes:
    return (f'software = {{\n  version = "2.0";\n  hardware-compatibility = [ "1.0" ];\n'
            f'  images: ( {{ filename = "disk.img"; type = "raw"; device = "{device}"; '
            f'sha256 = "{digest}"; }} );\n}};\n').encode()


def _bundle(images: Images, device: str, workdir: Path, *, corrupt: bool = False) -> tuple[bytes, bytes]:
    payload = images.v2.read_bytes()[:diskmod.payload_size(images.v2)]
    digest = sha(payload)
    if corrupt:  # the description promises other bytes than the bundle carries
        digest = sha(payload + b"x")
    text = _description(device, digest)
    signer = make_signer(workdir)
    return cpio_bytes([("sw-description", text), ("sw-description.sig", cms_sign(text, signer, workdir)),
                       ("disk.img", payload)]), signer.cert.read_bytes()


def _prepare(boot: Boot, cert: bytes) -> None:
    boot.path("/etc/hwrevision").write_text("sandbox 1.0\n")
    boot.path("/etc/swupdate").mkdir(parents=True, exist_ok=True)
    boot.path("/etc/swupdate/public.pem").write_bytes(cert)


def _transitions(boot: Boot) -> list[str]:
    return [r["state"] for r in boot.records if r.get("event") == "transition"]


def test_bundle_replaces_the_system_and_keeps_config(device: Device, images: Images, tmp_path: Path) -> None:
    bundle, cert = _bundle(images, str(device.disk), tmp_path)
    boot1 = device.boot()
    boot1.wait_ready()
    _prepare(boot1, cert)
    boot1.path("/etc/config/network").write_text(CHANGED)
    boot1.path("/tmp/bundle.swu").write_bytes(bundle)
    res = boot1.run(["sysupgrade", "/tmp/bundle.swu"], timeout=180)
    assert res.returncode in (0, -15, -9), f"sysupgrade failed: {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert boot1.wait_end() == {"ended": "signal", "signal": "SIGHUP"}
    assert _transitions(boot1)[-5:] == ["flashing", "verifying", "saving_config", "finalizing", "rebooting"]

    boot2 = device.boot()
    boot2.wait_ready()
    assert boot2.path("/etc/openwrt_version").read_text().strip() == "2.0"
    assert boot2.path("/etc/config/network").read_text() == CHANGED
    report: dict[str, Any] = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
    assert report["outcome"] == "success"
    assert report["config_kept"] is True
    assert report["bytes_written"] == diskmod.payload_size(images.v2)
    assert report["details"]["swu"]["installed"] == [{"target": str(device.disk),
                                                      "bytes": diskmod.payload_size(images.v2)}]


def test_bundle_with_wrong_sha256_is_refused_in_stage1(device: Device, images: Images,
                                                       tmp_path: Path) -> None:
    bundle, cert = _bundle(images, str(device.disk), tmp_path, corrupt=True)
    boot1 = device.boot()
    boot1.wait_ready()
    _prepare(boot1, cert)
    size = os.path.getsize(device.disk_file)
    before = disk_digest(device, size)
    boot1.path("/tmp/bundle.swu").write_bytes(bundle)
    res = boot1.run(["sysupgrade", "/tmp/bundle.swu"], timeout=180)
    assert res.returncode == 1, f"{res.returncode}\n{res.stdout}\n{res.stderr}"
    out = res.stdout + res.stderr
    assert "Invalid .swu bundle" in out and "sha256" in out, out
    assert "Image check failed." in out
    assert boot1.alive()
    assert not any(r.get("event") == "transition" for r in boot1.records)
    assert disk_digest(device, size) == before
