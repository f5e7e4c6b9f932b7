"""`cnet trace SRC DST`: one probe, followed everywhere it goes on this node.

Three sources of evidence, put together into one report:

- packet sockets on every interface of every namespace involved (the source, every
  local sandbox, the node itself, the overlays' namespaces), each filtered to the
  probe's identity: where the probe and its answer were seen, in time order;
- nftables trace events from the node's namespace (ingress.nftrace): every rule that
  matched the probe or its answer, with its verdict (DNAT, masquerade, an isolation
  drop, a published port's chain);
- after the probe, the lookups the kernel made, read back (cnm.osl.diag): the source's
  route and neighbour entry, the bridge's FDB entry for the next hop's MAC, an overlay
  VTEP's entry (MAC -> remote node), the node's route and neighbour for the destination.

The plan (which namespaces, what the interfaces are) comes from the controller; this
module knows nothing of it beyond the dataclasses below.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field

from cnet.capture.live import ANY, PACKET_OTHERHOST, LiveCapture, Packet, Target, decode
from cnet.capture.probe import Answer, Probe
from cnet.cnm.osl import diag
from cnet.cnm.osl.netlink import Netlink
from cnet.ingress import nftrace

GRACE = 0.15  # seconds to wait after the answer for the last copies and events


@dataclass(frozen=True)
class Place:
    """A namespace whose interfaces are watched."""

    netns: str
    label: str  # "web", "node", "overlay prod"
    interfaces: dict[str, str] = field(default_factory=dict)  # ifname -> what it is
    addresses: dict[str, frozenset[str]] = field(default_factory=dict)  # a sandbox's
    sandbox: bool = False  # an end host: a copy arriving here for its address is delivered


@dataclass(frozen=True)
class Bridge:
    """Where the source's interface is plugged in: a bridge (in the node's or an
    overlay's namespace), possibly with a VTEP port."""

    netns: str
    name: str
    vtep: str | None = None  # the VXLAN port of an overlay's bridge


@dataclass
class Plan:
    src: str
    src_netns: str
    dst: str  # as the user gave it
    dst_ip: str
    dst_name: str | None  # a container/sandbox name when known
    proto: str
    port: int | None
    places: list[Place]
    node_netns: str
    src_bridges: dict[str, Bridge] = field(default_factory=dict)  # SRC ifname -> its bridge
    node_bridges: dict[str, Bridge] = field(default_factory=dict)  # ifname -> bridge
    node_addrs: frozenset[str] = frozenset()  # the node's own addresses
    names: dict[str, str] = field(default_factory=dict)  # address -> container/node
    vxlan_ports: frozenset[int] = frozenset({4789})


@dataclass
class Observed:
    ident: int
    src_ip: str | None  # the probe's source address (None: SRC had no route)
    send_error: str | None
    answer: Answer
    packets: list[Packet]
    events: list[nftrace.TraceEvent]
    rules: dict[nftrace.RuleKey, str]
    events_lost: bool = False


def _bpf(plan: Plan, ident: int) -> str:
    vx = " or ".join(f"udp port {p}" for p in sorted(plan.vxlan_ports))
    if plan.proto == "icmp":
        own = "icmp or icmp6"
    else:
        own = f"{plan.proto} port {ident}"
    return f"({own}) or {vx}"


def observe(plan: Plan, timeout: float) -> Observed:
    """Send the probe with every observer listening; return what they saw."""
    with Probe(plan.src_netns, plan.proto, plan.dst_ip, plan.port) as probe:
        matches = nftrace.flow_matches(plan.proto, probe.ident, probe.src,
                                       ":" in plan.dst_ip)
        targets = [Target(p.netns, ANY, p.label) for p in plan.places]
        cap = LiveCapture(targets, _bpf(plan, probe.ident))
        with nftrace.TraceMonitor() as monitor, nftrace.TraceTable(matches):
            cap.open()
            try:
                error = probe.send()
                answer = Answer("error", error) if error else probe.wait(timeout)
                time.sleep(GRACE)
                events = monitor.collect(0.02)
                packets = cap.pending()
            finally:
                cap.close(wait=False)  # one RCU grace period per socket: not ours to wait
            rules = nftrace.rule_texts() if events else {}
            return Observed(probe.ident, probe.src, error, answer, packets, events, rules,
                            monitor.lost)


