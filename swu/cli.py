"""``swupdate-wrt``: install a ``.swu`` bundle into another slot while the system keeps running, with
SWUpdate's own flags and their meanings (SWUpdate 2022.12), so scripts written for ``swupdate`` work.

    swupdate-wrt -i FILE [-c] [-e SELECTION,MODE] [-H BOARD:REV] [-k CERT [--cert-purpose P]]
                 [-f CONFIG] [-N VERSION] [-R VERSION] [--max-version VERSION] [-v] [-l LEVEL]

``-i -`` reads the bundle from stdin (one pass). A bundle given as a file is checked completely first
(as ``-c`` does: signature, description, every wanted artifact's sha256 and decompression) and installed
only when that passes, so a corrupt bundle writes nothing; the same open file is then read again and
checked again while it installs.

Exit codes: 0 installed (or checked, with ``-c``); 1 the install failed (the message says whether
anything was written); 2 refused before anything was written (usage, an invalid or incompatible bundle,
a bad signature, the version policy of ``-N``/``-R``/``--max-version``); 130 interrupted.

Added options (not SWUpdate's): ``--hwrevision-file``, ``--sw-versions-file``, ``--fw-env-config``
(default ``/etc/hwrevision``, ``/etc/sw-versions``, ``/etc/fw_env.config``). ``TMPDIR`` places the
scratch directory (scripts, spooled artifacts, mount points), as for SWUpdate.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

import structlog
from cryptography import x509

from swu import check, signature
from swu.cpio import open_bundle
from swu.description import build_plan
from swu.handlers.base import Settings
from swu.hwcompat import parse_hw_option, read_hwrevision
from swu.install import Event, install
from swu.model import DescriptionError, InstallPlan, SwuError, Target
from swu.versions import check_bundle_version, installed_versions
from wrtcore import log

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130
# SWUpdate's -l levels: 0 off, 1 error, 2 warning, 3 info, 4 debug, 5/6 trace
_LEVELS = {0: logging.CRITICAL + 10, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO,
           4: logging.DEBUG, 5: logging.DEBUG, 6: logging.DEBUG}


class Refused(SwuError):
    """Refused before anything was written."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swupdate-wrt", description="Install or check a .swu bundle.")
    p.add_argument("-i", "--image", required=True, metavar="FILE", help="the bundle (- for stdin)")
    p.add_argument("-c", "--check", action="store_true", help="check only: install nothing")
    p.add_argument("-e", "--select", metavar="SELECTION,MODE", help="software collection and mode")
    p.add_argument("-H", "--hwrevision", metavar="BOARD:REV", help="board:revision (else /etc/hwrevision)")
    p.add_argument("-k", "--key", metavar="CERT", help="X.509 certificate the signature must verify against")
    p.add_argument("--cert-purpose", choices=[c.value for c in signature.CertPurpose],
                   default=signature.CertPurpose.EMAIL_PROTECTION.value)
    p.add_argument("-f", "--file", metavar="CONFIG", help="swupdate.cfg: its versions list")
    p.add_argument("-N", "--no-downgrading", metavar="VERSION", help="refuse a bundle older than VERSION")
    p.add_argument("-R", "--no-reinstalling", metavar="VERSION", help="refuse a bundle of VERSION")
    p.add_argument("--max-version", metavar="VERSION", help="refuse a bundle newer than VERSION")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-l", "--loglevel", type=int, choices=range(7), default=None)
    p.add_argument("--hwrevision-file", default="/etc/hwrevision")
    p.add_argument("--sw-versions-file", default="/etc/sw-versions")
    p.add_argument("--fw-env-config", default="/etc/fw_env.config")
    return p


def _target(args: argparse.Namespace) -> Target:
    selection = mode = None
    if args.select is not None:
        selection, sep, mode = args.select.partition(",")
        if not sep or not selection or not mode:
            raise Refused(f"Incorrect select option format: {args.select!r} (expected selection,mode)")
    if args.hwrevision:
        board, revision = parse_hw_option(args.hwrevision)
        return Target(board, revision, selection, mode)
    found = read_hwrevision(Path(args.hwrevision_file))
    if found is None:
        return Target(None, None, selection, mode)
    return Target(found[0], found[1], selection, mode)


