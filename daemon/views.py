"""JSON views of the model with Docker's field names."""

from __future__ import annotations

from datetime import UTC, datetime

from cnet.cnm import ids, timefmt
from cnet.cnm.controller import GATEWAY_NETWORK, Controller
from cnet.cnm.globalscope import VNI_OPTION
from cnet.cnm.model import Endpoint, Network, Sandbox


def network_view(ctl: Controller, net: Network) -> dict:
    containers = {}
    for ep in ctl.network_endpoints(net.id):
        sb = ctl.sandboxes.get(ep.sandbox_id or "")
        key = sb.id if sb else f"ep-{ep.id}"
        containers[key] = {
            "Name": sb.name if sb else ep.name,
            "EndpointID": ep.id,
            "MacAddress": ep.mac or "",
            "IPv4Address": ep.ipv4 or "",
            "IPv6Address": ep.ipv6 or "",
        }
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": net.scope,
        "Driver": net.driver,
        "EnableIPv6": net.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": {},
                 "Config": [p.to_docker() for p in net.pools]},
        "Internal": net.internal,
        "Attachable": net.attachable,
        "Ingress": False,
        "Containers": containers,
        "Options": _network_options(net),
        "Labels": dict(net.labels),
        **_network_status(ctl, net),
    }


def _network_status(ctl: Controller, net: Network) -> dict:
    """The driver's live report (a macvlan parent's state), as "Status" when it has one."""
    status = ctl.driver(net).status(net)
    return {"Status": status} if status else {}


def network_warnings(ctl: Controller) -> list[str]:
    """`cnet info`'s warnings: what networks report as wrong (e.g. a missing parent)."""
    out = []
    for net in sorted(ctl.networks.values(), key=lambda n: n.name):
        warning = ctl.driver(net).status(net).get("Warning")
        if warning:
            out.append(warning)
    return out


def _network_options(net: Network) -> dict[str, str]:
    opts = dict(net.options)
    if "vni" in net.driver_state:  # Docker shows an overlay's VNI this way
        opts[VNI_OPTION] = str(net.driver_state["vni"])
    return opts


def network_peers(ctl: Controller, net: Network) -> list[dict]:
    """`network inspect --verbose` of a global network: the nodes that hold endpoints on
    it (Docker's Peers: Name, IP), each with its cluster node id (NodeID: names need not
    be unique, the default one is the hostname) and those endpoints (both cnet's)."""
    nodes: dict[str, dict] = {}

    def node(node_id: str, name: str, addr: str) -> dict:
        return nodes.setdefault(node_id, {"Name": name, "IP": addr, "NodeID": node_id,
                                          "Endpoints": []})

    def entry(rec: dict) -> dict:
        return {"Name": rec.get("sandbox", ""), "EndpointID": rec["endpoint"],
                "MacAddress": rec.get("mac") or "", "IPv4Address": rec.get("ipv4") or "",
                "IPv6Address": rec.get("ipv6") or ""}

    glob = ctl.glob
    if glob is None:
        return []
    for ep in ctl.network_endpoints(net.id):
        if ep.sandbox_id:
            rec = glob.peer_record(ep, ctl.sandboxes[ep.sandbox_id])
            node(rec["node"], rec["node_name"], rec["vtep"])["Endpoints"].append(entry(rec))
    for rec in glob.peers.get(net.id, {}).values():
        node(rec["node"], rec.get("node_name", ""), rec["vtep"])["Endpoints"].append(entry(rec))
    return sorted(nodes.values(), key=lambda n: (n["Name"], n["NodeID"]))


def endpoint_settings(ctl: Controller, ep: Endpoint) -> dict:
    v4 = (ep.ipv4 or "/").split("/")
    v6 = (ep.ipv6 or "/").split("/")
    return {
        "NetworkID": ep.network_id,
        "EndpointID": ep.id,
        "Gateway": ep.gateway4 or "",
        "IPAddress": v4[0],
        "IPPrefixLen": int(v4[1]) if v4[1] else 0,
        "IPv6Gateway": ep.gateway6 or "",
        "GlobalIPv6Address": v6[0],
        "GlobalIPv6PrefixLen": int(v6[1]) if v6[1] else 0,
        "IPv6Address": v6[0],
        "MacAddress": ep.mac or "",
        "Aliases": list(ep.aliases),
        "InterfaceName": ep.ifname or "",
    }


