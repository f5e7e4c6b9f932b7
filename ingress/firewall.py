"""The one nftables table cnetd owns: ``table inet cnet``.

All nftables access in cnet goes through this module, as libnftables JSON batches
(the ``nftables`` binding from python3-nftables; never an ``nft`` subprocess). Every
change is one atomic batch. The ruleset follows kube-proxy's nftables mode: a
network is two chains of its own plus one element in each shared set/map, so adding
or removing a network never rewrites another network's rules::

    table inet cnet {
      set bridges { type ifname; }                     # every cnet bridge
      set masq { type ifname; }                        # bridges whose egress is SNATed
      map fwd_in  { type ifname : verdict; }           # iifname br -> jump net-<id>-out
      map fwd_out { type ifname : verdict; }           # oifname br -> jump net-<id>-in
      chain prerouting  { nat, dstnat }                # port publishing (later)
      chain output      { nat, -100 }                  # port publishing (later)
      chain forward     { filter, policy accept; iifname vmap @fwd_in; oifname vmap @fwd_out }
      chain postrouting { nat, srcnat; iifname @masq oifname != @bridges masquerade }
      chain net-<id12>-out { ... }                     # see render_chains
      chain net-<id12>-in  { ... }
    }

Masquerade is keyed by the bridge a packet was forwarded in from, not by its source
subnet: forwarded container traffic always enters through its network's bridge, one
hash-set element covers IPv4 and IPv6 alike, and there is no interval set. That matters
for cost, not only for tidiness: libnftables (1.0.6) fills its cache before every batch
that adds or deletes an element or a rule, and that fill lists the elements of *every*
interval set in the table (to check overlaps), whichever set the batch touches; with
per-network subnets in an interval set every network create/rm paid for all the others.
What still grows with the number of networks is outside our control: libnftables lists
every chain before such a batch, and the kernel walks every chain at commit (and the
jump graph when a verdict is added). `bench/nft_batch.py` measures each part.

Port publishing (a later issue) goes in prerouting/output as
``ip daddr . meta l4proto . th dport vmap @...`` verdict maps; nothing here yet.

Base chains always have policy accept: we do not own the host's firewall policy, we
only drop what isolation requires. The rendering functions are pure (lists of
libnftables JSON commands) so they can be tested without a kernel; `Firewall` is
the small part that talks to the kernel.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FAMILY = "inet"
TABLE = "cnet"
SET_BRIDGES = "bridges"
SET_MASQ = "masq"
MAP_FWD_IN = "fwd_in"
MAP_FWD_OUT = "fwd_out"
MAP_PUB_ANY = "pub_any"  # l4proto . port -> container ip . port (all host addresses)
MAP_PUB_IP = "pub_ip"  # host ip . l4proto . port -> container ip . port

# Numeric chain priorities: libnftables 1.0.6's JSON parser takes integers only.
PRIO_FILTER = 0
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100

Cmd = dict[str, Any]
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

_T: dict[str, str] = {"family": FAMILY, "table": TABLE}
_IFNAME_RE = re.compile(r"^[^\s/:\"']{1,15}$")
_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")


class FirewallError(Exception):
    """libnftables refused a batch; the message is the first line of its error."""


@dataclass(frozen=True)
class NetworkRules:
    """What the firewall needs to know about one network (validated on creation).

    The subnets are validated but the rules do not use them: isolation and masquerade
    are keyed by the bridge (see the module docstring).
    """

    id: str
    bridge: str
    subnets4: tuple[str, ...]
    subnets6: tuple[str, ...]
    internal: bool  # nothing in or out beyond the bridge, no masquerade
    icc: bool  # routed traffic between this network's endpoints allowed
    masquerade: bool  # SNAT egress (ignored when internal)

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.id):
            raise ValueError(f"invalid network id {self.id!r}")
        if not _IFNAME_RE.match(self.bridge):
            raise ValueError(f"invalid bridge name {self.bridge!r}")
        for subnets, version in ((self.subnets4, 4), (self.subnets6, 6)):
            if isinstance(subnets, str):
                raise ValueError(f"subnets{version} must be a tuple of strings")
            for s in subnets:
                if _net(s).version != version:
                    raise ValueError(f"{s!r} is not an IPv{version} subnet")

    @property
    def chain_out(self) -> str:
        """Chain for packets forwarded in from this network's bridge."""
        return f"net-{self.id[:12]}-out"

    @property
    def chain_in(self) -> str:
        """Chain for packets forwarded out through this network's bridge."""
        return f"net-{self.id[:12]}-in"

    @property
    def masquerades(self) -> bool:
        return self.masquerade and not self.internal


