"""Benchmark our MTD writer against mtd-utils on the kernel's MTD drivers, in one QEMU boot.

    .venv/bin/python benchmarks/mtd.py [--sizes 32,128] [--repeat 5]

In the guest (1280 MiB of RAM): for each image size, an image of random bytes in /tmp (RAM), ``mtdram``
(NOR-like, 128 KiB erase blocks) of the image's size plus 1 MiB; ``nandsim`` (256 MiB, 2 KiB pages,
128 KiB blocks) for all. Each round, in alternating order:

* NOR: ``flashcp`` (erase, write, read back and compare) against our writer, which does the same three
  steps: ``mtd -q -q write`` (the whole command, Python's start-up included) and ``write_mtd`` timed
  inside one Python process (the write alone);
* NAND: ``flash_erase`` of the blocks needed plus ``nandwrite -p`` (which does NOT read back), and the
  same followed by ``nanddump`` to /dev/null (mtd-utils reading back what it wrote; comparing is not
  counted: busybox's ``cmp`` alone takes three times nanddump's time), against
  the same two of ours, which DO read back and compare every block; ``write_mtd`` reports the time of
  that read-back, so its write phase alone is printed too;
* start-up: ``python3 -c pass``, ``import stage2.writers.mtd``, ``mtd -h``.

A first round per size warms the page cache (the root is a zstd squashfs) and is not counted. Times are
wall clock in the guest (``/proc/uptime``, 10 ms, around each command; ``time.monotonic`` inside the
process). The guest runs under TCG on a host shared with other jobs, so single figures are noisy: each
size's summary gives the median and the best of each, and the median of the per-round ratios ours /
theirs in MiB/s (target: at least 0.9). With two sizes or more, the throughput from the smallest to the
largest (the extra bytes over the extra median seconds) separates each command's rate from its fixed
cost (Python's start-up: 0.2-0.3 s under TCG, against milliseconds for C), which is printed
too. The VM is killed on any exit.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "qemu")]

from wrtvm import device as devicemod  # noqa: E402
from wrtvm.runner import Shell  # noqa: E402

from wrtcore import log  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
ERASE = 128 * KiB
NANDSIM = ("modprobe nandsim first_id_byte=0x20 second_id_byte=0xaa third_id_byte=0x00 "
           "fourth_id_byte=0x15")
# In the guest: write_mtd timed in-process; prints "W <seconds> <verify seconds> <import seconds>".
IN_PROCESS = """\
import os, sys, time
t0 = time.monotonic()
from stage2.writers.mtd import write_mtd
from wrtcore import log
t1 = time.monotonic()
log.setup("mtd-bench", console=open(os.devnull, "w"), light=True)
with open(sys.argv[1], "rb") as f:
    r = write_mtd(f, sys.argv[2])
