"""`cnet topology`: who is where, in one answer.

    GET /topology[?node=NAME|ID]  ->  {"Nodes": [...], "Networks": [...], "Warnings": [...]}

Networks: every network shown (name, id, driver, scope, internal, subnets and gateways).
Nodes: this node (single host: named after the host; in a cluster: its cluster name)
with every local container, bare sandbox and sandbox-less endpoint, each with its
attachments (network name and id, IPv4/IPv6 address, MAC, published ports
"HOSTIP:HOSTPORT->PORT/PROTO"); with a cluster store, every other node too (Name, ID,
Addr, Status from the cluster) with what this node knows of it: its endpoints on global
networks, from the peer table (network_peers). A node's "Networks" lists network ids.
`node=` keeps one node (id, or name: the first one of that name).

Everything is keyed by id, never by name: node names need not be unique (the default
one is the hostname), and neither need network names (a local bridge and an overlay
made on another node may share one).

Published ports are read from the port publisher (what the kernel DNATs, to which
address), never recomputed: each is shown on the endpoint that holds its target
address; a container's ports whose target none of its endpoints holds (the runtime
moves them at every connect/disconnect, so this shows a fault, e.g. a daemon that died
midway) are listed on the container, as "HOSTIP:HOSTPORT->TARGET:PORT/PROTO" in
"UnattachedPorts".
"""

from __future__ import annotations

import socket
from typing import Any

from cnet.cnm import ids
from cnet.cnm.errors import InvalidParameter, NotFound
from cnet.daemon.api import Request, route
from cnet.daemon.api_ports import sandbox_ports
from cnet.daemon.app import App
from cnet.daemon.views import network_peers


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
    """A container's configured networks it has no endpoint on (created, stopped): no
    address. Its keys are what the user gave (a name, an id or an id prefix): each is
    resolved; one that no longer resolves is left out."""
    out, seen = [], set(attached)
    for ref in c.get("Networks") or {}:
        try:
            net = ctl.network(ref)
        except (NotFound, InvalidParameter):
            continue
        if net.id not in seen:
            seen.add(net.id)
            out.append(_attachment(net))
    return out


def _place(published, joined) -> tuple[dict[str, list[str]], list[str]]:
    """Published ports (PortPublisher.published) on the endpoint holding their DNAT
    target address: ({endpoint id: [port text]}, [the others, with their target])."""
    by_ep: dict[str, list[str]] = {}
    stray = []
    for p in published:
        ep = next((ep for ep, _ in joined
                   if (ep.ipv4 or "").split("/")[0] == p.target_ip), None)
        if ep is not None:
            by_ep.setdefault(ep.id, []).append(p.text())
        else:
            stray.append(p.text(with_target=True))
    return by_ep, stray


def _local(app: App) -> dict[str, Any]:
    """On the kernel worker: the networks, this node's sandboxes and endpoints, and the
    remote endpoints of global networks (peer table)."""
    ctl = app.controller
    containers = dict(app.containers.containers) if app.containers is not None else {}
    sbports = sandbox_ports(app)  # the publisher of containers' and bare sandboxes' ports
    sandbox_keys = list(sbports.ports)  # "<sandbox id>/<network id>"
    entries = []
    for sb in ctl.sandboxes.values():
        c = containers.get(sb.id)
        joined = [(ep, net) for ep, net in
                  ((ep, ctl.networks.get(ep.network_id))
                   for ep in (ctl.endpoints.get(e) for e in sb.endpoints) if ep is not None)
                  if net is not None]
        owners = [sb.id] if c is not None else [k for k in sandbox_keys
                                                if k.startswith(sb.id + "/")]
        published = [p for owner in owners for p in sbports.publisher.published(owner)]
        by_ep, stray = _place(published, joined)
        atts = [_attachment(net, ep, by_ep.get(ep.id)) for ep, net in joined]
        if c is not None:  # configured but not attached (created, stopped)
            atts += _configured(ctl, c, {a["NetworkID"] for a in atts})
        entries.append({"Name": sb.name, "Id": sb.id,
                        "Kind": "container" if c is not None else "sandbox",
                        "State": c["State"]["Status"] if c is not None else "",
                        "Networks": atts, "UnattachedPorts": stray})
    for c in containers.values():  # stopped: no sandbox, its configured networks
        if c["Id"] in ctl.sandboxes:
            continue
        entries.append({"Name": c["Name"], "Id": c["Id"], "Kind": "container",
                        "State": c["State"]["Status"], "Networks": _configured(ctl, c),
                        "UnattachedPorts": []})
    for ep in ctl.endpoints.values():  # joined for another runtime (dockerd), or unjoined
        net = ctl.networks.get(ep.network_id)
        if ep.sandbox_id is None and net is not None:
            entries.append({"Name": ep.name, "Id": ep.id, "Kind": "endpoint", "State": "",
                            "Networks": [_attachment(net, ep)], "UnattachedPorts": []})
    peers = {net.id: network_peers(ctl, net) for net in ctl.networks.values()
             if net.scope == "global"}
    return {"Networks": [_network(n) for n in ctl.networks.values()],
            "Containers": entries, "Peers": peers, "DaemonID": ctl.daemon_id}