def _net(cidr: str) -> IPNet:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as e:
        raise ValueError(f"invalid subnet {cidr!r}: {e}") from None


# --- JSON expression helpers -------------------------------------------------------


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _rule(chain: str, *expr: dict) -> Cmd:
    return {"add": {"rule": {**_T, "chain": chain, "expr": list(expr)}}}


def _verdict(v: str) -> dict:
    return {v: None}


def _chain(name: str, **hook: Any) -> dict:
    return {"chain": {**_T, "name": name, **hook}}


def _base_chain(name: str, type_: str, hook: str, prio: int) -> Cmd:
    return {"add": _chain(name, type=type_, hook=hook, prio=prio, policy="accept")}


def _jump(target: str) -> dict:
    return {"jump": {"target": target}}


def _elements(name: str, elems: list[Any]) -> dict:
    return {"element": {**_T, "name": name, "elem": elems}}


def _absent(name: str, key: str) -> list[Cmd]:
    """Make sure `key` is not in set `name`, whether it was or not (add, then delete)."""
    return [{"add": _elements(name, [key])}, {"delete": _elements(name, [key])}]


# --- rendering -----------------------------------------------------------------------


def render_base() -> list[Cmd]:
    """Table, shared sets/maps, base chains and their (fixed) rules."""
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"set": {**_T, "name": SET_BRIDGES, "type": "ifname"}}},
        {"add": {"set": {**_T, "name": SET_MASQ, "type": "ifname"}}},
        {"add": {"map": {**_T, "name": MAP_FWD_IN, "type": "ifname", "map": "verdict"}}},
        {"add": {"map": {**_T, "name": MAP_FWD_OUT, "type": "ifname", "map": "verdict"}}},
        _base_chain("prerouting", "nat", "prerouting", PRIO_DSTNAT),
        _base_chain("output", "nat", "output", PRIO_DSTNAT),
        _base_chain("forward", "filter", "forward", PRIO_FILTER),
        _base_chain("postrouting", "nat", "postrouting", PRIO_SRCNAT),
        *render_publishing(),
        _rule("forward", {"vmap": {"key": _meta("iifname"), "data": f"@{MAP_FWD_IN}"}}),
        _rule("forward", {"vmap": {"key": _meta("oifname"), "data": f"@{MAP_FWD_OUT}"}}),
        # Forwarded in from a masquerading network's bridge, leaving through anything
        # but a cnet bridge (IPv4 and IPv6 alike).
        _rule(
            "postrouting",
            _match(_meta("iifname"), f"@{SET_MASQ}"),
            _match(_meta("oifname"), f"@{SET_BRIDGES}", "!="),
            {"masquerade": None},
        ),
    ]


_L4PROTO = _meta("l4proto")
_DPORT = {"payload": {"protocol": "th", "field": "dport"}}
_IPV4 = _match(_meta("nfproto"), "ipv4")


def render_publishing() -> list[Cmd]:
    """Published ports (kube-proxy style: one verdict-map lookup per packet, whatever the
    number of ports; each binding jumps to its own one-rule DNAT chain).

    DNAT in prerouting (from outside and from containers) and in output (from the
    host itself, 127.0.0.1 included); masquerade hairpin traffic (a container to a
    port published on its own bridge) and loopback-sourced traffic, so that replies
    come back through the host. Forwarding of DNAT'd packets into a bridge is
    accepted by the network's `-in` chain (`ct status dnat`). libnftables 1.0.6
    crashes on NAT with concatenated map data, hence chains rather than a dnat map.
    """
    pub_maps = [
        {"add": {"map": {**_T, "name": MAP_PUB_ANY, "type": ["inet_proto", "inet_service"],
                         "map": "verdict"}}},
        {"add": {"map": {**_T, "name": MAP_PUB_IP,
                         "type": ["ipv4_addr", "inet_proto", "inet_service"],
                         "map": "verdict"}}},
    ]
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    rules = []
    for chain in ("prerouting", "output"):
        rules.append(_rule(chain, _IPV4, local, {"vmap": {
            "key": {"concat": [_L4PROTO, _DPORT]}, "data": f"@{MAP_PUB_ANY}"}}))
        rules.append(_rule(chain, _IPV4, {"vmap": {
            "key": {"concat": [daddr, _L4PROTO, _DPORT]}, "data": f"@{MAP_PUB_IP}"}}))
    rules.append(_rule(
        "postrouting", _match({"ct": {"key": "status"}}, "dnat", "in"),
        _match(_meta("iifname"), f"@{SET_BRIDGES}"),
        _match(_meta("oifname"), f"@{SET_BRIDGES}"), {"masquerade": None}))
    rules.append(_rule(
        "postrouting",
        _match({"payload": {"protocol": "ip", "field": "saddr"}},
               {"prefix": {"addr": "127.0.0.0", "len": 8}}),
        _match(_meta("oifname"), f"@{SET_BRIDGES}"), {"masquerade": None}))
    return pub_maps + rules


