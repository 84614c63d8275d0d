"""``validate_firmware_image <image>``: is this image installable on this device, and may -F force it?

Prints ONLY one JSON object on stdout (procd and upgraded parse it); every explanation goes to stderr as
plain lines. Exit status is 0 whenever a verdict was printed::

    {"tests": {"fwtool_signature": true, "fwtool_device_match": true, "x86_partition_layout": true},
     "valid": true, "forceable": true, "allow_backup": true}

The checks and their messages follow OpenWrt's ``lib/upgrade/fwtool.sh``,
``usr/libexec/validate_firmware_image`` and x86's ``platform.sh`` (reference 4.2, 4.3, 5.5). A failed
``fwtool_*`` test makes the image invalid; every failure stays forceable (``-F`` overrides it) except a
*broken* one: an unreadable image, or a platform check returning 74. A platform's own tests (such as
``x86_partition_layout``) are reported without deciding anything, like ``notify_firmware_test_result``.

Behaviour (V = valid, F = forceable after the check; "-" leaves both as they were)::

    check                                           V  F  stderr
    image missing / not a regular file / empty      0  0  Cannot read image <img>: <why> | Image <img> is
                                                          not a regular file | Image file is empty
    fwtool_signature
      no verifier (python3-cryptography missing)    -  -  (nothing)
        with REQUIRE_IMAGE_SIGNATURE=1              0  1  Image signature cannot be checked: ...
      no signature chunk                            -  -  Image signature not present
        with REQUIRE_IMAGE_SIGNATURE=1              0  1  + Use sysupgrade -F to override this check when
                                                          downgrading or flashing to vendor firmware
                                                          (the hint only without FORCE=1)
      chunk with a CRC error, or over 1 KiB         0  1  Image signature not readable: CRC error | ...
      ucert chain verifies                          -  -  OK (one line per element)
      chunk is not a ucert blob                     0  1  cert_verify: cannot parse cert
      key number not in /etc/opkg/keys              0  1  Failed to decode public key + which key
      revoked key                                   0  1  key <k> has been revoked!
      signature does not match                      0  1  verification failed
      certificate expired, wrong type, ...          0  1  chain_verify: certificate expired | ...
    fwtool_device_match
      no metadata chunk                             -  -  Image metadata not present
        with REQUIRE_IMAGE_METADATA=1               0  1  + the -F hint (without FORCE=1)
      CRC error, or metadata over 30 KiB            0  1  Invalid image metadata: CRC error | Chunk too ...
      metadata not a JSON object                    0  1  Invalid image metadata + why
      no (new_)supported_devices list               0  1  Image metadata has no <key> list
      board (or OEM name) not listed                0  1  Device <board> not supported by this image
                                                          Supported devices: <list>
      major compat_version differs (with or         0  1  The device is supported, but this image is
      without IGNORE_MINOR_COMPAT=1)                      incompatible for sysupgrade based on the image
                                                          version (<dev>-><img>). [+ compat_message]
      compat differs or OEM match, SAVE_CONFIG=1    0  1  The device is supported, but the config is
      (passes with IGNORE_MINOR_COMPAT=1 or -n)           incompatible to the new image (<dev>-><img>).
                                                          Please upgrade without keeping config
                                                          (sysupgrade -n). [+ compat_message]
    platform_check_image (WRT_PLATFORM, else nor/nand/emmc as detected, else x86)
      nor: not squashfs/uImage/FIT/TRX              0  1  Invalid image type.
      nand: no sysupgrade-<board>/CONTROL           0  1  Invalid sysupgrade file.
      emmc: as nand, or no root in the tar          0  1  Invalid sysupgrade file.
      unknown platform                              0  1  Firmware upgrade is not implemented for this
                                                          platform (<name>).
      x86: first bytes not eb48/eb63                0  1  Invalid image type
      x86: root= names no disk found here           -  -  Unable to determine upgrade device
      x86: image without a partition table          0  1  Invalid partition table on <img>
      x86: layout differs from the boot disk's      -  -  Partition layout has changed. Full image will
                                                          be written. (test x86_partition_layout false)
      any platform check returning 74               0  0  (the platform's own)

A ``.swu`` bundle (a newc/crc cpio whose first member is ``sw-description``) is checked instead by
``swu.local.check_file`` (hardware against ``/etc/hwrevision``, signature against
``/etc/swupdate/public.pem`` when that exists, every artifact's sha256 and decompression): test
``swu_bundle``; a failure ("Invalid .swu bundle: <why>") is broken, not forceable.

Deliberate differences from OpenWrt, all stricter: a trailer with a CRC error or an oversized chunk
fails the test that reads it (OpenWrt's ``fwtool -q`` reports it as "not present", so a damaged image
passed when nothing was required); the differences of ``sysupgrade.usign`` and ``sysupgrade.platform_x86``
are described there. The signed part of the image is mapped, not read into memory (see ``usign``).

Policy: ``REQUIRE_IMAGE_SIGNATURE`` and ``REQUIRE_IMAGE_METADATA`` come from the environment, else
from ``/lib/upgrade/platform.conf`` (``KEY=1`` lines; what OpenWrt's target platform.sh sets).
Environment read: ``REQUIRE_IMAGE_SIGNATURE``, ``REQUIRE_IMAGE_METADATA``, ``SAVE_CONFIG``,
``IGNORE_MINOR_COMPAT``, ``FORCE``, ``WRT_PLATFORM`` (default ``x86``), ``WRT_CMDLINE`` (else
/proc/cmdline, for the boot disk) and ``WRT_ROOT`` (prefix of ``/tmp/sysinfo``, ``/etc`` and
``/etc/opkg/keys``). The image argument is a path on this host.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stage2.formats import fwtool
from swu import local as swu_local
from swu.cpio import is_bundle_file
from swu.model import SwuError
from sysupgrade import paths, platform_flash, platform_x86, usign

Say = Callable[[str], None]

TEST_SIGNATURE = "fwtool_signature"
TEST_DEVICE_MATCH = "fwtool_device_match"
TEST_SWU_BUNDLE = "swu_bundle"
DEFAULT_COMPAT = "1.0"
FORCE_HINT = "Use sysupgrade -F to override this check when downgrading or flashing to vendor firmware"


@dataclass
class Verdict:
    """What ``validate_firmware_image`` prints; starts valid, forceable, backup allowed."""

    tests: dict[str, bool] = field(default_factory=dict)
    valid: bool = True
    forceable: bool = True
    allow_backup: bool = True

    def record(self, name: str, passed: bool) -> None:
        """An fwtool test: failing makes the image invalid (still forceable)."""
        self.tests[name] = passed
        if not passed:
            self.valid = False

    def note(self, name: str, passed: bool) -> None:
        """``notify_firmware_test_result``: a platform's test result, reported without a verdict."""
        self.tests[name] = passed

    def invalid(self) -> None:
        self.valid = False

    def broken(self) -> None:
        self.valid = False
        self.forceable = False

    def no_backup(self) -> None:
        self.allow_backup = False

    def as_json(self) -> dict[str, Any]:
        return {"tests": dict(self.tests), "valid": self.valid, "forceable": self.forceable,
                "allow_backup": self.allow_backup}


