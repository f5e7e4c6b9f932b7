"""Read-only views of a namespace's forwarding state, for `cnet trace` and
`cnet network inspect --verbose`: route lookups, neighbour tables, bridge FDBs.

Everything here reads; nothing changes the kernel. The functions take an open
`Netlink` handle (one per namespace, on the kernel worker like every other use).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from cnet.cnm.osl.netlink import AF_BRIDGE, NTF_SELF, KernelError, Netlink

NTF_MASTER = 0x04
NTF_EXT_LEARNED = 0x10

# neighbour states (include/uapi/linux/neighbour.h), lowest bit first
NUD_NAMES = ((0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"),
             (0x10, "PROBE"), (0x20, "FAILED"), (0x40, "NOARP"), (0x80, "PERMANENT"))
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40

# route types (rtm_type)
RTN_NAMES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
             6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
NO_ROUTE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH, errno.EINVAL, errno.EACCES)


def _multicast_mac(mac: str) -> bool:
    return bool(int(mac[:2], 16) & 1)


def nud_state(state: int) -> str:
    """`REACHABLE`, `PERMANENT`, `STALE|NOARP` ... (NONE for 0), as `ip neigh` names them."""
    names = [name for bit, name in NUD_NAMES if state & bit]
    return "|".join(names) or "NONE"


@dataclass(frozen=True)
class Neighbour:
    ifindex: int
    ip: str
    mac: str | None  # None while unresolved
    state: str  # nud_state()


@dataclass(frozen=True)
class FdbEntry:
    """One bridge forwarding entry: frames to `mac` leave through `port` (an ifindex).

    `kind` is `local` (an address of the bridge or one of its ports), `static`, or
    `learned`; `dst` is the remote VTEP of a VXLAN port's own entry.
    """

    mac: str
    port: int
    kind: str
    dst: str | None = None


@dataclass(frozen=True)
class RouteLookup:
    """The kernel's answer to `ip route get DST`."""

    dst: str
    type: str  # unicast, local, unreachable, ...
    oif: int | None
    gateway: str | None
    prefsrc: str | None


def addresses(nl: Netlink, ifindex: int | None = None) -> list[str]:
    """A link's IPv4 and IPv6 addresses as CIDRs (`ip addr show dev`); every link's
    with no index (one dump)."""
    kwargs = {} if ifindex is None else {"index": ifindex}
    return [f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
            for msg in nl.ipr_call("list addresses", "get_addr", **kwargs)]


def neighbours(nl: Netlink, ifindex: int | None = None) -> list[Neighbour]:
    """IPv4 and IPv6 neighbour entries (of one link, or all), every state."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in nl.ipr_call("list neighbours", "neigh", "dump", family=family):
            if ifindex is not None and msg["ifindex"] != ifindex:
                continue
            ip = msg.get_attr("NDA_DST")
            if ip is None or ipaddress.ip_address(ip).is_multicast:
                continue
            out.append(Neighbour(msg["ifindex"], ip,
                                 msg.get_attr("NDA_LLADDR"), nud_state(msg["state"])))
    return out


def bridge_fdb(nl: Netlink, bridge: int | None = None, port: int | None = None
               ) -> list[FdbEntry]:
    """Forwarding entries of a bridge (`bridge fdb show br BR`: learned, static and local
    entries of its ports and of itself), or a port's own (`self`) entries, e.g. a
    VXLAN's static MAC -> VTEP entries."""
    out = []
    for msg in nl.ipr_call("list fdb", "neigh", "dump", family=AF_BRIDGE):
        master = msg.get_attr("NDA_MASTER")
        ifindex = msg["ifindex"]
        if bridge is not None and bridge not in (master, ifindex):
            continue
        if port is not None and (ifindex != port or not msg["flags"] & NTF_SELF):
            continue
        mac = msg.get_attr("NDA_LLADDR")
        if not mac or _multicast_mac(mac):
            continue
        state = msg["state"]
        if state & NUD_PERMANENT:
            kind = "local" if not msg.get_attr("NDA_DST") else "static"
        elif state & NUD_NOARP or msg["flags"] & NTF_EXT_LEARNED:
            kind = "static"
        else:
            kind = "learned"
        out.append(FdbEntry(mac, ifindex, kind, msg.get_attr("NDA_DST")))
    return out


def route_get(nl: Netlink, dst: str) -> RouteLookup:
    """Where the namespace would send a packet to `dst` (`ip route get`); a missing
    route is a RouteLookup of type `unreachable` rather than an error."""
    try:
        msgs = nl.ipr_call(f"route get {dst}", "route", "get", dst=dst)
    except KernelError as exc:
        if exc.errno in NO_ROUTE:
            return RouteLookup(dst, "unreachable", None, None, None)
        raise
    msg = msgs[0]
    return RouteLookup(dst, RTN_NAMES.get(msg["type"], str(msg["type"])),
                       msg.get_attr("RTA_OIF"), msg.get_attr("RTA_GATEWAY"),
                       msg.get_attr("RTA_PREFSRC"))

