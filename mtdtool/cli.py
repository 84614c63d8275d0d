"""``mtd [<options> ...] <command> [<arguments> ...] <device>``: OpenWrt's ``mtd`` over our MTD writer.

Commands: ``unlock``, ``erase``, ``verify <imagefile>|-``, ``write <imagefile>|-``, ``jffs2write <file>``.
Options (getopt, before the command, bundling allowed): ``-q`` (once: no ``[w]`` progress, twice: no
status messages), ``-n`` (write without erasing), ``-r`` (reboot after success), ``-f`` (accepted: there
is no TRX/SEAMA check to skip), ``-e <device>`` (unlock and erase it first; repeatable), ``-d <dir>``
(``jffs2write`` directory in the root, default the root itself), ``-j <file>`` (append it as jffs2 at
the image's first ``DE AD C0 DE`` erase block), ``-s <n>`` (only look for that marker after n bytes),
``-p <offset>`` (write at this partition offset, a multiple of the erase size). The device is ``mtdN``,
a label from /proc/mtd, or a path. The messages are OpenWrt's; unlike OpenWrt every block written is read
back and compared, and every failure ends the command with its offset.

Also unlike OpenWrt, ``write`` puts a squashfs root's head last, as stage2 does on NOR: when the image
holds a squashfs superblock at an erase block boundary (a firmware image: the kernel, then the squashfs;
or a bare squashfs), that erase block stays erased until every block through the squashfs's end has been
written and verified, then it is programmed. The bytes on the flash in the end are the same; a write cut
or failed in between leaves no squashfs magic there (mtdsplit finds no rootfs) rather than a new
superblock over the old squashfs's remainder, which the kernel may mount. An image without one, for any
other partition, is written in order as before.

Exit codes: 0 ok; 1 failure (device cannot be opened, erase, write or verify failure, a verify that
differs, no room); 2 usage or invalid input (unknown option or command, bad number, empty image).
Not supported: ``dump``, several devices joined by ``:``, and the TRX/SEAMA/WRG fix-ups.

Start-up counts (a device's CPU, a VM under emulation: each imported module costs): the options are
parsed here rather than by ``getopt`` (which imports ``gettext``), logging is ``wrtcore.log``'s light
mode (no structlog), and what only a reboot needs is imported for it.
"""

from __future__ import annotations

import os
import sys

from stage2.writers import mtd as writer
from stage2.writers import roothead
from wrtcore import log
from wrtcore.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, InvalidInput, UpgradeError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up: wrtcore.light_tuple)
if TYPE_CHECKING:  # annotations only: typing and collections.abc cost start-up (see wrtcore.light_tuple)
    from collections.abc import Sequence
    from typing import BinaryIO, TextIO

USAGE = """\
Usage: mtd [<options> ...] <command> [<arguments> ...] <device>

The device is in the format of mtdX (eg: mtd4) or its label.
mtd recognizes these commands:
        unlock                  unlock the device
        erase                   erase all data on device
        verify <imagefile>|-    verify <imagefile> (use - for stdin) to device
        write <imagefile>|-     write <imagefile> (use - for stdin) to device
        jffs2write <file>       append <file> to the jffs2 partition on the device
Following options are available:
        -q                      quiet mode (once: no [w] on writing,
                                           twice: no status messages)
        -n                      write without first erasing the blocks
        -r                      reboot after successful command
        -f                      force write without trx checks
        -e <device>             erase <device> before executing the command
        -d <name>               directory for jffs2write, defaults to the root
        -j <name>               integrate <file> into jffs2 data when writing an image
        -s <number>             skip the first n bytes when appending data to the jffs2 partiton, \
defaults to "0"
        -p <number>             write beginning at partition offset

Example: To write linux.trx to mtd4 labeled as linux and reboot afterwards
         mtd -r write linux.trx linux
"""


class Usage(Exception):
    """Bad command line: the message (may be empty), then the usage text."""


