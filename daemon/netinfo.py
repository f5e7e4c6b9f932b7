"""Small facts about networks that several API views need (capture, trace, inspect):
where an overlay's devices live, addresses of CIDRs, who holds an address."""

from __future__ import annotations

import ipaddress

from cnet.daemon.app import App
from cnet.drivers.overlay.driver import BRIDGE as OVERLAY_BRIDGE
from cnet.drivers.overlay.driver import VXLAN as OVERLAY_VTEP
from cnet.drivers.overlay.driver import namespace_name
from cnet.drivers.overlay.options import DEFAULT_PORT, VXLAN_PORT

__all__ = ["OVERLAY_BRIDGE", "OVERLAY_VTEP", "address_names", "ip_of", "node_names",
           "overlay_netns", "vxlan_ports"]

def ip_of(cidr: str | None) -> str | None:
    """The address of a CIDR in the kernel's spelling (IPv6 compressed); None if none."""
    if not cidr:
        return None
    try:
        return ipaddress.ip_address(cidr.split("/")[0]).compressed
    except ValueError:
        return None


def overlay_netns(app: App, net) -> str | None:
    """The path of an overlay's namespace on this node, if it exists (it is made at the
    first local join)."""
    kernel = app.controller.ctx.netlink
    path = kernel.netns_path(namespace_name(net.id))
    return path if kernel.is_netns(path) else None


def address_names(app: App) -> dict[str, str]:
    """Address -> container name: local endpoints first, then every name the DNS
    serves (which includes remote overlay peers). Runs on the kernel worker."""
    ctl = app.controller
    names: dict[str, str] = {}
    for ep in ctl.endpoints.values():
        sb = ctl.sandboxes.get(ep.sandbox_id or "")
        for a in (ip_of(ep.ipv4), ip_of(ep.ipv6)):
            if sb is not None and a:
                names.setdefault(a, sb.name)
    if app.dns is not None:
        for rec in app.dns.names.endpoints():
            for a in (ip_of(rec.ipv4), ip_of(rec.ipv6)):
                if a and rec.names:
                    names.setdefault(a, rec.names[0])
    return names


def node_names(app: App) -> dict[str, str]:
    """Underlay address -> node name. Asks etcd: call it off the kernel worker; an
    unreachable store gives {} (nodes stay unnamed)."""
    if app.cluster is None:
        return {}
    try:
        return {n["Addr"]: n["Name"] for n in app.cluster.nodes() if n.get("Addr")}
    except Exception:
        return {}


def vxlan_ports(app: App) -> list[int]:
    """The UDP ports the overlay networks encapsulate on."""
    ports = {DEFAULT_PORT}
    for net in app.controller.networks.values():
        if net.driver == "overlay":
            port = net.options.get(VXLAN_PORT)
            if port and port.isdigit():
                ports.add(int(port))
    return sorted(ports)
