"""OpenWrt's paths, and the ``WRT_ROOT`` prefix that moves them under a test directory.

Every file the stage-1 tools read or write is named here by its path on the running system. Setting
``WRT_ROOT`` (default ``/``) puts all of them under another directory, so the unit tests run the real
code against a ``tmp_path``. Paths that travel to other processes (the request on the bus, the failsafe
hand-over file) stay in the system's view, without the prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ROOT_ENV = "WRT_ROOT"
MOUNTINFO_ENV = "WRT_MOUNTINFO"  # the mount table to read instead of /proc/self/mountinfo (tests)

TMP = "/tmp"
SYSINFO_BOARD_NAME = "/tmp/sysinfo/board_name"
SYSINFO_OEM_NAME = "/tmp/sysinfo/oem_name"
UCI_SYSTEM = "/etc/config/system"
SYSUPGRADE_CONF = "/etc/sysupgrade.conf"
KEEP_D = "/lib/upgrade/keep.d"
INIT_D = "/etc/init.d"
RC_D = "/etc/rc.d"
CONF_TAR = "/tmp/sysupgrade.tgz"  # CONF_TAR in sysupgrade
CONFFILES = "/tmp/sysupgrade.conffiles"  # CONFFILES in sysupgrade: the list -i offers to edit
OVERLAY_UPPER_ETC = "/overlay/upper/etc"  # required by -c and -o
ROM = "/rom/"  # required by -u
IMAGE_COPY = "/tmp/sysupgrade.img"
RAM_ROOT = "/tmp/root"  # RAM_ROOT in common.sh
STAGE2_COMMAND = "/lib/upgrade/do_stage2"  # COMMAND in sysupgrade
FAILSAFE_HANDOVER = "/tmp/sysupgrade"
FAILSAFE_LOCK = "/tmp/.failsafe"  # preinit waits on it in failsafe (a FIFO here, a lock file in OpenWrt)
UPGRADED_SOCKET = "/var/run/upgraded.sock"
MOUNTINFO = "/proc/self/mountinfo"  # a host path: never under WRT_ROOT


def root(env: Mapping[str, str] | None = None) -> str:
    """The directory the system's ``/`` maps to (``$WRT_ROOT``, default ``/``)."""
    value = (os.environ if env is None else env).get(ROOT_ENV) or "/"
    return os.path.abspath(value)


def rooted(path: str, root_dir: str | None = None) -> str:
    """Host path of the system path ``path`` under ``root_dir`` (default: ``root()``)."""
    base = root() if root_dir is None else root_dir
    return os.path.join(base, path.lstrip("/"))


def unrooted(host_path: str, root_dir: str | None = None) -> str | None:
    """The system path of a host path under ``root_dir``, or None when it lies outside."""
    base = os.path.realpath(root() if root_dir is None else root_dir)
    real = os.path.realpath(host_path)
    if base == "/":
        return real
    if real == base:
        return "/"
    if real.startswith(base + "/"):
        return real[len(base) :]
    return None