# -- who is the probe --------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Which packets are the probe's: its identifier (ICMP id or the probe's own port)
    and addresses. A request comes from SRC's address (or from a node address after
    masquerade, to the destination); an answer goes back to SRC's address (or to a
    node address, from the destination). Another flow that happens to use the same
    port number elsewhere is not the probe."""

    ident: int
    proto: str
    src: str | None
    far: frozenset[str]  # the destination, and its DNAT target once known
    node: frozenset[str]

    def role(self, f: dict) -> str | None:
        """`request`, `reply`, or None (not the probe's)."""
        if self.proto == "icmp":
            if f.get("icmp_id") != self.ident or f.get("protocol") not in ("ICMP", "ICMPv6"):
                return None
            role = "request" if "echo-request" in f["info"] else "reply"
        elif f.get("protocol") not in ("TCP", "UDP", "DNS"):
            return None
        elif f.get("sport") == self.ident:
            role = "request"
        elif f.get("dport") == self.ident:
            role = "reply"
        else:
            return None
        mine, other = (f["src"], f["dst"]) if role == "request" else (f["dst"], f["src"])
        if mine == self.src or (mine in self.node and other in self.far):
            return role
        return None


_ETHERTYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}


def _header_fields(ev: nftrace.TraceEvent) -> dict | None:
    """The trace event's packet as decode() describes a captured one (the event carries
    its network and transport headers: a blank Ethernet header makes it a frame)."""
    etype = _ETHERTYPE.get(ev.network[0] >> 4) if ev.network else None
    if etype is None:
        return None
    return decode(bytes(12) + etype + ev.network + ev.transport)


# -- the report ----------------------------------------------------------------------


def _hop(place: Place | None, pkt: Packet, f: dict, role: str) -> dict:
    what = place.interfaces.get(pkt.ifname, "") if place else ""
    flow = f"{f['src']} -> {f['dst']} {f['protocol']} {f['info']}".rstrip()
    hop = {"Time": 0.0, "Where": pkt.target.label,
           "Interface": pkt.ifname, "What": what,
           "Direction": "out" if pkt.outgoing else "in", "Packet": role, "Flow": flow,
           "To": f["dst"]}
    if place is not None and place.sandbox and pkt.pkttype == PACKET_OTHERHOST:
        hop["Flooded"] = True  # a copy the bridge flooded: not addressed to this host
    if "outer" in f:
        o = f["outer"]
        hop["Vxlan"] = {"Src": o["src"], "Dst": o["dst"], "VNI": o["vni"],
                        "SrcNode": o.get("src_name"), "DstNode": o.get("dst_name")}
        hop["Flow"] = f["info"]  # outer and inner flows, named
    return hop


_TCP_KEY = re.compile(r"\[(\w+)\] seq=(\d+) ack=(\d+)")


def _packet_key(role: str, f: dict) -> tuple:
    """What stays the same for one packet wherever it is seen (NAT changes addresses
    and ports, not TCP flags and sequence numbers, nor the ICMP sequence)."""
    m = _TCP_KEY.search(f.get("info", ""))
    return (role, m.groups() if m else f.get("info", "").split(" seq=")[-1])


def _rank(plan: Plan, place: Place | None, role: str, hop: dict) -> tuple[int, int]:
    """Where a copy sits on the packet's path: the sender's namespace, then the
    overlay's, then the node's, then the receiver's (reversed for an answer); inside
    a namespace, arriving before leaving, a bridge port before the bridge."""
    label = place.label if place else ""
    if label == plan.src:
        where = 0
    elif label.startswith("overlay "):
        where = 1
    elif label == "node":
        where = 2
    else:
        where = 3
    if role == "reply":
        where = {0: 3, 1: 2, 2: 1, 3: 0}[where]
    on_bridge = hop["What"].startswith(("bridge", "VTEP"))
    if hop["Direction"] == "in":
        inside = 1 if on_bridge else 0
    else:
        inside = 2 if on_bridge else 3
    return where, inside


