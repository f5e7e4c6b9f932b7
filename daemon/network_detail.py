"""`cnet network inspect --verbose`: what the kernel, the firewall and the embedded DNS
hold for one network, added to Docker's inspect JSON under keys of cnet's own.

- "Kernel": a bridge network's bridge (name, index, MTU, MAC, state, addresses), its
  ports (host veths, each with its endpoint and container), the bridge's forwarding
  entries (MAC -> port, local/static/learned, the container when the MAC is one) and
  neighbour entries (the node's, on the bridge; each local container's, on its
  interface). An overlay: its namespace `ov-<id12>` with br0, the VTEP vxlan0 (VNI, UDP
  port, local address), br0's ports and entries, vxlan0's own MAC -> remote VTEP entries
  (with the peer's node) and its permanent neighbour entries. A macvlan/ipvlan network:
  its parent link, and the containers' neighbour entries.
- "Firewall": ingress/firewall_view.py's selection from the `inet cnet` table.
- "DNS": the embedded DNS counters of the network's local sandboxes, summed and per
  sandbox (a sandbox's counters cover all its networks: it has one resolver).

Everything runs on the kernel worker (the netlink handles belong to it) and only reads.
A section whose object is missing (no overlay namespace on this node yet, no table) is
empty; a section that fails to read is {"Error": MESSAGE}: the inspect itself never
fails because of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cnet.cnm.model import Network
from cnet.cnm.osl import diag
from cnet.cnm.osl.netlink import LinkState, Netlink
from cnet.daemon.app import App
from cnet.daemon.netinfo import OVERLAY_BRIDGE, OVERLAY_VTEP, ip_of, overlay_netns
from cnet.dns.server import STAT_FIELDS
from cnet.ingress.firewall_view import network_firewall

log = logging.getLogger(__name__)



def verbose(app: App, net: Network, peers: list[dict] | None = None) -> dict[str, Any]:
    """The three sections; `peers`: the network's Peers (views.network_peers), which name
    remote containers and the nodes behind VTEP addresses."""
    names = _Names(app, net, peers or [])
    return {"Kernel": _guard("kernel state", _kernel, app, net, names),
            "Firewall": _guard("firewall", _firewall, app, net, names),
            "DNS": _guard("DNS counters", _dns, app, net)}


def _guard(what: str, fn: Callable[..., dict], *args) -> dict:
    try:
        return fn(*args)
    except Exception as exc:  # reading must never fail the inspect
        log.warning("network inspect --verbose: reading the %s failed: %s", what, exc)
        return {"Error": str(exc)}


class _Names:
    """Who is who: MAC and IP -> container (local endpoints, then remote peers), VTEP
    address -> node."""

    def __init__(self, app: App, net: Network, peers: list[dict]):
        ctl = app.controller
        self.mac: dict[str, str] = {}
        self.ip: dict[str, str] = {}
        self.node: dict[str, str] = {}
        for ep in ctl.network_endpoints(net.id):
            sb = ctl.sandboxes.get(ep.sandbox_id or "")
            self._add(sb.name if sb else ep.name, ep.mac, ep.ipv4, ep.ipv6)
        for node in peers:
            vtep = ip_of(node.get("IP"))
            if vtep and node.get("Name"):
                self.node.setdefault(vtep, node["Name"])
            for ep in node.get("Endpoints", []):
                self._add(ep.get("Name", ""), ep.get("MacAddress"), ep.get("IPv4Address"),
                          ep.get("IPv6Address"))

    def _add(self, name: str, mac: str | None, *cidrs: str | None) -> None:
        if not name:
            return
        if mac:
            self.mac.setdefault(mac.lower(), name)
        for cidr in cidrs:
            ip = ip_of(cidr)
            if ip:
                self.ip.setdefault(ip, name)


# -- kernel ---------------------------------------------------------------------------------
def _link(st: LinkState) -> dict[str, Any]:
    return {"Name": st.ifname, "Index": st.index, "MTU": st.mtu, "MAC": st.address or "",
            "State": "up" if st.up else "down", "Carrier": st.carrier}


def _kernel(app: App, net: Network, names: _Names) -> dict[str, Any]:
    kernel = app.controller.kernel
    state = net.driver_state
    if net.driver == "overlay":
        return _overlay(app, net, names)
    if net.driver == "bridge" and state.get("bridge"):
        return _bridge(app, net, names, kernel.host, state["bridge"])
    if state.get("parent"):
        st = kernel.host.link_state(state["parent"])
        return {"Parent": _link(st) if st else {"Name": state["parent"], "State": "missing"},
                "Neighbours": _sandbox_neighbours(app, net, names)}
    return {}


def _bridge(app: App, net: Network, names: _Names, nl: Netlink, name: str
            ) -> dict[str, Any]:
    st = nl.link_state(name)
    if st is None:  # deleted behind cnet's back: say so, it is what one looks for
        return {"Bridge": {"Name": name, "State": "missing"}}
    bridge = _link(st)
    bridge["Addresses"] = diag.addresses(nl, st.index)
    ports, port_names = _ports(app, net, nl, st.index)
    port_names[st.index] = name
    return {"Bridge": bridge, "Ports": ports,
            "FDB": _fdb(nl, st.index, None, port_names, names),
            "Neighbours": _neighbours(nl, st.index, name, names)
            + _sandbox_neighbours(app, net, names)}


def _ports(app: App, net: Network, nl: Netlink, bridge: int
           ) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The bridge's ports: links whose master it is, each with its endpoint if it is one."""
    ctl = app.controller
    by_veth = {ep.driver_state.get("veth"): ep for ep in ctl.network_endpoints(net.id)}
    ports, port_names = [], {}
    for link in nl.links():
        if link.master != bridge:
            continue
        port_names[link.index] = link.ifname
        row: dict[str, Any] = {"Interface": link.ifname, "Index": link.index,
                               "MAC": link.address or ""}
        ep = by_veth.get(link.ifname)
        if ep is not None:
            sb = ctl.sandboxes.get(ep.sandbox_id or "")
            row.update(Endpoint=ep.id, Container=sb.name if sb else ep.name,
                       ContainerInterface=ep.ifname or "", ContainerMAC=ep.mac or "")
        ports.append(row)
    return sorted(ports, key=lambda p: p["Interface"]), port_names


