"""What the ``inet cnet`` table holds for one network, read from its listing.

`cnet network inspect --verbose` shows it: the shared sets the network's bridge is an
element of, the fixed rules of the base chains that apply to it (isolation, masquerade),
and its published ports (the ``pub_any``/``pub_ip`` verdict-map elements whose
``pub-*`` chain DNATs to an address of the network, with that chain's rule). Rules are
shown as nft would print them, compactly (``iifname @bridges oifname @bridges drop``).

Everything here is pure: it takes the libnftables JSON listing that
`Firewall.ruleset()` returns (``list table inet cnet``) and never touches the kernel.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cnet.ingress.firewall import (
    FAMILY,
    MAP_PUB_ANY,
    MAP_PUB_IP,
    SET_BRIDGES,
    SET_ICC,
    SET_INTERNAL,
    SET_MASQ,
    TABLE,
)

SHARED_SETS = (SET_BRIDGES, SET_MASQ, SET_INTERNAL, SET_ICC)
PUB_MAPS = (MAP_PUB_ANY, MAP_PUB_IP)
# meta keys nft prints without the `meta` keyword
_BARE_META = {"iifname", "oifname", "iif", "oif", "mark", "iiftype", "oiftype", "skuid",
              "skgid", "nftrace", "rtclassid", "pkttype", "cpu", "iifgroup", "oifgroup",
              "cgroup"}
_VERDICTS = ("accept", "drop", "return", "continue", "queue")


# --- reading the listing ---------------------------------------------------------------


def _objects(listing: Mapping | None, kind: str) -> list[dict]:
    """The `kind` objects ("set", "map", "chain", "rule") of the cnet table."""
    out = []
    for obj in (listing or {}).get("nftables", []):
        body = obj.get(kind) if isinstance(obj, dict) else None
        if isinstance(body, dict) and body.get("table", TABLE) == TABLE \
                and body.get("family", FAMILY) == FAMILY:
            out.append(body)
    return out


def _elems(body: Mapping) -> list[Any]:
    """A set's or map's elements, unwrapped; one element may be listed bare."""
    raw = body.get("elem", [])
    if not isinstance(raw, list):
        raw = [raw]
    out = []
    for e in raw:
        if isinstance(e, dict) and "elem" in e:  # elements carrying timeouts/counters
            e = e["elem"].get("val")
        out.append(e)
    return out


def _key(value: Any) -> tuple:
    """An element's key as a tuple of plain values ("br0",) or ("br0", "br0")."""
    if isinstance(value, dict) and isinstance(value.get("concat"), list):
        return tuple(value["concat"])
    return (value,)


def _members(listing: Mapping | None, bridge: str) -> list[str]:
    """The shared sets whose element names `bridge` (icc: the pair bridge . bridge)."""
    wanted = {SET_ICC: (bridge, bridge)}
    out = []
    for body in _objects(listing, "set"):
        name = body.get("name")
        if name in SHARED_SETS and wanted.get(name, (bridge,)) in {
                _key(e) for e in _elems(body)}:
            out.append(name)
    return sorted(out, key=SHARED_SETS.index)


# --- rendering expressions as nft prints them ------------------------------------------


def expr_text(e: Any) -> str:
    """One libnftables JSON expression or statement as nft syntax (best effort: an
    unknown form is shown as its JSON)."""
    if e is None:
        return ""
    if isinstance(e, bool):
        return str(e).lower()
    if isinstance(e, (str, int, float)):
        return str(e)
    if isinstance(e, list):
        if all(isinstance(x, str) for x in e):
            return ",".join(e)  # flags: ct state established,related
        return "{ " + ", ".join(expr_text(x) for x in e) + " }"
    if not isinstance(e, dict) or len(e) != 1:
        return json.dumps(e, sort_keys=True)
    (kind, v), = e.items()
    if kind in _VERDICTS:
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {v.get('target')}"
    if kind == "meta":
        key = v.get("key")
        return key if key in _BARE_META else f"meta {key}"
    if kind == "payload":
        return f"{v.get('protocol')} {v.get('field')}"
    if kind == "ct":
        return f"ct {v.get('key')}"
    if kind == "fib":
        flags = v.get("flags") or []
        flags = flags if isinstance(flags, list) else [flags]
        return f"fib {' . '.join(flags)} {v.get('result')}"
    if kind == "concat":
        return " . ".join(expr_text(x) for x in v)
    if kind == "prefix":
        return f"{v.get('addr')}/{v.get('len')}"
    if kind == "range":
        return "-".join(expr_text(x) for x in v)
    if kind == "set":
        return "{ " + ", ".join(expr_text(x) for x in (v if isinstance(v, list) else [v])) \
            + " }"
    if kind == "match":
        op, left, right = v.get("op", "=="), expr_text(v.get("left")), expr_text(
            v.get("right"))
        return f"{left} {right}" if op in ("==", "in") else f"{left} {op} {right}"
    if kind in ("vmap", "map"):
        return f"{expr_text(v.get('key'))} {kind} {expr_text(v.get('data'))}"
    if kind in ("dnat", "snat"):
        fam = f" {v['family']}" if v.get("family") else ""
        to = expr_text(v.get("addr")) if v.get("addr") is not None else ""
        if v.get("port") is not None:
            to += f":{expr_text(v['port'])}"
        return f"{kind}{fam} to {to}"
    if kind in ("masquerade", "notrack"):
        return kind if not v else f"{kind} {json.dumps(v, sort_keys=True)}"
    if kind == "counter":
        if isinstance(v, dict):
            return f"counter packets {v.get('packets', 0)} bytes {v.get('bytes', 0)}"
        return "counter"
    return json.dumps(e, sort_keys=True)


