"""POST /trace: send a probe from a sandbox and report its path (cnet.capture.trace).

The plan (which namespaces to watch, what each interface is, where the source is
plugged in) and the read-back lookups run on the kernel worker; the probe itself, which
waits for an answer, runs on the request's thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cnet.capture import trace
from cnet.capture.live import CaptureError
from cnet.cnm.errors import CnetError, Conflict, InvalidParameter, NotFound
from cnet.cnm.osl import diag
from cnet.daemon.api import Request, route
from cnet.daemon.app import App
from cnet.daemon.netinfo import (
    OVERLAY_BRIDGE,
    OVERLAY_VTEP,
    address_names,
    ip_of,
    node_names,
    overlay_netns,
    vxlan_ports,
)
from cnet.ingress.nftrace import TraceError

log = logging.getLogger(__name__)

MAX_TIMEOUT = 30.0
QTYPE_A, QTYPE_AAAA = 1, 28


def _parse(body: dict) -> tuple[str, str, str, int | None, float]:
    src, dst = body.get("Source") or "", body.get("Destination") or ""
    if not src or not dst:
        raise InvalidParameter("trace needs a source and a destination")
    proto = (body.get("Protocol") or "icmp").lower()
    if proto not in ("icmp", "tcp", "udp"):
        raise InvalidParameter(f'invalid protocol "{proto}" (icmp, tcp or udp)')
    port = body.get("Port")
    if proto == "icmp":
        if port:
            raise InvalidParameter("--port goes with --proto tcp or udp")
        port = None
    else:
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidParameter(f"--proto {proto} needs --port N (1-65535)")
    timeout = body.get("Timeout", 2.0)
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidParameter(f"timeout must be between 0 and {MAX_TIMEOUT:g} seconds")
    return src, dst, proto, port, float(timeout)


def _destination(app: App, src_sb, dst: str) -> tuple[str, str | None]:
    """DST as an address (and a name): an address as is; a local sandbox or container
    by its address on a network it shares with SRC (else its first); any other name
    as SRC's own DNS would answer it (remote overlay peers included)."""
    ctl = app.controller
    if trace.is_address(dst):
        return dst, None
    src_nets = {ctl.endpoints[e].network_id for e in src_sb.endpoints if e in ctl.endpoints}
    try:
        sb = ctl.sandbox(dst)
    except NotFound:
        sb = None
    if sb is not None:
        eps = [ctl.endpoints[e] for e in sb.endpoints if e in ctl.endpoints]
        eps.sort(key=lambda ep: ep.network_id not in src_nets)
        for ep in eps:
            if ep.ipv4 or ep.ipv6:
                return ip_of(ep.ipv4 or ep.ipv6) or "", sb.name
        raise InvalidParameter(f'"{sb.name}" has no address to trace to')
    if app.dns is not None:
        for qtype in (QTYPE_A, QTYPE_AAAA):
            found = app.dns.names.resolve(frozenset(src_nets), dst, qtype)
            if found:
                return found[0], dst
    raise NotFound(f'no such container, sandbox or address: "{dst}" (as seen from '
                   f'{src_sb.name})')


def _interfaces(app: App, nl, net_label: dict[str, str]) -> dict[str, str]:
    """ifname -> what it is, for cnet's own links (found by their alias mark)."""
    ctl = app.controller
    mine = f"cnet:{ctl.ctx.daemon_id}:"
    out: dict[str, str] = {}
    for link in nl.links():
        obj = (link.alias or "").removeprefix(mine) if (link.alias or "").startswith(
            mine) else None
        if obj in ctl.networks:
            what = net_label.get(link.ifname) or f"bridge of {ctl.networks[obj].name}"
        elif obj in ctl.endpoints:
            ep = ctl.endpoints[obj]
            sb = ctl.sandboxes.get(ep.sandbox_id or "")
            net = ctl.networks.get(ep.network_id)
            what = (f"port of {sb.name if sb else '?'} {ep.ifname or ''} on "
                    f"{net.name if net else '?'}")
        elif link.ifname in net_label:
            what = net_label[link.ifname]
        else:
            what = "lo" if link.ifname == "lo" else f"not cnet's: {link.kind or 'link'}"
        out[link.ifname] = what
    return out


def _has_netns(kernel, sb) -> bool:
    """The sandbox's namespace is there (a runtime's, for an external sandbox)."""
    if sb.external:
        return kernel.runtime_netns_problem(sb.key) is None
    return kernel.is_netns(sb.key)


def _sandbox_place(ctl, sb) -> trace.Place:
    what: dict[str, str] = {}
    addrs: dict[str, frozenset[str]] = {}
    for ep_id in sb.endpoints:
        ep = ctl.endpoints.get(ep_id)
        net = ctl.networks.get(ep.network_id) if ep else None
        if ep and ep.ifname and net:
            mine = [a for a in (ip_of(ep.ipv4), ip_of(ep.ipv6)) if a]
            what[ep.ifname] = f"{net.name} {' '.join(mine)}".rstrip()
            addrs[ep.ifname] = frozenset(mine)
    return trace.Place(sb.key, sb.name, what, addrs, sandbox=True)