def endpoint_view(ctl: Controller, ep: Endpoint) -> dict:
    out = endpoint_settings(ctl, ep)
    out.update({"Id": ep.id, "Name": ep.name, "SandboxID": ep.sandbox_id or ""})
    return out


def sandbox_view(ctl: Controller, sb: Sandbox) -> dict:
    networks = {}
    for ep_id in sb.endpoints:
        ep = ctl.endpoints[ep_id]
        networks[ctl.networks[ep.network_id].name] = endpoint_settings(ctl, ep)
    return {
        "Id": sb.id,
        "Name": sb.name,
        "Created": sb.created,
        "Key": sb.key,
        "External": sb.external,
        "Labels": dict(sb.labels),
        "Networks": networks,
    }


def container_view(ctl: Controller, c: dict, summary: bool = False) -> dict:
    """Docker's container inspect (or, with summary, its `ps` list entry)."""
    sb = ctl.sandboxes.get(c["Id"])
    networks = {}
    attached = set()
    for ep_id in sb.endpoints if sb else []:
        ep = ctl.endpoints[ep_id]
        name = ctl.networks[ep.network_id].name
        attached.add(ep.network_id)
        if name != GATEWAY_NETWORK:  # as Docker hides docker_gwbridge
            networks[name] = endpoint_settings(ctl, ep)
    for ref, cfg in (c.get("Networks") or {}).items():  # configured, not attached (stopped)
        net = _network_or_none(ctl, ref)  # an id (an older record: a name or id prefix)
        if net is not None and net.id in attached:
            continue
        name = net.name if net is not None else ref
        if name not in networks:
            networks[name] = {"NetworkID": net.id if net else "", "EndpointID": "",
                              "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                              "MacAddress": "", "Aliases": list((cfg or {}).get("Aliases")
                                                                 or [])}
    ports = c.get("Ports") or {}
    if summary:
        return {
            "Id": c["Id"], "Names": ["/" + c["Name"]], "Image": c["Config"]["Image"],
            "ImageID": c["Image"], "Command": " ".join(c["Config"]["Entrypoint"]
                                                       + c["Config"]["Cmd"]),
            "Created": c["Created"], "State": c["State"]["Status"],
            "Status": _status_text(c), "Ports": [
                {"PrivatePort": int(k.split("/")[0]), "Type": k.split("/")[1],
                 "IP": b["HostIp"], "PublicPort": int(b["HostPort"])}
                for k, bs in ports.items() for b in bs or []],
            "Labels": c["Config"]["Labels"],
            "NetworkSettings": {"Networks": networks},
        }
    return {
        "Id": c["Id"],
        "Name": "/" + c["Name"],
        "Created": c["Created"],
        "Path": (c["Config"]["Entrypoint"] + c["Config"]["Cmd"])[:1][0],
        "Args": (c["Config"]["Entrypoint"] + c["Config"]["Cmd"])[1:],
        "State": dict(c["State"]),
        "Image": c["Image"],
        "RestartCount": c["RestartCount"],
        "Config": dict(c["Config"]),
        "HostConfig": dict(c["HostConfig"]),
        "NetworkSettings": {"Networks": networks, "Ports": ports,
                            "SandboxKey": sb.key if sb else ""},
    }


def _network_or_none(ctl: Controller, ref: str) -> Network | None:
    """The network a container record's key stands for (None: deleted since); the
    runtime's rule (ids.resolve_stored), so that inspect shows what start would use."""
    return ids.resolve_stored(ref, ctl.networks.values(), lambda n: (n.id, n.name))


def _ago(ts: str) -> str:
    """Docker's human duration of the time since `ts` (RFC 3339, UTC)."""
    then = timefmt.parse(ts)
    if then is None:
        return ""
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 1:
        return "Less than a second"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = secs // size
            if n == 1:
                return f"About {'an' if unit == 'hour' else 'a'} {unit}"
            return f"{n} {unit}s"
    return f"{secs} second{'s' if secs > 1 else ''}"


def _status_text(c: dict) -> str:
    st = c["State"]
    if st["Running"]:
        return f"Up {_ago(st['StartedAt'])}"
    if st["Status"] == "restarting":
        return f"Restarting ({st['ExitCode']}) {_ago(st['FinishedAt'])} ago"
    if st["Status"] == "created":
        return "Created"
    return f"Exited ({st['ExitCode']}) {_ago(st['FinishedAt'])} ago"
