"""Pure parts of `cnet trace`: nftables trace messages and rule listings, the marking
table, and the ordering of the probe's copies into a path."""

from __future__ import annotations

import socket
import struct

from cnet.capture import trace
from cnet.capture.live import Packet, Target
from cnet.ingress import nftrace


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _trace_msg(table: str, chain: str, handle: int | None, kind: int, verdict: int,
               net: bytes, l4: bytes, trace_id: int = 7) -> bytes:
    body = struct.pack("=BBH", 1, 0, 0)  # nfgenmsg: inet
    body += _attr(nftrace.A_TABLE, table.encode() + b"\0")
    body += _attr(nftrace.A_CHAIN, chain.encode() + b"\0")
    if handle is not None:
        body += _attr(nftrace.A_RULE_HANDLE, struct.pack("!Q", handle))
    body += _attr(nftrace.A_TYPE, struct.pack("!I", kind))
    body += _attr(nftrace.A_VERDICT | 0x8000,
                  _attr(nftrace.NFTA_VERDICT_CODE, struct.pack("!i", verdict)))
    body += _attr(nftrace.A_ID, struct.pack("!I", trace_id))
    body += _attr(nftrace.A_NETWORK_HEADER, net)
    body += _attr(nftrace.A_TRANSPORT_HEADER, l4)
    body += _attr(nftrace.A_IIF, struct.pack("!I", 3))
    kind_nl = (nftrace.NFNL_SUBSYS_NFTABLES << 8) | nftrace.NFT_MSG_TRACE
    return struct.pack("=IHHII", 16 + len(body), kind_nl, 0, 0, 0) + body


def _ipv4(src: str, dst: str, proto: int) -> bytes:
    return (struct.pack("!BBHHHBBH", 0x45, 0, 28, 1, 0, 64, proto, 0)
            + socket.inet_aton(src) + socket.inet_aton(dst))


ICMP_ECHO = struct.pack("!BBHHH", 8, 0, 0, 4242, 1)


def test_trace_messages_parse():
    net = _ipv4("10.0.0.2", "10.1.0.2", 1)
    data = _trace_msg("cnet", "forward", 18, 3, 0, net, ICMP_ECHO)
    data += _trace_msg("cnet", "forward", None, 1, 1, net, ICMP_ECHO)
    ev, policy = nftrace.parse_messages(data)
    assert (ev.table, ev.chain, ev.handle, ev.type, ev.verdict) == (
        "cnet", "forward", 18, "rule", "drop")
    assert ev.id == 7 and ev.iif == 3 and ev.network == net and ev.family == 1
    assert policy.type == "policy" and policy.verdict == "accept" and policy.handle is None


def test_rule_texts_from_a_listing():
    listing = """table inet cnet {
\tset bridges { # handle 1
\t\ttype ifname
\t}
\tchain forward { # handle 5
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname @bridges oifname @bridges drop comment "isolation between networks" # handle 18
\t}
\tchain pub-tcp-any-80 { # handle 9
\t\tmeta l4proto tcp dnat ip to 10.0.0.2:80 # handle 10
\t}
}
"""
    listing += """table ip6 cnet {
	chain forward { # handle 1
		meta l4proto ipv6-icmp accept # handle 18
	}
}
"""
    texts = nftrace.parse_rule_texts(listing)
    assert texts == {
        ("inet", "cnet", "forward", 18):
            'iifname @bridges oifname @bridges drop comment "isolation between networks"',
        ("inet", "cnet", "pub-tcp-any-80", 10): "meta l4proto tcp dnat ip to 10.0.0.2:80",
        ("ip6", "cnet", "forward", 18): "meta l4proto ipv6-icmp accept"}  # same handle
    assert trace._comment(texts[("inet", "cnet", "forward", 18)]) == (
        "iifname @bridges oifname @bridges drop", "isolation between networks")