def hops(plan: Plan, obs: Observed, who: Identity) -> list[dict]:
    """Every copy of the probe and its answer, in path order: copies of one packet
    grouped (the kernel's timestamps are not comparable across namespaces: a frame
    keeps the one it was given when it entered a namespace), packets in time order."""
    places = {p.netns: p for p in plan.places}
    seen: list[tuple[tuple, int, tuple[int, int], dict]] = []
    first: dict[tuple, int] = {}
    copies: dict[tuple, int] = {}
    for pkt in sorted(obs.packets, key=lambda p: p.ts_ns):
        f = decode(pkt.data, names=plan.names, vxlan_ports=plan.vxlan_ports)
        role = who.role(f)
        if role is None:
            continue
        place = places.get(pkt.target.netns)
        hop = _hop(place, pkt, f, role)
        # a retransmission is the same packet again: the n-th copy seen at one point
        # belongs to the n-th transmission
        point = (_packet_key(role, f), pkt.target.netns, pkt.ifname, hop["Direction"])
        copies[point] = copies.get(point, 0) + 1
        key = (*point[0], copies[point])
        first[key] = min(first.get(key, pkt.ts_ns), pkt.ts_ns)
        seen.append((key, pkt.ts_ns, _rank(plan, place, role, hop), hop))
    seen.sort(key=lambda s: (first[s[0]], s[2], s[1]))
    t0 = min(first.values(), default=0)
    for key, _ts, _where, hop in seen:
        hop["Time"] = round((first[key] - t0) / 1000, 1)
    return [s[3] for s in seen]


def rules(obs: Observed, who: Identity, ifnames: dict[int, str]) -> list[dict]:
    """The nftables rules (and deciding policies) the probe and its answer met, in
    order; marking tables (this trace's and any other running) left out."""
    role_of: dict[int, str] = {}
    out: list[dict] = []
    seen: dict[tuple, dict] = {}
    for ev in obs.events:
        if ev.table.startswith(nftrace.TRACE_TABLE_PREFIX):
            continue
        fields = _header_fields(ev)
        if fields is not None:
            role = who.role(fields)
            if role is None:
                role_of.pop(ev.id, None)  # the id now tags someone else's packet
                continue
            role_of[ev.id] = role
        role = role_of.get(ev.id)
        if role is None:
            continue
        if ev.type == "policy" and ev.verdict == "accept":
            continue  # no rule decided: the chain let it pass
        if ev.type == "return" or (ev.type == "rule" and ev.handle is None):
            continue
        family = nftrace.FAMILIES.get(ev.family, str(ev.family))
        text, comment = _comment(obs.rules.get((family, ev.table, ev.chain, ev.handle or -1),
                                               ""))
        if ev.type == "policy":
            text = f"policy {ev.verdict}"
        key = (role, ev.table, ev.chain, ev.handle, ev.verdict, ev.iif, ev.oif)
        if key in seen:  # the same rule for the next packet of the flow: counted
            seen[key]["Packets"] += 1
            continue
        out.append({"Packet": role, "Table": f"{family} {ev.table}",
                    "Chain": ev.chain, "Handle": ev.handle, "Rule": text, "Comment": comment,
                    "Verdict": ev.verdict + (f" {ev.target}" if ev.target else ""),
                    "In": ifnames.get(ev.iif or 0, ""), "Out": ifnames.get(ev.oif or 0, ""),
                    "Flow": (f"{fields['src']} -> {fields['dst']}" if fields else ""),
                    "Packets": 1})
        seen[key] = out[-1]
    return out


_COMMENT = re.compile(r'\s*comment "((?:[^"\\]|\\.)*)"$')


def _comment(text: str) -> tuple[str, str | None]:
    """A rule's text and its comment (cnet's fixed rules say why they exist)."""
    m = _COMMENT.search(text)
    return (text[:m.start()], m.group(1)) if m else (text, None)


def dnat_target(rule_list: list[dict], plan: Plan) -> str | None:
    """The destination address after DNAT, if a rule rewrote the probe's."""
    for r in rule_list:
        if r["Packet"] == "request" and r["Flow"]:
            dst = r["Flow"].split(" -> ")[1]
            if dst != plan.dst_ip:
                return dst
    return None


