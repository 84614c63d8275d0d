"""The failsafe address on the LAN port (preinit.failsafe_net, pyroute2), in network namespaces this
test creates: a "device" namespace holding the LAN port, a "peer" namespace on the other end of a veth
pair (a PC on the LAN). Nothing is created in the host's namespace; both are removed at the end."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import NetNS, netns

from preinit import failsafe_net

pytestmark = pytest.mark.sandbox

PROBE = """
import socket
try:
    socket.create_connection(("192.168.1.1", 9), timeout=20)
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print("unreachable", exc)
"""


@dataclass
class Lan:
    device: str
    peer: str


@pytest.fixture
def lan() -> Iterator[Lan]:
    tag = uuid.uuid4().hex[:8]
    names = Lan(f"wrtfs-dev-{tag}", f"wrtfs-peer-{tag}")
    netns.create(names.device)
    try:
        netns.create(names.peer)
        with NetNS(names.device) as ns:
            ns.link("add", ifname="lan0", kind="veth", peer={"ifname": "pc0", "net_ns_fd": names.peer})
        yield names
    finally:
        for name in (names.device, names.peer):
            if name in netns.listnetns():
                netns.remove(name)


def addresses(ns_name: str, ifname: str) -> list[tuple[str, int, str | None]]:
    with NetNS(ns_name) as ns:
        index = ns.link_lookup(ifname=ifname)[0]
        return [(a.get_attr("IFA_ADDRESS"), a["prefixlen"], a.get_attr("IFA_BROADCAST"))
                for a in ns.get_addr(index=index, family=2)]


def test_preinit_address_on_the_lan_port_reachable_from_the_peer(lan: Lan) -> None:
    done = failsafe_net.configure("lan0", "192.168.1.1", 24, "192.168.1.255", netns=lan.device)
    assert done == {"ifname": "lan0", "address": "192.168.1.1/24", "broadcast": "192.168.1.255"}
    assert addresses(lan.device, "lan0") == [("192.168.1.1", 24, "192.168.1.255")]
    # again: an address already there is not an error, and is not doubled
    failsafe_net.configure("lan0", "192.168.1.1", 24, "192.168.1.255", netns=lan.device)
    assert addresses(lan.device, "lan0") == [("192.168.1.1", 24, "192.168.1.255")]
    with NetNS(lan.device) as ns:
        device_mac = ns.get_links(ns.link_lookup(ifname="lan0")[0])[0].get_attr("IFLA_ADDRESS")
        lo = ns.get_links(ns.link_lookup(ifname="lo")[0])[0]
        assert lo["flags"] & 1, "lo is up"

    # the PC on the LAN: its own address, then it reaches the box
    with NetNS(lan.peer) as ns:
        pc = ns.link_lookup(ifname="pc0")[0]
        ns.link("set", index=pc, state="up")
        ns.addr("add", index=pc, address="192.168.1.2", prefixlen=24)
    # a TCP connect to a closed port: "refused" is the box's own answer (a RST), so it is reachable
    probe = subprocess.run(["ip", "netns", "exec", lan.peer, sys.executable, "-c", PROBE],
                           capture_output=True, text=True, check=False, timeout=60)
    assert probe.stdout.strip() == "refused", probe.stdout + probe.stderr
    with NetNS(lan.peer) as ns:
        neigh = [n.get_attr("NDA_LLADDR") for n in ns.get_neighbours(dst="192.168.1.1")]
    assert neigh == [device_mac], "the peer learnt 192.168.1.1 at the device's LAN port"


def test_a_missing_lan_port_is_a_lookup_error(lan: Lan) -> None:
    with pytest.raises(LookupError, match="no interface wan9"):
        failsafe_net.configure("wan9", "192.168.1.1", 24, "192.168.1.255", netns=lan.device)
    assert addresses(lan.device, "lan0") == []
