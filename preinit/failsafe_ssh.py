"""Failsafe's SSH server (OpenWrt's ``failsafe_dropbear``): a router without a serial console is
reached in failsafe only this way, at the preinit address, as root with the firmware's empty password.

Host keys are made at each failsafe entry in /tmp (the root is read-only squashfs and the overlay is
not mounted): ed25519 and ecdsa, named as OpenWrt names them; RSA is left out (seconds of key generation on
a router's CPU, and every current client takes ed25519). Debian's dropbear needs ``-B`` for the blank
password that OpenWrt's own build allows by a patch. The server forks into the background: it is
neither preinit's child nor stopped by it; stage2 ends it with every other process.

A login shell of the session reads /etc/profile, which exports ``FAILSAFE=1`` while /tmp/.failsafe
exists, so ``sysupgrade`` run there takes the failsafe hand-over path (as on the consoles).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from wrtcore import log
from wrtcore.run import describe_status

DROPBEAR = "/usr/sbin/dropbear"
DROPBEARKEY = "/usr/bin/dropbearkey"
KEY_TYPES = ("ed25519", "ecdsa")
KEY_PATH = "/tmp/dropbear_failsafe_{}_host_key"
PIDFILE = "/tmp/run/dropbear_failsafe.pid"
PORT = 22
TIMEOUT = 60  # seconds for a key to be made or the server to fork


def server_argv(keys: Sequence[str], port: int = PORT, binary: str = DROPBEAR,
                pidfile: str = PIDFILE) -> list[str]:
    """dropbear's command line: blank passwords allowed (the failsafe root has none), these host keys."""
    return [binary, "-B", *(arg for key in keys for arg in ("-r", key)), "-p", str(port), "-P", pidfile]


def _run(argv: list[str]) -> str | None:
    """None when ``argv`` succeeded, else why not (one line). Not ``wrtcore.run.run``: that has no time
    bound, and a key made early in a boot may wait on the kernel's entropy; preinit must go on."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else describe_status(done.returncode)
    return None


def start(binary: str = DROPBEAR, keygen: str = DROPBEARKEY, key_path: str = KEY_PATH,
          port: int = PORT, pidfile: str = PIDFILE) -> dict[str, object] | None:
    """Make the host keys and start dropbear; what was started, or None (logged, never fatal: the
    consoles' shells and the upgrade path do not depend on it)."""
    if not os.access(binary, os.X_OK):
        log.get().warning("failsafe ssh not started", reason=f"no {binary} in this firmware")
        return None
    keys = []
    for kind in KEY_TYPES:
        path = key_path.format(kind)
        why = None if os.path.exists(path) else _run([keygen, "-t", kind, "-f", path])
        if why is None:
            keys.append(path)
        else:
            log.get().warning("failsafe ssh host key not made", type=kind, error=why)
    if not keys:
        log.get().warning("failsafe ssh not started", reason="no host key")
        return None
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    argv = server_argv(keys, port, binary, pidfile)
    why = _run(argv)
    if why is not None:
        log.get().warning("failsafe ssh not started", argv=argv, error=why)
        return None
    started: dict[str, object] = {"port": port, "keys": keys}
    log.get().info("failsafe ssh", **started)
    return started
