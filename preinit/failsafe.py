"""Failsafe mode (OpenWrt's ``40_run_failsafe_hook``): the root stays the read-only squashfs with the
firmware's defaults (no overlay is mounted), the host is named ``OpenWrt-failsafe``, the preinit
address goes on the LAN port (``failsafe_net``, pyroute2), a root shell runs on each console
(``shells``), and preinit waits until ``sysupgrade`` (run with FAILSAFE set, as the failsafe shells
are) has written the hand-over file /tmp/sysupgrade; then preinit ends and the init runs the upgrade.

OpenWrt waits with busybox ``lock -w /tmp/.failsafe``; here /tmp/.failsafe is a FIFO, so the wait is
a blocking read that ``sysupgrade`` ends by writing a line: no polling.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence

from preinit import board
from preinit.settings import Settings
from wrtcore import log

LOCK = "/tmp/.failsafe"
HANDOVER = "/tmp/sysupgrade"
MARK = "/tmp/failsafe"
HOSTNAME = "OpenWrt-failsafe"


def indicate(settings: Settings, consoles: Sequence[str]) -> None:
    """``- failsafe -`` on every console (stdout when there is none), the failsafe host name."""
    print("- failsafe -", flush=True)
    for path in consoles:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                os.write(fd, b"- failsafe -\n")
            finally:
                os.close(fd)
    with contextlib.suppress(OSError), open(MARK, "w"):
        pass
    try:
        socket.sethostname(settings.failsafe_hostname)
    except OSError as exc:
        log.get().warning("failsafe hostname not set", error=exc.strerror)
    log.get().info("- failsafe -", hostname=settings.failsafe_hostname)


def network(settings: Settings, board_json: str = board.BOARD_JSON) -> dict[str, object] | None:
    """The preinit address on the LAN port; a missing port is logged, never fatal."""
    ifname = board.preinit_ifname(settings.ifname, board_json)
    if not ifname:
        log.get().warning("failsafe network not set up", reason="no pi_ifname and no LAN port in board.json")
        return None
    try:
        from preinit import failsafe_net  # pyroute2 is loaded only in failsafe

        done = failsafe_net.configure(ifname, settings.ip, settings.prefixlen, settings.broadcast)
    except (OSError, LookupError, ImportError) as exc:
        log.get().warning("failsafe network not set up", ifname=ifname, error=str(exc))
        return None
    log.get().info("failsafe network", **done)
    return done


def wait_for_upgrade(lock: str = LOCK, handover: str = HANDOVER) -> str:
    """Block until the hand-over file exists; returns its path."""
    log.get().info("failsafe waiting for an upgrade", waiting_on=lock)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(lock, 0o600)
    while not os.path.exists(handover):
        with open(lock, "rb") as fifo:  # blocks until a writer opens it
            fifo.read()
    log.get().info("failsafe upgrade handed over", file=handover)
    return handover
