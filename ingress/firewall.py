"""The one nftables table cnetd owns: ``table inet cnet``.

All nftables access in cnet goes through this module, as libnftables JSON batches
(the ``nftables`` binding from python3-nftables; never an ``nft`` subprocess). Every
change is one atomic batch. The rules are constant; a network is only elements of
named sets, so adding or removing one touches its own elements and nothing else::

    table inet cnet {
      set bridges  { type ifname; }                    # every cnet bridge
      set masq     { type ifname; }                    # bridges whose egress is SNATed
      set internal { type ifname; }                    # bridges of internal networks
      set icc      { type ifname . ifname; }           # "br" . "br" for networks with icc on
      map pub_any  { ... }  map pub_ip { ... }         # published ports, see render_publishing
      chain prerouting  { nat, dstnat; ... vmap @pub_any; ... vmap @pub_ip }
      chain output      { nat, -100;   ... vmap @pub_any; ... vmap @pub_ip }
      chain forward     { filter, policy accept;
        iifname . oifname @icc accept                  # inside one network (icc on)
        iifname @bridges oifname @bridges drop         # between networks; icc off
        iifname @internal drop                         # nothing leaves an internal network
        oifname @internal drop                         # nothing enters one
        oifname @bridges ct state established,related accept
        oifname @bridges ct status dnat accept         # published ports
        oifname @bridges drop                          # unsolicited traffic into a network
      }
      chain postrouting { nat, srcnat; iifname @masq oifname != @bridges masquerade; ... }
      chain pub-<proto>-<host ip|any>-<port> { dnat ... }   # one per published port
    }

Traffic between a network and the host itself (its gateway address, published ports
reached from the host) is input/output, not forward: these rules do not see it. Packets
forwarded between two interfaces cnet does not own match nothing and are accepted.

Masquerade is keyed by the bridge a packet was forwarded in from, not by its source
subnet: forwarded container traffic always enters through its network's bridge, one
hash-set element covers IPv4 and IPv6 alike, and there is no interval set. That matters
for cost, not only for tidiness: libnftables (1.0.6) fills its cache before every batch
that adds or deletes an element or a rule, and that fill lists the elements of *every*
interval set in the table (to check overlaps), whichever set the batch touches. It also
lists every chain, and the kernel walks every chain at commit (and the jump graph when a
verdict is added): hence no per-network chains and no verdict map jumping to them, so
the cost of a network add/rm does not grow with the number of networks (published ports
still have a chain each). `bench/nft_batch.py` measures each part.

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
SET_INTERNAL = "internal"
SET_ICC = "icc"  # ifname . ifname: "br" . "br" for each network with icc on
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


def _rule(chain: str, *expr: dict, comment: str | None = None) -> Cmd:
    """A rule; the fixed rules carry a comment saying why they exist (`nft list ruleset`
    and `cnet trace` show it)."""
    rule = {**_T, "chain": chain, "expr": list(expr)}
    if comment:
        rule["comment"] = comment
    return {"add": {"rule": rule}}


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


def _icc_key(bridge: str) -> dict:
    return {"concat": [bridge, bridge]}


def _absent(name: str, key: Any) -> list[Cmd]:
    """Make sure `key` is not in set `name`, whether it was or not (add, then delete)."""
    return [{"add": _elements(name, [key])}, {"delete": _elements(name, [key])}]


# --- rendering -----------------------------------------------------------------------


def render_base() -> list[Cmd]:
    """Table, shared sets/maps, base chains and their (fixed) rules."""
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"set": {**_T, "name": SET_BRIDGES, "type": "ifname"}}},
        {"add": {"set": {**_T, "name": SET_MASQ, "type": "ifname"}}},
        {"add": {"set": {**_T, "name": SET_INTERNAL, "type": "ifname"}}},
        {"add": {"set": {**_T, "name": SET_ICC, "type": ["ifname", "ifname"]}}},
        _base_chain("prerouting", "nat", "prerouting", PRIO_DSTNAT),
        _base_chain("output", "nat", "output", PRIO_DSTNAT),
        _base_chain("forward", "filter", "forward", PRIO_FILTER),
        _base_chain("postrouting", "nat", "postrouting", PRIO_SRCNAT),
        *render_publishing(),
        *render_forward(),
        # Forwarded in from a masquerading network's bridge, leaving through anything
        # but a cnet bridge (IPv4 and IPv6 alike).
        _rule(
            "postrouting",
            _match(_meta("iifname"), f"@{SET_MASQ}"),
            _match(_meta("oifname"), f"@{SET_BRIDGES}", "!="),
            {"masquerade": None}, comment="egress of a network",
        ),
    ]


def render_forward() -> list[Cmd]:
    """The forward chain's rules: isolation for every network, whatever their number.

    In order (the first match decides; the chain's policy is accept):
    routed traffic inside a network with icc on is accepted; anything else from one
    cnet bridge to another (or back to itself, icc off) is dropped; nothing is forwarded
    out of or into an internal network; into any other network only replies and
    published ports (DNAT'd) go. Traffic from a non-internal network to the outside
    matches none of these and is accepted by the policy.
    """
    iif, oif = _meta("iifname"), _meta("oifname")
    to_bridge = _match(oif, f"@{SET_BRIDGES}")
    return [
        _rule("forward", _match({"concat": [iif, oif]}, f"@{SET_ICC}"), _verdict("accept"),
              comment="within one network (icc)"),
        _rule("forward", _match(iif, f"@{SET_BRIDGES}"), to_bridge, _verdict("drop"),
              comment="isolation between networks"),
        _rule("forward", _match(iif, f"@{SET_INTERNAL}"), _verdict("drop"),
              comment="internal network: nothing leaves"),
        _rule("forward", _match(oif, f"@{SET_INTERNAL}"), _verdict("drop"),
              comment="internal network: nothing enters"),
        _rule("forward", to_bridge,
              _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
              _verdict("accept"), comment="replies into a network"),
        _rule("forward", to_bridge, _match({"ct": {"key": "status"}}, "dnat", "in"),
              _verdict("accept"), comment="published ports"),
        _rule("forward", to_bridge, _verdict("drop"),
              comment="unsolicited traffic into a network"),
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
    accepted by the forward chain (`ct status dnat`; not into internal networks).
    libnftables 1.0.6 crashes on NAT with concatenated map data, hence chains rather
    than a dnat map.
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
            "key": {"concat": [_L4PROTO, _DPORT]}, "data": f"@{MAP_PUB_ANY}"}},
            comment="published ports, any node address"))
        rules.append(_rule(chain, _IPV4, {"vmap": {
            "key": {"concat": [daddr, _L4PROTO, _DPORT]}, "data": f"@{MAP_PUB_IP}"}},
            comment="published ports, one node address"))
    rules.append(_rule(
        "postrouting", _match({"ct": {"key": "status"}}, "dnat", "in"),
        _match(_meta("iifname"), f"@{SET_BRIDGES}"),
        _match(_meta("oifname"), f"@{SET_BRIDGES}"), {"masquerade": None},
        comment="published port reached from a network (hairpin)"))
    rules.append(_rule(
        "postrouting",
        _match({"payload": {"protocol": "ip", "field": "saddr"}},
               {"prefix": {"addr": "127.0.0.0", "len": 8}}),
        _match(_meta("oifname"), f"@{SET_BRIDGES}"), {"masquerade": None},
        comment="published port reached from the node's loopback"))
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


def render_elements(net: NetworkRules) -> list[Cmd]:
    """The network's elements in the shared sets.

    A flag that is off makes sure the bridge is *not* in that flag's set (add, then
    delete): a re-add may turn masquerade or icc off, or internal on and off again, and a
    bridge name may be reused.
    """
    cmds: list[Cmd] = [{"add": _elements(SET_BRIDGES, [net.bridge])}]
    for name, key, on in (
        (SET_MASQ, net.bridge, net.masquerades),
        (SET_INTERNAL, net.bridge, net.internal),
        (SET_ICC, _icc_key(net.bridge), net.icc),
    ):
        cmds += [{"add": _elements(name, [key])}] if on else _absent(name, key)
    return cmds


def render_network(net: NetworkRules) -> list[Cmd]:
    """Everything add_network puts in the kernel: set elements only."""
    return render_elements(net)


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
    # The table is new: one command per non-empty set, no add-then-delete.
    for name, keys in (
        (SET_BRIDGES, [n.bridge for n in nets]),
        (SET_MASQ, [n.bridge for n in nets if n.masquerades]),
        (SET_INTERNAL, [n.bridge for n in nets if n.internal]),
        (SET_ICC, [_icc_key(n.bridge) for n in nets if n.icc]),
    ):
        if keys:
            cmds.append({"add": _elements(name, keys)})
    return cmds


@dataclass
class Present:
    """The parts of the table that a removal cares about, parsed from a listing."""

    bridges: set[str] = field(default_factory=set)
    masq: set[str] = field(default_factory=set)
    internal: set[str] = field(default_factory=set)
    icc: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def parse(cls, listing: dict) -> Present:
        """Build from `list table inet cnet` JSON output."""
        p = cls()
        plain = {SET_BRIDGES: p.bridges, SET_MASQ: p.masq, SET_INTERNAL: p.internal}
        for obj in listing.get("nftables", []):
            s = obj.get("set")
            if s is None:
                continue
            elems = [_elem_value(e) for e in s.get("elem", [])]
            if s["name"] in plain:
                plain[s["name"]].update(e for e in elems if isinstance(e, str))
            elif s["name"] == SET_ICC:
                for e in elems:
                    parts = e.get("concat") if isinstance(e, dict) else None
                    if isinstance(parts, list) and len(parts) == 2:
                        p.icc.add((str(parts[0]), str(parts[1])))
        return p


def _elem_value(e: Any) -> Any:
    """Unwrap `{"elem": {"val": ...}}` (elements carrying timeouts/counters)."""
    if isinstance(e, dict) and "elem" in e:
        return e["elem"].get("val")
    return e


def render_removal(net: NetworkRules, present: Present | None = None) -> list[Cmd]:
    """Delete the network's set elements.

    Without `present`, assumes the bridge is in `bridges` (a delete of a missing element
    fails the whole batch) and clears the flag sets either way (add, then delete), so
    the flags the caller passes do not matter. With `present`, deletes only what the
    listing shows.
    """
    br = net.bridge
    if present is None:
        return [
            {"delete": _elements(SET_BRIDGES, [br])},
            *_absent(SET_MASQ, br),
            *_absent(SET_INTERNAL, br),
            *_absent(SET_ICC, _icc_key(br)),
        ]
    cmds: list[Cmd] = []
    for name, there in (
        (SET_BRIDGES, present.bridges),
        (SET_MASQ, present.masq),
        (SET_INTERNAL, present.internal),
    ):
        if br in there:
            cmds.append({"delete": _elements(name, [br])})
    if (br, br) in present.icc:
        cmds.append({"delete": _elements(SET_ICC, [_icc_key(br)])})
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
        """Remove published ports (one batch). Pieces already gone are not an error; any
        other failure is raised (after removing what can be), so that the caller keeps
        the bindings recorded rather than believing the kernel no longer DNATs them."""
        with self._lock:
            try:
                self._run(render_ports("delete", entries))
            except FirewallError:
                errors: list[FirewallError] = []
                for cmd in render_ports("delete", entries):  # one by one: the rest go
                    try:
                        self._run([cmd])
                    except FirewallError as e:
                        if not _is_missing(str(e)):
                            errors.append(e)
                if errors:
                    raise errors[0] from None

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