def test_marking_table_flags_only_the_probe_flow():
    cmds = nftrace.render_trace_table("cnet_trace_x",
                                      nftrace.flow_matches("tcp", 40000, "10.0.0.2"))
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert len(rules) == 4  # the probe and its answers, at prerouting and at output
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert {c["hook"] for c in chains} == {"prerouting", "output"}
    assert all(c["prio"] < -200 for c in chains)  # before conntrack and cnet's DNAT
    for r in rules:
        assert r["expr"][-1] == {"mangle": {"key": {"meta": {"key": "nftrace"}}, "value": 1}}
        assert r["expr"][-2]["match"]["right"] == 40000
    request = rules[0]["expr"]
    assert request[0]["match"] == {"op": "==", "left": {"payload": {
        "protocol": "ip", "field": "saddr"}}, "right": "10.0.0.2"}


def test_the_same_port_elsewhere_is_not_the_probe():
    who = trace.Identity(40000, "udp", "10.0.0.2", frozenset({"10.1.0.2"}),
                         frozenset({"10.0.0.1", "192.0.2.1"}))
    flow = {"protocol": "UDP", "sport": 40000, "dport": 9999}
    assert who.role({**flow, "src": "10.0.0.2", "dst": "10.1.0.2"}) == "request"
    assert who.role({**flow, "src": "192.0.2.1", "dst": "10.1.0.2"}) == "request"  # SNAT
    assert who.role({**flow, "src": "10.0.0.3", "dst": "10.1.0.2"}) is None  # b's flow
    back = {"protocol": "UDP", "sport": 9999, "dport": 40000}
    assert who.role({**back, "src": "10.1.0.2", "dst": "10.0.0.2"}) == "reply"
    assert who.role({**back, "src": "10.1.0.2", "dst": "192.0.2.1"}) == "reply"
    assert who.role({**back, "src": "10.9.0.9", "dst": "10.0.0.3"}) is None


def _frame(src: str, dst: str, kind: int) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    icmp = struct.pack("!BBHHH", kind, 0, 0, 4242, 1)
    return eth + _ipv4(src, dst, 1) + icmp


def test_hops_in_path_order_whatever_the_timestamps():
    """A frame keeps the timestamp it got entering a namespace: sorting by time alone
    puts the receiver before the bridge. Copies are ordered along the path."""
    src, node, dst = (trace.Place(p, label, {"br0": "bridge of n"}) for p, label in (
        ("/ns/a", "a"), ("/ns/node", "node"), ("/ns/b", "b")))
    plan = trace.Plan(src="a", src_netns="/ns/a", dst="b", dst_ip="10.0.0.3", dst_name="b",
                      proto="icmp", port=None, places=[src, node, dst],
                      node_netns="/ns/node")
    req, rep = _frame("10.0.0.2", "10.0.0.3", 8), _frame("10.0.0.3", "10.0.0.2", 0)

    def pkt(place, ifname, out, data, ts):
        return Packet(Target(place.netns, "*", place.label), ts, data, out, len(data), ifname)

    packets = [pkt(dst, "eth0", False, req, 1005), pkt(node, "veth-b", True, req, 1010),
               pkt(src, "eth0", True, req, 1000), pkt(node, "veth-a", False, req, 1020),
               pkt(dst, "eth0", True, rep, 2000), pkt(src, "eth0", False, rep, 2003),
               pkt(node, "veth-b", False, rep, 2000), pkt(node, "veth-a", True, rep, 2000)]
    obs = trace.Observed(4242, "10.0.0.2", None, trace.Answer("answer", "echo-reply"),
                         packets, [], {})
    who = trace.Identity(4242, "icmp", "10.0.0.2", frozenset({"10.0.0.3"}), frozenset())
    got = [(h["Packet"], h["Where"], h["Interface"], h["Direction"])
           for h in trace.hops(plan, obs, who)]
    assert got == [("request", "a", "eth0", "out"), ("request", "node", "veth-a", "in"),
                   ("request", "node", "veth-b", "out"), ("request", "b", "eth0", "in"),
                   ("reply", "b", "eth0", "out"), ("reply", "node", "veth-b", "in"),
                   ("reply", "node", "veth-a", "out"), ("reply", "a", "eth0", "in")]