def identity(plan: Plan, obs: Observed, ifnames: dict[int, str]
             ) -> tuple[Identity, list[dict], str | None]:
    """Who the probe is, the rules it met, and its DNAT target (if any): the rules
    tell the DNAT target, which then also identifies the probe's copies after it."""
    who = Identity(obs.ident, plan.proto, obs.src_ip, frozenset({plan.dst_ip}),
                   plan.node_addrs)
    rule_list = rules(obs, who, ifnames)
    dnat = dnat_target(rule_list, plan)
    if dnat is not None:
        who = Identity(obs.ident, plan.proto, obs.src_ip, frozenset({plan.dst_ip, dnat}),
                       plan.node_addrs)
        rule_list = rules(obs, who, ifnames)
    return who, rule_list, dnat


# -- lookups ----------------------------------------------------------------------


def _mac_of(nl: Netlink, ip: str, ifindex: int | None) -> diag.Neighbour | None:
    for n in diag.neighbours(nl, ifindex):
        if n.ip == ip:
            return n
    return None


def _bridge_lookup(nl: Netlink, bridge: str, mac: str, names: dict[int, str]
                   ) -> tuple[str, diag.FdbEntry | None]:
    idx = nl.index(bridge)
    if idx is None:
        return f"bridge {bridge} is gone", None
    for e in diag.bridge_fdb(nl, bridge=idx):
        if e.mac == mac and e.dst is None:
            if e.port == idx or e.kind == "local":
                return f"bridge {bridge}: FDB {mac} is its own address -> the node's " \
                       "IP stack (routed)", e
            port = names.get(e.port, str(e.port))
            return f"bridge {bridge}: FDB {mac} -> port {port} ({e.kind})", e
    return f"bridge {bridge}: FDB has no entry for {mac} (flooded to every port)", None


def lookups(kernel_handle, plan: Plan, dnat: str | None) -> tuple[list[str], bool]:
    """The forwarding decisions along the request's path, read back from the kernel
    after the probe; and whether the source had a route at all.

    `kernel_handle(netns)` returns the Netlink handle of a namespace."""
    out: list[str] = []
    src = kernel_handle(plan.src_netns)
    src_names = {link.index: link.ifname for link in src.links()}
    r = diag.route_get(src, plan.dst_ip)
    if r.type in ("unreachable", "prohibit", "blackhole"):
        out.append(f"route in {plan.src}: {plan.dst_ip} is {r.type} (no route)")
        return out, False
    dev = src_names.get(r.oif or 0, "?")
    hop_ip = r.gateway or plan.dst_ip
    out.append(f"route in {plan.src}: {plan.dst_ip} "
               + (f"via {r.gateway} " if r.gateway else "") + f"dev {dev} src {r.prefsrc}")
    neigh = _mac_of(src, hop_ip, r.oif)
    if neigh is None or not neigh.mac:
        out.append(f"neighbour in {plan.src}: {hop_ip} unresolved"
                   + (f" ({neigh.state})" if neigh else ""))
        return out, True
    out.append(f"neighbour in {plan.src}: {hop_ip} is {neigh.mac} ({neigh.state})")
    bridge = plan.src_bridges.get(dev)  # where the route's interface is plugged in
    if bridge is None:
        return out, True
    nl = kernel_handle(bridge.netns)
    names = {link.index: link.ifname for link in nl.links()}
    text, entry = _bridge_lookup(nl, bridge.name, neigh.mac, names)
    out.append(text)
    if entry is not None and bridge.vtep and names.get(entry.port) == bridge.vtep:
        for e in diag.bridge_fdb(nl, port=entry.port):
            if e.mac == neigh.mac and e.dst:
                node = plan.names.get(e.dst)
                out.append(f"VTEP {bridge.vtep}: {neigh.mac} -> remote VTEP {e.dst}"
                           + (f" (node {node})" if node else ""))
    if entry is not None and (entry.port == nl.index(bridge.name)
                              or entry.kind == "local") and bridge.netns == plan.node_netns:
        out += _node_lookups(kernel_handle(plan.node_netns), plan, dnat or plan.dst_ip)
    return out, True


