"""`cnet topology`: who is where, in one answer.

    GET /topology[?node=NAME]  ->  {"Nodes": [...], "Networks": [...], "Warnings": [...]}

Networks: every network this node knows (name, id, driver, scope, internal, subnets and
gateways). Nodes: this node (single host: named after the host; in a cluster: its
cluster name) with every local container, bare sandbox and sandbox-less endpoint, each
with its attachments (network, IPv4/IPv6 address, MAC, published ports
"HOSTIP:HOSTPORT->PORT/PROTO"); with a cluster store, every other node too (Name, Addr,
Status from the cluster) with what this node knows of it: its endpoints on global
networks, from the peer table (network_peers). `node=` keeps one node (name or id).
"""

from __future__ import annotations

import socket
from typing import Any

from cnet.cnm import ids
from cnet.daemon.api import Request, route
from cnet.daemon.api_ports import sandbox_ports
from cnet.daemon.app import App
from cnet.daemon.views import network_peers


def _ports(ports: dict | None) -> list[str]:
    """Docker's NetworkSettings.Ports as `docker ps` shows them, sorted."""
    out = []
    for key, bindings in (ports or {}).items():
        port, _, proto = key.partition("/")
        for b in bindings or []:
            out.append(f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}->"
                       f"{port}/{proto or 'tcp'}")
    return sorted(out)


def _attachment(net, ep=None, ports: list[str] | None = None) -> dict:
    return {"Network": net.name, "NetworkID": net.id,
            "IPv4Address": (ep.ipv4 or "") if ep else "",
            "IPv6Address": (ep.ipv6 or "") if ep else "",
            "MacAddress": (ep.mac or "") if ep else "",
            "Ports": ports or []}


def _network(net) -> dict:
    return {"Name": net.name, "Id": net.id, "Driver": net.driver, "Scope": net.scope,
            "Internal": net.internal, "EnableIPv6": net.enable_ipv6,
            "Subnets": [{"Subnet": p.subnet, "Gateway": p.gateway or ""}
                        for p in net.pools]}


def _configured(ctl, c: dict, attached: set[str] = frozenset()) -> list[dict]:
    """A container's configured networks it has no endpoint on: no address."""
    return [_attachment(net) for name in (c.get("Networks") or {}) if name not in attached
            for net in ctl.networks.values() if net.name == name]


def _local(app: App) -> dict[str, Any]:
    """On the kernel worker: the networks, this node's sandboxes and endpoints, and the
    remote endpoints of global networks (peer table)."""
    ctl = app.controller
    containers = dict(app.containers.containers) if app.containers is not None else {}
    sbports = sandbox_ports(app).ports  # "<sandbox id>/<network id>" -> Ports
    entries = []
    for sb in ctl.sandboxes.values():
        c = containers.get(sb.id)
        # a container's -p ports are DNATed to its first bridge address (runtime)
        joined = [(ep, ctl.networks.get(ep.network_id))
                  for ep in (ctl.endpoints.get(e) for e in sb.endpoints) if ep is not None]
        cports_net = next((net.id for ep, net in joined
                           if net is not None and ep.ipv4 and net.driver == "bridge"), None)
        atts = []
        for ep, net in joined:
            if net is None:
                continue
            if c is not None:
                ports = _ports(c.get("Ports")) if net.id == cports_net else []
            else:
                ports = _ports(sbports.get(f"{sb.id}/{net.id}"))
            atts.append(_attachment(net, ep, ports))
        if c is not None:  # configured but not attached (created, stopped)
            atts += _configured(ctl, c, {a["Network"] for a in atts})
        entries.append({"Name": sb.name, "Id": sb.id,
                        "Kind": "container" if c is not None else "sandbox",
                        "State": c["State"]["Status"] if c is not None else "",
                        "Networks": atts})
    for c in containers.values():  # stopped: no sandbox, its configured networks
        if c["Id"] in ctl.sandboxes:
            continue
        entries.append({"Name": c["Name"], "Id": c["Id"], "Kind": "container",
                        "State": c["State"]["Status"], "Networks": _configured(ctl, c)})
    for ep in ctl.endpoints.values():  # joined for another runtime (dockerd), or unjoined
        net = ctl.networks.get(ep.network_id)
        if ep.sandbox_id is None and net is not None:
            entries.append({"Name": ep.name, "Id": ep.id, "Kind": "endpoint", "State": "",
                            "Networks": [_attachment(net, ep)]})
    peers = {net.id: network_peers(ctl, net) for net in ctl.networks.values()
             if net.scope == "global"}
    return {"Networks": [_network(n) for n in ctl.networks.values()],
            "Containers": entries, "Peers": peers, "DaemonID": ctl.daemon_id}


