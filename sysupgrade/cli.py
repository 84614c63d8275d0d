"""``sysupgrade [<option>...] <image>``: stage 1 of the upgrade, with OpenWrt's flags and messages;
``sysupgrade [-q] [-i] [-c] [-u] [-o] [-k] <-b|-r|-l> [<file>]``: the config backup commands.

This module holds the steps and ``main``; the option table, its parsing and the help text are in
``sysupgrade.options``.

Order (reference 3.1, 3.4): the options, parsed OpenWrt's way (``sysupgrade.options``: one per word,
left to right until the first non-option, which is the image; no bundling: ``-nF`` is an invalid option;
``-b``/``-r``/``-f`` take the next word whatever it is); the usage checks; ``-l``, ``-b``, ``-r`` (each
ends the command); then locate the image (copy it into /tmp when it lies elsewhere), validate it
(``sysupgrade.validate``, in process), the config archive ``/tmp/sysupgrade.tgz`` (``-f``'s copied
there, or a new one unless ``-n``, a stale one removed with ``-n``), stop here with ``-T`` (which never
creates the archive), then hand the upgrade over: ``call system sysupgrade`` on upgraded's bus with the
request of reference 1.1, or in failsafe (``$FAILSAFE`` non-empty) the hand-over file
``/tmp/sysupgrade``. Unlike OpenWrt's ``ubus call``, the bus answers: the command reports whether the
upgrade was accepted and follows its progress until the device reboots.

Options: ``-i`` (ask_bool: ``Keep config files over reflash``, ``Edit config file list`` (``$EDITOR``,
default vi, on ``/tmp/sysupgrade.conffiles``) and, on a ramdisk root, ``Abort``; the question goes to
stderr, so that ``-b -`` keeps stdout clean, the answer comes from stdin), ``-v``/``-q``, ``-n``,
``-c``/``-o``/``-u``/``-k`` (the backup list: ``sysupgrade.backup_list``), ``-p``, ``-P``, ``-s``,
``-F``/``--force``, ``-T``/``--test``, ``--ignore-minor-compat-version``, ``-h``/``--help``,
``-f <cfg>`` (a local .tar.gz; a URL is refused, saying so), ``-b|--create-backup <file>`` (``-`` =
stdout, quiet), ``-r|--restore-backup <file>`` (``-`` = stdin; extracted with preinit's safe
``preinit.restore.extract``, which also re-adds the new firmware's missing passwd/group/shadow
entries), ``-l|--list-backup``. The image: a path (copied into /tmp when it lies elsewhere) or an
http/https URL downloaded there with progress, after checking that RAM has room (``sysupgrade.fetch``).

Exit codes (``EXIT_CODES``, also in the README):

- 0: the upgrade was accepted by upgraded and followed until the connection closed (the reboot); also
  ``-T`` after a successful check, ``-h``, the failsafe hand-over once written, ``-l``, ``-b`` and
  ``-r`` done, ``-b`` on a ramdisk root (nothing saved, as OpenWrt) and an ``Abort`` answered yes with
  ``-i`` on a ramdisk root (OpenWrt's ``exit`` after a true ask_bool).
- 1: refused: ``Image check failed.``, upgraded's error reply (its message is printed), a failure
  reported by upgraded after acceptance, ``Failed to create the configuration backup.``, a restore
  that failed, an image copy that could not be made, a bus reply that cannot be read or does not come
  in time. OpenWrt's usage errors keep OpenWrt's code 1: ``Invalid option: <opt>``, no image and no
  backup command (help), an image with ``-b``/``-r``, ``Cannot find '/overlay/upper/etc', required for
  '-c' or '-o'``, ``'/rom/' is required by '-u'``, ``Backup archive '<f>' not found.``, ``Invalid config
  file. Please use only .tar.gz files``, ``Image file not found.``; and an option missing its argument.
- 1 also: the image cannot be downloaded (unreachable, HTTP error, TLS, truncated) or RAM has no room
  for it (the figures are printed), before anything is written.
- 2: invalid input OpenWrt has no code for: an image URL of another scheme or a malformed one.
- 3: no bus: upgraded's socket is missing, refuses the connection, or closes it before answering
  (``Command failed: Connection failed``).
- 130: interrupted.

Environment: ``WRT_ROOT`` (prefix of every system path: /tmp, /etc, /lib, /overlay, /rom, /usr,
/var/run), ``WRT_MOUNTINFO`` (the mount table that tells whether / is a ramdisk, default
/proc/self/mountinfo), ``UPGRADED_SOCKET`` (bus socket, default ``/var/run/upgraded.sock`` under
WRT_ROOT), ``FAILSAFE``, ``EDITOR`` (``-i``), and the validator's
``REQUIRE_IMAGE_METADATA``/``REQUIRE_IMAGE_SIGNATURE``/``WRT_PLATFORM``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from preinit import restore
from sysupgrade import backup, backup_list, fetch, paths, validate
from sysupgrade.handover import request_upgrade, socket_path, wake_failsafe, write_failsafe_handover
from sysupgrade.options import BOTH_IMAGE_AND_BACKUP, HELP, Options, UsageError, parse_args
from wrtcore import log
from wrtcore.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NO_BUS,
    EXIT_OK,
    UpgradeError,
)

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "upgrade accepted by upgraded and followed until the connection closed; -T check passed; "
             "-h; failsafe hand-over written; -l, -b, -r done; -b on a ramdisk root (nothing saved); "
             "Abort answered yes with -i on a ramdisk root",
    EXIT_FAILURE: "refused by the validator (Image check failed.) or by upgraded (its message is printed), "
                  "failed after acceptance, config backup (Failed to create the configuration backup.), "
                  "restore or image copy failed, unreadable or late bus reply; OpenWrt's usage errors "
                  "(Invalid option, no image, image with -b/-r, no /overlay/upper/etc for -c/-o, no /rom "
                  "for -u, Backup archive not found, Invalid config file, Image file not found.) keep "
                  "OpenWrt's code 1, as does an option missing its argument",
    EXIT_INVALID: "invalid input OpenWrt has no code for: an image URL of another scheme, or malformed",
    EXIT_NO_BUS: "no bus: upgraded's socket missing, refusing, or closed before answering "
                 "(Command failed: Connection failed)",
    EXIT_INTERRUPTED: "interrupted",
}

GZIP_MAGIC = b"\x1f\x8b"



@dataclass
class Console:
    """Plain lines on stderr: ``info`` obeys -q/-v (OpenWrt's ``v``), ``error`` always prints."""

    verbose: int = 1

    def info(self, line: str) -> None:
        if self.verbose >= 1:
            print(line, file=sys.stderr, flush=True)

    def debug(self, line: str) -> None:
        if self.verbose >= 2:
            print(line, file=sys.stderr, flush=True)

    def error(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


@dataclass
class Prompt:
    """OpenWrt's ``ask_bool``: the default without ``-i``; with it, the question (``(y/N)`` or
    ``(Y/n)``) on stderr and one line from stdin: ``y...`` is yes, ``n...`` no, anything else (an empty
    line, end of input) the default."""

    interactive: bool = False

    def ask(self, default: bool, question: str) -> bool:
        if not self.interactive:
            return default
        sys.stderr.write(f"{question} ({'Y/n' if default else 'y/N'}): ")
        sys.stderr.flush()
        answer = sys.stdin.readline().lstrip(" \t")
        if answer.startswith("y"):
            return True
        if answer.startswith("n"):
            return False
        return default


# --- the steps -----------------------------------------------------------------------------------


def check_prerequisites(opts: Options, root: str) -> None:
    """``-c``/``-o`` need the overlay's upper /etc, ``-u`` needs /rom (checked before any command)."""
    if opts.overlay_path is not None and not os.path.isdir(paths.rooted(paths.OVERLAY_UPPER_ETC, root)):
        raise UsageError(f"Cannot find '{paths.OVERLAY_UPPER_ETC}', required for '-c' or '-o'")
    if opts.skip_unchanged and not os.path.isdir(paths.rooted(paths.ROM, root)):
        raise UsageError(f"'{paths.ROM}' is required by '-u'")


def list_backup(opts: Options, root: str) -> int:
    """``-l``: the files ``-b`` would save, one per line on stdout."""
    sys.stdout.write("".join(f"{p}\n" for p in backup_list.listing(root, opts.selection)))
    sys.stdout.flush()
    return EXIT_OK


def edit_file_list(files: list[str], root: str, console: Console) -> list[str]:
    """``Edit config file list``: the list in ``/tmp/sysupgrade.conffiles``, opened in ``$EDITOR``
    (default vi, on the user's terminal: not through ``wrtcore.run``, which captures output), read back;
    a directory named there is walked like the lists. An editor that cannot be started leaves the list
    as it was (OpenWrt goes on when vi fails); the list file itself failing fails the backup."""
    list_file = paths.rooted(paths.CONFFILES, root)
    editor = shlex.split(os.environ.get("EDITOR") or "vi")
    try:
        with open(list_file, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("".join(f"{p}\n" for p in files))
        try:
            subprocess.run([*editor, list_file], check=False)
        except OSError as exc:
            console.error(f"{editor[0]}: {exc.strerror or exc}")
        with open(list_file, encoding="utf-8", errors="surrogateescape") as f:
            lines = [line.strip() for line in f]
    except OSError as exc:
        raise backup.BackupError(f"{paths.CONFFILES}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(list_file)
    edited: set[str] = set()
    for line in lines:
        if line and not line.startswith("#"):
            edited.update(backup_list.find_files(root, line))
    return sorted(edited)


def save_config(dest: str, opts: Options, root: str, console: Console, prompt: Prompt) -> bool:
    """OpenWrt's ``create_backup_archive``: the archive at ``dest`` (host path, ``-`` for stdout).
    False when the user chose to abort (``-i`` on a ramdisk root); raises ``BackupError``."""
    if backup_list.rootfs_type(root) == "tmpfs":
        console.error("Cannot save config while running from ramdisk.")
        if prompt.ask(False, "Abort"):
            return False
        if dest != "-":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
        return True
    selection = opts.selection
    files = backup_list.build_file_list(root, selection)
    if prompt.ask(False, "Edit config file list"):
        files = edit_file_list(files, root, console)
    console.info("Saving config files...")
    try:
        if dest == "-":
            members = backup.synthetic_members(root, selection)
            result = backup.write_backup(sys.stdout.buffer, root, files, members, console.error)
            sys.stdout.buffer.flush()
        else:
            result = backup.create_backup(root, dest, files, selection=selection, say=console.error)
    except backup.BackupError as exc:
        if exc.hint:  # what went wrong first, as tar's own message precedes OpenWrt's
            console.error(exc.hint)
        raise backup.BackupError() from exc
    for path in result.added:  # tar's v
        console.debug(path.lstrip("/"))
    return True


def create_backup(opts: Options, root: str, console: Console, prompt: Prompt) -> int:
    """``-b <file>``: the archive, then exit (0 also when the user aborted on a ramdisk)."""
    assert opts.create_backup is not None
    save_config(opts.create_backup, opts, root, console, prompt)
    return EXIT_OK


@contextlib.contextmanager
def _archive_file(source: str, root: str) -> Iterator[str]:
    """The archive as a file: ``source`` itself, or stdin spooled into the system's /tmp."""
    if source != "-":
        yield source
        return
    tmp = paths.rooted(paths.TMP, root)
    fd, name = tempfile.mkstemp(prefix="sysupgrade-restore.", suffix=".tgz",
                                dir=tmp if os.path.isdir(tmp) else None)
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def restore_backup(opts: Options, root: str, console: Console) -> int:
    """``-r <file>``: extract the archive over the root, the safe way preinit does."""
    source = opts.restore_backup
    assert source is not None
    if source != "-" and not os.path.isfile(source):
        raise UsageError(f"Backup archive '{source}' not found.")
    console.info("Restoring config files...")
    try:
        with _archive_file(source, root) as archive:
            result = restore.extract(archive, root)
    except (EOFError, tarfile.TarError, zlib.error) as exc:
        raise UpgradeError("Failed to restore the configuration backup: damaged or not a .tar.gz archive",
                           " ".join(str(exc).split())) from exc
    except OSError as exc:
        raise UpgradeError(f"Failed to restore the configuration backup: {exc}") from exc
    for name in result["restored"]:  # tar's v
        console.debug(name)
    return EXIT_OK


def use_config_archive(source: str, root: str, console: Console) -> None:
    """``-f <cfg>``: a local .tar.gz (gzip magic), copied to ``/tmp/sysupgrade.tgz``."""
    invalid = UsageError("Invalid config file. Please use only .tar.gz files")
    if "://" in source:
        console.error(f"A config archive cannot be fetched from a URL ({source}): download it and "
                      "give its path")
        raise invalid
    try:
        with open(source, "rb") as f:
            magic = f.read(2)
    except OSError:
        magic = b""
    if magic != GZIP_MAGIC:
        raise invalid
    target = paths.rooted(paths.CONF_TAR, root)
    with contextlib.suppress(OSError):
        if os.path.samefile(source, target):
            return
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UpgradeError(f"Failed to copy the config file to {paths.CONF_TAR}: {exc.strerror or exc}") \
            from exc


def locate_image(arg: str, root: str, console: Console) -> str:
    """Host path of the image inside the system's /tmp: used in place there, else copied or downloaded
    (http/https, with progress) once, after checking that RAM has room (``sysupgrade.fetch``)."""
    stream: TextIO = sys.stderr if console.verbose >= 1 else open(os.devnull, "w")  # noqa: SIM115
    try:
        return fetch.get_image(arg, root=root, say=console.info, progress_stream=stream)
    finally:
        if stream is not sys.stderr:
            stream.close()


def validator_env(opts: Options, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """What sysupgrade exports to the validator (SAVE_CONFIG, FORCE, IGNORE_MINOR_COMPAT)."""
    env = dict(os.environ if base is None else base)
    env["SAVE_CONFIG"] = "1" if opts.save_config else "0"
    env["FORCE"] = "1" if opts.force else "0"
    env["IGNORE_MINOR_COMPAT"] = "1" if opts.ignore_minor_compat else "0"
    return env


def check_image(image: str, opts: Options, root: str, console: Console) -> None:
    """Reference 3.4 step 3: an invalid image stops here unless forced and forceable."""
    verdict = validate.validate_image(image, env=validator_env(opts), root=root, say=console.info)
    if verdict.valid:
        return
    if opts.force and verdict.forceable:
        console.info("Image check failed but --force given - will update anyway!")
        return
    raise UpgradeError("Image check failed.")


def build_request(image_path: str, opts: Options) -> dict[str, Any]:
    """The ``system sysupgrade`` message, key for key as OpenWrt's sysupgrade builds it."""
    message: dict[str, Any] = {"prefix": paths.RAM_ROOT, "path": image_path}
    if opts.force:
        message["force"] = True
    if opts.save_config:
        message["backup"] = paths.CONF_TAR
    message["command"] = paths.STAGE2_COMMAND
    options: dict[str, Any] = {
        "save_partitions": 1 if opts.save_partitions else 0,
        "add_provisioning": 1 if opts.add_provisioning else 0,
    }
    if opts.use_curr_part:
        options["use_curr_part"] = True
    message["options"] = options
    return message


# --- main ----------------------------------------------------------------------------------------


def upgrade(opts: Options, root: str, console: Console, prompt: Prompt) -> int:
    assert opts.image is not None
    image = locate_image(opts.image, root, console)
    image_path = paths.unrooted(image, root) or image
    check_image(image, opts, root, console)

    conf_tar = paths.rooted(paths.CONF_TAR, root)
    if opts.conf_image is not None:
        use_config_archive(opts.conf_image, root, console)  # also with -T
        keep = True
    elif prompt.ask(opts.save_config, "Keep config files over reflash"):
        if not opts.test and not save_config(conf_tar, opts, root, console, prompt):
            return EXIT_OK  # aborted on a ramdisk root: OpenWrt's `exit` after a true ask_bool
        keep = True
    else:
        if not opts.test:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(conf_tar)
        keep = False
    if opts.test:
        return EXIT_OK
    opts = dataclasses.replace(opts, save_config=keep)

    console.info("Commencing upgrade. Closing all shell sessions.")
    if os.environ.get("FAILSAFE"):
        write_failsafe_handover(image_path, root)
        wake_failsafe(root)
        return EXIT_OK
    return request_upgrade(socket_path(root), build_request(image_path, opts), console)


def run(opts: Options, root: str, console: Console) -> int:
    """Everything after parsing, in OpenWrt's order of checks and commands."""
    if opts.help:
        sys.stdout.write(HELP)
        return EXIT_OK
    if opts.image is None and not opts.backup_command and not opts.list_backup:
        sys.stderr.write(HELP)
        return EXIT_FAILURE
    if opts.image is not None and opts.backup_command:
        console.error(BOTH_IMAGE_AND_BACKUP)
        return EXIT_FAILURE
    if opts.create_backup == "-":
        console.verbose = opts.verbose = 0  # nothing may clobber the archive on stdout
    check_prerequisites(opts, root)
    prompt = Prompt(opts.interactive)
    if opts.list_backup:
        return list_backup(opts, root)
    if opts.create_backup is not None:
        return create_backup(opts, root, console, prompt)
    if opts.restore_backup is not None:
        return restore_backup(opts, root, console)
    return upgrade(opts, root, console, prompt)


def main(argv: list[str]) -> int:
    console = Console()
    try:
        opts = parse_args(argv)
        console.verbose = opts.verbose
        return run(opts, paths.root(), console)
    except UpgradeError as exc:
        console.error(exc.message)
        if exc.hint:
            console.debug(exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def entry() -> None:
    log.setup("sysupgrade")  # preinit.restore's warnings (refused members) go to stderr
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