def _remote(node: dict, nets: dict[str, dict], peers: dict[str, list[dict]]) -> None:
    """Fill a remote node's containers from the peer table (its endpoints on global
    networks; a sandbox name on several networks is one entry)."""
    by_name: dict[str, dict] = {}
    for net_id, holders in peers.items():
        for holder in holders:
            if holder["NodeID"] != node["ID"]:
                continue
            for rec in holder["Endpoints"]:
                name = rec["Name"] or rec["EndpointID"][:12]
                entry = by_name.setdefault(name, {
                    "Name": name, "Id": "", "Kind": "remote", "State": "", "Networks": [],
                    "UnattachedPorts": []})
                entry["Networks"].append({
                    "Network": nets[net_id]["Name"], "NetworkID": net_id,
                    "IPv4Address": rec["IPv4Address"], "IPv6Address": rec["IPv6Address"],
                    "MacAddress": rec["MacAddress"], "Ports": []})
    node["Containers"] = list(by_name.values())


def assemble(local: dict[str, Any], me: dict, known: list[dict], wanted: str | None,
             warnings: list[str]) -> dict[str, Any]:
    """The answer, from this node's part (_local), this node's head (`me`: Name, ID,
    Addr, Status, Self) and the cluster's node list (`known`). Nodes, networks and
    remote peers are keyed by id."""
    nets = {n["Id"]: n for n in local["Networks"]}
    nodes = {me["ID"]: me}
    for n in known:
        if n.get("Self") or n.get("ID") == me["ID"]:
            me["Status"] = n.get("Status") or me["Status"]
        else:
            nodes[n["ID"]] = {"Name": n["Name"], "ID": n["ID"], "Addr": n.get("Addr", ""),
                              "Status": n.get("Status", ""), "Self": False}
    for holders in local["Peers"].values():  # peers of nodes the store did not list
        for h in holders:
            nodes.setdefault(h["NodeID"], {"Name": h["Name"], "ID": h["NodeID"],
                                           "Addr": h["IP"], "Status": "Unknown",
                                           "Self": False})
    me["Containers"] = local["Containers"]
    me["Networks"] = [n["Id"] for n in sorted(local["Networks"],
                                              key=lambda n: (n["Name"], n["Id"]))]
    for node in nodes.values():
        if not node["Self"]:
            _remote(node, nets, local["Peers"])
            node["Networks"] = [i for i in sorted(
                {a["NetworkID"] for c in node["Containers"] for a in c["Networks"]},
                key=lambda i: (nets[i]["Name"], i))]
        node["Containers"].sort(key=lambda c: (c["Name"], c["Id"]))
        for c in node["Containers"]:
            c["Networks"].sort(key=lambda a: (a["Network"], a["NetworkID"]))
    chosen = sorted(nodes.values(), key=lambda n: (not n["Self"], n["Name"], n["ID"]))
    if wanted:
        chosen = [ids.resolve("node", wanted, chosen, lambda n: (n["ID"], n["Name"]))]
    shown = {i for n in chosen for i in n["Networks"]}
    networks = sorted((n for n in local["Networks"] if n["Id"] in shown),
                      key=lambda n: (n["Name"], n["Id"]))
    return {"Nodes": chosen, "Networks": networks, "Warnings": warnings}


def topology(app: App, wanted: str | None) -> dict[str, Any]:
    local = app.worker.run(_local, app)
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
    return assemble(local, me, known, wanted, warnings)


@route("GET", "/topology", worker=False)
def topology_get(app: App, req: Request) -> tuple[int, Any]:
    """The controller is read on the kernel worker; the cluster's node list (an etcd
    round trip) is fetched here, off it."""
    return 200, topology(app, req.query.get("node") or None)
