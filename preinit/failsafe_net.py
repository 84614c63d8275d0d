"""The failsafe address on the LAN port, through pyroute2 (netlink), in this process's network
namespace or in the one named by ``netns`` (a name under /var/run/netns or a path such as
/proc/PID/ns/net). Imported only when failsafe is entered: pyroute2 stays out of the normal boot."""

from __future__ import annotations

import errno
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError


def _open(netns: str | None) -> Any:
    return NetNS(netns) if netns else IPRoute()


def configure(ifname: str, ip: str, prefixlen: int, broadcast: str,
              netns: str | None = None) -> dict[str, Any]:
    """Bring ``lo`` and ``ifname`` up and add ``ip/prefixlen`` with ``broadcast`` (an address already
    there is fine). LookupError when there is no such interface; OSError for netlink refusals."""
    ipr = _open(netns)
    try:
        for name in ("lo", ifname):
            found = ipr.link_lookup(ifname=name)
            if not found:
                if name == "lo":
                    continue
                raise LookupError(f"no interface {ifname}")
            try:
                ipr.link("set", index=found[0], state="up")
            except NetlinkError as exc:
                raise OSError(exc.code, f"{name} up: {exc}") from exc
        index = ipr.link_lookup(ifname=ifname)[0]
        try:
            ipr.addr("add", index=index, address=ip, prefixlen=prefixlen, broadcast=broadcast)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise OSError(exc.code, f"address {ip}/{prefixlen} on {ifname}: {exc}") from exc
    finally:
        ipr.close()
    return {"ifname": ifname, "address": f"{ip}/{prefixlen}", "broadcast": broadcast}