def _remote(node: dict, nets: dict[str, dict], peers: dict[str, list[dict]]) -> None:
    """Fill a remote node's containers from the peer table (its endpoints on global
    networks; a name on several networks is one entry)."""
    by_name: dict[str, dict] = {}
    for net_id, holders in peers.items():
        for holder in holders:
            if holder["Name"] != node["Name"]:
                continue
            for rec in holder["Endpoints"]:
                entry = by_name.setdefault(rec["Name"] or rec["EndpointID"][:12], {
                    "Name": rec["Name"] or rec["EndpointID"][:12], "Id": "",
                    "Kind": "remote", "State": "", "Networks": []})
                entry["Networks"].append({
                    "Network": nets[net_id]["Name"], "NetworkID": net_id,
                    "IPv4Address": rec["IPv4Address"], "IPv6Address": rec["IPv6Address"],
                    "MacAddress": rec["MacAddress"], "Ports": []})
    node["Containers"] = list(by_name.values())


def topology(app: App, wanted: str | None) -> dict[str, Any]:
    local = app.worker.run(_local, app)
    nets = {n["Id"]: n for n in local["Networks"]}
    warnings: list[str] = []
    if app.cluster is not None:
        info = app.cluster.info
        me = {"Name": info.node_name, "ID": info.node_id, "Addr": info.advertise_addr,
              "Status": "Ready", "Self": True}
        try:
            known = [dict(n) for n in app.cluster.nodes()]
        except Exception as exc:  # the store unreachable: what the peer table knows
            warnings.append(f"cluster store unreachable ({exc}): node states unknown")
            known = []
    else:
        me = {"Name": socket.gethostname(), "ID": local["DaemonID"], "Addr": "",
              "Status": "Ready", "Self": True}
        known = []
    nodes = {me["Name"]: me}
    for n in known:
        if n.get("Self"):
            me["Status"] = n.get("Status") or me["Status"]
        elif n["Name"] != me["Name"]:
            nodes[n["Name"]] = {"Name": n["Name"], "ID": n.get("ID", ""),
                                "Addr": n.get("Addr", ""), "Status": n.get("Status", ""),
                                "Self": False}
    for holders in local["Peers"].values():  # peers of nodes the store did not list
        for h in holders:
            nodes.setdefault(h["Name"], {"Name": h["Name"], "ID": "", "Addr": h["IP"],
                                         "Status": "Unknown", "Self": False})
    me["Containers"] = local["Containers"]
    me["Networks"] = sorted(n["Name"] for n in local["Networks"])
    for node in nodes.values():
        if not node["Self"]:
            _remote(node, nets, local["Peers"])
            node["Networks"] = sorted({a["Network"] for c in node["Containers"]
                                       for a in c["Networks"]})
        node["Containers"].sort(key=lambda c: (c["Name"], c["Id"]))
        for c in node["Containers"]:
            c["Networks"].sort(key=lambda a: a["Network"])
    chosen = sorted(nodes.values(), key=lambda n: (not n["Self"], n["Name"]))
    if wanted:
        chosen = [ids.resolve("node", wanted, chosen, lambda n: (n["ID"], n["Name"]))]
    shown = {name for n in chosen for name in n["Networks"]}
    networks = sorted((n for n in local["Networks"] if n["Name"] in shown),
                      key=lambda n: n["Name"])
    return {"Nodes": chosen, "Networks": networks, "Warnings": warnings}


@route("GET", "/topology", worker=False)
def topology_get(app: App, req: Request) -> tuple[int, Any]:
    """The controller is read on the kernel worker; the cluster's node list (an etcd
    round trip) is fetched here, off it."""
    return 200, topology(app, req.query.get("node") or None)