def rule_text(rule: Mapping) -> str:
    """A rule's expressions as one nft line."""
    return " ".join(t for t in (expr_text(x) for x in rule.get("expr", [])) if t)


# --- selecting what belongs to a network ---------------------------------------------


def _set_refs(e: Any) -> list[tuple[str, bool]]:
    """(set name, positive) for every `@set` a rule matches against; `positive` is False
    for a negated match (`oifname != @bridges`)."""
    out: list[tuple[str, bool]] = []
    if isinstance(e, list):
        for x in e:
            out += _set_refs(x)
    elif isinstance(e, dict):
        m = e.get("match")
        if isinstance(m, dict) and isinstance(m.get("right"), str) \
                and m["right"].startswith("@"):
            out.append((m["right"][1:], m.get("op", "==") in ("==", "in")))
        else:
            for x in e.values():
                out += _set_refs(x)
    return out


def _applies(rule: Mapping, members: set[str]) -> bool:
    """A base-chain rule applies to a network when it matches against one of the shared
    sets and every set it requires (not negated) holds the network's bridge."""
    refs = [(name, pos) for name, pos in _set_refs(rule.get("expr", []))
            if name in SHARED_SETS]
    return bool(refs) and all(name in members for name, pos in refs if pos)


def _dnat(rules: list[Mapping]) -> tuple[str, Any] | None:
    for rule in rules:
        for x in rule.get("expr", []):
            if isinstance(x, dict) and isinstance(x.get("dnat"), dict):
                return x["dnat"].get("addr"), x["dnat"].get("port")
    return None


def _in(addr: Any, nets: list) -> bool:
    try:
        ip = ipaddress.ip_address(str(addr))
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


def _map_entry(map_name: str, key: tuple) -> dict[str, Any]:
    if map_name == MAP_PUB_IP and len(key) == 3:
        host_ip, proto, port = key
    elif len(key) == 2:
        host_ip, (proto, port) = "", key
    else:
        return {"Map": map_name, "Element": " . ".join(map(str, key))}
    return {"Map": map_name, "Element": " . ".join(map(str, key)), "Proto": proto,
            "HostIp": host_ip, "HostPort": port}


def network_firewall(listing: Mapping | None, bridge: str | None,
                     subnets: Iterable[str] = (),
                     names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The part of the cnet table that concerns one network.

    `bridge`: the network's bridge in this namespace (None: it has none here, e.g. an
    overlay); `subnets`: its address pools (a published port belongs to the network when
    its DNAT target is in one); `names`: address -> container, to name DNAT targets.
    Returns {} when there is no table; otherwise::

        {"Table": "inet cnet", "Bridge": BR, "Sets": ["bridges", "masq", "icc"],
         "Rules": [{"Chain": "forward", "Handle": 17, "Rule": "iifname . oifname @icc
                    accept"}, ...],
         "Published": [{"Map": "pub_any", "Element": "tcp . 8080", "Proto": "tcp",
                        "HostIp": "", "HostPort": 8080, "Chain": "pub-tcp-any-8080",
                        "Rule": "meta l4proto tcp dnat ip to 10.1.0.2:80",
                        "Address": "10.1.0.2", "Port": 80, "Container": "web"}]}

    A pub-* chain that no map element jumps to is listed with Map "" (a leftover).
    """
    if listing is None:
        return {}
    names = names or {}
    members = set(_members(listing, bridge)) if bridge else set()
    chains = {c.get("name"): c for c in _objects(listing, "chain")}
    by_chain: dict[str, list[dict]] = {}
    for rule in _objects(listing, "rule"):
        by_chain.setdefault(rule.get("chain"), []).append(rule)

    rules = []
    for name, chain in chains.items():
        if "hook" not in chain:
            continue
        for rule in by_chain.get(name, []):
            if _applies(rule, members):
                row = {"Chain": name, "Rule": rule_text(rule)}
                if rule.get("handle") is not None:
                    row["Handle"] = rule["handle"]
                rules.append(row)

    nets = []
    for s in subnets:
        try:
            nets.append(ipaddress.ip_network(s, strict=False))
        except ValueError:
            continue
    published = []
    seen: set[str] = set()

    def entry(head: dict[str, Any], chain: str) -> None:
        target = _dnat(by_chain.get(chain, []))
        if target is None or not _in(target[0], nets):
            return
        seen.add(chain)
        addr = str(target[0])
        row = {**head, "Chain": chain,
               "Rule": "; ".join(rule_text(r) for r in by_chain.get(chain, [])),
               "Address": addr, "Port": target[1]}
        if addr in names:
            row["Container"] = names[addr]
        published.append(row)

    for body in _objects(listing, "map"):
        if body.get("name") not in PUB_MAPS:
            continue
        for e in _elems(body):
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[1], dict)):
                continue
            verdict = e[1].get("jump") or e[1].get("goto") or {}
            chain = verdict.get("target") if isinstance(verdict, dict) else None
            if chain:
                entry(_map_entry(body["name"], _key(e[0])), chain)
    for name, chain in chains.items():
        if "hook" not in chain and name.startswith("pub-") and name not in seen:
            entry({"Map": "", "Element": ""}, name)

    return {"Table": f"{FAMILY} {TABLE}", "Bridge": bridge or "",
            "Sets": sorted(members, key=SHARED_SETS.index), "Rules": rules,
            "Published": published}