def _versions(args: argparse.Namespace) -> dict[str, str]:
    text = None
    if args.file:
        try:
            text = Path(args.file).read_text(errors="replace")
        except OSError as exc:
            raise Refused(f"cannot read {args.file}: {exc.strerror}") from None
    return installed_versions(text, Path(args.sw_versions_file))


def _certificate(args: argparse.Namespace) -> x509.Certificate | None:
    if not args.key:
        return None
    try:
        return signature.load_certificate(Path(args.key).read_bytes())
    except OSError as exc:
        raise Refused(f"cannot read {args.key}: {exc.strerror}") from None


def _policy(plan: InstallPlan, args: argparse.Namespace) -> None:
    why = check_bundle_version(plan.version, no_downgrade=args.no_downgrading,
                               no_reinstall=args.no_reinstalling, max_version=args.max_version)
    if why:
        raise Refused(why)


def _open(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by run()
    except OSError as exc:
        raise Refused(f"cannot open {path}: {exc.strerror}") from None


def _seekable(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):
        return False


class _Printer:
    """Progress lines on stdout: one when an artifact starts, then every 10 % (or 64 MiB)."""

    def __init__(self) -> None:
        self._last: tuple[int, str, int] = (-1, "", -1)

    def __call__(self, event: Event) -> None:
        if event.phase == "done":
            print("SWUPDATE successful !", flush=True)
            return
        head = f"[{event.step}/{event.steps}] {event.name} ({event.phase})"
        if event.total:
            mark = 100 * event.done // event.total // 10
            text = f"{head} {100 * event.done // event.total}%"
        else:
            mark = event.done >> 26
            text = f"{head} {event.done >> 20} MiB" if event.done else head
        key = (event.step, event.phase, mark)
        if key != self._last:
            self._last = key
            print(text, flush=True)


def _checked(stream: BinaryIO, args: argparse.Namespace, target: Target) -> check.CheckResult:
    try:
        return check.check_bundle(stream, target, _versions(args), cert=_certificate(args),
                                  purpose=signature.CertPurpose(args.cert_purpose))
    except SwuError as exc:
        raise Refused(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    target = _target(args)
    stream = _open(args.image)
    try:
        if args.check:
            result = _checked(stream, args, target)
            _policy(result.plan, args)
            for line in result.describe():
                print(line)
            print("SWUPDATE successful !")
            return EXIT_OK
        settings = Settings(fw_env_config=args.fw_env_config, sw_versions=args.sw_versions_file)
        expected: bytes | None = None
        if _seekable(stream):
            result = _checked(stream, args, target)
            _policy(result.plan, args)
            stream.seek(0)
            expected = open_bundle(stream).description
            stream.seek(0)
        bundle = open_bundle(stream)
        if expected is not None and bundle.description != expected:
            raise Refused("the bundle changed while it was being checked")
        cert = _certificate(args)
        if cert is not None:
            if bundle.signature is None:
                raise Refused("bundle not signed: no sw-description.sig after sw-description")
            signature.verify(bundle.description, bundle.signature, cert,
                             signature.CertPurpose(args.cert_purpose))
        plan = build_plan(bundle.description, target, _versions(args), signed=cert is not None)
        _policy(plan, args)
        install(bundle.members, plan, settings, _Printer())
        return EXIT_OK
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_REFUSED
    log.setup("swupdate-wrt")
    level = args.loglevel if args.loglevel is not None else (4 if args.verbose else 2)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]))
    try:
        return run(args)
    except (Refused, DescriptionError, signature.SignatureError) as exc:
        print(f"swupdate-wrt: ERROR: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SwuError as exc:
        print(f"swupdate-wrt: ERROR: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("swupdate-wrt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    sys.exit(main())
