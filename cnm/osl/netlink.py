"""The only place cnet speaks rtnetlink (through pyroute2).

One `Netlink` handle per network namespace, opened once and reused. pyroute2's
synchronous IPRoute belongs to the thread that made it, so every handle is made
and used on the daemon's single kernel worker thread. A handle for another
namespace is opened by creating its socket while that thread briefly sits in
the namespace (setns affects only the calling thread; no helper process).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from cnet.cnm.osl import nsenter
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

NETLINK_ROUTE = 0
IFA_F_NODAD = 0x02
AF_BRIDGE = 7
NTF_SELF = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80


class KernelError(Exception):
    """A netlink request failed; the message names the operation and the object."""

    def __init__(self, what: str, exc: BaseException):
        code = getattr(exc, "code", None)
        reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
        super().__init__(f"{what}: {reason}")
        self.errno = code


@dataclass(frozen=True)
class LinkInfo:
    index: int
    ifname: str
    kind: str | None
    alias: str | None
    master: int | None
    address: str | None


@dataclass(frozen=True)
class VxlanConfig:
    vni: int
    port: int
    local: str | None
    socket_elsewhere: bool  # its UDP socket lives in another namespace than the link


IFF_UP = 0x1
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}


@dataclass(frozen=True)
class LinkState:
    """A link's state as a driver needs it (e.g. a macvlan parent's)."""

    index: int
    ifname: str
    kind: str | None
    alias: str | None
    master: int | None  # the bridge (or bond) it is a port of
    up: bool  # administratively up (IFF_UP)
    carrier: bool  # operstate up or unknown: frames can flow
    mtu: int | None
    address: str | None

    @classmethod
    def from_msg(cls, msg) -> LinkState:
        linkinfo = msg.get_attr("IFLA_LINKINFO")
        return cls(
            index=msg["index"],
            ifname=msg.get_attr("IFLA_IFNAME"),
            kind=linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None,
            alias=msg.get_attr("IFLA_IFALIAS"),
            master=msg.get_attr("IFLA_MASTER"),
            up=bool(msg["flags"] & IFF_UP),
            carrier=msg.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN"),
            mtu=msg.get_attr("IFLA_MTU"),
            address=msg.get_attr("IFLA_ADDRESS"),
        )


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _dump(fn, **kwargs) -> list:
    """A dump read to the end, so that errors surface inside Netlink._call."""
    return list(fn("dump", **kwargs))


class Netlink:
    """rtnetlink operations inside one network namespace."""

    def __init__(self, netns_path: str | None = None):
        self.netns_path = netns_path
        if netns_path is None:
            self._ipr = IPRoute()
        else:
            with nsenter.in_netns(netns_path):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
            self._ipr = IPRoute(use_socket=sock)

    def close(self) -> None:
        self._ipr.close()

    # -- links -------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise KernelError(what, exc) from None

    def ipr_call(self, what: str, method: str, *args, **kwargs) -> list:
        """One pyroute2 request read to the end (for cnm.osl's read-only helpers)."""
        return self._call(what, lambda: list(getattr(self._ipr, method)(*args, **kwargs)))

    def index(self, ifname: str) -> int | None:
        found = self._call(f"look up {ifname}", self._ipr.link_lookup, ifname=ifname)
        return found[0] if found else None

    def links(self) -> list[LinkInfo]:
        out = []
        for msg in self._call("list links", self._ipr.get_links):
            linkinfo = msg.get_attr("IFLA_LINKINFO")
            out.append(
                LinkInfo(
                    index=msg["index"],
                    ifname=msg.get_attr("IFLA_IFNAME"),
                    kind=linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None,
                    alias=msg.get_attr("IFLA_IFALIAS"),
                    master=msg.get_attr("IFLA_MASTER"),
                    address=msg.get_attr("IFLA_ADDRESS"),
                )
            )
        return out

    def add_link(self, ifname: str, kind: str, **kwargs) -> None:
        self._call(f"create {kind} {ifname}", self._ipr.link, "add", ifname=ifname, kind=kind,
                   **kwargs)

    def create_bridge(self, ifname: str, alias: str, mtu: int | None = None,
                      mac: str | None = None) -> int:
        """A bridge; with `mac` its address is fixed (otherwise the kernel gives it the
        lowest port MAC, which changes when that port goes: neighbours lose the gateway)."""
        kwargs: dict = {"mtu": mtu} if mtu else {}
        if mac:
            kwargs["address"] = mac
        self._call(f"create bridge {ifname}", self._ipr.link, "add", ifname=ifname,
                   kind="bridge", **kwargs)
        idx = self.index(ifname)
        assert idx is not None
        self._call(f"set alias on {ifname}", self._ipr.link, "set", index=idx, ifalias=alias)
        return idx

    def create_veth_into(
        self,
        host_ifname: str,
        peer_ifname: str,
        peer_netns: str,
        *,
        alias: str,
        master: int | None = None,
        peer_mac: str | None = None,
        mtu: int | None = None,
    ) -> int:
        """Create a veth pair whose peer is born inside `peer_netns` with its final name."""
        fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer: dict = {"ifname": peer_ifname, "net_ns_fd": fd}
            if peer_mac:
                peer["address"] = peer_mac
            if mtu:
                peer["mtu"] = mtu
            kwargs: dict = {"mtu": mtu} if mtu else {}
            if master is not None:
                kwargs["master"] = master
            self._call(f"create veth {host_ifname}", self._ipr.link, "add",
                       ifname=host_ifname, kind="veth", peer=peer, **kwargs)
        finally:
            os.close(fd)
        idx = self.index(host_ifname)
        assert idx is not None
        self._call(f"configure {host_ifname}", self._ipr.link, "set", index=idx,
                   ifalias=alias, state="up")
        return idx

    def set_master(self, index: int, master: int) -> None:
        self._call("attach to bridge", self._ipr.link, "set", index=index, master=master)

    def set_port_isolated(self, index: int, isolated: bool = True) -> None:
        self._call("set bridge port isolation", self._ipr.brport, "set", index=index,
                   isolated=1 if isolated else 0)

    def set_up(self, index: int) -> None:
        self._call("bring link up", self._ipr.link, "set", index=index, state="up")

    def set_link(self, index: int, *, alias: str | None = None, master: int | None = None,
                 up: bool = False) -> None:
        """Set alias, bridge and state of a link in one request (what is None stays)."""
        kwargs: dict = {}
        if alias is not None:
            kwargs["ifalias"] = alias
        if master is not None:
            kwargs["master"] = master
        if up:
            kwargs["state"] = "up"
        if kwargs:
            self._call("configure link", self._ipr.link, "set", index=index, **kwargs)

    def link_mtu(self, index: int) -> int | None:
        found = self._call("read link", self._ipr.get_links, index)
        return found[0].get_attr("IFLA_MTU") if found else None

    def mtu_of_address(self, ip: str) -> int | None:
        """The MTU of the link that holds address `ip` in this namespace (None: no such)."""
        family = _family(ip)
        for msg in self._call("list addresses", self._ipr.get_addr, family=family):
            if msg.get_attr("IFA_ADDRESS") == ip or msg.get_attr("IFA_LOCAL") == ip:
                return self.link_mtu(msg["index"])
        return None

    # -- VXLAN, forwarding database, neighbours -------------------------------
    def create_vxlan_into(self, ifname: str, netns_path: str, *, vni: int, port: int,
                          local: str, mtu: int | None = None) -> None:
        """Create a VXLAN link born inside `netns_path`, its UDP socket in *this* namespace.

        The kernel opens a VXLAN's socket in the namespace whose handle created it
        (IFLA_NET_NS_FD only chooses where the device lives): created through the host
        handle, the tunnel's packets enter and leave by the host's underlay while the
        device sits in the overlay namespace. Static FDB only: no learning, the VTEP
        answers ARP/ND from its neighbour table (proxy), no l2miss/l3miss upcalls.

        The kernel does not apply IFLA_IFALIAS on creation, so the caller sets the
        alias (with bridge and up state) from a handle inside `netns_path`: this
        handle cannot see the device any more.
        """
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            kwargs: dict = {
                "vxlan_id": vni, "vxlan_port": port, "vxlan_learning": 0,
                "vxlan_proxy": 1, "vxlan_l2miss": 0, "vxlan_l3miss": 0,
                "net_ns_fd": fd,
            }
            kwargs["vxlan_local6" if ":" in local else "vxlan_local"] = local
            if mtu:
                kwargs["mtu"] = mtu
            self._call(f"create vxlan {ifname} (VNI {vni})", self._ipr.link, "add",
                       ifname=ifname, kind="vxlan", **kwargs)
        finally:
            os.close(fd)

    def vxlan_config(self, index: int) -> VxlanConfig | None:
        """What a VXLAN link was made with (None: not a VXLAN)."""
        found = self._call("read link", self._ipr.get_links, index)
        linkinfo = found[0].get_attr("IFLA_LINKINFO") if found else None
        if not linkinfo or linkinfo.get_attr("IFLA_INFO_KIND") != "vxlan":
            return None
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        return VxlanConfig(
            vni=data.get_attr("IFLA_VXLAN_ID"),
            port=data.get_attr("IFLA_VXLAN_PORT"),
            local=data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6"),
            # the kernel names the socket's namespace only when it is not the link's own
            socket_elsewhere=found[0].get_attr("IFLA_LINK_NETNSID") is not None,
        )

    def fdb_add(self, index: int, mac: str, dst: str) -> None:
        """Static forwarding entry on a VXLAN: frames to `mac` go to VTEP `dst`
        (`bridge fdb replace MAC dev VXLAN dst DST self permanent`; replaces a previous dst)."""
        self._call(f"add fdb entry {mac} dst {dst}", self._ipr.neigh, "replace",
                   family=AF_BRIDGE, ifindex=index, lladdr=mac, dst=dst,
                   state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def fdb_del(self, index: int, mac: str, dst: str | None = None) -> bool:
        """Delete a static forwarding entry (only the `dst` remote if given); False if absent."""
        kwargs: dict = {"dst": dst} if dst else {}
        try:
            self._ipr.neigh("del", family=AF_BRIDGE, ifindex=index, lladdr=mac,
                            state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF, **kwargs)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise KernelError(f"delete fdb entry {mac}", exc) from None

    def fdb_entries(self, index: int) -> list[tuple[str, str | None]]:
        """(MAC, remote VTEP or None) of the link's own forwarding entries (`self`)."""
        out = []
        for msg in self._call("list fdb", _dump, self._ipr.neigh, family=AF_BRIDGE):
            if msg["ifindex"] == index and msg["flags"] & NTF_SELF:
                out.append((msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")))
        return out

    def neigh_add(self, index: int, ip: str, mac: str) -> None:
        """Permanent neighbour entry `ip lladdr mac` on the link (replaces a previous one)."""
        self._call(f"add neighbour {ip}", self._ipr.neigh, "replace", family=_family(ip),
                   ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT)

    def neigh_del(self, index: int, ip: str) -> bool:
        """Delete a neighbour entry; False when there was none."""
        try:
            self._ipr.neigh("del", family=_family(ip), ifindex=index, dst=ip)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise KernelError(f"delete neighbour {ip}", exc) from None

    def neigh_entries(self, index: int) -> list[tuple[str, str | None]]:
        """(IP, MAC) of the permanent IPv4/IPv6 neighbour entries on the link."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._call("list neighbours", _dump, self._ipr.neigh, family=family):
                if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT:
                    out.append((msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")))
        return out

    def delete_link(self, ifname: str) -> bool:
        """Delete a link by name; False when it was already gone."""
        try:
            self._ipr.link("del", ifname=ifname)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return False
            raise KernelError(f"delete {ifname}", exc) from None

    # -- addresses and routes ----------------------------------------------
    def add_address(self, index: int, cidr: str) -> None:
        addr, prefix = cidr.split("/")
        kwargs: dict = {}
        if ":" in addr:
            kwargs["flags"] = IFA_F_NODAD  # no 1-2 s of tentative state
        try:
            self._ipr.addr("add", index=index, address=addr, prefixlen=int(prefix), **kwargs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelError(f"add address {cidr}", exc) from None

    def add_default_route(self, gateway: str, index: int | None = None) -> None:
        family = _family(gateway)
        dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
        kwargs: dict = {"dst": dst, "gateway": gateway, "family": family}
        if index is not None:
            kwargs["oif"] = index
        self._call(f"route default via {gateway}", self._ipr.route, "replace", **kwargs)

    def delete_default_route(self, family_v6: bool) -> None:
        family = socket.AF_INET6 if family_v6 else socket.AF_INET
        dst = "::/0" if family_v6 else "0.0.0.0/0"
        try:
            self._ipr.route("del", dst=dst, family=family)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise KernelError("delete default route", exc) from None

    def route_prefixes(self) -> list[str]:
        """Destination prefixes of the main routing table (IPv4 and IPv6), default excluded."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._call("list routes", self._ipr.get_routes, family=family,
                                  table=254):
                dst = msg.get_attr("RTA_DST")
                if dst:
                    out.append(f"{dst}/{msg['dst_len']}")
        return out

    def set_lo_up(self) -> None:
        idx = self.index("lo")
        if idx is not None:
            self.set_up(idx)

    # -- links stacked on a parent (macvlan, ipvlan, 802.1q) ----------------------------
    def link_state(self, ifname: str | None = None, index: int | None = None
                   ) -> LinkState | None:
        """One link's state, by name or index (None: no such link in this namespace)."""
        what = ifname if ifname is not None else f"link {index}"
        try:
            if ifname is not None:
                found = self._ipr.get_links(ifname=ifname)
            else:
                found = self._ipr.get_links(index)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise KernelError(f"look up {what}", exc) from None
        return LinkState.from_msg(found[0]) if found else None

    def create_stacked_into(self, kind: str, ifname: str, parent: int, netns_path: str, *,
                            mac: str | None = None, mtu: int | None = None, **data) -> None:
        """A macvlan/ipvlan on `parent` (an index in this namespace), born inside
        `netns_path` with its final name and MAC (IFLA_NET_NS_FD, as veth peers are).

        `data`: the kind's own attributes (macvlan_mode=..., ipvlan_mode=...). The kernel
        does not apply IFLA_IFALIAS on creation: set it from a handle inside `netns_path`.
        """
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            kwargs: dict = {"link": parent, "net_ns_fd": fd, **data}
            if mac:
                kwargs["address"] = mac
            if mtu:
                kwargs["mtu"] = mtu
            self._call(f"create {kind} {ifname}", self._ipr.link, "add", ifname=ifname,
                       kind=kind, **kwargs)
        finally:
            os.close(fd)

    def create_macvlan_into(self, ifname: str, parent: int, netns_path: str, *, mode: str,
                            mac: str | None = None, mtu: int | None = None) -> None:
        """macvlan `mode`: bridge, private, vepa or passthru."""
        self.create_stacked_into("macvlan", ifname, parent, netns_path, mac=mac, mtu=mtu,
                                 macvlan_mode=mode)

    def create_ipvlan_into(self, ifname: str, parent: int, netns_path: str, *, mode: str,
                           mtu: int | None = None) -> None:
        """ipvlan `mode`: l2, l3 or l3s. Every ipvlan shares its parent's MAC."""
        self.create_stacked_into("ipvlan", ifname, parent, netns_path, mtu=mtu,
                                 ipvlan_mode=IPVLAN_MODES[mode])

    def _configure_new(self, ifname: str, alias: str) -> int:
        idx = self.index(ifname)
        assert idx is not None
        try:
            self._call(f"configure {ifname}", self._ipr.link, "set", index=idx,
                       ifalias=alias, state="up")
        except BaseException:
            self.delete_link(ifname)
            raise
        return idx

    def create_vlan(self, ifname: str, parent: int, vlan_id: int, alias: str) -> int:
        """An 802.1q sub-interface `ifname` of `parent` tagged `vlan_id`, up, alias-marked."""
        self._call(f"create 802.1q VLAN {ifname}", self._ipr.link, "add", ifname=ifname,
                   kind="vlan", link=parent, vlan_id=vlan_id)
        return self._configure_new(ifname, alias)

    def create_macvlan(self, ifname: str, parent: int, *, mode: str, alias: str,
                       mac: str | None = None) -> int:
        """A macvlan on `parent` in this namespace itself, up, alias-marked."""
        kwargs: dict = {"address": mac} if mac else {}
        self._call(f"create macvlan {ifname}", self._ipr.link, "add", ifname=ifname,
                   kind="macvlan", link=parent, macvlan_mode=mode, **kwargs)
        return self._configure_new(ifname, alias)

    @staticmethod
    def _host_prefix(dst: str) -> tuple[str, int]:
        addr, _, plen = dst.partition("/")
        family = _family(addr)
        return f"{addr}/{plen or (128 if family == socket.AF_INET6 else 32)}", family

    def add_device_route(self, dst: str, index: int) -> None:
        """`ip route replace DST dev IFINDEX` (DST without a length: a host route)."""
        prefix, family = self._host_prefix(dst)
        self._call(f"route {prefix}", self._ipr.route, "replace", dst=prefix, oif=index,
                   family=family)

    def delete_device_route(self, dst: str, index: int) -> bool:
        """Delete `DST dev IFINDEX`; False when there was none."""
        prefix, family = self._host_prefix(dst)
        try:
            self._ipr.route("del", dst=prefix, oif=index, family=family)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return False
            raise KernelError(f"delete route {prefix}", exc) from None

    def add_device_default_route(self, index: int, v6: bool = False) -> None:
        """`ip route replace default dev IFINDEX` (ipvlan l3: no gateway, no ARP)."""
        family = socket.AF_INET6 if v6 else socket.AF_INET
        self._call("route default", self._ipr.route, "replace",
                   dst="::/0" if v6 else "0.0.0.0/0", oif=index, family=family)

    def has_default_route(self, v6: bool = False) -> bool:
        family = socket.AF_INET6 if v6 else socket.AF_INET
        return any(msg["dst_len"] == 0 for msg in self._call(
            "list routes", self._ipr.get_routes, family=family, table=254))


def links_with_alias_prefix(nl: Netlink, prefix: str) -> Iterable[LinkInfo]:
    return (link for link in nl.links() if link.alias and link.alias.startswith(prefix))
