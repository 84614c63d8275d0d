"""``sysupgrade [<option>...] <image>``: stage 1 of the upgrade, with OpenWrt's flags and messages.

Order (reference 3.4): locate the image (copy it into /tmp when it lies elsewhere), validate it
(``sysupgrade.validate``, in process), save the config archive ``/tmp/sysupgrade.tgz`` (or remove a stale
one with ``-n``), stop here with ``-T``, then hand the upgrade over: ``call system sysupgrade`` on
upgraded's bus with the request of reference 1.1, or in failsafe (``$FAILSAFE`` non-empty) the
hand-over file ``/tmp/sysupgrade``. Unlike OpenWrt's ``ubus call``, the bus answers: the command reports
whether the upgrade was accepted and follows its progress until the device reboots.

Options are parsed OpenWrt's way, one per word, left to right until the first non-option (no bundling:
``-nF`` is an invalid option). Supported now: ``-n -F/--force -T/--test -v -q -p -P -s -k
--ignore-minor-compat-version -h/--help``; ``-k`` is accepted but the installed-packages list is not
written yet. OpenWrt's other options (``-i -c -o -u -f -b -r -l``) are recognised and refused as not
implemented yet; http(s) URLs likewise.

Exit codes (``EXIT_CODES``, also in the README):

- 0: the upgrade was accepted by upgraded and followed until the connection closed (the reboot); also
  ``-T`` after a successful check, ``-h``, and the failsafe hand-over once written.
- 1: refused: ``Image check failed.``, upgraded's error reply (its message is printed), a failure
  reported by upgraded after acceptance, a config backup or image copy that could not be made, a bus
  reply that cannot be read or does not come in time. OpenWrt's own usage errors keep OpenWrt's code
  1: ``Invalid option: <opt>``, no image (help), ``Image file not found.``.
- 2: invalid usage that OpenWrt has no code for: an OpenWrt option or an image URL not implemented yet.
- 3: no bus: upgraded's socket is missing, refuses the connection, or closes it before answering
  (``Command failed: Connection failed``).
- 130: interrupted.

Environment: ``WRT_ROOT`` (prefix of every system path: /tmp, /etc, /lib, /var/run), ``UPGRADED_SOCKET``
(bus socket, default ``/var/run/upgraded.sock`` under WRT_ROOT), ``FAILSAFE``, and the validator's
``REQUIRE_IMAGE_METADATA``/``REQUIRE_IMAGE_SIGNATURE``/``WRT_PLATFORM``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sysupgrade import backup, paths, validate
from wrtcore.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NO_BUS,
    EXIT_OK,
    BusUnavailable,
    InvalidInput,
    UpgradeError,
)

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "upgrade accepted by upgraded and followed until the connection closed; -T check passed; "
             "-h; failsafe hand-over written",
    EXIT_FAILURE: "refused by the validator (Image check failed.) or by upgraded (its message is printed), "
                  "failed after acceptance, config backup or image copy failed, unreadable or late "
                  "bus reply; OpenWrt's usage errors (Invalid option, no image, Image file not found.) "
                  "keep OpenWrt's code 1",
    EXIT_INVALID: "invalid usage OpenWrt has no code for: an OpenWrt option or image URL not implemented yet",
    EXIT_NO_BUS: "no bus: upgraded's socket missing, refusing, or closed before answering "
                 "(Command failed: Connection failed)",
    EXIT_INTERRUPTED: "interrupted",
}

SOCKET_ENV = "UPGRADED_SOCKET"
UBUS_SID = "0" * 32
REPLY_TIMEOUT = 120.0  # upper bound for upgraded to validate and answer the call
MAX_LINE = 1 << 20

# ubus status codes and the ubus CLI's names for them
UBUS_STATUS = {
    0: "Success", 1: "Invalid command", 2: "Invalid argument", 3: "Method not found", 4: "Not found",
    5: "No response", 6: "Permission denied", 7: "Request timed out", 8: "Operation not supported",
    9: "Unknown error", 10: "Connection failed",
}
# stage2 states in which an accepted upgrade has ended badly (reported before the reboot)
FAILED_STATES = frozenset({"aborted", "failed_after_write", "failed"})

HELP = """\
Usage: sysupgrade [<upgrade-option>...] <image file>

upgrade-option:
    -n           do not save configuration over reflash
    -p           do not attempt to restore the partition table after flash.
    -k           include in backup a list of current installed packages (not implemented yet)
    -s           stay on current partition (for dual firmware devices)
    -P           create factory provisioning partition
    -T | --test
                 Verify image and config .tar.gz but do not actually flash.
    -F | --force
                 Flash image even if image checks fail, this is dangerous!
    --ignore-minor-compat-version
                 Skip the minor compat version check when keeping the config.
    -q           less verbose
    -v           more verbose
    -h | --help  display this help

