"""ingress/firewall_view.py on a canned `list table inet cnet` listing (libnftables 1.0.6
JSON, as Firewall.ruleset() returns it): network A (br-aaaaaaaaaaaa, 10.1.0.0/24, icc on,
masquerade) with tcp 8080 published to 10.1.0.2:80; network B (br-bbbbbbbbbbbb,
10.2.0.0/24, internal, icc off) with udp 192.0.2.1:5353 published to 10.2.0.3:53."""

from __future__ import annotations

import copy
import json

from cnet.ingress.firewall_view import expr_text, network_firewall, rule_text

A, B = "br-aaaaaaaaaaaa", "br-bbbbbbbbbbbb"

LISTING = json.loads("""{"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "cnet", "handle": 2}},
    {"set": {"family": "inet", "name": "bridges", "table": "cnet", "type": "ifname", "handle":
    1, "elem": ["br-aaaaaaaaaaaa", "br-bbbbbbbbbbbb"]}},
    {"set": {"family": "inet", "name": "masq", "table": "cnet", "type": "ifname", "handle": 2,
    "elem": ["br-aaaaaaaaaaaa"]}},
    {"set": {"family": "inet", "name": "internal", "table": "cnet", "type": "ifname", "handle":
    3, "elem": ["br-bbbbbbbbbbbb"]}},
    {"set": {"family": "inet", "name": "icc", "table": "cnet", "type": ["ifname", "ifname"],
    "handle": 4, "elem": [{"concat": ["br-aaaaaaaaaaaa", "br-aaaaaaaaaaaa"]}]}},
    {"map": {"family": "inet", "name": "pub_any", "table": "cnet", "type": ["inet_proto",
    "inet_service"], "handle": 9, "map": "verdict", "elem": [[{"concat": ["tcp", 8080]},
    {"jump": {"target": "pub-tcp-any-8080"}}]]}},
    {"map": {"family": "inet", "name": "pub_ip", "table": "cnet", "type": ["ipv4_addr",
    "inet_proto", "inet_service"], "handle": 10, "map": "verdict", "elem": [[{"concat":
    ["192.0.2.1", "udp", 5353]}, {"jump": {"target": "pub-udp-192.0.2.1-5353"}}]]}},
    {"chain": {"family": "inet", "table": "cnet", "name": "prerouting", "handle": 5, "type":
    "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "cnet", "name": "output", "handle": 6, "type": "nat",
    "hook": "output", "prio": -100, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "cnet", "name": "forward", "handle": 7, "type":
    "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "cnet", "name": "postrouting", "handle": 8, "type":
    "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "cnet", "name": "pub-tcp-any-8080", "handle": 25}},
    {"chain": {"family": "inet", "table": "cnet", "name": "pub-udp-192.0.2.1-5353", "handle":
    27}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "prerouting", "handle": 11, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}, {"match":
    {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
    {"vmap": {"key": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th",
    "field": "dport"}}]}, "data": "@pub_any"}}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "prerouting", "handle": 12, "expr":
    [{"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta":
    {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data":
    "@pub_ip"}}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "output", "handle": 13, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}, {"match":
    {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
    {"vmap": {"key": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th",
    "field": "dport"}}]}, "data": "@pub_any"}}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "output", "handle": 14, "expr":
    [{"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta":
    {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data":
    "@pub_ip"}}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "forward", "handle": 17, "expr":
    [{"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key":
    "oifname"}}]}, "right": "@icc"}}, {"accept": null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "forward", "handle": 18, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@bridges"}},
    {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}}, {"drop":
    null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "forward", "handle": 19, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@internal"}},
    {"drop": null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "forward", "handle": 20, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@internal"}},
    {"drop": null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "forward", "handle": 21, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}},
    {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established",
    "related"]}}, {"accept": null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "forward", "handle": 22, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}},
    {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept":
    null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "forward", "handle": 23, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}},
    {"drop": null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "postrouting", "handle": 15, "expr":
    [{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"match":
    {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@bridges"}}, {"match": {"op":
    "==", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}}, {"masquerade": null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "postrouting", "handle": 16, "expr":
    [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right":
    {"prefix": {"addr": "127.0.0.0", "len": 8}}}}, {"match": {"op": "==", "left": {"meta":
    {"key": "oifname"}}, "right": "@bridges"}}, {"masquerade": null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "postrouting", "handle": 24, "expr":
    [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@masq"}}, {"match":
    {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}}, {"masquerade":
    null}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "pub-tcp-any-8080", "handle": 26,
    "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
    {"dnat": {"family": "ip", "addr": "10.1.0.2", "port": 80}}]}},
    {"rule": {"family": "inet", "table": "cnet", "chain": "pub-udp-192.0.2.1-5353", "handle":
    28, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
    {"dnat": {"family": "ip", "addr": "10.2.0.3", "port": 53}}]}}
]}""")


def _rules(view: dict) -> list[str]:
    return [f'{r["Chain"]}: {r["Rule"]}' for r in view["Rules"]]


def test_sets_holding_the_bridge():
    assert network_firewall(LISTING, A, ["10.1.0.0/24"])["Sets"] == ["bridges", "masq", "icc"]
    assert network_firewall(LISTING, B, ["10.2.0.0/24"])["Sets"] == ["bridges", "internal"]
    assert network_firewall(LISTING, "br-other", [])["Sets"] == []