def _fdb(nl: Netlink, bridge: int, vtep: int | None, port_names: dict[int, str],
         names: _Names) -> list[dict[str, Any]]:
    """The bridge's forwarding entries, plus a VTEP's own (MAC -> remote VTEP)."""
    entries = diag.bridge_fdb(nl, bridge=bridge)
    if vtep is not None:
        entries += diag.bridge_fdb(nl, port=vtep)
    out, seen = [], set()
    for e in entries:
        key = (e.mac.lower(), e.port, e.kind, e.dst)
        if key in seen:  # the kernel may list a local entry once per VLAN
            continue
        seen.add(key)
        row: dict[str, Any] = {"MAC": e.mac, "Port": port_names.get(e.port, str(e.port)),
                               "Kind": e.kind}
        who = names.mac.get(e.mac.lower())
        if who and e.kind != "local":
            row["Container"] = who
        if e.dst:
            row["Remote"] = e.dst
            node = names.node.get(ip_of(e.dst) or "")
            if node:
                row["Node"] = node
        out.append(row)
    return sorted(out, key=lambda r: (r["Port"], r["Kind"], r["MAC"]))


def _neighbours(nl: Netlink, index: int, ifname: str, names: _Names,
                sandbox: str | None = None) -> list[dict[str, Any]]:
    out = []
    for n in diag.neighbours(nl, index):
        row: dict[str, Any] = {"Interface": ifname, "IP": n.ip, "MAC": n.mac or "",
                               "State": n.state}
        if sandbox:
            row["Sandbox"] = sandbox
        who = names.ip.get(ip_of(n.ip) or "")
        if who:
            row["Container"] = who
        out.append(row)
    return out


def _sandbox_neighbours(app: App, net: Network, names: _Names) -> list[dict[str, Any]]:
    """Each local container's neighbour entries on its interface of this network."""
    ctl = app.controller
    kernel = ctl.kernel
    out: list[dict[str, Any]] = []
    joined = [(ctl.sandboxes.get(ep.sandbox_id or ""), ep)
              for ep in ctl.network_endpoints(net.id)]
    for sb, ep in sorted(joined, key=lambda j: (j[0].name if j[0] else "", j[1].id)):
        if sb is None or not ep.ifname or not kernel.is_namespace_file(sb.key):
            continue
        try:
            nl = kernel.sandbox(sb.key)
            idx = nl.index(ep.ifname)
            if idx is not None:
                out += _neighbours(nl, idx, ep.ifname, names, sandbox=sb.name)
        except Exception as exc:  # one unreadable sandbox hides only its own entries
            log.debug("network inspect --verbose: neighbours of %s: %s", sb.name, exc)
    return out


def _overlay(app: App, net: Network, names: _Names) -> dict[str, Any]:
    kernel = app.controller.kernel
    path = overlay_netns(app, net)
    if path is None:
        return {}  # made at the first local join
    nl = kernel.sandbox(path)
    out: dict[str, Any] = {"Namespace": path}
    br = nl.link_state(OVERLAY_BRIDGE)
    vx = nl.link_state(OVERLAY_VTEP)
    if vx is not None:
        vtep = {"Interface": OVERLAY_VTEP, **_link(vx)}
        del vtep["Name"]
        cfg = nl.vxlan_config(vx.index)
        if cfg is not None:
            vtep.update(VNI=cfg.vni, Port=cfg.port, Local=cfg.local or "")
        out["VTEP"] = vtep
    if br is None:
        return out
    out["Bridge"] = _link(br)
    ports, port_names = _ports(app, net, nl, br.index)
    port_names[br.index] = OVERLAY_BRIDGE
    out["Ports"] = ports
    out["FDB"] = _fdb(nl, br.index, vx.index if vx else None, port_names, names)
    out["Neighbours"] = (_neighbours(nl, vx.index, OVERLAY_VTEP, names) if vx else []) \
        + _sandbox_neighbours(app, net, names)
    return out


# -- firewall and DNS -------------------------------------------------------------------------
def _firewall(app: App, net: Network, names: _Names) -> dict[str, Any]:
    fw = app.controller.firewall
    if fw is None:
        return {}
    bridge = net.driver_state.get("bridge") if net.driver == "bridge" else None
    return network_firewall(fw.ruleset(), bridge, [p.subnet for p in net.pools], names.ip)


def _dns(app: App, net: Network) -> dict[str, Any]:
    dns = app.dns
    if dns is None:
        return {}
    ctl = app.controller
    total = dict.fromkeys(STAT_FIELDS, 0)
    per: dict[str, dict[str, int]] = {}
    for ep in ctl.network_endpoints(net.id):
        sb = ctl.sandboxes.get(ep.sandbox_id or "")
        if sb is None or sb.name in per or not dns.serves(sb.id):
            continue
        try:
            counts = dns.stats(sb.id)
        except KeyError:  # removed meanwhile
            continue
        per[sb.name] = counts
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    # a sandbox has one resolver for all its networks: these are all its queries
    return {"Total": total, "Sandboxes": dict(sorted(per.items())),
            "Scope": "every query of this network's local sandboxes (one resolver per "
                     "sandbox serves all its networks)"}