Not implemented yet: -i -c -o -u -f <config>, -b|-r <file>, -l, and http(s) image URLs.
"""


class UsageError(UpgradeError):
    """OpenWrt's usage errors, with OpenWrt's exit code 1."""


class NotImplementedYet(InvalidInput):
    pass


@dataclass
class Options:
    image: str | None = None
    save_config: bool = True  # SAVE_CONFIG
    force: bool = False  # FORCE
    test: bool = False  # -T
    verbose: int = 1  # VERBOSE
    save_partitions: bool = True  # SAVE_PARTITIONS
    add_provisioning: bool = False  # ADD_PROVISIONING
    use_curr_part: bool = False  # USE_CURR_PART
    save_installed_pkgs: bool = False  # SAVE_INSTALLED_PKGS (-k)
    ignore_minor_compat: bool = False  # IGNORE_MINOR_COMPAT
    help: bool = False


def _set(**values: Any) -> Callable[[Options], None]:
    def apply(opts: Options) -> None:
        for name, value in values.items():
            setattr(opts, name, value)
    return apply


def _more_verbose(opts: Options) -> None:
    opts.verbose += 1


def _less_verbose(opts: Options) -> None:
    opts.verbose -= 1


# option word -> effect; each takes no argument
SWITCHES: dict[str, Callable[[Options], None]] = {
    "-n": _set(save_config=False),
    "-F": _set(force=True), "--force": _set(force=True),
    "-T": _set(test=True), "--test": _set(test=True),
    "-v": _more_verbose,
    "-q": _less_verbose,
    "-p": _set(save_partitions=False),
    "-P": _set(add_provisioning=True),
    "-s": _set(use_curr_part=True),
    "-k": _set(save_installed_pkgs=True),
    "--ignore-minor-compat-version": _set(ignore_minor_compat=True),
    "-h": _set(help=True), "--help": _set(help=True),
}
# OpenWrt options a later issue implements
NOT_YET = frozenset({"-i", "-c", "-o", "-u", "-f", "-b", "--create-backup", "-r", "--restore-backup",
                     "-l", "--list-backup"})


def parse_args(argv: list[str]) -> Options:
    """Options until the first word not starting with ``-``; that word is the image."""
    opts = Options()
    for word in argv:
        if not word.startswith("-"):
            opts.image = word
            break
        if word in SWITCHES:
            SWITCHES[word](opts)
            if opts.help:
                break
        elif word in NOT_YET:
            raise NotImplementedYet(f"Option {word} is not implemented yet")
        else:
            raise UsageError(f"Invalid option: {word}")
    return opts


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


# --- the steps -----------------------------------------------------------------------------------


def locate_image(arg: str, root: str, console: Console) -> str:
    """Host path of the image inside the system's /tmp, copying it there (streamed) when needed."""
    if arg.startswith(("http://", "https://")):
        raise NotImplementedYet("Fetching the image from a URL is not implemented yet")
    real = os.path.realpath(arg)
    if not os.path.isfile(real):
        raise UsageError("Image file not found.")
    tmp = os.path.realpath(paths.rooted(paths.TMP, root))
    if real.startswith(tmp + "/"):
        return real
    console.info("Image not in /tmp, copying...")
    dest = paths.rooted(paths.IMAGE_COPY, root)
    try:
        shutil.copyfile(real, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise UpgradeError(f"Failed to copy the image to {paths.IMAGE_COPY}: {exc.strerror or exc}") from exc
    return dest


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


def failsafe_handover(image_path: str) -> bytes:
    """``/tmp/sysupgrade`` content: RAM_ROOT, image and command, NUL-separated, no trailing NUL."""
    return b"\0".join(os.fsencode(p) for p in (paths.RAM_ROOT, image_path, paths.STAGE2_COMMAND))


def write_failsafe_handover(image_path: str, root: str) -> None:
    target = paths.rooted(paths.FAILSAFE_HANDOVER, root)
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(failsafe_handover(image_path))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)  # the watcher never sees half a file


