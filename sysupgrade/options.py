"""sysupgrade's command line: the option table, OpenWrt's way of parsing it, the help and usage errors.

Parsing (reference 3.1): one option per word, left to right until the first word that does not start
with ``-``, which is the image; no bundling (``-nF`` is an invalid option); ``-b``/``-r``/``-f`` take
the next word whatever it is (a missing or empty one is a usage error). ``SWITCHES`` maps each option
without an argument to its effect on ``Options`` (whose fields are named after the variables of
OpenWrt's script), ``WITH_ARGUMENT`` each option with one to the field its argument goes to.
``UsageError`` is OpenWrt's usage error, with OpenWrt's exit code 1; ``HELP`` its help text.

What the options then do is ``sysupgrade.cli``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sysupgrade import backup_list
from wrtcore.errors import UpgradeError

HELP = f"""\
Usage: sysupgrade [<upgrade-option>...] <image file>
       sysupgrade [-q] [-i] [-c] [-u] [-o] [-k] [-P] <backup-command> <file>

upgrade-option:
    -f <config>  restore configuration from .tar.gz (a local file; URLs are not accepted)
    -i           interactive mode
    -c           attempt to preserve all changed files in /etc/
    -o           attempt to preserve all changed files in /, except those
                 from packages but including changed confs.
    -u           skip from backup files that are equal to those in /rom
    -n           do not save configuration over reflash
    -p           do not attempt to restore the partition table after flash.
    -k           include in backup a list of current installed packages at
                 {backup_list.INSTALLED_PACKAGES}
    -s           stay on current partition (for dual firmware devices)
    -P           create factory provisioning partition
    -T | --test
                 Verify image and config .tar.gz but do not actually flash.
    -F | --force
                 Flash image even if image checks fail, this is dangerous!
    --ignore-minor-compat-version
                 Flash image even if the minor compat version is incompatible.
    -q           less verbose
    -v           more verbose
    -h | --help  display this help

backup-command:
    -b | --create-backup <file>
                 create .tar.gz of files specified in sysupgrade.conf
                 then exit. Does not flash an image. If file is '-',
                 i.e. stdout, verbosity is set to 0 (i.e. quiet).
    -r | --restore-backup <file>
                 restore a .tar.gz created with sysupgrade -b
                 then exit. Does not flash an image. If file is '-',
                 the archive is read from stdin.
    -l | --list-backup
                 list the files that would be backed up when calling
                 sysupgrade -b. Does not create a backup file.

The image may be a path or an http(s) URL (downloaded to /tmp/sysupgrade.img).
"""

BOTH_IMAGE_AND_BACKUP = ("-b|--create-backup and -r|--restore-backup do not perform a firmware upgrade.\n"
                         "Do not specify both -b|-r and a firmware image.")


class UsageError(UpgradeError):
    """OpenWrt's usage errors, with OpenWrt's exit code 1."""


@dataclass
class Options:
    image: str | None = None
    interactive: bool = False  # INTERACTIVE (-i)
    save_config: bool = True  # SAVE_CONFIG
    overlay_path: str | None = None  # SAVE_OVERLAY_PATH: "/etc" (-c), "/" (-o)
    skip_unchanged: bool = False  # SKIP_UNCHANGED (-u)
    force: bool = False  # FORCE
    test: bool = False  # -T
    verbose: int = 1  # VERBOSE
    save_partitions: bool = True  # SAVE_PARTITIONS
    add_provisioning: bool = False  # ADD_PROVISIONING
    use_curr_part: bool = False  # USE_CURR_PART
    save_installed_pkgs: bool = False  # SAVE_INSTALLED_PKGS (-k)
    ignore_minor_compat: bool = False  # IGNORE_MINOR_COMPAT
    conf_image: str | None = None  # CONF_IMAGE (-f)
    create_backup: str | None = None  # CONF_BACKUP (-b)
    restore_backup: str | None = None  # CONF_RESTORE (-r)
    list_backup: bool = False  # CONF_BACKUP_LIST (-l)
    help: bool = False

    @property
    def backup_command(self) -> bool:
        """NEED_IMAGE in OpenWrt (which, despite the name, means "no image wanted")."""
        return self.create_backup is not None or self.restore_backup is not None

    @property
    def selection(self) -> backup_list.Selection:
        return backup_list.Selection(self.overlay_path, self.skip_unchanged, self.save_installed_pkgs)


def _set(**values: Any) -> Callable[[Options], None]:
    def apply(opts: Options) -> None:
        for name, value in values.items():
            setattr(opts, name, value)
    return apply


def _more_verbose(opts: Options) -> None:
    opts.verbose += 1


def _less_verbose(opts: Options) -> None:
    opts.verbose -= 1


# option word -> effect, for the options without an argument
SWITCHES: dict[str, Callable[[Options], None]] = {
    "-i": _set(interactive=True),
    "-v": _more_verbose,
    "-q": _less_verbose,
    "-n": _set(save_config=False),
    "-c": _set(overlay_path="/etc"),
    "-o": _set(overlay_path="/"),
    "-p": _set(save_partitions=False),
    "-k": _set(save_installed_pkgs=True),
    "-s": _set(use_curr_part=True),
    "-u": _set(skip_unchanged=True),
    "-P": _set(add_provisioning=True),
    "-l": _set(list_backup=True), "--list-backup": _set(list_backup=True),
    "-F": _set(force=True), "--force": _set(force=True),
    "-T": _set(test=True), "--test": _set(test=True),
    "--ignore-minor-compat-version": _set(ignore_minor_compat=True),
    "-h": _set(help=True), "--help": _set(help=True),
}
# option word -> the Options field its argument (the next word) goes to
WITH_ARGUMENT: dict[str, str] = {
    "-b": "create_backup", "--create-backup": "create_backup",
    "-r": "restore_backup", "--restore-backup": "restore_backup",
    "-f": "conf_image",
}


def parse_args(argv: list[str]) -> Options:
    """Options until the first word not starting with ``-``; that word is the image."""
    opts = Options()
    words = iter(argv)
    for word in words:
        if not word.startswith("-"):
            opts.image = word
            break
        if word in SWITCHES:
            SWITCHES[word](opts)
            if opts.help:
                break
        elif word in WITH_ARGUMENT:
            value = next(words, "")
            if not value:  # OpenWrt would take "" and go on to fail elsewhere
                raise UsageError(f"Option {word} needs an argument")
            setattr(opts, WITH_ARGUMENT[word], value)
        else:
            raise UsageError(f"Invalid option: {word}")
    return opts
