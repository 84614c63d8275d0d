"""Benchmark our MTD writer against mtd-utils on the kernel's MTD drivers, in one QEMU boot.

    .venv/bin/python benchmarks/mtd.py [--mib 16] [--repeat 3]

In the guest: an image of random bytes in /tmp (RAM), then, alternately, for each round:

* NOR (``mtdram``, 128 KiB erase blocks): ``flashcp`` (erase, write, read back and compare) against
  ``mtd -q -q write`` (the same three steps per block);
* NAND (``nandsim``, 2 KiB pages, 128 KiB blocks): ``flash_erase`` of the blocks needed plus
  ``nandwrite -p`` (which does not read back) against ``mtd -q -q write`` (which does).

Times are wall clock in the guest (``/proc/uptime``, 10 ms resolution) around each command, so our
figure includes the Python interpreter's start-up. The best round of each is reported in MiB/s with the
ratio ours / theirs (target: at least 0.9). QEMU runs under TCG here, so absolute figures are low;
the ratio is what carries over. The VM is killed on any exit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "qemu")]

from wrtvm import device as devicemod  # noqa: E402
from wrtvm.runner import Shell  # noqa: E402

from wrtcore import log  # noqa: E402

KiB = 1024
ERASE = 128 * KiB
NANDSIM = ("modprobe nandsim first_id_byte=0x20 second_id_byte=0xaa third_id_byte=0x00 "
           "fourth_id_byte=0x15")


def timed(sh: Shell, command: str) -> float:
    """Seconds the guest spent on ``command`` (which must succeed)."""
    out = sh.check(f"read a _ < /proc/uptime; {command}; read b _ < /proc/uptime; echo \"T $a $b\"",
                   timeout=1800)
    line = next(ln for ln in out.splitlines() if ln.startswith("T "))
    _, a, b = line.split()
    return max(float(b) - float(a), 0.01)


def index(sh: Shell, label: str) -> int:
    for line in sh.check("cat /proc/mtd").splitlines():
        if line.endswith(f'"{label}"'):
            return int(line.split(":")[0][3:])
    raise SystemExit(f"no MTD device {label!r} in the guest")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=16, help="image size in MiB (default 16)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    args = ap.parse_args()
    size = args.mib * 1024 * KiB
    log.setup("mtd-bench")
    assets = devicemod.build()
    work = Path(tempfile.mkdtemp(prefix="mtd-bench-"))
    dev = devicemod.Device(work / "vm", assets, assets.images.v1)
    try:
        vm = dev.boot()
        vm.wait_event("- init complete -", timeout=180)
        sh = Shell(vm)
        sh.wait_ready(timeout=120)
        sh.check(f"head -c {size} /dev/urandom > /tmp/img", timeout=300)
        sh.check(f"modprobe mtdram total_size={size // KiB + 1024} erase_size={ERASE // KiB}")
        sh.check(NANDSIM, timeout=300)
        nor, nand = index(sh, "mtdram test device"), index(sh, "NAND simulator partition 0")
        blocks = -(-size // ERASE)
        cases = {
            "NOR flashcp": f"flashcp /tmp/img /dev/mtd{nor}",
            "NOR mtd write": f"mtd -q -q write /tmp/img mtd{nor}",
            "NAND flash_erase+nandwrite": (f"flash_erase -q /dev/mtd{nand} 0 {blocks} && "
                                           f"nandwrite -q -p /dev/mtd{nand} /tmp/img"),
            "NAND mtd write": f"mtd -q -q write /tmp/img mtd{nand}",
        }
        best: dict[str, float] = {}
        for r in range(args.repeat):
            for name, command in cases.items():
                seconds = timed(sh, command)
                best[name] = min(best.get(name, seconds), seconds)
                rate = size / seconds / (1024 * KiB)
                print(f"round {r + 1}: {name:<28} {rate:7.2f} MiB/s ({seconds:.2f} s)", flush=True)
        # the last writes must be what the image holds
        digest = sh.check("md5sum < /tmp/img").split()[0]
        assert sh.check(f"head -c {size} /dev/mtd{nor} | md5sum").split()[0] == digest
        print(f"\nbest of {args.repeat}, {args.mib} MiB image, guest under TCG:")
        pairs = (("NOR mtd write", "NOR flashcp"), ("NAND mtd write", "NAND flash_erase+nandwrite"))
        for ours, theirs in pairs:
            mo, mt = size / best[ours] / (1024 * KiB), size / best[theirs] / (1024 * KiB)
            print(f"  {ours:<16} {mo:7.2f} MiB/s   {theirs:<28} {mt:7.2f} MiB/s   ratio {mo / mt:.2f}x")
    finally:
        dev.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
