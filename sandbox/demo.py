"""The README's demo: a full upgrade cycle on the built-in demo device, with the config kept.

    python -m sandbox.demo [--workdir DIR] [--keep]

Boots firmware 1.0 on a sandbox device (loop devices, namespaces, our upgraded as PID 1), changes the
LAN address in /etc/config/network, runs ``sysupgrade`` on the device with firmware 2.0, follows
stage2 through the reboot, boots 2.0 and checks the version and the kept config. Prints the state
timeline and the result; exits 0 when the cycle succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox import images as imagesmod
from sandbox.device import Boot, Device
from wrtcore import log

NEW_IP = "10.9.8.7"


def _say(text: str) -> None:
    print(text, flush=True)


def timeline(boot: Boot) -> list[tuple[float, str, float]]:
    """(seconds since the request, state, seconds spent in the previous state)."""
    rows = [r for r in boot.records if r.get("event") == "transition"]
    if not rows:
        return []
    t0 = rows[0]["ts"]
    return [(r["ts"] - t0, r["state"], r.get("duration", 0.0)) for r in rows]


def run(workdir: Path) -> int:
    log.setup("demo", console=open(os.devnull, "w"))  # noqa: SIM115 - quiet host-side logging
    _say("== building the demo firmware images (cached by content)")
    imgs = imagesmod.build()
    _say(f"   1.0: {imgs.v1}\n   2.0: {imgs.v2}\n   board: {imgs.board}, {imgs.build_seconds:.1f} s")
    with Device(workdir, imgs.v1) as dev:
        _say(f"== booting firmware 1.0 (disk {dev.disk}, root {dev.root_part}, boot {dev.boot_part})")
        boot1 = dev.boot()
        boot1.wait_ready()
        version = boot1.path("/etc/openwrt_version").read_text().strip()
        _say(f"   up: firmware {version}, PID 1 is upgraded (host pid {boot1.pid})")
        res = boot1.run(["sed", "-i", f"s/option ipaddr .*/option ipaddr '{NEW_IP}'/", "/etc/config/network"])
        if res.returncode != 0:
            _say(f"   could not change the config: {res.stderr.strip()}")
            return 1
        _say(f"   changed /etc/config/network: LAN address {NEW_IP}")
        shutil.copyfile(imgs.v2, boot1.path("/tmp/sysupgrade.img"))
        _say("== on the device: sysupgrade /tmp/sysupgrade.img")
        started = time.monotonic()
        res = boot1.run(["sysupgrade", "/tmp/sysupgrade.img"], timeout=300)
        for line in (res.stderr + res.stdout).splitlines():
            _say(f"   | {line}")
        ended = boot1.wait_end(timeout=300)
        _say(f"== device rebooted ({ended.get('ended')} {ended.get('signal', ended.get('code'))},"
             f" {time.monotonic() - started:.2f} s after sysupgrade started)")
        _say("   stage2 timeline (s since accepted, state, time spent in the previous state):")
        for t, state, spent in timeline(boot1):
            _say(f"   {t:7.3f}  {state:<20} {spent:7.3f}")
        boot2 = dev.boot()
        boot2.wait_ready()
        version2 = boot2.path("/etc/openwrt_version").read_text().strip()
        config = boot2.path("/etc/config/network").read_text()
        report: dict[str, Any] = json.loads(boot2.path("/tmp/log/last-upgrade.json").read_text())
        kept = f"'{NEW_IP}'" in config
        _say(f"== booted firmware {version2}; LAN address kept: {kept}")
        _say(f"   last upgrade report: outcome={report['outcome']} written={report['written']} "
             f"bytes={report['bytes_written']} first byte written {report['first_write_after']} s after the"
             f" request, ramfs {report['ramfs_bytes']} bytes, config kept={report['config_kept']}")
        for s in report["services"]:
            _say(f"   service {s['name']}: {s['outcome']} ({s.get('status')}) in {s.get('seconds', 0):.3f} s")
        reply = boot2.call("system", "reboot")
        boot2.wait_end(timeout=60)
        ok = version == "1.0" and version2 == "2.0" and kept and report["outcome"] == "success"
        _say(f"== result: {'PASS' if ok else 'FAIL'}: {version} -> {version2}, config "
             f"{'kept' if kept else 'LOST'}, outcome {report['outcome']}; "
             f"shutdown via bus: status {reply['result'][0]}")
        return 0 if ok else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path,
                        help="where the device's disk and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (disk, console and JSON logs)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wrt-demo-"))
    try:
        return run(workdir)
    finally:
        if args.keep or args.workdir:
            _say(f"   logs: {workdir}/console-*.log, {workdir}/boot-*.jsonl")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