class Options:
    """The command line, parsed (a plain class: a dataclass costs a compile at every start)."""

    def __init__(self) -> None:
        self.quiet = 0
        self.no_erase = self.reboot = False
        self.erase: list[str] = []
        self.directory = ""
        self.jffs2: str | None = None
        self.skip = self.offset = 0
        self.command = ""
        self.args: list[str] = []


def _number(opt: str, value: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise Usage(f"{opt}: illegal numeric string") from None
    if n < 0:
        raise Usage(f"{opt}: illegal numeric string")
    return n


ARITY = {"unlock": 1, "erase": 1, "verify": 2, "write": 2, "jffs2write": 2}
FLAGS, WITH_VALUE = "frnq", "edsjp"


def options(argv: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """POSIX getopt over ``FLAGS`` and ``WITH_VALUE``: bundled flags (``-qq``), a value attached
    (``-p65536``) or in the next word, ``--`` or the first word not an option ends them."""
    opts: list[tuple[str, str]] = []
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        word = args.pop(0)
        if word == "--":
            break
        for i, letter in enumerate(word[1:], 1):
            if letter in FLAGS:
                opts.append((f"-{letter}", ""))
            elif letter in WITH_VALUE:
                if i + 1 < len(word):
                    value = word[i + 1:]
                elif args:
                    value = args.pop(0)
                else:
                    raise Usage(f"option -{letter} requires argument")
                opts.append((f"-{letter}", value))
                break
            else:
                raise Usage(f"option -{letter} not recognized")
    return opts, args


def parse(argv: Sequence[str]) -> Options:
    opts, rest = options(argv)
    o = Options()
    for opt, value in opts:
        if opt == "-q":
            o.quiet += 1
        elif opt == "-n":
            o.no_erase = True
        elif opt == "-r":
            o.reboot = True
        elif opt == "-e":
            o.erase.append(value)
        elif opt == "-d":
            o.directory = value
        elif opt == "-j":
            o.jffs2 = value
        elif opt == "-s":
            o.skip = _number("-s", value)
        elif opt == "-p":
            o.offset = _number("-p", value)
    if len(rest) < 2 or ARITY.get(rest[0]) != len(rest) - 1:
        raise Usage("")
    o.command, o.args = rest[0], rest[1:]
    if ":" in o.args[-1]:
        raise Usage("several devices joined by ':' are not supported")
    return o


class _Ticker:
    """OpenWrt's ``[w]`` progress mark, redrawn after each block."""

    def __init__(self, err: TextIO) -> None:
        self.err = err

    def __call__(self, _done: int, _total: int | None) -> None:
        self.err.write("\b\b\b[w]")
        self.err.flush()


def _open(image: str, stdin: BinaryIO) -> BinaryIO | None:
    """The image file (``-``: standard input, left open when done), or None when it cannot be opened."""
    if image == "-":
        try:
            return open(stdin.fileno(), "rb", closefd=False)
        except (OSError, ValueError):
            return stdin  # an in-memory stand-in (tests): closing it does no harm
    try:
        return open(image, "rb")
    except OSError:
        return None


def _write(o: Options, err: TextIO, stdin: BinaryIO) -> int:
    image, device = o.args
    name = "<stdin>" if image == "-" else image
    source = _open(image, stdin)
    if source is None:
        err.write(f"Couldn't open image file: {image}!\n")
        return EXIT_FAILURE
    with source:
        if o.offset:
            err.write(f"Seeking on mtd device '{device}' to: {o.offset}\n")
        if o.quiet < 2:
            err.write(f"\nWriting from {name} to {device} ... ")
        if not o.quiet:
            err.write(" [ ]")
        report = writer.write_mtd(source, device, offset=o.offset, jffs2_config=o.jffs2, jffs2_skip=o.skip,
                                  erase=not o.no_erase, progress=None if o.quiet else _Ticker(err),
                                  hold_for=roothead.finder_aligned)
    if not o.quiet:
        err.write("\b\b\b\b    ")
    if o.quiet < 2:
        err.write("\n")
        for pos in report.bad_skipped:
            err.write(f"Skipping bad block at 0x{pos:08x}\n")
        for pos in report.bad_marked:
            err.write(f"Marked block at 0x{pos:08x} bad after a failure; its data went to the next block\n")
        if report.jffs2_offset is not None:
            err.write(f"Appending jffs2 data from {o.jffs2} to {device}...\n")
    if o.jffs2 is not None and report.jffs2_offset is None:
        err.write(f"No jffs2 end-of-filesystem marker in the image: {o.jffs2} was not appended\n")
    return EXIT_OK


def _verify(o: Options, err: TextIO, stdin: BinaryIO) -> int:
    image, device = o.args
    if o.quiet < 2:
        err.write(f"Verifying {device} against {image} ...\n")
    source = _open(image, stdin)
    if source is None:
        err.write(f"Failed to hash {image}\n")
        return EXIT_FAILURE
    with source:
        report = writer.verify_mtd(source, device, offset=o.offset)
    err.write(f"{report.flash_md5} - {device}\n{report.image_md5} - {image}\n")
    if report.ok:
        err.write("Success\n")
        return EXIT_OK
    err.write(f"Failed (first difference at offset {report.first_difference})\n")
    return EXIT_FAILURE


def _erase(device: str, o: Options, err: TextIO) -> None:
    if o.quiet < 2:
        err.write(f"Erasing {device} ...\n")
    report = writer.erase_mtd(device)
    if not o.quiet:
        for pos in report.bad_skipped:
            err.write(f"Skipping bad block at 0x{pos:x}\n")


def _unlock(device: str, o: Options, err: TextIO) -> None:
    if o.quiet < 2:
        err.write(f"Unlocking {device} ...\n")
    writer.unlock_mtd(device)


def _reboot(err: TextIO) -> None:
    from wrtcore import syscalls
    from wrtcore.run import CommandFailed, run

    err.write("Rebooting ...\n")
    err.flush()
    try:
        run(["/sbin/reboot"])
    except CommandFailed:
        os.sync()
        syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART)


def execute(o: Options, err: TextIO, stdin: BinaryIO) -> int:
    device = o.args[-1]
    writer.open_device(device).close()  # "Could not open mtd device" before anything else happens
    os.sync()
    unlocked = False
    for name in o.erase:
        _unlock(name, o, err)
        _erase(name, o, err)
        unlocked = unlocked or name == device
    if o.command in ("unlock", "erase", "write", "jffs2write") and not unlocked:
        _unlock(device, o, err)
    if o.command == "erase":
        _erase(device, o, err)
    elif o.command == "write":
        code = _write(o, err, stdin)
        if code:
            return code
    elif o.command == "verify":
        code = _verify(o, err, stdin)
        if code:
            return code
    elif o.command == "jffs2write":
        if o.quiet < 2:
            err.write(f"Appending {o.args[0]} to jffs2 partition {device}\n")
        writer.jffs2write(o.args[0], device, directory=o.directory)
    os.sync()
    if o.reboot:
        _reboot(err)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, err: TextIO | None = None,
         stdin: BinaryIO | None = None) -> int:
    err = err or sys.stderr
    try:
        o = parse(sys.argv[1:] if argv is None else argv)
    except Usage as exc:
        if str(exc):
            err.write(f"{exc}\n")
        err.write(USAGE)
        return EXIT_INVALID
    try:
        return execute(o, err, stdin or sys.stdin.buffer)
    except writer.MtdError as exc:
        err.write(f"\n{exc} ({'the device was changed' if exc.written else 'nothing was written'})\n")
        return EXIT_FAILURE
    except InvalidInput as exc:
        err.write(f"{exc}\n")
        return EXIT_FAILURE if exc.message.startswith("Could not open mtd device") else EXIT_INVALID
    except UpgradeError as exc:
        err.write(f"{exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def entry() -> None:
    # The messages are OpenWrt's, on stderr; the structured records go to the JSON channel only.
    log.setup("mtd", console=open(os.devnull, "w"), light=True)  # noqa: SIM115 - lives as long as the process
    sys.exit(main())


if __name__ == "__main__":
    entry()