PLATFORM_CONF = "/lib/upgrade/platform.conf"
POLICY_KEYS = ("REQUIRE_IMAGE_METADATA", "REQUIRE_IMAGE_SIGNATURE")


def platform_settings(root: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of the platform's policy file (only the policy keys; no shell is run)."""
    settings: dict[str, str] = {}
    try:
        with open(paths.rooted(PLATFORM_CONF, root)) as f:
            text = f.read(65536)
    except OSError:
        return settings
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in POLICY_KEYS:
            settings[key] = value.strip().strip("'\"")
    return settings


@dataclass(frozen=True)
class Context:
    """One validation run: the image, the system root, the environment, where messages go."""

    image: str
    root: str
    env: Mapping[str, str]
    say: Say

    def flag(self, name: str) -> bool:
        """A policy switch: the environment, else the platform's /lib/upgrade/platform.conf (where
        OpenWrt's target platform.sh sets REQUIRE_IMAGE_METADATA / REQUIRE_IMAGE_SIGNATURE)."""
        if name in self.env:
            return self.env[name] == "1"
        return platform_settings(self.root).get(name, "") == "1"

    def read_text(self, system_path: str) -> str:
        """Content of a small system file, stripped; "" when it is missing or unreadable."""
        try:
            with open(paths.rooted(system_path, self.root), encoding="utf-8", errors="replace") as f:
                return f.read(4096).strip()
        except OSError:
            return ""


PLATFORM_OK = 0
PLATFORM_BROKEN = 74  # platform_check_image's "-F cannot override this" status


@dataclass(frozen=True)
class PlatformOutcome:
    """What a ``platform_check_image`` returned: 0 ok, 74 broken, anything else invalid; its tests."""

    status: int
    tests: Mapping[str, bool] = field(default_factory=dict)


PlatformCheck = Callable[[Context], PlatformOutcome]


# --- readability ---------------------------------------------------------------------------------


def check_readable(ctx: Context) -> bool:
    """The image can be opened, is a regular file and is not empty."""
    try:
        if not stat.S_ISREG(os.stat(ctx.image).st_mode):
            ctx.say(f"Image {ctx.image} is not a regular file")
            return False
        with open(ctx.image, "rb") as f:
            if not f.read(1):
                ctx.say("Image file is empty")
                return False
    except OSError as exc:
        ctx.say(f"Cannot read image {ctx.image}: {exc.strerror or exc}")
        return False
    return True


# --- fwtool_check_signature ----------------------------------------------------------------------


def check_signature(ctx: Context) -> bool:
    """``fwtool_check_signature``: the ucert chain of the signature chunk against ``/etc/opkg/keys``."""
    required = ctx.flag("REQUIRE_IMAGE_SIGNATURE")
    if not usign.verifier_available():  # OpenWrt without /usr/bin/ucert
        if required:
            ctx.say("Image signature cannot be checked: no Ed25519 verifier (python3-cryptography) here")
        return not required
    try:
        chunk, blob = fwtool.signature_chunk(ctx.image)
    except fwtool.DataNotFound:
        ctx.say("Image signature not present")
        if required and not ctx.flag("FORCE"):
            ctx.say(FORCE_HINT)
        return not required
    except fwtool.FwtoolError as exc:  # CRC error, oversized chunk: a damaged image, not an unsigned one
        ctx.say(f"Image signature not readable: {exc}")
        return False
    except OSError as exc:
        ctx.say(f"Cannot read image {ctx.image}: {exc.strerror or exc}")
        return False
    keydir = paths.rooted(usign.KEYDIR, ctx.root)
    try:
        with usign.mapped(ctx.image, chunk.offset) as message:
            result = usign.verify_ucert(blob, message, keydir)
    except (OSError, ValueError, OverflowError) as exc:  # mmap: file changed, address space
        ctx.say(f"Cannot map image {ctx.image} for signature verification: {exc}")
        return False
    for line in result.lines:
        ctx.say(line)
    return result.ok


# --- fwtool_check_image --------------------------------------------------------------------------


def uci_system_option(root: str, option: str) -> str | None:
    """``uci get system.@system[0].<option>`` read straight from ``/etc/config/system``."""
    try:
        with open(paths.rooted(paths.UCI_SYSTEM, root), encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    in_first = False
    seen = False
    for line in lines:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if not words:
            continue
        if words[0] == "config":
            if in_first:
                break
            in_first = not seen and len(words) >= 2 and words[1] == "system"
            seen = seen or in_first
        elif in_first and words[0] == "option" and len(words) >= 3 and words[1] == option:
            return words[2]
    return None


def _major(version: str) -> str:
    """``${version%.*}``: the text before the last dot (all of it without a dot)."""
    return version.rsplit(".", 1)[0]


def check_metadata(ctx: Context, metadata: Mapping[str, Any]) -> bool:
    """The board and compat_version rules of ``fwtool_check_image`` (reference 4.2 steps 3-5)."""
    device = ctx.read_text(paths.SYSINFO_BOARD_NAME)
    oem = ctx.read_text(paths.SYSINFO_OEM_NAME)
    devicecompat = uci_system_option(ctx.root, "compat_version") or DEFAULT_COMPAT
    imagecompat = metadata.get("compat_version")
    if not isinstance(imagecompat, str) or not imagecompat:
        imagecompat = DEFAULT_COMPAT
    message = metadata.get("compat_message")
    compat_message = message if isinstance(message, str) and message else None

    key = "supported_devices" if imagecompat == DEFAULT_COMPAT else "new_supported_devices"
    devices = metadata.get(key)
    if not isinstance(devices, list):
        ctx.say(f"Image metadata has no {key} list")
        return False
    names = [d for d in devices if isinstance(d, str)]

    for name in names:
        if name != device and not (oem and name == oem):
            continue
        oem_match = name != device
        if _major(devicecompat) != _major(imagecompat):
            ctx.say("The device is supported, but this image is incompatible for sysupgrade based on "
                    f"the image version ({devicecompat}->{imagecompat}).")
            if compat_message:
                ctx.say(compat_message)
            return False
        if (devicecompat != imagecompat or oem_match) and ctx.flag("SAVE_CONFIG"):
            if ctx.flag("IGNORE_MINOR_COMPAT"):
                return True
            ctx.say("The device is supported, but the config is incompatible to the new image "
                    f"({devicecompat}->{imagecompat}). "
                    "Please upgrade without keeping config (sysupgrade -n).")
            if compat_message:
                ctx.say(compat_message)
            return False
        return True

    ctx.say(f"Device {device} not supported by this image")
    ctx.say("Supported devices:" + "".join(f" {n}" for n in names))
    return False


def check_image(ctx: Context) -> bool:
    """``fwtool_check_image``: metadata present (or not required) and matching this device."""
    try:
        metadata = fwtool.extract_metadata(ctx.image, missing_ok=True)
    except fwtool.InvalidMetadata as exc:  # "Invalid image metadata", then why
        ctx.say(exc.message)
        if exc.hint:
            ctx.say(exc.hint)
        return False
    except fwtool.FwtoolError as exc:  # CRC error, oversized chunk
        ctx.say(f"Invalid image metadata: {exc}")
        return False
    except OSError as exc:
        ctx.say(f"Cannot read image {ctx.image}: {exc.strerror or exc}")
        return False
    if metadata is None:
        ctx.say("Image metadata not present")
        required = ctx.flag("REQUIRE_IMAGE_METADATA")
        if required and not ctx.flag("FORCE"):
            ctx.say(FORCE_HINT)
        return not required
    return check_metadata(ctx, metadata)


# --- platform_check_image ------------------------------------------------------------------------


def platform_check_x86(ctx: Context) -> PlatformOutcome:
    """x86: MBR boot code, and the partition layout against the boot disk (``sysupgrade.platform_x86``)."""
    result = platform_x86.check_image(ctx.image, root=ctx.root, env=ctx.env, say=ctx.say)
    tests = {} if result.layout_unchanged is None else {
        platform_x86.TEST_PARTITION_LAYOUT: result.layout_unchanged}
    return PlatformOutcome(result.status, tests)


def platform_check_nor(ctx: Context) -> PlatformOutcome:
    """NOR: the image's magic (``sysupgrade.platform_flash``)."""
    return PlatformOutcome(platform_flash.check_nor(ctx.image, ctx.say))


def platform_check_nand(ctx: Context) -> PlatformOutcome:
    """NAND: the sysupgrade tar with this board's CONTROL (``sysupgrade.platform_flash``)."""
    board = ctx.read_text(paths.SYSINFO_BOARD_NAME)
    return PlatformOutcome(platform_flash.check_nand(ctx.image, board, ctx.say))


def platform_check_emmc(ctx: Context) -> PlatformOutcome:
    """eMMC: the sysupgrade tar with this board's CONTROL and a root (``sysupgrade.platform_flash``)."""
    board = ctx.read_text(paths.SYSINFO_BOARD_NAME)
    return PlatformOutcome(platform_flash.check_emmc(ctx.image, board, ctx.say))


PLATFORM_CHECKS: dict[str, PlatformCheck] = {"x86": platform_check_x86, "nor": platform_check_nor,
                                             "nand": platform_check_nand, "emmc": platform_check_emmc}
DEFAULT_PLATFORM = "x86"


# --- the whole validation ------------------------------------------------------------------------


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def validate_image(image: str, *, env: Mapping[str, str] | None = None, root: str | None = None,
                   say: Say | None = None, platform: str | None = None) -> Verdict:
    """Run every check on ``image`` and return the verdict (never raises for a bad image)."""
    env = os.environ if env is None else env
    ctx = Context(image=image, root=paths.root(env) if root is None else root, env=env,
                  say=say or _stderr)
    verdict = Verdict()
    if not check_readable(ctx):
        verdict.tests[TEST_SIGNATURE] = False
        verdict.tests[TEST_DEVICE_MATCH] = False
        verdict.broken()
        return verdict

    if is_bundle_file(ctx.image):
        return validate_bundle(ctx, verdict)
    verdict.record(TEST_SIGNATURE, check_signature(ctx))
    verdict.record(TEST_DEVICE_MATCH, check_image(ctx))

    name = (platform or env.get("WRT_PLATFORM")
            or platform_flash.detect(env, paths.rooted(PLATFORM_CONF, ctx.root)) or DEFAULT_PLATFORM)
    check = PLATFORM_CHECKS.get(name)
    if check is None:
        ctx.say(f"Firmware upgrade is not implemented for this platform ({name}).")
        verdict.invalid()
        return verdict
    outcome = check(ctx)
    for test, passed in outcome.tests.items():
        verdict.note(test, passed)
    if outcome.status == PLATFORM_BROKEN:
        verdict.broken()
    elif outcome.status != PLATFORM_OK:
        verdict.invalid()
    return verdict


def validate_bundle(ctx: Context, verdict: Verdict) -> Verdict:
    """A ``.swu`` (cpio starting with ``sw-description``): SWUpdate's whole check against this system
    (``swu.local``) instead of the fwtool and platform checks. A bad bundle is broken: -F cannot force it."""
    try:
        result = swu_local.check_file(ctx.image, swu_local.system(ctx.root))
    except (SwuError, OSError, ValueError) as exc:
        ctx.say(f"Invalid .swu bundle: {exc}")
        verdict.tests[TEST_SWU_BUNDLE] = False
        verdict.broken()
        return verdict
    for line in result.describe():
        ctx.say(line)
    verdict.note(TEST_SWU_BUNDLE, True)
    return verdict


def render(verdict: Verdict) -> str:
    """The JSON text on stdout (indented with tabs, like ``json_dump -i``)."""
    return json.dumps(verdict.as_json(), indent="\t")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        _stderr("Usage: validate_firmware_image <image>")
        return 2
    verdict = validate_image(argv[0])
    sys.stdout.write(render(verdict) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
