"""Where to capture: `cnet capture TARGET` asks cnetd which interfaces TARGET means.

The answer is a list of (network namespace path, interface name, label); the CLI (root,
on the same host) opens its packet sockets in those namespaces itself, so no packet
ever crosses the API socket.
"""

from __future__ import annotations

from typing import Any

from cnet.cnm.errors import InvalidParameter, NotFound
from cnet.daemon.api import Request, route
from cnet.daemon.app import App
from cnet.daemon.netinfo import (
    OVERLAY_BRIDGE,
    OVERLAY_VTEP,
    address_names,
    node_names,
    overlay_netns,
    vxlan_ports,
)

NODE = "node"


def _target(netns: str, ifname: str, label: str) -> dict[str, str]:
    return {"Netns": netns, "Interface": ifname, "Label": label}


def _filter(found: list[dict[str, str]], iface: str | None, what: str) -> list[dict]:
    if not iface:
        return found
    kept = [t for t in found if t["Interface"] == iface]
    if not kept:
        names = ", ".join(sorted({t["Interface"] for t in found})) or "none"
        raise InvalidParameter(f'{what} has no interface "{iface}" (it has: {names})')
    return kept


def _sandbox_targets(app: App, sb, lo: bool = False) -> list[dict[str, str]]:
    """A sandbox's interfaces (with `lo`: loopback too, where 127.0.0.11 answers)."""
    ctl = app.controller
    out = [_target(sb.key, "lo", f"{sb.name}/lo")] if lo else []
    for ep_id in sb.endpoints:
        ep = ctl.endpoints.get(ep_id)
        if ep is not None and ep.ifname:
            out.append(_target(sb.key, ep.ifname, f"{sb.name}/{ep.ifname}"))
    return out


def _node_targets(app: App) -> list[dict[str, str]]:
    """The daemon's own namespace minus what cnet made there: the underlay."""
    kernel = app.controller.ctx.netlink
    mine = f"cnet:{app.controller.ctx.daemon_id}:"
    return [_target(kernel.host_netns_path, link.ifname, f"node/{link.ifname}")
            for link in kernel.host.links()
            if link.ifname != "lo" and not (link.alias or "").startswith(mine)]


def _network_infra(app: App, net) -> list[dict[str, str]]:
    """The network's own devices: its bridge, an overlay's br0 and vxlan0, a macvlan
    parent."""
    kernel = app.controller.ctx.netlink
    host = kernel.host_netns_path
    state = net.driver_state
    if net.driver == "overlay":
        path = overlay_netns(app, net)
        if path is None:
            return []  # made at the first local join
        return [_target(path, dev, f"{net.name}/{dev}") for dev in (OVERLAY_BRIDGE,
                                                                     OVERLAY_VTEP)]
    dev = state.get("bridge") or state.get("parent")
    return [_target(host, dev, f"{net.name}/{dev}")] if dev else []


def _network_targets(app: App, net, iface: str | None, lo: bool = False
                     ) -> list[dict[str, str]]:
    ctl = app.controller
    eps = []
    for ep in ctl.network_endpoints(net.id):
        sb = ctl.sandboxes.get(ep.sandbox_id or "")
        if sb is not None and ep.ifname:
            if lo:
                eps.append(_target(sb.key, "lo", f"{sb.name}/lo"))
            eps.append(_target(sb.key, ep.ifname, f"{sb.name}/{ep.ifname}"))
    if not iface:
        return eps
    infra = _network_infra(app, net)
    aliases = {"bridge": (infra[0]["Interface"] if infra else None),
               "vtep": OVERLAY_VTEP if net.driver == "overlay" else None}
    wanted = aliases.get(iface) or iface
    return _filter(infra + eps, wanted, f"network {net.name}")


def resolve(app: App, target: str, iface: str | None, lo: bool = False
            ) -> list[dict[str, str]]:
    ctl = app.controller
    if not target:
        raise InvalidParameter("a capture target is required")
    if target == NODE:
        return _filter(_node_targets(app), iface, "the node")
    for kind, lookup in (("sandbox", ctl.sandbox), ("network", ctl.network),
                         ("endpoint", ctl.endpoint)):
        try:
            obj = lookup(target)
        except NotFound:
            continue
        if kind == "sandbox":
            return _filter(_sandbox_targets(app, obj, lo), iface, f"sandbox {obj.name}")
        if kind == "network":
            return _network_targets(app, obj, iface, lo)
        sb = ctl.sandboxes.get(obj.sandbox_id or "")
        if sb is None or not obj.ifname:
            raise InvalidParameter(f"endpoint {obj.id[:12]} is not joined to a sandbox "
                                   "on this node")
        return _filter([_target(sb.key, obj.ifname, f"{sb.name}/{obj.ifname}")], iface,
                       f"endpoint {obj.id[:12]}")
    raise NotFound(f'no such container, sandbox, network or endpoint: "{target}"')


def _names(app: App) -> tuple[dict[str, str], list[int]]:
    """Who is who (address -> container) and the overlays' VXLAN ports, for decoding."""
    return address_names(app), vxlan_ports(app)


@route("GET", "/capture/targets", worker=False)
def capture_targets(app: App, req: Request) -> tuple[int, Any]:
    """The (namespace, interface, label) triples a capture of TARGET listens on; with
    `lo=1` the sandboxes' loopback too; with `names=1` who is who (addresses of
    containers and nodes) and the VXLAN ports, for decoding."""
    target = req.query.get("target") or ""
    lo = req.query.get("lo") == "1"
    found = app.worker.run(resolve, app, target, req.query.get("iface") or None, lo)
    if not found:
        raise InvalidParameter(f'"{target}" has no interface to capture on (nothing '
                               "joined yet)")
    out: dict[str, Any] = {"Targets": found}
    if req.query.get("names") == "1":
        names, ports = app.worker.run(_names, app)
        for addr, name in node_names(app).items():
            names.setdefault(addr, name)
        out["Names"], out["VxlanPorts"] = names, ports
    return 200, out