def test_rules_that_apply_in_chain_order_as_nft_prints_them():
    a = network_firewall(LISTING, A, ["10.1.0.0/24"])
    assert _rules(a) == [
        "forward: iifname . oifname @icc accept",
        "forward: iifname @bridges oifname @bridges drop",
        "forward: oifname @bridges ct state established,related accept",
        "forward: oifname @bridges ct status dnat accept",
        "forward: oifname @bridges drop",
        "postrouting: ct status dnat iifname @bridges oifname @bridges masquerade",
        "postrouting: ip saddr 127.0.0.0/8 oifname @bridges masquerade",
        "postrouting: iifname @masq oifname != @bridges masquerade",
    ]
    assert a["Rules"][0]["Handle"] == 17
    b = network_firewall(LISTING, B, ["10.2.0.0/24"])
    assert "forward: iifname @internal drop" in _rules(b)
    assert "forward: oifname @internal drop" in _rules(b)
    assert not any("@icc" in r or "@masq" in r for r in _rules(b))


def test_published_ports_of_the_network_only():
    a = network_firewall(LISTING, A, ["10.1.0.0/24"], {"10.1.0.2": "web"})
    assert a["Published"] == [{
        "Map": "pub_any", "Element": "tcp . 8080", "Proto": "tcp", "HostIp": "",
        "HostPort": 8080, "Chain": "pub-tcp-any-8080",
        "Rule": "meta l4proto tcp dnat ip to 10.1.0.2:80", "Address": "10.1.0.2",
        "Port": 80, "Container": "web"}]
    b = network_firewall(LISTING, B, ["10.2.0.0/24"])
    assert [(p["Map"], p["HostIp"], p["Proto"], p["HostPort"], p["Address"], p["Port"])
            for p in b["Published"]] == [("pub_ip", "192.0.2.1", "udp", 5353, "10.2.0.3", 53)]
    assert "Container" not in b["Published"][0]
    assert network_firewall(LISTING, None, ["10.9.0.0/16"])["Published"] == []


def test_overlay_without_a_bridge_here_gets_its_ports_but_no_sets():
    view = network_firewall(LISTING, None, ["10.1.0.0/24"])
    assert view["Sets"] == [] and view["Rules"] == [] and view["Bridge"] == ""
    assert [p["Chain"] for p in view["Published"]] == ["pub-tcp-any-8080"]


def test_no_table_is_an_empty_section():
    assert network_firewall(None, A, ["10.1.0.0/24"]) == {}
    empty = network_firewall({"nftables": []}, A, ["10.1.0.0/24"])
    assert empty["Sets"] == [] and empty["Rules"] == [] and empty["Published"] == []


def test_leftover_chain_wrapped_and_bare_elements():
    listing = copy.deepcopy(LISTING)
    objs = listing["nftables"]
    for o in objs:
        s = o.get("set") or o.get("map")
        if s and s["name"] == "masq":
            s["elem"] = A  # one element, listed bare
        if s and s["name"] == "pub_any":  # an element carrying a counter
            s["elem"] = [[{"elem": {"val": {"concat": ["tcp", 8080]}, "counter": {
                "packets": 1, "bytes": 60}}}, {"jump": {"target": "pub-tcp-any-8080"}}]]
    objs.append({"chain": {"family": "inet", "table": "cnet", "name": "pub-tcp-any-9090"}})
    objs.append({"rule": {"family": "inet", "table": "cnet", "chain": "pub-tcp-any-9090",
                          "expr": [{"dnat": {"family": "ip", "addr": "10.1.0.7",
                                             "port": 90}}]}})
    objs.append({"rule": {"family": "ip", "table": "cnet", "chain": "forward",  # not ours
                          "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                              "right": "@bridges"}}, {"accept": None}]}})
    view = network_firewall(listing, A, ["10.1.0.0/24"])
    assert view["Sets"] == ["bridges", "masq", "icc"]
    assert [(p["Map"], p["Chain"], p["Address"]) for p in view["Published"]] == [
        ("pub_any", "pub-tcp-any-8080", "10.1.0.2"), ("", "pub-tcp-any-9090", "10.1.0.7")]
    assert len(view["Rules"]) == 8


def test_expression_rendering():
    assert expr_text({"meta": {"key": "l4proto"}}) == "meta l4proto"
    assert expr_text({"meta": {"key": "oifname"}}) == "oifname"
    assert expr_text({"fib": {"result": "type", "flags": ["daddr"]}}) == "fib daddr type"
    assert expr_text({"jump": {"target": "pub-x"}}) == "jump pub-x"
    assert expr_text({"dnat": {"family": "ip6", "addr": "fd00::2", "port": 8}}) == \
        "dnat ip6 to fd00::2:8"
    assert expr_text({"set": [1, {"range": [2, 5]}]}) == "{ 1, 2-5 }"
    assert expr_text({"counter": {"packets": 3, "bytes": 180}}) == "counter packets 3 bytes 180"
    assert expr_text({"weird": {"x": 1}}) == '{"weird": {"x": 1}}'
    assert rule_text({"expr": [{"match": {"op": "!=", "left": {"ct": {"key": "state"}},
                                          "right": "new"}}, {"drop": None}]}) == \
        "ct state != new drop"