def wake_failsafe(root: str) -> bool:
    """OpenWrt unlocks /tmp/.failsafe so that preinit, waiting in failsafe, goes on to the upgrade.
    Here it is a FIFO preinit reads: one line wakes it. False when nobody waits on it."""
    try:
        fd = os.open(paths.rooted(paths.FAILSAFE_LOCK, root), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENOENT: not in failsafe preinit; ENXIO: no reader
        return False
    try:
        os.write(fd, b"sysupgrade\n")
    finally:
        os.close(fd)
    return True


# --- the bus -------------------------------------------------------------------------------------


def socket_path(root: str, env: Mapping[str, str] | None = None) -> str:
    value = (os.environ if env is None else env).get(SOCKET_ENV)
    return value or paths.rooted(paths.UPGRADED_SOCKET, root)


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _send_request(path: str, message: Mapping[str, Any],
                  reply_timeout: float = REPLY_TIMEOUT) -> Iterator[dict[str, Any]]:
    """Subscribe to ``system`` events, ``call system sysupgrade``, yield what arrives until EOF.

    Newline-delimited JSON-RPC 2.0 on a unix stream socket: the call's reply (id 2) and then
    ``system.progress`` notifications are yielded as decoded objects. Raises ``BusUnavailable`` when
    the socket cannot be reached, ``UpgradeError`` on a timeout or an unreadable line. (A private copy
    of the protocol until ``upgraded.client`` settles.)
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(reply_timeout)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise BusUnavailable("Command failed: Connection failed",
                             f"{path}: {exc.strerror or exc}") from exc
    with sock, sock.makefile("rb") as rfile:

        def receive() -> dict[str, Any] | None:
            try:
                line = rfile.readline(MAX_LINE)
            except TimeoutError as exc:
                raise UpgradeError("Command failed: Request timed out") from exc
            except OSError:
                return None  # reset by the peer: the connection is gone, as at the reboot
            if not line:
                return None
            if not line.endswith(b"\n") and len(line) >= MAX_LINE:
                raise UpgradeError("Command failed: reply from upgraded too long")
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise UpgradeError("Command failed: unreadable reply from upgraded") from exc
            if not isinstance(obj, dict):
                raise UpgradeError("Command failed: unreadable reply from upgraded")
            return obj

        try:
            sock.sendall(_encode({"jsonrpc": "2.0", "id": 1, "method": "subscribe",
                                  "params": [UBUS_SID, "system"]}))
            while (msg := receive()) is not None and msg.get("id") != 1:
                yield msg
            if msg is None:
                return
            sock.sendall(_encode({"jsonrpc": "2.0", "id": 2, "method": "call",
                                  "params": [UBUS_SID, "system", "sysupgrade", dict(message)]}))
        except OSError as exc:
            raise BusUnavailable("Command failed: Connection failed", str(exc)) from exc
        while (msg := receive()) is not None:
            if msg.get("id") == 2:
                sock.settimeout(None)  # accepted or not, the rest lasts until the reboot
            yield msg


def _reply_outcome(msg: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(accepted, error message) from the call's reply."""
    if isinstance(msg.get("error"), Mapping):
        return False, f"Command failed: {msg['error'].get('message', 'unknown error')}"
    result = msg.get("result")
    if not isinstance(result, list) or not result or not isinstance(result[0], int):
        return False, "Command failed: unreadable reply from upgraded"
    status = result[0]
    body = result[1] if len(result) > 1 and isinstance(result[1], Mapping) else {}
    if status == 0 and body.get("accepted", True) is not False:
        return True, None
    error = body.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return False, error["message"]
    return False, f"Command failed: {UBUS_STATUS.get(status, f'status {status}')}"


def describe_progress(params: Mapping[str, Any]) -> str:
    words = [str(params[k]) for k in ("state", "event", "step") if params.get(k)]
    progress = params.get("progress")
    if isinstance(progress, Mapping) and progress.get("total"):
        words.append(f"[{progress.get('done', 0)}/{progress['total']}]")
    for key in ("message", "error"):
        if params.get(key):
            words.append(f"{key}={params[key]}")
    return "upgrade: " + " ".join(words)


def request_upgrade(path: str, message: Mapping[str, Any], console: Console) -> int:
    """Send the request, report the answer, follow the progress; the exit code."""
    accepted = False
    failure: str | None = None
    for msg in _send_request(path, message):
        if msg.get("id") == 2 and not accepted:
            accepted, error = _reply_outcome(msg)
            if not accepted:
                console.error(error or "Command failed")
                return EXIT_FAILURE
            console.info("Upgrade accepted; following its progress until the reboot.")
            continue
        if msg.get("method") == "system.progress" and isinstance(msg.get("params"), Mapping):
            params = msg["params"]
            console.info(describe_progress(params))
            if params.get("state") in FAILED_STATES:
                failure = describe_progress(params)
    if not accepted:
        raise BusUnavailable("Command failed: Connection failed", "upgraded closed the connection unanswered")
    if failure is not None:
        console.error(f"Upgrade failed after it was accepted ({failure})")
        return EXIT_FAILURE
    return EXIT_OK


# --- main ----------------------------------------------------------------------------------------


def upgrade(opts: Options, root: str, console: Console) -> int:
    assert opts.image is not None
    image = locate_image(opts.image, root, console)
    image_path = paths.unrooted(image, root) or image
    check_image(image, opts, root, console)

    conf_tar = paths.rooted(paths.CONF_TAR, root)
    if opts.save_config:
        if opts.save_installed_pkgs:
            console.info("Note: -k (list of installed packages in the backup) is not implemented yet")
        if not opts.test:
            console.info("Saving config files...")
            backup.create_backup(root, say=console.error)
    elif not opts.test:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(conf_tar)
    if opts.test:
        return EXIT_OK

    console.info("Commencing upgrade. Closing all shell sessions.")
    if os.environ.get("FAILSAFE"):
        write_failsafe_handover(image_path, root)
        wake_failsafe(root)
        return EXIT_OK
    return request_upgrade(socket_path(root), build_request(image_path, opts), console)


def main(argv: list[str]) -> int:
    console = Console()
    try:
        opts = parse_args(argv)
        console.verbose = opts.verbose
        if opts.help:
            sys.stdout.write(HELP)
            return EXIT_OK
        if opts.image is None:
            sys.stderr.write(HELP)
            return EXIT_FAILURE
        return upgrade(opts, paths.root(), console)
    except UpgradeError as exc:
        console.error(exc.message)
        if exc.hint:
            console.debug(exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