def _node_lookups(nl: Netlink, plan: Plan, dst: str) -> list[str]:
    """The node routes the probe: its route, neighbour and bridge entry for `dst`."""
    out = []
    if dst != plan.dst_ip:
        out.append(f"DNAT: {plan.dst_ip} -> {dst}")
    names = {link.index: link.ifname for link in nl.links()}
    r = diag.route_get(nl, dst)
    if r.type == "local":
        out.append(f"route on the node: {dst} is a local address (delivered to the node)")
        return out
    if r.type != "unicast":
        out.append(f"route on the node: {dst} is {r.type}")
        return out
    dev = names.get(r.oif or 0, "?")
    hop_ip = r.gateway or dst
    out.append(f"route on the node: {dst} " + (f"via {r.gateway} " if r.gateway else "")
               + f"dev {dev}")
    neigh = _mac_of(nl, hop_ip, r.oif)
    if neigh is None or not neigh.mac:
        out.append(f"neighbour on the node: {hop_ip} unresolved")
        return out
    out.append(f"neighbour on the node: {hop_ip} is {neigh.mac} ({neigh.state})")
    bridge = plan.node_bridges.get(dev)
    if bridge is not None:
        out.append(_bridge_lookup(nl, bridge.name, neigh.mac, names)[0])
    return out


# -- verdict ------------------------------------------------------------------------


def _drop(rule_list: list[dict], packet: str) -> str | None:
    for r in rule_list:
        if r["Packet"] == packet and r["Verdict"] == "drop":
            where = f"{r['Table']} {r['Chain']}"
            if r["Rule"].startswith("policy"):
                return f"{where} {r['Rule']}"
            why = f" ({r['Comment']})" if r["Comment"] else ""
            return f"{where} rule {r['Handle']}{why}: {r['Rule']}"
    return None


def verdict(plan: Plan, places: list[Place], obs: Observed, hop_list: list[dict],
            rule_list: list[dict], routed: bool, dnat: str | None) -> tuple[str, bool]:
    """One line (delivered / dropped by RULE / no route / unreachable / no answer) and
    whether the probe was delivered: seen arriving at a local sandbox on an interface
    holding the destination (or DNAT target) address, or answered by the destination."""
    if not routed or obs.src_ip is None:
        why = f" ({obs.send_error})" if obs.send_error else ""
        return f"no route: {plan.src} has no route to {plan.dst_ip}{why}", False
    dropped = _drop(rule_list, "request")
    if dropped:
        return f"dropped by {dropped}", False
    targets = {plan.dst_ip} | ({dnat} if dnat else set())
    holders = {p.label: p for p in places if p.sandbox}
    arrived = [h for h in hop_list if h["Packet"] == "request" and h["Direction"] == "in"
               and not h.get("Flooded") and h["To"] in targets and h["Where"] in holders
               and h["To"] in holders[h["Where"]].addresses.get(h["Interface"], ())]
    answer = obs.answer
    took = f" after {answer.rtt_ms} ms" if answer.rtt_ms is not None else ""
    if arrived:
        where = f"{arrived[0]['Where']} ({arrived[0]['Interface']})"
        if answer.answered:
            return f"delivered to {where}; answer: {answer.what}{took}", True
        reply_drop = _drop(rule_list, "reply")
        if reply_drop:
            return f"delivered to {where}; its answer was dropped by {reply_drop}", True
        return f"delivered to {where}; answer: {answer.what}", True
    if answer.answered:
        who = plan.dst_name or plan.dst_ip
        return f"delivered: {who} answered with {answer.what}{took}", True
    if answer.kind == "error":
        return f"unreachable: {answer.what}", False
    last = [h for h in hop_list if h["Packet"] == "request"]
    seen = f"; last seen {last[-1]['Direction']} on {last[-1]['Where']} " \
           f"{last[-1]['Interface']}" if last else "; never seen leaving"
    return f"no answer from {plan.dst_name or plan.dst_ip}{seen}", False


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False

