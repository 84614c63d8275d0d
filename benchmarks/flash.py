"""Benchmark stage2's block writer against ``dd bs=1M conv=fsync`` on loop devices.

    .venv/bin/python benchmarks/flash.py [--sizes 64,1024] [--repeat 3] [--chunk-kib 1024]

Needs root (loop devices). For each size (MiB) it writes an image of random bytes to a loop device over a
sparse file, alternately with dd and with ``write_image`` (each in a child process), and reports:

* write throughput, write + fsync: dd's wall time, and the writer's ``WriteReport.duration``;
* the writer's read-back verify throughput (``verify_duration``), which dd does not do;
* the peak RSS of each writer child (its VmHWM, read by itself at the end), against a child that only
  imports the writer: memory must stay flat as the image grows. (wait4's ru_maxrss would not do: a child
  started with vfork or fork is charged the parent's resident pages too.)

Everything lives in a temporary directory that is removed at the end; loop devices are detached and
children killed on any exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
BLKFLSBUF = 0x1261
ROOT = Path(__file__).resolve().parent.parent

PEAK_RSS = """
def peak_rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
"""
BASELINE = PEAK_RSS + """
import json
import stage2.writers.block
print(json.dumps({"rss": peak_rss_kib()}))
"""
CHILD = PEAK_RSS + """
import json, os, sys
from wrtcore import log
log.setup("flash-bench", console=open(os.devnull, "w"))
from stage2.writers.block import write_image
image, device, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(image, "rb") as source:
    r = write_image(source, device, chunk_size=chunk)
print(json.dumps({"duration": r.duration, "verify": r.verify_duration, "bytes": r.bytes_written,
                  "direct": r.direct, "rss": peak_rss_kib()}))
"""


@dataclass
class Row:
    size_mib: int
    dd_write: float = float("inf")
    ours_write: float = float("inf")
    ours_verify: float = float("inf")
    ours_rss_kib: int = 0


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loops: list[str] = []
        self.children: list[subprocess.Popen[bytes]] = []

    def close(self) -> None:
        for child in self.children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)
        for dev in reversed(self.loops):
            subprocess.run(["losetup", "--detach", dev], check=False)
        self.loops.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def make_image(self, size_mib: int) -> Path:
        path = self.workdir / f"image-{size_mib}M"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(size_mib):
                os.write(fd, os.urandom(MiB))
        finally:
            os.close(fd)
        return path

    def attach(self, size: int) -> tuple[str, Path]:
        backing = self.workdir / f"disk-{len(self.loops)}"
        with open(backing, "wb") as f:
            f.truncate(size)
        dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                             check=True).stdout.strip()
        self.loops.append(dev)
        return dev, backing

    def detach(self, dev: str) -> None:
        subprocess.run(["losetup", "--detach", dev], check=True)
        self.loops.remove(dev)

    def spawn(self, argv: Sequence[str]) -> tuple[float, bytes]:
        """Run a child to its end: wall time and its stdout."""
        start = time.monotonic()
        child = subprocess.Popen(list(argv), stdout=subprocess.PIPE, cwd=ROOT)
        self.children.append(child)
        out, _ = child.communicate()
        wall = time.monotonic() - start
        if child.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed with status {child.returncode}")
        return wall, out


def settle(device: str, backing: Path) -> None:
    """Start every run alike: nothing of the target cached, the backing file synced and evicted."""
    fd = os.open(device, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    finally:
        os.close(fd)
    fd = os.open(backing, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(bench: Bench, size_mib: int, repeat: int, chunk: int) -> Row:
    row = Row(size_mib)
    image = bench.make_image(size_mib)
    dev, backing = bench.attach(size_mib * MiB + MiB)
    for _ in range(repeat):
        settle(dev, backing)
        wall, _ = bench.spawn(["dd", f"if={image}", f"of={dev}", "bs=1M", "conv=fsync", "status=none"])
        row.dd_write = min(row.dd_write, wall)
        settle(dev, backing)
        _, out = bench.spawn([sys.executable, "-c", CHILD, str(image), dev, str(chunk)])
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["bytes"] == size_mib * MiB and report["direct"]
        row.ours_write = min(row.ours_write, report["duration"])
        row.ours_verify = min(row.ours_verify, report["verify"])
        row.ours_rss_kib = max(row.ours_rss_kib, report["rss"])
    bench.detach(dev)
    image.unlink()
    backing.unlink()
    return row


def table(rows: list[Row], baseline_kib: int, repeat: int, chunk: int) -> Iterator[str]:
    yield (f"best of {repeat} runs, chunk {chunk // 1024} KiB; MiB/s = image MiB / seconds; "
           f"peak RSS of an import-only child: {baseline_kib / 1024:.1f} MiB")
    head = ("size MiB", "dd w+fsync", "ours w+fsync", "ours/dd", "ours verify", "ours peak RSS",
            "over import")
    yield " | ".join(f"{h:>13}" for h in head)
    for r in rows:
        dd, ours, verify = (r.size_mib / t for t in (r.dd_write, r.ours_write, r.ours_verify))
        cells = (f"{r.size_mib}", f"{dd:.0f} MiB/s", f"{ours:.0f} MiB/s", f"{ours / dd:.2f}",
                 f"{verify:.0f} MiB/s", f"{r.ours_rss_kib / 1024:.1f} MiB",
                 f"+{(r.ours_rss_kib - baseline_kib) / 1024:.1f} MiB")
        yield " | ".join(f"{c:>13}" for c in cells)


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,1024", help="image sizes in MiB, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size and tool (best is kept)")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="write_image chunk size")
    parser.add_argument("--dir", default="/var/tmp", help="where the temporary files go (not a tmpfs)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    chunk = args.chunk_kib * 1024
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    bench = Bench(Path(tempfile.mkdtemp(prefix="flash-bench-", dir=args.dir)))
    try:
        baseline = json.loads(bench.spawn([sys.executable, "-c", BASELINE])[1])["rss"]
        rows = []
        for size in sizes:
            print(f"measuring {size} MiB ...", file=sys.stderr, flush=True)
            rows.append(measure(bench, size, args.repeat, chunk))
        for line in table(rows, baseline, args.repeat, chunk):
            print(line)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
