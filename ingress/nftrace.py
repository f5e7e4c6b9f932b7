"""nftables tracing for `cnet trace`: mark a probe's packets, hear what the rules did.

A short-lived table (``inet cnet_trace_<tag>``, its own, never ``inet cnet``) sets
``meta nftrace`` on packets of one probe flow at the earliest prerouting and output
priorities; from then on the kernel reports every rule of every table that matches
those packets, and every chain policy that decides their fate, as NFT_MSG_TRACE events
on the NFNLGRP_NFTRACE netlink group (what ``nft monitor trace`` prints). The monitor
here reads those events itself (a netlink socket, no subprocess); rule texts come from a
text listing with handles.

The trace bit lives on the packet and is cleared when it crosses into another network
namespace: events come from the namespace this runs in (cnetd's, where cnet's
firewall is).
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

FAMILY = "inet"
TRACE_TABLE_PREFIX = "cnet_trace_"
PRIO_FIRST = -350  # before conntrack (-200) and cnet's DNAT (-100)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTRACE = 9
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_TRACE = 17
NLMSG_ERROR, NLMSG_DONE = 2, 3

# enum nft_trace_attributes
(A_TABLE, A_CHAIN, A_RULE_HANDLE, A_TYPE, A_VERDICT, A_ID, A_LL_HEADER, A_NETWORK_HEADER,
 A_TRANSPORT_HEADER, A_IIF, A_IIFTYPE, A_OIF, A_OIFTYPE, A_MARK, A_NFPROTO,
 A_POLICY) = range(1, 17)
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop",
            -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
NFPROTO = {2: "ipv4", 10: "ipv6", 7: "bridge", 3: "arp", 1: "inet", 5: "netdev"}


class TraceError(Exception):
    """Tracing could not be set up (one line)."""


@dataclass(frozen=True)
class TraceEvent:
    """One NFT_MSG_TRACE event: a rule that matched, a return, or a chain policy."""

    id: int  # the same for every event of one packet in this namespace
    table: str
    family: int
    chain: str
    type: str  # rule / return / policy
    handle: int | None
    verdict: str | None  # accept, drop, jump, continue, ...
    target: str | None  # the chain of a jump/goto
    iif: int | None
    oif: int | None
    nfproto: str
    network: bytes  # the packet's network header as the rule saw it (after DNAT, ...)
    transport: bytes


# -- probe marking -----------------------------------------------------------------


def _match(left: Any, right: Any) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def flow_matches(proto: str, ident: int, src: str | None, v6: bool = False
                 ) -> list[list[dict]]:
    """The nft match expressions of a probe flow, one list per rule: the probe from
    its source address (an ICMP(v6) echo request by its identifier, TCP/UDP by its own
    source port), and answers to it (echo replies with that identifier, packets to
    that port: an answer may come back to a masquerading address)."""
    ip = "ip6" if v6 else "ip"
    saddr = [_match({"payload": {"protocol": ip, "field": "saddr"}}, src)] if src else []
    if proto == "icmp":
        icmp = "icmpv6" if v6 else "icmp"

        def echo(kind: str) -> list[dict]:
            return [_match({"payload": {"protocol": icmp, "field": "type"}}, kind),
                    _match({"payload": {"protocol": icmp, "field": "id"}}, ident)]

        return [[*saddr, *echo("echo-request")], echo("echo-reply")]
    l4 = _match({"meta": {"key": "l4proto"}}, proto)
    return [[*saddr, l4, _match({"payload": {"protocol": "th", "field": "sport"}}, ident)],
            [l4, _match({"payload": {"protocol": "th", "field": "dport"}}, ident)]]


def render_trace_table(name: str, matches: list[list[dict]]) -> list[dict]:
    """The trace table: at prerouting and output, before anything else, flag the probe."""
    t = {"family": FAMILY, "table": name}
    cmds: list[dict] = [{"add": {"table": {"family": FAMILY, "name": name}}}]
    for chain, hook in (("pre", "prerouting"), ("out", "output")):
        cmds.append({"add": {"chain": {**t, "name": chain, "type": "filter", "hook": hook,
                                       "prio": PRIO_FIRST, "policy": "accept"}}})
        for exprs in matches:
            cmds.append({"add": {"rule": {**t, "chain": chain, "expr": [
                *exprs, {"mangle": {"key": {"meta": {"key": "nftrace"}}, "value": 1}}]}}})
    return cmds


def _nft() -> Any:
    try:
        import nftables
    except ImportError as e:
        raise TraceError(f"python nftables binding missing: {e}") from None
    return nftables.Nftables()


class TraceTable:
    """The temporary marking table (context manager: always deleted on exit)."""

    def __init__(self, matches: list[list[dict]]):
        self.name = f"{TRACE_TABLE_PREFIX}{os.getpid()}_{time.monotonic_ns() % 10**9}"
        self._matches = matches
        self._nft = _nft()

    def __enter__(self) -> TraceTable:
        rc, _, err = self._nft.json_cmd({"nftables": render_trace_table(self.name,
                                                                        self._matches)})
        if rc != 0:
            raise TraceError(f"cannot set up nftables tracing: {err.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._nft.json_cmd({"nftables": [
            {"delete": {"table": {"family": FAMILY, "name": self.name}}}]})


def delete_stale_tables() -> int:
    """Delete trace tables a crashed trace left behind (daemon start, --cleanup)."""
    nft = _nft()
    nft.set_json_output(True)
    rc, out, _ = nft.cmd("list tables")
    if rc != 0 or not out:
        return 0
    import json

    stale = [o["table"] for o in json.loads(out).get("nftables", [])
             if "table" in o and o["table"]["name"].startswith(TRACE_TABLE_PREFIX)]
    for t in stale:
        nft.json_cmd({"nftables": [{"delete": {"table": {"family": t["family"],
                                                         "name": t["name"]}}}]})
    return len(stale)


# -- rule texts --------------------------------------------------------------------

_TABLE_RE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN_RE = re.compile(r"^\s+chain (\S+) \{")
_HANDLE_RE = re.compile(r"^\s+(.*?)\s+# handle (\d+)$")


RuleKey = tuple[str, str, str, int]  # family, table, chain, handle


def parse_rule_texts(listing: str) -> dict[RuleKey, str]:
    """(family, table, chain, handle) -> rule text, from `nft -a list ruleset` output
    (handles are numbered per table: `ip filter` and `ip6 filter` both have a #5)."""
    out: dict[RuleKey, str] = {}
    family = table = chain = ""
    for line in listing.splitlines():
        if m := _TABLE_RE.match(line):
            family, table, chain = m.group(1), m.group(2), ""
        elif m := _CHAIN_RE.match(line):
            chain = m.group(1)
        elif chain and (m := _HANDLE_RE.match(line)) and not line.lstrip().startswith(
                ("type ", "chain ", "set ", "map ")):
            out[(family, table, chain, int(m.group(2)))] = m.group(1)
    return out


FAMILIES = {1: "inet", 2: "ip", 10: "ip6", 7: "bridge", 3: "arp", 5: "netdev"}


def rule_texts() -> dict[RuleKey, str]:
    """The texts of every rule in this namespace's ruleset, by RuleKey."""
    nft = _nft()
    nft.set_handle_output(True)
    rc, out, _ = nft.cmd("list ruleset")
    return parse_rule_texts(out) if rc == 0 else {}


# -- the monitor ---------------------------------------------------------------------


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _u32(b: bytes | None) -> int | None:
    return struct.unpack("!I", b[:4])[0] if b and len(b) >= 4 else None


def _str(b: bytes | None) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace") if b else ""


def parse_event(payload: bytes) -> TraceEvent:
    """An NFT_MSG_TRACE message body (after the netlink header): nfgenmsg + attributes."""
    family = payload[0]
    a = _attrs(payload[4:])
    verdict = target = None
    if A_VERDICT in a:
        v = _attrs(a[A_VERDICT])
        code = _u32(v.get(NFTA_VERDICT_CODE))
        if code is not None:
            code = code - (1 << 32) if code >= 1 << 31 else code
            verdict = VERDICTS.get(code, str(code))
        target = _str(v.get(NFTA_VERDICT_CHAIN)) or None
    kind = TRACE_TYPES.get(_u32(a.get(A_TYPE)) or 0, "unspec")
    if kind == "policy" and verdict is None:
        policy = _u32(a.get(A_POLICY))
        verdict = VERDICTS.get(policy, str(policy)) if policy is not None else None
    handle = a.get(A_RULE_HANDLE)
    return TraceEvent(
        id=_u32(a.get(A_ID)) or 0, table=_str(a.get(A_TABLE)), family=family,
        chain=_str(a.get(A_CHAIN)), type=kind,
        handle=struct.unpack("!Q", handle[:8])[0] if handle and len(handle) >= 8 else None,
        verdict=verdict, target=target, iif=_u32(a.get(A_IIF)), oif=_u32(a.get(A_OIF)),
        nfproto=NFPROTO.get(_u32(a.get(A_NFPROTO)) or 0, "?"),
        network=a.get(A_NETWORK_HEADER, b""), transport=a.get(A_TRANSPORT_HEADER, b""))


def parse_messages(data: bytes) -> list[TraceEvent]:
    """Every trace event in one datagram read from the NFTRACE group."""
    out = []
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE:
            out.append(parse_event(data[off + 16:off + length]))
        off += (length + 3) & ~3
    return out


class TraceMonitor:
    """Trace events of this namespace, read from the moment it is opened."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise TraceError(f"cannot listen to nftables trace events: {exc}") from None
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
        except OSError as exc:
            self._sock.close()
            raise TraceError(f"cannot listen to nftables trace events: {exc}") from None
        self._sock.setblocking(False)
        self.events: list[TraceEvent] = []
        self.lost = False  # the socket overflowed: events are missing

    def collect(self, timeout: float = 0.0) -> list[TraceEvent]:
        """Read what is queued (waiting up to `timeout` for the first datagram)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._sock], [], [], max(left, 0))
            if not ready:
                return self.events
            while True:
                try:
                    data = self._sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError:  # ENOBUFS: the kernel dropped events
                    self.lost = True
                    break
                self.events += parse_messages(data)
            if time.monotonic() >= deadline:
                return self.events

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> TraceMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
