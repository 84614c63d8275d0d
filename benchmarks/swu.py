"""Benchmark the streaming ``.swu`` install of a raw artifact against ``dd`` of the same bytes.

    .venv/bin/python benchmarks/swu.py [--size 256] [--rss-sizes 64,1024] [--repeat 3]

Needs root (loop devices). For ``--size`` MiB of random bytes it builds a bundle (GNU cpio ``-H crc``,
sha256 on the artifact) and, alternately in child processes, writes the same bytes to the same loop device
(over a sparse file) with ``dd bs=1M conv=fsync`` and with ``swu.install`` reading the bundle as a stream
(one pass, as ``swupdate-wrt -i -`` does; the check-first pass of a file bundle is not counted). Reported:
dd's wall time; ours split into streaming write + fsync (the cpio read, its 070702 sum, the sha256 and a
CRC32 per chunk included) and the read-back verify dd does not do; the ratio of the throughputs.

Then the peak RSS (VmHWM) of an install child for each of ``--rss-sizes`` MiB, against a child that only
imports the installer: memory must stay flat as the bundle grows.

Everything lives in a temporary directory removed at the end; loop devices are detached on any exit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from flash import PEAK_RSS  # benchmarks/flash.py: the child's own VmHWM

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent

BASELINE = PEAK_RSS + """
import json
import swu.install, swu.cpio, swu.description
print(json.dumps({"rss": peak_rss_kib()}))
"""
CHILD = PEAK_RSS + """
import json, os, sys, time
from wrtcore import log
log.setup("swu-bench", console=open(os.devnull, "w"))
from swu.cpio import open_bundle
from swu.description import build_plan
from swu.handlers import base
from swu.install import install
from swu.model import Target
timing = {}
real_verify = base.verify_readback
def timed_verify(*args):
    start = time.monotonic()
    real_verify(*args)
    timing["verify"] = time.monotonic() - start
base.verify_readback = timed_verify
bundle, tmp = sys.argv[1], sys.argv[2]
start = time.monotonic()
with open(bundle, "rb") as f:
    opened = open_bundle(f)
    plan = build_plan(opened.description, Target("bench", "1.0"))
    install(opened.members, plan, base.Settings(tmpdir=tmp, sw_versions=tmp + "/sw-versions"))
total = time.monotonic() - start
print(json.dumps({"total": total, "verify": timing["verify"], "rss": peak_rss_kib()}))
"""


@contextlib.contextmanager
def loop_device(backing: Path) -> Iterator[str]:
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def make_bundle(work: Path, size_mib: int, device: str) -> tuple[Path, Path]:
    """A crc-format bundle with ``size_mib`` of random bytes (and its newc twin next to it)."""
    src = work / f"bundle-{size_mib}.d"
    src.mkdir(exist_ok=True)
    artifact = src / "rootfs.img"
    digest = hashlib.sha256()
    with open(artifact, "wb") as f:
        for _ in range(size_mib):
            block = os.urandom(MiB)
            digest.update(block)
            f.write(block)
    (src / "sw-description").write_text(
        f'software = {{ version = "1.0"; hardware-compatibility = ["1.0"];\n'
        f'  images = ( {{ filename = "rootfs.img"; device = "{device}";\n'
        f'              sha256 = "{digest.hexdigest()}"; }} );\n}};\n')
    bundle = work / f"bundle-{size_mib}.swu"
    for fmt, path in (("crc", bundle), ("newc", bundle.with_suffix(".newc.swu"))):
        with open(path, "wb") as out:
            subprocess.run(["cpio", "-o", "-H", fmt, "--quiet"], cwd=src,
                           input=b"sw-description\nrootfs.img\n", stdout=out, check=True)
    return bundle, artifact


def child(code: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                         check=False)
    if res.returncode != 0:
        raise SystemExit(f"benchmark child failed: {res.stderr.strip()}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def run_dd(artifact: Path, device: str) -> float:
    start = time.monotonic()
    subprocess.run(["dd", f"if={artifact}", f"of={device}", "bs=1M", "conv=fsync", "status=none"], check=True)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="MiB of the artifact compared with dd")
    ap.add_argument("--rss-sizes", default="64,1024", help="MiB of the bundles whose peak RSS is measured")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="swu-bench-"))
    try:
        target = work / "target.img"
        with open(target, "wb") as f:
            f.truncate((max([args.size, *map(int, args.rss_sizes.split(","))]) + 16) * MiB)
        with loop_device(target) as dev:
            bundle, artifact = make_bundle(work, args.size, dev)
            dd_times: list[float] = []
            ours: dict[str, list[float]] = {"newc": [], "crc": []}
            verify: dict[str, list[float]] = {"newc": [], "crc": []}
            for _ in range(args.repeat):
                dd_times.append(run_dd(artifact, dev))
                for fmt, path in (("newc", bundle.with_suffix(".newc.swu")), ("crc", bundle)):
                    r = child(CHILD, str(path), str(work))
                    ours[fmt].append(r["total"] - r["verify"])
                    verify[fmt].append(r["verify"])
            dd_t = min(dd_times)
            print(f"raw artifact {args.size} MiB to {dev} (best of {args.repeat}):")
            print(f"  dd bs=1M conv=fsync                 {dd_t:6.2f} s  {args.size / dd_t:6.0f} MiB/s")
            for fmt in ("newc", "crc"):
                our_t, ver_t = min(ours[fmt]), min(verify[fmt])
                print(f"  swu install ({fmt:4}), write + fsync {our_t:6.2f} s  {args.size / our_t:6.0f} MiB/s"
                      f"  ({dd_t / our_t:.2f}x dd)")
                print(f"  swu install ({fmt:4}), verify        {ver_t:6.2f} s  {args.size / ver_t:6.0f} MiB/s"
                      f"  (all: {dd_t / (our_t + ver_t):.2f}x dd)")
            base = child(BASELINE)["rss"]
            print(f"peak RSS: importing the installer {base / 1024:.1f} MiB")
            for size in map(int, args.rss_sizes.split(",")):
                b = make_bundle(work, size, dev)[0] if size != args.size else bundle
                r = child(CHILD, str(b), str(work))
                print(f"peak RSS: install of a {size} MiB bundle {r['rss'] / 1024:.1f} MiB")
                if b != bundle:
                    shutil.rmtree(work / f"bundle-{size}.d")
                    b.unlink()
                    b.with_suffix(".newc.swu").unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
