"""``validate_firmware_image <image>``: is this image installable on this device, and may -F force it?

Prints ONLY one JSON object on stdout (procd and upgraded parse it); every explanation goes to stderr as
plain lines. Exit status is 0 whenever a verdict was printed::

    {"tests": {"fwtool_signature": true, "fwtool_device_match": true},
     "valid": true, "forceable": true, "allow_backup": true}

The checks and their messages follow OpenWrt's ``lib/upgrade/fwtool.sh`` and
``usr/libexec/validate_firmware_image`` (reference sections 4.2-4.3):

- readability: an image that cannot be read at all, or is empty, is *broken* (valid=false,
  forceable=false: ``-F`` cannot override it), like ``platform_check_image`` returning 74. The other
  tests are then reported as failed without running.
- ``fwtool_signature``: no signature chunk passes unless ``REQUIRE_IMAGE_SIGNATURE=1``. Verifying a
  present signature (usign/ucert) is NOT IMPLEMENTED yet: such an image passes only when no signature is
  required (as on an OpenWrt without ``ucert``); when one is required it fails, it is never faked.
- ``fwtool_device_match``: the metadata trailer against ``/tmp/sysinfo/board_name`` (or ``oem_name``),
  ``compat_version`` against the device's (``system.@system[0].compat_version`` in
  ``/etc/config/system``, default 1.0), honouring ``SAVE_CONFIG`` and ``IGNORE_MINOR_COMPAT``. No metadata
  passes unless ``REQUIRE_IMAGE_METADATA=1``. Deliberate difference: a metadata trailer with a CRC
  error, or unusable metadata, fails (OpenWrt's script treats a CRC error as "not present").
- platform check (``WRT_PLATFORM``, default ``x86``): the first two bytes must be ``eb48`` or ``eb63``
  (MBR boot code), else ``Invalid image type`` and valid=false.

Every failure except "broken" leaves forceable=true. Environment read: ``REQUIRE_IMAGE_SIGNATURE``,
``REQUIRE_IMAGE_METADATA``, ``SAVE_CONFIG``, ``IGNORE_MINOR_COMPAT``, ``FORCE``, ``WRT_PLATFORM`` and
``WRT_ROOT`` (prefix of ``/tmp/sysinfo`` and ``/etc``). The image argument is a path on this host.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from stage2.formats import fwtool
from sysupgrade import paths

Say = Callable[[str], None]

TEST_SIGNATURE = "fwtool_signature"
TEST_DEVICE_MATCH = "fwtool_device_match"
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
        """``notify_firmware_test_result``: a failed test makes the image invalid (still forceable)."""
        self.tests[name] = passed
        if not passed:
            self.valid = False

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


@dataclass(frozen=True)
class Context:
    """One validation run: the image, the system root, the environment, where messages go."""

    image: str
    root: str
    env: Mapping[str, str]
    say: Say

    def flag(self, name: str) -> bool:
        return self.env.get(name, "") == "1"

    def read_text(self, system_path: str) -> str:
        """Content of a small system file, stripped; "" when it is missing or unreadable."""
        try:
            with open(paths.rooted(system_path, self.root), encoding="utf-8", errors="replace") as f:
                return f.read(4096).strip()
        except OSError:
            return ""


class PlatformResult(Enum):
    OK = "ok"
    INVALID = "invalid"  # platform_check_image exit != 0: -F may override
    BROKEN = "broken"  # platform_check_image exit 74: -F cannot override


PlatformCheck = Callable[[Context, Verdict], PlatformResult]


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
    """``fwtool_check_signature``; verification of a present signature is not implemented yet."""
    required = ctx.flag("REQUIRE_IMAGE_SIGNATURE")
    try:
        fwtool.extract_signature(ctx.image)
    except (fwtool.FwtoolError, OSError):
        ctx.say("Image signature not present")
        if required and not ctx.flag("FORCE"):
            ctx.say(FORCE_HINT)
        return not required
    if required:
        ctx.say("Image signature present, but signature verification is not implemented yet")
        return False
    ctx.say("Image signature present but not verified (verification not implemented; not required)")
    return True


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
    except fwtool.InvalidMetadata as exc:  # "Invalid image metadata (<why>)"
        ctx.say(str(exc))
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


def read_magic_word(image: str) -> str:
    """``get_magic_word``: the first two bytes as four hex digits ("" if shorter)."""
    with open(image, "rb") as f:
        head = f.read(2)
    return head.hex() if len(head) == 2 else ""


def platform_check_x86(ctx: Context, verdict: Verdict) -> PlatformResult:
    """x86's ``platform_check_image``: an MBR boot sector (``eb48``/``eb63``) starts the image.

    Not yet done: comparing the image's partition table with the boot disk's
    (``Partition layout has changed. Full image will be written.``); that needs the boot disk, which
    the block writer will find.
    """
    try:
        magic = read_magic_word(ctx.image)
    except OSError as exc:
        ctx.say(f"Cannot read image {ctx.image}: {exc.strerror or exc}")
        return PlatformResult.BROKEN
    if magic not in ("eb48", "eb63"):
        ctx.say("Invalid image type")
        return PlatformResult.INVALID
    return PlatformResult.OK


PLATFORM_CHECKS: dict[str, PlatformCheck] = {"x86": platform_check_x86}
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

    verdict.record(TEST_SIGNATURE, check_signature(ctx))
    verdict.record(TEST_DEVICE_MATCH, check_image(ctx))

    name = platform or env.get("WRT_PLATFORM") or DEFAULT_PLATFORM
    check = PLATFORM_CHECKS.get(name)
    if check is None:
        ctx.say(f"Firmware upgrade is not implemented for this platform ({name}).")
        verdict.invalid()
        return verdict
    result = check(ctx, verdict)
    if result is PlatformResult.BROKEN:
        verdict.broken()
    elif result is PlatformResult.INVALID:
        verdict.invalid()
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