PortEntry = tuple[tuple[str, str, int], str, int]  # ((proto, host ip or "", port), ip, port)


def _pub_chain(proto: str, host_ip: str, port: int) -> str:
    return f"pub-{proto}-{host_ip or 'any'}-{port}"


def render_ports(op: str, entries: list[PortEntry]) -> list[Cmd]:
    """`add` or `delete` published ports: per binding a DNAT chain and one map element."""
    cmds: list[Cmd] = []
    for (proto, host_ip, host_port), cip, cport in entries:
        chain = _pub_chain(proto, host_ip, host_port)
        if host_ip:
            elem = _elements(MAP_PUB_IP, [[{"concat": [host_ip, proto, host_port]},
                                            _jump(chain)]])
        else:
            elem = _elements(MAP_PUB_ANY, [[{"concat": [proto, host_port]}, _jump(chain)]])
        if op == "add":
            cmds += [
                {"add": _chain(chain)},
                {"flush": _chain(chain)},
                _rule(chain, _match(_L4PROTO, proto),
                      {"dnat": {"family": "ip", "addr": cip, "port": cport}}),
                {"add": elem},
            ]
        else:
            elem["element"]["elem"][0] = elem["element"]["elem"][0][0]  # delete by key
            cmds += [{"delete": elem}, {"delete": _chain(chain)}]
    return cmds


def render_chains(net: NetworkRules) -> list[Cmd]:
    """The network's two chains; add+flush makes re-adding replace their rules.

    (`flush chain` costs nothing measurable: unlike `add rule`/`add element` it needs no
    libnftables cache, and the batch already has rules.)
    """
    out, in_ = net.chain_out, net.chain_in
    oif = _meta("oifname")
    ct_ok = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    dnat = _match({"ct": {"key": "status"}}, "dnat", "in")
    cmds: list[Cmd] = []
    for name in (out, in_):
        cmds += [{"add": _chain(name)}, {"flush": _chain(name)}]
    # net-<id>-out: forwarded packets that came in from this network's bridge.
    cmds += [
        _rule(out, _match(oif, net.bridge), _verdict("accept" if net.icc else "drop")),
        _rule(out, _match(oif, f"@{SET_BRIDGES}"), _verdict("drop")),
        _rule(out, _verdict("drop" if net.internal else "accept")),
    ]
    # net-<id>-in: forwarded packets entering this network from elsewhere.
    cmds.append(_rule(in_, ct_ok, _verdict("accept")))
    if not net.internal:  # published ports (DNAT, a later issue)
        cmds.append(_rule(in_, dnat, _verdict("accept")))
    cmds.append(_rule(in_, _verdict("drop")))
    return cmds


def render_elements(net: NetworkRules) -> list[Cmd]:
    """The network's element in every shared set/map.

    A network that does not masquerade makes sure its bridge is *not* in `masq` (a
    re-add may turn masquerade off; a bridge name may be reused).
    """
    cmds: list[Cmd] = [
        {"add": _elements(SET_BRIDGES, [net.bridge])},
        {"add": _elements(MAP_FWD_IN, [[net.bridge, _jump(net.chain_out)]])},
        {"add": _elements(MAP_FWD_OUT, [[net.bridge, _jump(net.chain_in)]])},
    ]
    if net.masquerades:
        cmds.append({"add": _elements(SET_MASQ, [net.bridge])})
    else:
        cmds += _absent(SET_MASQ, net.bridge)
    return cmds


def render_network(net: NetworkRules) -> list[Cmd]:
    """Everything add_network puts in the kernel, in dependency order."""
    return render_chains(net) + render_elements(net)


