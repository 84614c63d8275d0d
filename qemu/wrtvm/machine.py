"""What a QEMU run is, as data: the machine (kernel, initrd, disks, command line) and the argv that
starts it. Pure: the runner (``wrtvm.runner``) and the interactive command (``wrtvm.interactive``) both
build their command line here, and unit tests check it without QEMU.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"
# the guest's console on ttyS0, the JSON log channel of preinit and stage2 on ttyS1
BASE_CMDLINE = "console=ttyS0 root=/dev/vda2 rootfstype=squashfs wrt.log=/dev/ttyS1 quiet panic=-1"


def qemu_binary() -> str | None:
    return shutil.which(QEMU)


@dataclass(frozen=True)
class Drive:
    """A virtio disk, ``/dev/vda``, ``/dev/vdb``... in order; its BlockBackend is named ``disk<N>``.
    ``blkdebug``: a rules file for QEMU's blkdebug driver, put between the guest and the file (I/O
    errors injected at chosen sectors). ``werror``: what a write error does, ``report`` it to the guest
    or ``stop`` the VM before the guest sees it (the request is held; a power cut can follow)."""

    path: Path
    blkdebug: Path | None = None
    werror: str = "report"


@dataclass(frozen=True)
class Machine:
    kernel: Path
    initrd: Path
    drives: tuple[Drive, ...]
    cmdline_extra: str = ""
    memory: str = "512M"
    reboot: bool = False  # False: a guest reboot ends QEMU (-no-reboot); the harness boots again
    devices: tuple[str, ...] = field(default=("i6300esb",))

    @property
    def cmdline(self) -> str:
        return f"{BASE_CMDLINE} {self.cmdline_extra}".strip()


def drive_args(index: int, drive: Drive) -> list[str]:
    """``-drive`` for one disk. I/O errors are reported to the guest (never a paused VM); writes go to
    the host's page cache at once (``cache=unsafe``: QEMU's own exit loses nothing the guest wrote,
    which is what a power cut test needs: the guest's completed writes are in the file)."""
    opts = [f"id=disk{index}", "if=virtio", "format=raw", "cache=unsafe", f"werror={drive.werror}",
            "rerror=report"]
    if drive.blkdebug is not None:
        opts += ["file.driver=blkdebug", f"file.config={drive.blkdebug}", "file.image.driver=file",
                 f"file.image.filename={drive.path}"]
    else:
        opts.append(f"file={drive.path}")
    return ["-drive", ",".join(opts)]


def qemu_argv(machine: Machine, *, console: str, log: str, qmp: str | None = None,
              paused: bool = False, console_monitor: bool = False) -> list[str]:
    """The command line. ``console``, ``log``, ``qmp``: chardev backends (``-chardev <spec>,id=...``)
    for ttyS0, ttyS1 and the QMP monitor. ``paused``: start with the CPU stopped (``-S``; QMP ``cont``
    starts it). ``console_monitor``: the human monitor multiplexed on the console (Ctrl-A c)."""
    argv = [
        qemu_binary() or QEMU, "-accel", "tcg,tb-size=512", "-cpu", "max", "-m", machine.memory,
        "-smp", "1", "-nodefaults", "-display", "none", "-net", "none",
        "-chardev", f"{console},id=con", "-serial", "chardev:con",
        "-chardev", f"{log},id=log", "-serial", "chardev:log",
    ]
    if console_monitor:
        argv += ["-mon", "chardev=con,mode=readline"]
    if qmp is not None:
        argv += ["-chardev", f"{qmp},id=qmp", "-mon", "chardev=qmp,mode=control"]
    if not machine.reboot:
        argv.append("-no-reboot")
    if paused:
        argv.append("-S")
    argv += ["-kernel", str(machine.kernel), "-initrd", str(machine.initrd), "-append", machine.cmdline]
    for index, drive in enumerate(machine.drives):
        argv += drive_args(index, drive)
    for device in machine.devices:
        argv += ["-device", device]
    return argv


def blkdebug_rules(sector: int, errno: int = 5) -> str:
    """A blkdebug config failing every write that touches ``sector`` (512-byte units) with ``errno``
    (5: EIO); reads and other sectors go through."""
    return ("[inject-error]\n"
            'event = "pwritev"\n'
            'iotype = "write"\n'
            f'errno = "{errno}"\n'
            f'sector = "{sector}"\n'
            'once = "off"\n')
