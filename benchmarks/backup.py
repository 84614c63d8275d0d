"""Benchmark ``sysupgrade -b`` against ``tar czf`` of the same files.

    .venv/bin/python benchmarks/backup.py [--small 10000] [--large-mib 50] [--repeat 3] [--keep]

Builds a system root in a temporary directory: ``--small`` small files (200 B to 4 KiB, config-like
text) in 100 directories and ``--large-mib`` MiB of larger files (2 MiB each; half text, half random
bytes), all listed in its ``/etc/sysupgrade.conf``. Then, alternately and ``--repeat`` times each:

* ours: ``python -m sysupgrade.cli -b <out>`` in a child process with ``WRT_ROOT`` set to the tree
  (interpreter start-up, building the list, the archive and its fsync included);
* tar: ``tar czf <out> -C <root> -T <list>`` with the very list ours archives (``sysupgrade -l``), the
  list prepared beforehand.

Both compress at gzip level 6: ours sets it (``backup.GZIP_LEVEL``), GNU tar's ``z`` runs ``gzip`` with
no level, i.e. gzip's default 6. The page cache is warm for both (one untimed run each first). It prints
the median wall times, the ratio ours/tar (target: at most 1.2), and both archive sizes; the two
archives are checked to hold the same members besides ours' synthetic first one.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sysupgrade import backup  # noqa: E402

MiB = 1 << 20
WORDS = ("config", "option", "list", "interface", "lan", "wan", "proto", "static", "dhcp", "ipaddr",
         "netmask", "'1'", "'0'", "device", "br-lan", "ports", "firewall", "zone", "forwarding", "rule")
FAKE_MOUNTINFO = "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"  # not a ramdisk


def text(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choice(WORDS) for _ in range(8)) + "\n").encode()
    return bytes(out[:size])


def build_tree(root: Path, small: int, large_mib: int) -> None:
    rng = random.Random(1)
    base = root / "etc/bench"
    for i in range(small):
        d = base / "small" / f"d{i % 100:02d}"
        if i < 100:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.conf").write_bytes(text(rng, rng.randint(200, 4096)))
    (base / "large").mkdir(parents=True)
    for i in range(max(1, large_mib // 2)):
        half = MiB
        (base / "large" / f"blob{i:02d}.bin").write_bytes(text(rng, half) + rng.randbytes(half))
    (root / "etc/sysupgrade.conf").write_text("/etc/bench/\n")
    (root / "tmp").mkdir()
    (root / "proc-mountinfo").write_text(FAKE_MOUNTINFO)


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def member_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large-mib", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="backup-bench."))
    try:
        root = work / "root"
        build_tree(root, args.small, args.large_mib)
        env = {**os.environ, "WRT_ROOT": str(root), "WRT_MOUNTINFO": str(root / "proc-mountinfo"),
               "PYTHONPATH": str(ROOT)}
        listed = subprocess.run([sys.executable, "-m", "sysupgrade.cli", "-l"], env=env, check=True,
                                capture_output=True, text=True).stdout.splitlines()
        list_file = work / "list"
        list_file.write_text("".join(f"{p.lstrip('/')}\n" for p in listed))
        total = sum((root / p.lstrip("/")).stat().st_size for p in listed)

        ours_out, tar_out = work / "ours.tgz", work / "tar.tgz"
        ours_argv = [sys.executable, "-m", "sysupgrade.cli", "-b", str(ours_out)]
        tar_argv = ["tar", "czf", str(tar_out), "-C", str(root), "-T", str(list_file)]
        timed(ours_argv, env)  # warm the page cache for both
        timed(tar_argv, env)
        ours, tar = [], []
        for _ in range(args.repeat):
            ours.append(timed(ours_argv, env))
            tar.append(timed(tar_argv, env))

        names_ours, names_tar = member_names(ours_out), member_names(tar_out)
        assert names_ours[0] == backup.DISABLE_SERVICES_MEMBER, names_ours[:1]
        assert names_ours[1:] == names_tar, "the archives differ"

        t_ours, t_tar = statistics.median(ours), statistics.median(tar)
        print(f"files: {len(listed)} ({args.small} small + {len(listed) - args.small} large), "
              f"{total / MiB:.1f} MiB")
        print(f"sysupgrade -b (gzip level {backup.GZIP_LEVEL}, in-process zlib, compressor thread): "
              f"{t_ours:.3f} s median of {args.repeat} {[round(t, 3) for t in ours]}, "
              f"archive {ours_out.stat().st_size / MiB:.2f} MiB")
        print(f"tar czf (GNU tar + gzip, default level 6): {t_tar:.3f} s median of {args.repeat} "
              f"{[round(t, 3) for t in tar]}, archive {tar_out.stat().st_size / MiB:.2f} MiB")
        print(f"ratio ours/tar: {t_ours / t_tar:.2f} (target <= 1.20)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