def _unique(networks: Iterable[NetworkRules]) -> list[NetworkRules]:
    """Drop exact duplicates; reject two networks claiming one id or one bridge."""
    by_id: dict[str, NetworkRules] = {}
    by_short: dict[str, str] = {}
    by_bridge: dict[str, str] = {}
    for net in networks:
        if by_id.setdefault(net.id, net) != net:
            raise ValueError(f"conflicting rules for network {net.id[:12]}")
        if by_short.setdefault(net.id[:12], net.id) != net.id:
            raise ValueError(f"network id prefix {net.id[:12]} is not unique")
        if by_bridge.setdefault(net.bridge, net.id) != net.id:
            raise ValueError(f"bridge {net.bridge} claimed by two networks")
    return list(by_id.values())


def render_reset(networks: Iterable[NetworkRules]) -> list[Cmd]:
    """One batch replacing the whole table (whatever stale state it held)."""
    nets = _unique(networks)
    cmds: list[Cmd] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
        *render_base(),
    ]
    for net in nets:
        cmds += render_chains(net)
    bridges = [n.bridge for n in nets]
    masq = [n.bridge for n in nets if n.masquerades]
    if bridges:  # the table is new: one command per set/map, no add-then-delete
        cmds += [
            {"add": _elements(SET_BRIDGES, bridges)},
            {"add": _elements(MAP_FWD_IN, [[n.bridge, _jump(n.chain_out)] for n in nets])},
            {"add": _elements(MAP_FWD_OUT, [[n.bridge, _jump(n.chain_in)] for n in nets])},
        ]
    if masq:
        cmds.append({"add": _elements(SET_MASQ, masq)})
    return cmds


@dataclass
class Present:
    """The parts of the table that a removal cares about, parsed from a listing."""

    chains: set[str] = field(default_factory=set)
    bridges: set[str] = field(default_factory=set)
    masq: set[str] = field(default_factory=set)
    # map name -> {ifname: jump target or None}
    maps: dict[str, dict[str, str | None]] = field(
        default_factory=lambda: {MAP_FWD_IN: {}, MAP_FWD_OUT: {}}
    )

    @classmethod
    def parse(cls, listing: dict) -> Present:
        """Build from `list table inet cnet` JSON output."""
        p = cls()
        for obj in listing.get("nftables", []):
            if "chain" in obj:
                p.chains.add(obj["chain"]["name"])
            elif "set" in obj:
                s = obj["set"]
                elems = {e for e in map(_elem_value, s.get("elem", [])) if isinstance(e, str)}
                if s["name"] == SET_BRIDGES:
                    p.bridges.update(elems)
                elif s["name"] == SET_MASQ:
                    p.masq.update(elems)
            elif "map" in obj and obj["map"]["name"] in p.maps:
                for key, verdict in obj["map"].get("elem", []):
                    target = verdict.get("jump", {}).get("target") if verdict else None
                    p.maps[obj["map"]["name"]][_elem_value(key)] = target
        return p


def _elem_value(e: Any) -> Any:
    """Unwrap `{"elem": {"val": ...}}` (elements carrying timeouts/counters)."""
    if isinstance(e, dict) and "elem" in e:
        return e["elem"].get("val")
    return e


def render_removal(net: NetworkRules, present: Present | None = None) -> list[Cmd]:
    """Delete the network's elements, then its chains.

    Without `present`, assumes everything add_network made is there (a delete of a
    missing element fails the whole batch; only `masq` is cleared either way). With
    `present`, deletes only what the listing shows: map elements jumping to this
    network's chains (whatever their key, else the chain delete fails), and the bridge
    in `bridges`/`masq` unless another network's chain claims it.
    """
    mine = {net.chain_out, net.chain_in}
    if present is None:
        cmds: list[Cmd] = [
            {"delete": _elements(MAP_FWD_IN, [net.bridge])},
            {"delete": _elements(MAP_FWD_OUT, [net.bridge])},
            {"delete": _elements(SET_BRIDGES, [net.bridge])},
            *_absent(SET_MASQ, net.bridge),
        ]
    else:
        cmds = []
        for name, elems in present.maps.items():
            keys = sorted(k for k, target in elems.items() if target in mine)
            if keys:
                cmds.append({"delete": _elements(name, keys)})
        claimed = any(present.maps[m].get(net.bridge) not in (None, *mine) for m in present.maps)
        for name, there in ((SET_BRIDGES, present.bridges), (SET_MASQ, present.masq)):
            if net.bridge in there and not claimed:
                cmds.append({"delete": _elements(name, [net.bridge])})
        mine &= present.chains
    for name in sorted(mine):
        cmds += [{"flush": _chain(name)}, {"delete": _chain(name)}]
    return cmds


