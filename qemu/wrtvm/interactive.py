"""Boot the VM firmware with its console on this terminal, for a person to try ``sysupgrade`` by hand.

    .venv/bin/python -m wrtvm.interactive [--workdir DIR] [--reuse] [--no-reboot]

Builds (or takes from the cache) the kernel, initramfs and the 1.0/2.0 images, copies 1.0 to
``DIR/disk.img`` (/dev/vda) and puts 2.0 on /dev/vdb, then runs QEMU in the foreground. The guest
reboots in the same QEMU (``--no-reboot``: a reboot ends it, as in the tests). Exit codes: QEMU's
(0 after Ctrl-A x or a power-off), 1 when the assets cannot be built, 2 usage.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from wrtvm import device as devicemod
from wrtvm.kernel import CACHE
from wrtvm.machine import Drive, Machine, qemu_argv
from wrtvm.runner import die_with_parent


def hints(workdir: Path, transfer_size: int) -> str:
    return f"""\
== firmware 1.0 on /dev/vda ({workdir / 'disk.img'}), the 2.0 image on /dev/vdb
   at the root shell on this console, once booted:
     dd if=/dev/vdb of=/tmp/fw.img bs=1M && truncate -s {transfer_size} /tmp/fw.img
     sysupgrade -v /tmp/fw.img          # keep the config  (-n: defaults, -T: only test the image)
     cat /var/log/last-upgrade.json     # after the reboot: the upgrade's report
   Ctrl-A x quits QEMU, Ctrl-A c switches to QEMU's monitor (and back)
   QMP: {workdir / 'qmp.sock'}   JSON log channel (ttyS1): {workdir / 'log.jsonl'}
"""


def argv_for(dev: devicemod.Device, workdir: Path, reboot: bool) -> list[str]:
    drives = [Drive(dev.disk_file)] + ([Drive(dev.transfer_file)] if dev.transfer_file else [])
    machine = Machine(kernel=dev.assets.kernel.vmlinux, initrd=dev.assets.initrd, drives=tuple(drives),
                      reboot=reboot)
    return qemu_argv(machine, console="stdio,mux=on,signal=off", log=f"file,path={workdir / 'log.jsonl'}",
                     qmp=f"socket,path={workdir / 'qmp.sock'},server=on,wait=off", console_monitor=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wrtvm.interactive", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=CACHE / "interactive",
                        help="where the disk, the log and the QMP socket go (default: %(default)s)")
    parser.add_argument("--reuse", action="store_true", help="boot the disk left by the last run")
    parser.add_argument("--no-reboot", action="store_true", help="a guest reboot ends QEMU")
    args = parser.parse_args(argv)
    try:
        assets = devicemod.build()
    except Exception as exc:
        print(f"error: cannot build the VM assets: {exc}", file=sys.stderr)
        return 1
    workdir: Path = args.workdir.resolve()
    dev = devicemod.Device(workdir, assets, assets.images.v1, transfer=assets.images.v2, reuse=args.reuse)
    print(hints(workdir, dev.transfer_size), flush=True)
    return subprocess.run(argv_for(dev, workdir, reboot=not args.no_reboot),
                          preexec_fn=die_with_parent).returncode


if __name__ == "__main__":
    sys.exit(main())