def make_plan(app: App, src: str, dst: str, proto: str, port: int | None,
              nodes: dict[str, str]) -> trace.Plan:
    ctl = app.controller
    kernel = ctl.ctx.netlink
    try:
        src_sb = ctl.sandbox(src)
    except NotFound:
        raise NotFound(f'no such container or sandbox: "{src}" (a running one is needed '
                       "to send from)") from None
    if not _has_netns(kernel, src_sb):
        raise Conflict(f"sandbox {src_sb.name} has no network namespace")
    dst_ip, dst_name = _destination(app, src_sb, dst)
    names = address_names(app)
    for addr, name in nodes.items():
        names.setdefault(addr, name)
    node_path = kernel.host_netns_path
    places = [_sandbox_place(ctl, src_sb)]
    places += [_sandbox_place(ctl, sb) for sb in ctl.sandboxes.values()
               if sb.id != src_sb.id and _has_netns(kernel, sb)]
    src_bridges: dict[str, trace.Bridge] = {}
    node_bridges: dict[str, trace.Bridge] = {}
    node_labels: dict[str, str] = {}
    for net in ctl.networks.values():
        br = net.driver_state.get("bridge")
        if net.driver == "bridge" and br:
            node_bridges[br] = trace.Bridge(node_path, br)
            node_labels[br] = f"bridge of {net.name}"
    for ep_id in src_sb.endpoints:
        ep = ctl.endpoints.get(ep_id)
        net = ctl.networks.get(ep.network_id) if ep else None
        if net is None or ep is None or not ep.ifname:
            continue
        candidate = None
        if net.driver == "overlay":
            path = overlay_netns(app, net)
            if path is not None:
                vni = net.driver_state.get("vni")
                labels = {OVERLAY_BRIDGE: f"bridge of {net.name}",
                          OVERLAY_VTEP: f"VTEP of {net.name} (VNI {vni})"}
                nl = kernel.sandbox(path)
                places.append(trace.Place(path, f"overlay {net.name}",
                                          _interfaces(app, nl, labels)))
                candidate = trace.Bridge(path, OVERLAY_BRIDGE, OVERLAY_VTEP)
        elif net.driver_state.get("bridge") in node_bridges:
            candidate = node_bridges[net.driver_state["bridge"]]
        if candidate is not None:
            src_bridges[ep.ifname] = candidate
    places.append(trace.Place(node_path, "node", _interfaces(app, kernel.host, node_labels)))
    node_addrs = frozenset(cidr.split("/")[0] for cidr in diag.addresses(kernel.host))
    return trace.Plan(src=src_sb.name, src_netns=src_sb.key, dst=dst, dst_ip=dst_ip,
                      dst_name=dst_name, proto=proto, port=port, places=places,
                      node_netns=node_path, src_bridges=src_bridges,
                      node_bridges=node_bridges, node_addrs=node_addrs, names=names,
                      vxlan_ports=frozenset(vxlan_ports(app)))


def analyse(app: App, plan: trace.Plan, obs: trace.Observed) -> dict[str, Any]:
    kernel = app.controller.ctx.netlink

    def handle(path: str):
        return kernel.host if path == plan.node_netns else kernel.sandbox(path)

    ifnames = {link.index: link.ifname for link in kernel.host.links()}
    who, rule_list, dnat = trace.identity(plan, obs, ifnames)
    hop_list = trace.hops(plan, obs, who)
    steps, routed = trace.lookups(handle, plan, dnat)
    line, delivered = trace.verdict(plan, plan.places, obs, hop_list, rule_list, routed,
                                    dnat)
    return {
        "Source": plan.src, "Destination": plan.dst, "DestinationIP": plan.dst_ip,
        "DestinationName": plan.dst_name, "Protocol": plan.proto, "Port": plan.port,
        "ProbeId": obs.ident, "ProbeSource": obs.src_ip, "Lookups": steps,
        "Hops": hop_list, "Rules": rule_list,
        "Answer": {"Answered": obs.answer.answered, "Kind": obs.answer.kind,
                   "What": obs.answer.what,
                   "RttMs": obs.answer.rtt_ms},
        "EventsLost": obs.events_lost, "Delivered": delivered, "Verdict": line,
    }


@route("POST", "/trace", worker=False)
def trace_probe(app: App, req: Request) -> tuple[int, Any]:
    src, dst, proto, port, timeout = _parse(req.body or {})
    t0 = time.perf_counter()
    plan = app.worker.run(make_plan, app, src, dst, proto, port, node_names(app))
    t1 = time.perf_counter()
    try:
        obs = trace.observe(plan, timeout)
    except (CaptureError, TraceError) as exc:
        raise CnetError(f"trace failed: {exc}") from None
    except OSError as exc:  # the source's namespace went away under us
        raise CnetError(f"trace failed: cannot send from {plan.src}: "
                        f"{exc.strerror or exc}") from None
    t2 = time.perf_counter()
    report = app.worker.run(analyse, app, plan, obs)
    log.debug("trace %s -> %s: plan %.1f ms, probe %.1f ms, analysis %.1f ms", src, dst,
              (t1 - t0) * 1000, (t2 - t1) * 1000, (time.perf_counter() - t2) * 1000)
    return 200, report