# --- kernel --------------------------------------------------------------------------


_LOCATION_RE = re.compile(r"^\S+:\d+:\d+-\d+:\s*")


def _first_error_line(err: str, rc: int) -> str:
    for line in err.splitlines():
        if line.strip():
            return _LOCATION_RE.sub("", line.strip())
    return f"libnftables failed (rc={rc})"


def _is_missing(msg: str) -> bool:
    return "No such file or directory" in msg


class Firewall:
    """The kernel side: one libnftables context, opened lazily, reused, serialised.

    The context acts in the network namespace of the thread that first uses it
    (cnetd runs in its own namespace, so that is simply the current one).
    """

    def __init__(self) -> None:
        self._nft: Any = None
        self._lock = threading.Lock()
        self._base_known = False  # the base table is known to exist

    # -- public API --

    def reset(self, networks: Iterable[NetworkRules]) -> None:
        """Replace the table with exactly `networks`, atomically (daemon start)."""
        cmds = render_reset(networks)
        with self._lock:
            self._run(cmds)
            self._base_known = True

    def add_network(self, net: NetworkRules) -> None:
        """Add (or re-apply) one network; creates the base table if it is missing."""
        cmds = render_network(net)
        with self._lock:
            try:
                self._run(cmds)
            except FirewallError as e:
                # Optimistic: only a failed batch (which changed nothing) pays for a
                # look at whether the table is there at all.
                if self._base_known or not _is_missing(str(e)) or self._list() is not None:
                    raise
                self._run(render_base() + cmds)
            self._base_known = True

    def remove_network(self, net: NetworkRules) -> None:
        """Remove one network; tolerates pieces (or the whole table) being absent."""
        with self._lock:
            try:
                self._run(render_removal(net))
                return
            except FirewallError:
                pass  # something is missing (the batch changed nothing): look first
            listing = self._list()
            if listing is None:
                self._base_known = False
                return
            cmds = render_removal(net, Present.parse(listing))
            if cmds:
                self._run(cmds)

    def publish(self, entries: list[PortEntry]) -> None:
        """Add published ports (one batch)."""
        with self._lock:
            self._run(render_ports("add", entries))

    def unpublish(self, entries: list[PortEntry]) -> None:
        """Remove published ports (one batch); entries already gone are not an error."""
        with self._lock:
            try:
                self._run(render_ports("delete", entries))
            except FirewallError:
                for entry in entries:  # some were missing: remove the rest one by one
                    try:
                        self._run(render_ports("delete", [entry]))
                    except FirewallError:
                        pass

    def delete_table(self) -> None:
        """Delete the whole table; no error when it does not exist."""
        table = {"table": {"family": FAMILY, "name": TABLE}}
        with self._lock:
            self._run([{"add": table}, {"delete": table}])
            self._base_known = False

    def available(self) -> bool:
        """Whether nf_tables with nat works here: dry-runs the base table in the kernel."""
        try:
            import nftables

            nft = nftables.Nftables()
            nft.set_dry_run(True)
            rc, _, _ = nft.json_cmd({"nftables": render_reset([])})
            return rc == 0
        except Exception:  # a missing binding or library means "no"
            return False

    def ruleset(self) -> dict | None:
        """The table as libnftables JSON (None if absent), for debugging and `inspect`."""
        with self._lock:
            return self._list()

    # -- kernel plumbing --

    def _ctx(self) -> Any:
        if self._nft is None:
            try:
                import nftables
            except ImportError as e:
                raise FirewallError(f"python nftables binding missing: {e}") from None
            try:
                nft = nftables.Nftables()
            except OSError as e:
                raise FirewallError(f"libnftables unavailable: {e}") from None
            nft.set_json_output(True)
            nft.set_handle_output(False)
            self._nft = nft
        return self._nft

    def _run(self, cmds: list[Cmd]) -> Any:
        rc, out, err = self._ctx().json_cmd({"nftables": cmds})
        if rc != 0:
            raise FirewallError(_first_error_line(err, rc))
        return out

    def _list(self) -> dict | None:
        """`list table inet cnet` as JSON, or None when the table does not exist."""
        try:
            out = self._run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
        except FirewallError as e:
            if _is_missing(str(e)):
                return None
            raise
        return out if isinstance(out, dict) else {"nftables": []}