print("W", r.duration, r.verify_seconds, t1 - t0)
"""


def timed(sh: Shell, command: str, expect: int = 0) -> tuple[float, str]:
    """Seconds the guest spent on ``command`` (whose exit code must be ``expect``), and its output."""
    out = sh.check(f"read a _ < /proc/uptime; {command}; rc=$?; read b _ < /proc/uptime; "
                   f"echo \"T $a $b $rc\"", timeout=1800)
    line = next(ln for ln in out.splitlines() if ln.startswith("T "))
    _, a, b, rc = line.split()
    if int(rc) != expect:
        raise SystemExit(f"`{command}` exited {rc}:\n{out}")
    return max(float(b) - float(a), 0.01), out


def index(sh: Shell, label: str) -> int:
    for line in sh.check("cat /proc/mtd").splitlines():
        if line.endswith(f'"{label}"'):
            return int(line.split(":")[0][3:])
    raise SystemExit(f"no MTD device {label!r} in the guest")


def in_process(sh: Shell, mtd: int) -> dict[str, float]:
    _, out = timed(sh, f"python3 /tmp/inproc.py /tmp/img mtd{mtd}")
    line = next(ln for ln in out.splitlines() if ln.startswith("W "))
    total, verify, imports = (float(x) for x in line.split()[1:])
    return {"write+verify": total, "write": total - verify, "verify": verify, "imports": imports}


def round_of(sh: Shell, nor: int, nand: int, size: int, flip: bool) -> dict[str, float]:
    """One round: every case once (ours first when ``flip``); seconds by case."""
    t: dict[str, float] = {}
    blocks = -(-size // ERASE)

    def theirs() -> None:
        t["NOR flashcp"], _ = timed(sh, f"flashcp /tmp/img /dev/mtd{nor}")
        erase, _ = timed(sh, f"flash_erase -q /dev/mtd{nand} 0 {blocks}")
        write, _ = timed(sh, f"nandwrite -q -p /dev/mtd{nand} /tmp/img")
        back, _ = timed(sh, f"nanddump -q -l {size} -f /dev/null /dev/mtd{nand}")
        t["NAND flash_erase+nandwrite"] = erase + write
        t["NAND nanddump"] = back
        t[NAND_SAME] = erase + write + back

    def ours() -> None:
        t["NOR mtd write"], _ = timed(sh, f"mtd -q -q write /tmp/img mtd{nor}")
        for k, v in in_process(sh, nor).items():
            t[f"NOR in-process {k}"] = v
        t["NAND mtd write"], _ = timed(sh, f"mtd -q -q write /tmp/img mtd{nand}")
        for k, v in in_process(sh, nand).items():
            t[f"NAND in-process {k}"] = v

    for step in ((ours, theirs) if flip else (theirs, ours)):
        step()
    t["start-up python3 -c pass"], _ = timed(sh, "python3 -c pass")
    t["start-up import stage2.writers.mtd"], _ = timed(sh, "python3 -c 'import stage2.writers.mtd'")
    t["start-up mtd -h"], _ = timed(sh, "mtd -h 2>/dev/null", expect=2)
    return t


NAND_SAME = "NAND erase+nandwrite+nanddump"
PAIRS = (("NOR mtd write", "NOR flashcp"), ("NOR in-process write+verify", "NOR flashcp"),
         ("NAND in-process write", "NAND flash_erase+nandwrite"),
         ("NAND mtd write", NAND_SAME), ("NAND in-process write+verify", NAND_SAME),
         ("NAND mtd write", "NAND flash_erase+nandwrite"))
PAIR_NOTE = ("  flashcp reads back and compares, as ours does; nandwrite does not ('NAND in-process write' "
             "is ours without that phase;\n  'erase+nandwrite+nanddump' is mtd-utils writing and reading "
             "back, without comparing: a lower bound of theirs).")


def summary(rounds: list[dict[str, float]], size: int) -> None:
    def rate(seconds: float) -> float:
        return size / seconds / MiB

    print(f"\n{len(rounds)} rounds, {size // MiB} MiB image, guest under TCG (seconds: median / best):")
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        a_write = name.startswith("N") and not name.endswith((" imports", " verify"))
        extra = f"   {rate(statistics.median(values)):6.2f} MiB/s median, {rate(min(values)):6.2f} best" \
            if a_write else ""
        print(f"  {name:<36} {statistics.median(values):6.2f} / {min(values):6.2f} s{extra}")
    print("\nratio ours / theirs in MiB/s (median of the per-round ratios; ratio of the best times):")
    for ours, theirs in PAIRS:
        paired = statistics.median(r[theirs] / r[ours] for r in rounds)
        best = min(r[theirs] for r in rounds) / min(r[ours] for r in rounds)
        print(f"  {ours:<30} vs {theirs:<35} {paired:5.2f}x  (best {best:5.2f}x)")
    print(PAIR_NOTE)


def marginal(small: list[dict[str, float]], small_size: int, large: list[dict[str, float]],
             large_size: int) -> None:
    """Throughput from the small image to the large one: extra bytes over extra median seconds; the
    fixed cost is what the small run took beyond its bytes at that rate."""
    extra = large_size - small_size

    def fit(name: str) -> tuple[float, float]:
        t_small = statistics.median(r[name] for r in small)
        t_large = statistics.median(r[name] for r in large)
        seconds = max(t_large - t_small, 0.01)
        return extra / seconds / MiB, t_small - seconds * small_size / extra

    print(f"\nthroughput from {small_size // MiB} to {large_size // MiB} MiB (MiB/s; fixed cost in seconds):")
    for ours, theirs in PAIRS:
        (r_ours, c_ours), (r_theirs, c_theirs) = fit(ours), fit(theirs)
        print(f"  {ours:<30} {r_ours:6.1f} ({c_ours:+.2f} s) vs {theirs:<35} {r_theirs:6.1f} "
              f"({c_theirs:+.2f} s)  {r_ours / r_theirs:5.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,128",
                    help="image sizes in MiB, comma-separated (default 32,128; at most 128: the guest's "
                    "1280 MiB hold the image, mtdram of its size and nandsim's 256 MiB)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds per size (default 5)")
    args = ap.parse_args()
    try:
        sizes = sorted({int(x) * MiB for x in args.sizes.split(",")})
    except ValueError:
        ap.error(f"--sizes: not a list of numbers: {args.sizes!r}")
    if not all(MiB <= x <= 128 * MiB for x in sizes) or args.repeat < 1:
        ap.error("--sizes must be 1..128 MiB each, --repeat at least 1")
    log.setup("mtd-bench")
    assets = devicemod.build()
    work = Path(tempfile.mkdtemp(prefix="mtd-bench-"))
    dev = devicemod.Device(work / "vm", assets, assets.images.v1)
    try:
        vm = dev.boot(memory="1280M")
        vm.wait_event("- init complete -", timeout=180)
        vm.wait_event("- done -", timeout=180)  # preinit's last step: nothing else runs from now
        sh = Shell(vm)
        sh.wait_ready(timeout=120)
        script = base64.b64encode(IN_PROCESS.encode()).decode()
        sh.check(f"echo {script} | base64 -d > /tmp/inproc.py")
        sh.check(NANDSIM, timeout=300)
        nand = index(sh, "NAND simulator partition 0")
        results: list[tuple[int, list[dict[str, float]]]] = []
        for size in sizes:
            sh.check(f"rmmod mtdram 2>/dev/null; head -c {size} /dev/urandom > /tmp/img", timeout=600)
            sh.check(f"modprobe mtdram total_size={size // KiB + 1024} erase_size={ERASE // KiB}",
                     timeout=120)
            nor = index(sh, "mtdram test device")
            round_of(sh, nor, nand, size, flip=False)  # warm-up, not counted: binaries and modules cached
            rounds = []
            for r in range(args.repeat):
                t = round_of(sh, nor, nand, size, flip=r % 2 == 1)
                rounds.append(t)
                print(f"{size // MiB} MiB round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()),
                      flush=True)
            # the last writes must be what the image holds (nandsim has no bad blocks here)
            digest = sh.check("md5sum < /tmp/img").split()[0]
            for mtd in (nor, nand):
                got = sh.check(f"head -c {size} /dev/mtd{mtd} | md5sum", timeout=300).split()[0]
                if got != digest:
                    raise SystemExit(f"mtd{mtd} does not hold the image after the benchmark")
            results.append((size, rounds))
        for size, rounds in results:
            summary(rounds, size)
        if len(results) > 1:
            (small_size, small), (large_size, large) = results[0], results[-1]
            marginal(small, small_size, large, large_size)
    finally:
        dev.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
