"""Downtime of an upgrade on the sandbox device, against OpenWrt's fixed sleeps.

    python benchmarks/downtime.py [--runs N]

Downtime = from the moment services start stopping to the first byte written to the flash. OpenWrt's
stage2 spends at least 16 s there in fixed waits alone: procd's 5 s term_timeout, sleep 4 after TERM,
2 s per KILL pass, sleep 6. Two cases: the demo services (one ignores SIGTERM with term_timeout 1 s,
one leaves TERM-proof children behind), and services that exit promptly on SIGTERM. Also printed: the
ramfs size, the peak RSS of PID 1 before the pivot and of the writer after it. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import images as imagesmod
from sandbox.device import Boot, Device
from wrtcore import log

OPENWRT_FIXED_WAITS = 5 + 4 + 6  # plus 2 s for every KILL pass that found a process


def one_cycle(dev: Device, boot: Boot, image: Path) -> dict[str, Any]:
    shutil.copyfile(image, boot.path("/tmp/sysupgrade.img"))
    boot.run(["sysupgrade", "/tmp/sysupgrade.img"], timeout=300)
    boot.wait_end(timeout=300)
    ts = {r["state"]: r["ts"] for r in boot.records if r.get("event") == "transition"}
    nxt = dev.boot()
    nxt.wait_ready()
    report = json.loads(nxt.path("/tmp/log/last-upgrade.json").read_text())
    nxt.call("system", "reboot")
    nxt.wait_end()
    details = report["details"]
    return {"downtime": ts["flashing"] - ts["stopping_services"],
            "request_to_write": report["first_write_after"],
            "ramfs": report["ramfs_bytes"], "pid1_rss": details.get("pid1_peak_rss_kb_before_pivot"),
            "writer_rss": details.get("writer_peak_rss_kb"), "outcome": report["outcome"],
            "terminate": details.get("terminate"), "terminated": report["terminated"]}


def run_case(imgs: imagesmod.Images, prompt: bool, runs: int) -> list[dict[str, Any]]:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="wrt-bench-") as tmp, Device(Path(tmp), imgs.v1) as dev:
            boot = dev.boot()
            boot.wait_done()
            if prompt:  # keep only the service that exits on SIGTERM, then boot again
                for name in ("stubborn", "forker"):
                    boot.path(f"/etc/upgraded/services.d/{name}.json").unlink()
                boot.call("system", "reboot")
                boot.wait_end()
                boot = dev.boot()
                boot.wait_ready()
            results.append(one_cycle(dev, boot, imgs.v2))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, namespaces)", file=sys.stderr)
        return 2
    log.setup("bench", console=open(os.devnull, "w"))  # noqa: SIM115
    imgs = imagesmod.build()
    print(f"OpenWrt stage2 fixed waits before the first write: {OPENWRT_FIXED_WAITS} s, plus 2 s per KILL"
          " pass that found a process")
    print(f"{'services':<22}{'downtime s':>12}{'request->write s':>18}{'ramfs MiB':>11}"
          f"{'PID1 peak MiB':>15}{'writer peak MiB':>17}")
    for label, prompt in (("demo (stubborn)", False), ("prompt on SIGTERM", True)):
        res = run_case(imgs, prompt, args.runs)
        assert all(r["outcome"] == "success" for r in res), res
        if os.environ.get("WRT_BENCH_VERBOSE"):
            for r in res:
                print(json.dumps({k: r[k] for k in ("downtime", "terminate", "terminated")}))
        down = [r["downtime"] for r in res]
        print(f"{label:<22}{statistics.median(down):>12.3f}"
              f"{statistics.median(r['request_to_write'] for r in res):>18.3f}"
              f"{res[0]['ramfs'] / 2**20:>11.1f}{max(r['pid1_rss'] or 0 for r in res) / 1024:>15.1f}"
              f"{max(r['writer_rss'] or 0 for r in res) / 1024:>17.1f}"
              f"   (min {min(down):.3f}, max {max(down):.3f}, {len(res)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
