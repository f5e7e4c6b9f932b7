"""cnet.ingress.firewall against the real kernel, inside throwaway namespaces only.

The firewall code runs in-process on a worker thread that setns()'d into a test
namespace (setns moves only that thread; the nftables context is created there).
Assertions read the kernel with `nft -j list` and with real pings. The first tests
are pure rendering checks and need no kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from cnet.ingress.firewall import (
    Firewall,
    NetworkRules,
    Present,
    render_network,
    render_removal,
    render_reset,
)

T = TypeVar("T")

A = NetworkRules("a1" * 32, "br-a", ("10.99.1.0/24",), ("fd00:99:1::/64",), False, True, True)
B = NetworkRules("b2" * 32, "br-b", ("10.99.2.0/24",), (), False, True, True)
C = NetworkRules("c3" * 32, "br-c", ("10.99.3.0/24",), (), True, True, True)


# --- pure rendering ----------------------------------------------------------------


def _verbs(cmds: list[dict], verb: str, kind: str) -> list[dict]:
    return [c[verb][kind] for c in cmds if verb in c and kind in c[verb]]


def _elems(cmds: list[dict]) -> list[tuple[str, str, list]]:
    return [(verb, el["name"], el["elem"]) for verb in ("add", "delete")
            for el in [c[verb]["element"] for c in cmds if verb in c and "element" in c[verb]]]


def _icc(br: str) -> dict:
    return {"concat": [br, br]}


def test_reset_keys_everything_by_bridge() -> None:
    no_masq = NetworkRules("d4" * 32, "br-d", ("10.0.0.0/16",), (), False, False, False)
    cmds = render_reset([A, B, C, no_masq, A])
    assert cmds[0] == {"add": {"table": {"family": "inet", "name": "cnet"}}}
    assert cmds[1] == {"delete": {"table": {"family": "inet", "name": "cnet"}}}
    elems = {el["name"]: el["elem"] for el in _verbs(cmds, "add", "element")}
    assert elems["bridges"] == ["br-a", "br-b", "br-c", "br-d"]  # duplicates dropped
    assert elems["masq"] == ["br-a", "br-b"]  # not internal C, not D (masquerade off)
    assert elems["internal"] == ["br-c"]
    assert elems["icc"] == [_icc("br-a"), _icc("br-b"), _icc("br-c")]  # not D (icc off)
    assert not _verbs(cmds, "delete", "element")
    # No per-network chain (libnftables lists every chain before an element add, the
    # kernel walks them all at commit) and no verdict map: only the four base chains.
    assert [c["name"] for c in _verbs(cmds, "add", "chain")] == [
        "prerouting", "output", "forward", "postrouting"]
    assert not _verbs(cmds, "add", "map") or all(
        m["name"].startswith("pub_") for m in _verbs(cmds, "add", "map"))
    assert "jump" not in json.dumps([c for c in cmds if "rule" in c.get("add", {})
                                     and c["add"]["rule"]["chain"] != "prerouting"
                                     and c["add"]["rule"]["chain"] != "output"])
    # No interval set anywhere: libnftables lists every interval set's elements before
    # any batch that adds or deletes an element (see bench/nft_batch.py).
    assert not [s for s in _verbs(cmds, "add", "set") if "interval" in s.get("flags", [])]
    masq_rules = [r for r in _verbs(cmds, "add", "rule")
                  if r["chain"] == "postrouting" and "@masq" in json.dumps(r)]
    assert len(masq_rules) == 1  # IPv4 and IPv6 alike
    assert "@masq" in json.dumps(masq_rules[0]) and '"masquerade"' in json.dumps(masq_rules[0])


def test_forward_rules_are_constant() -> None:
    """The forward chain is the same whatever the networks (order matters: first match)."""
    fwd = [r["expr"] for r in _verbs(render_reset([A, B, C]), "add", "rule")
           if r["chain"] == "forward"]
    assert fwd == [r["expr"] for r in _verbs(render_reset([]), "add", "rule")
                   if r["chain"] == "forward"]
    text = [json.dumps(e) for e in fwd]
    assert '"@icc"' in text[0] and "iifname" in text[0] and text[0].endswith('{"accept": null}]')
    assert '"@bridges"' in text[1] and text[1].count("@bridges") == 2 and "drop" in text[1]
    assert "iifname" in text[2] and "@internal" in text[2] and "drop" in text[2]
    assert "oifname" in text[3] and "@internal" in text[3] and "drop" in text[3]
    assert "established" in text[4] and "accept" in text[4]
    assert "dnat" in text[5] and "accept" in text[5]
    assert text[6] == json.dumps([{"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                             "right": "@bridges"}}, {"drop": None}])
    assert len(fwd) == 7


def test_network_is_only_set_elements() -> None:
    # Internal C (icc on): in `internal` and `icc`, made absent from `masq` (add, delete).
    cmds = render_network(C)
    assert all(list(c.values())[0].keys() == {"element"} for c in cmds)
    assert _elems(cmds) == [
        ("add", "bridges", ["br-c"]), ("add", "masq", ["br-c"]),
        ("add", "internal", ["br-c"]), ("add", "icc", [_icc("br-c")]),
        ("delete", "masq", ["br-c"]),
    ]
    assert [list(c)[0] for c in cmds] == ["add", "add", "delete", "add", "add"]  # in order
    # A: masquerading, icc on, not internal.
    assert _elems(render_network(A)) == [
        ("add", "bridges", ["br-a"]), ("add", "masq", ["br-a"]),
        ("add", "internal", ["br-a"]), ("add", "icc", [_icc("br-a")]),
        ("delete", "internal", ["br-a"]),
    ]
    # icc and masquerade off: made absent from both.
    off = NetworkRules(A.id, A.bridge, A.subnets4, A.subnets6, False, False, False)
    assert sorted(_elems(render_network(off))) == sorted([
        ("add", "bridges", ["br-a"]),
        *((v, n, k) for n, k in (("masq", ["br-a"]), ("internal", ["br-a"]),
                                 ("icc", [_icc("br-a")])) for v in ("add", "delete")),
    ])


def test_removal_from_listing_deletes_only_what_is_there() -> None:
    # Without a listing: `bridges` must be there, the flag sets are cleared either way.
    cmds = render_removal(C)
    assert _elems(cmds) == [
        ("add", "masq", ["br-c"]), ("add", "internal", ["br-c"]),
        ("add", "icc", [_icc("br-c")]),
        ("delete", "bridges", ["br-c"]), ("delete", "masq", ["br-c"]),
        ("delete", "internal", ["br-c"]), ("delete", "icc", [_icc("br-c")]),
    ]
    assert [list(c)[0] for c in cmds] == ["delete"] + ["add", "delete"] * 3
    listing = {"nftables": [
        {"table": {"family": "inet", "name": "cnet"}},
        {"set": {"name": "bridges", "elem": ["br-a", "br-b"]}},
        {"set": {"name": "masq", "elem": ["br-b"]}},
        {"set": {"name": "internal", "elem": [{"elem": {"val": "br-a"}}]}},
        {"set": {"name": "icc", "elem": [_icc("br-a"), _icc("br-b")]}},
    ]}
    present = Present.parse(listing)
    assert present == Present({"br-a", "br-b"}, {"br-b"}, {"br-a"},
                              {("br-a", "br-a"), ("br-b", "br-b")})
    assert _verbs(render_removal(A, present), "delete", "element") == [
        {"family": "inet", "table": "cnet", "name": "bridges", "elem": ["br-a"]},
        {"family": "inet", "table": "cnet", "name": "internal", "elem": ["br-a"]},
        {"family": "inet", "table": "cnet", "name": "icc", "elem": [_icc("br-a")]},
    ]
    assert render_removal(A, Present()) == []
    assert [c for c in render_removal(C, present) if "add" in c] == []


# --- kernel helpers ----------------------------------------------------------------

kernel = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
    reason="needs root, iproute2 and nft",
)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=15)


def nsx(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn on a fresh thread that has entered namespace `ns` (never the test's own)."""
    from cnet.cnm.osl.nsenter import in_netns

    home = os.stat("/proc/self/ns/net").st_ino

    def body() -> T:
        with in_netns(f"/run/netns/{ns}"):
            assert os.stat("/proc/thread-self/ns/net").st_ino != home
            return fn()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(body).result()


def fw(ns: str, method: str, *args: Any) -> Any:
    """A fresh Firewall inside `ns`, calling one method (as a daemon restart would)."""
    return in_ns(ns, lambda: getattr(Firewall(), method)(*args))


def table(ns: str) -> dict[str, Any] | None:
    """`nft -j list table inet cnet` boiled down to chains and element lists."""
    res = nsx(ns, "nft", "-j", "list", "table", "inet", "cnet", check=False)
    if res.returncode != 0:
        return None
    found: dict[str, Any] = {"chains": set()}
    for obj in json.loads(res.stdout)["nftables"]:
        if "chain" in obj:
            found["chains"].add(obj["chain"]["name"])
        for kind in ("set", "map"):
            if kind in obj:
                found[obj[kind]["name"]] = obj[kind].get("elem", [])
    return found


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """Factory of throwaway namespaces, all deleted at teardown (even on failure)."""
    made: list[str] = []

    def make() -> str:
        name = f"cnet-fwtest-{uuid.uuid4().hex[:8]}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            sh("ip", "netns", "del", name, check=False)


# --- ruleset in the kernel ---------------------------------------------------------

BASE_CHAINS = {"prerouting", "output", "forward", "postrouting"}
SETS = ("bridges", "masq", "internal", "icc")


def sets(t: dict[str, Any]) -> dict[str, list]:
    """The four network sets, sorted, icc elements as (iifname, oifname) tuples."""
    return {k: sorted(tuple(e["concat"]) if isinstance(e, dict) else e for e in t[k])
            for k in SETS}


@pytest.mark.integration
@kernel
def test_reset_replaces_stale_state(netns: Callable[[], str]) -> None:
    ns = netns()
    fw(ns, "reset", [A, B, C])
    t = table(ns)
    assert t is not None
    assert t["chains"] == BASE_CHAINS
    assert sets(t) == {"bridges": ["br-a", "br-b", "br-c"], "masq": ["br-a", "br-b"],
                       "internal": ["br-c"],
                       "icc": [("br-a", "br-a"), ("br-b", "br-b"), ("br-c", "br-c")]}

    fw(ns, "reset", [B])
    t = table(ns)
    assert t is not None
    assert t["chains"] == BASE_CHAINS
    assert sets(t) == {"bridges": ["br-b"], "masq": ["br-b"], "internal": [],
                       "icc": [("br-b", "br-b")]}


@pytest.mark.integration
@kernel
def test_add_remove_and_partial_state(netns: Callable[[], str]) -> None:
    ns = netns()
    empty = {k: [] for k in SETS}

    fw(ns, "add_network", A)  # no reset first: the base table is created on demand
    fw(ns, "add_network", A)  # re-adding is idempotent (elements equal)
    t = table(ns)
    assert t is not None and t["chains"] == BASE_CHAINS
    assert sets(t) == {"bridges": ["br-a"], "masq": ["br-a"], "internal": [],
                       "icc": [("br-a", "br-a")]}
    off = NetworkRules(A.id, A.bridge, A.subnets4, A.subnets6, False, False, False)
    fw(ns, "add_network", off)  # re-adding with masquerade and icc off takes them away
    t = table(ns)
    assert t is not None and sets(t) == empty | {"bridges": ["br-a"]}
    internal = NetworkRules(A.id, A.bridge, A.subnets4, A.subnets6, True, True, True)
    fw(ns, "add_network", internal)  # internal: no masq, in `internal`
    t = table(ns)
    assert t is not None and sets(t) == {"bridges": ["br-a"], "masq": [],
                                         "internal": ["br-a"], "icc": [("br-a", "br-a")]}
    fw(ns, "add_network", A)  # and back: out of `internal`
    t = table(ns)
    assert t is not None and sets(t) == {"bridges": ["br-a"], "masq": ["br-a"],
                                         "internal": [], "icc": [("br-a", "br-a")]}
    fw(ns, "add_network", internal)
    fw(ns, "remove_network", off)  # removal clears every set whatever the flags say
    t = table(ns)
    assert t is not None and t["chains"] == BASE_CHAINS and sets(t) == empty

    # A half-removed network (some elements already gone) still removes cleanly; the
    # other network's elements stay.
    fw(ns, "add_network", B)
    fw(ns, "add_network", C)
    nsx(ns, "nft", "delete", "element", "inet", "cnet", "bridges", '{ "br-c" }')
    nsx(ns, "nft", "delete", "element", "inet", "cnet", "icc", '{ "br-c" . "br-c" }')
    fw(ns, "remove_network", C)
    fw(ns, "remove_network", C)  # already gone: no error
    t = table(ns)
    assert t is not None and sets(t) == {"bridges": ["br-b"], "masq": ["br-b"],
                                         "internal": [], "icc": [("br-b", "br-b")]}
    nsx(ns, "nft", "delete", "element", "inet", "cnet", "masq", '{ "br-b" }')
    fw(ns, "remove_network", B)
    t = table(ns)
    assert t is not None and t["chains"] == BASE_CHAINS and sets(t) == empty

    fw(ns, "delete_table")
    assert table(ns) is None
    fw(ns, "delete_table")  # absent: no error
    fw(ns, "remove_network", B)  # no table at all: no error
    assert fw(ns, "available") is True
    assert table(ns) is None  # available() is a dry run


# --- real packets ------------------------------------------------------------------


def ping(ns: str, addr: str) -> bool:
    return nsx(ns, "ping", "-n", "-q", "-c1", "-W1", addr, check=False).returncode == 0


OUTSIDE6 = "fd00:192:0:2::2"


def _sandbox(host: str, sandbox: str, bridge: str, addr: str, gw: str) -> None:
    peer = f"v{sandbox[-6:]}"
    sh(
        "ip",
        "-n",
        host,
        "link",
        "add",
        peer,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        sandbox,
    )
    sh("ip", "-n", host, "link", "set", peer, "master", bridge, "up")
    sh("ip", "-n", sandbox, "addr", "add", f"{addr}/24", "dev", "eth0")
    sh("ip", "-n", sandbox, "link", "set", "eth0", "up")
    sh("ip", "-n", sandbox, "route", "add", "default", "via", gw)


@pytest.fixture
def topology(netns: Callable[[], str]) -> dict[str, str]:
    """host ns with br-a/br-b/br-c, one sandbox on each, an outside ns with no way back.

    Subnets: br-a 10.99.1.0/24 and fd00:99:1::/64, br-b 10.99.2.0/24, br-c 10.99.3.0/24
    (internal); sandboxes a2/b2/c2 on the same bridges in 10.99.11/12/13.0/24;
    host-outside link 192.0.2.0/24 and fd00:192:0:2::/64. The outside
    namespace has no route to either sandbox subnet, so only masqueraded traffic can be
    answered.
    """
    host, out = netns(), netns()
    nodes = {"host": host, "outside": out}
    nsx(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    nsx(host, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    for name, net in (("a", 1), ("b", 2), ("c", 3)):
        br = f"br-{name}"
        sh("ip", "-n", host, "link", "add", br, "type", "bridge")
        sh("ip", "-n", host, "addr", "add", f"10.99.{net}.1/24", "dev", br)
        sh("ip", "-n", host, "link", "set", br, "up")
        sandbox = nodes[name] = netns()
        _sandbox(host, sandbox, br, f"10.99.{net}.2", f"10.99.{net}.1")
        # A second sandbox on the bridge, in a second subnet of the bridge: traffic
        # between the two is routed by the host (iifname == oifname), as icc governs.
        sh("ip", "-n", host, "addr", "add", f"10.99.{net + 10}.1/24", "dev", br)
        sandbox = nodes[f"{name}2"] = netns()
        _sandbox(host, sandbox, br, f"10.99.{net + 10}.2", f"10.99.{net + 10}.1")
    sh(
        "ip",
        "-n",
        host,
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        out,
    )
    sh("ip", "-n", host, "addr", "add", "192.0.2.1/24", "dev", "uplink")
    sh("ip", "-n", host, "link", "set", "uplink", "up")
    sh("ip", "-n", out, "addr", "add", "192.0.2.2/24", "dev", "eth0")
    sh("ip", "-n", out, "link", "set", "eth0", "up")
    # IPv6 on br-a only (nodad: usable at once).
    for ns, dev, addr in (
        (host, "br-a", "fd00:99:1::1/64"),
        (nodes["a"], "eth0", "fd00:99:1::2/64"),
        (host, "uplink", "fd00:192:0:2::1/64"),
        (out, "eth0", f"{OUTSIDE6}/64"),
    ):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad")
    sh("ip", "-n", nodes["a"], "-6", "route", "add", "default", "via", "fd00:99:1::1")
    return nodes


@pytest.mark.integration
@kernel
def test_packets(topology: dict[str, str]) -> None:
    n = topology
    assert ping(n["a"], "10.99.2.2") and ping(n["b"], "10.99.1.2")  # plain routing
    assert not ping(n["a"], "192.0.2.2")  # outside cannot answer un-NATed traffic
    assert ping(n["a"], "fd00:99:1::1") and not ping(n["a"], OUTSIDE6)

    fw(n["host"], "reset", [A, B, C])
    assert not ping(n["a"], "10.99.2.2"), "inter-network traffic must be dropped"
    assert not ping(n["b"], "10.99.1.2"), "inter-network traffic must be dropped"
    assert ping(n["a"], "10.99.1.1"), "the gateway (host input) stays reachable"
    assert ping(n["a"], "192.0.2.2"), "egress is masqueraded"
    assert ping(n["a"], OUTSIDE6), "IPv6 egress is masqueraded"
    assert ping(n["b"], "192.0.2.2"), "egress is masqueraded"
    assert ping(n["c"], "10.99.3.1"), "an internal network still reaches its gateway"
    assert not ping(n["c"], "192.0.2.2"), "an internal network must not leave"

    no_masq = NetworkRules(A.id, A.bridge, A.subnets4, A.subnets6, False, True, False)
    fw(n["host"], "remove_network", A)
    fw(n["host"], "add_network", no_masq)
    assert not ping(n["a"], "192.0.2.2"), "without masquerade outside cannot answer"
    assert not ping(n["a"], OUTSIDE6), "without masquerade outside cannot answer"
    assert ping(n["b"], "192.0.2.2")
    assert not ping(n["a"], "10.99.2.2"), "re-added: still isolated"

    fw(n["host"], "add_network", A)  # re-add with masquerade on, then off again
    assert ping(n["a"], "192.0.2.2") and ping(n["a"], OUTSIDE6)
    fw(n["host"], "add_network", no_masq)
    assert not ping(n["a"], "192.0.2.2"), "re-added without masquerade: no SNAT"


SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"ok")
    c.close()
"""

CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    sys.exit(0 if s.recv(2) == b"ok" else 1)
except OSError:
    sys.exit(1)
"""


def connects(ns: str, addr: str, port: int) -> bool:
    return nsx(ns, sys.executable, "-c", CLIENT, addr, str(port), check=False).returncode == 0


def snmp(ns: str, proto: str, counter: str) -> int:
    """A counter of the namespace's /proc/net/snmp (e.g. Icmp InEchos): shows whether
    a packet arrived even when its answer is dropped on the way back."""
    lines = [ln.split() for ln in nsx(ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith(f"{proto}:")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))[counter])


def reaches(ns: str, addr: str, target: str) -> bool:
    """Whether an echo request from `ns` arrives in namespace `target` (ping's outcome
    aside: the reply may be dropped)."""
    before = snmp(target, "Icmp", "InEchos")
    ping(ns, addr)
    return snmp(target, "Icmp", "InEchos") > before


def syn_arrives(ns: str, addr: str, port: int, target: str) -> bool:
    """Whether a TCP connection attempt from `ns` reaches namespace `target`."""
    before = snmp(target, "Tcp", "InSegs")
    connects(ns, addr, port)
    return snmp(target, "Tcp", "InSegs") > before


@pytest.mark.integration
@kernel
def test_packets_icc_internal_inbound_and_published(topology: dict[str, str]) -> None:
    """Routed traffic inside a network, internal networks and traffic into a network.

    The outside gets a route to the sandboxes, so that every drop below is the
    firewall's (each path is shown to work without it first).
    """
    n, host, out = topology, topology["host"], topology["outside"]
    nsx(out, "ip", "route", "add", "10.99.0.0/16", "via", "192.0.2.1")
    servers = [subprocess.Popen(["ip", "netns", "exec", n[sb], sys.executable, "-c", SERVER],
                                stdout=subprocess.PIPE, text=True) for sb in ("a", "c")]
    try:
        for srv in servers:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        assert ping(n["a"], "10.99.11.2") and ping(n["c"], "10.99.13.2")
        assert ping(out, "10.99.1.2") and ping(out, "10.99.3.2") and ping(n["c"], "192.0.2.2")
        assert connects(out, "10.99.1.2", 8080) and connects(out, "10.99.3.2", 8080)
        assert reaches(n["c"], "192.0.2.2", out) and syn_arrives(out, "10.99.3.2", 8080, n["c"])

        a = NetworkRules(A.id, A.bridge, A.subnets4, A.subnets6, False, True, False)
        fw(host, "reset", [a, B, C])
        assert ping(n["a"], "10.99.11.2"), "icc on: routed traffic inside the network"
        assert ping(n["c"], "10.99.13.2"), "an internal network keeps its own traffic"
        assert ping(n["a"], "192.0.2.2"), "replies come back in (no masquerade here)"
        assert not ping(out, "10.99.1.2"), "unsolicited traffic into a network"
        assert not connects(out, "10.99.1.2", 8080), "unsolicited traffic into a network"
        assert not ping(out, "10.99.3.2"), "nothing enters an internal network"
        assert not reaches(n["c"], "192.0.2.2", out), "nothing leaves an internal network"
        assert not ping(n["c2"], "10.99.1.2") and not ping(n["a"], "10.99.13.2")

        fw(host, "publish", [(("tcp", "", 8080), "10.99.1.2", 8080),
                             (("tcp", "192.0.2.1", 8081), "10.99.3.2", 8080)])
        assert connects(out, "192.0.2.1", 8080), "a published port lets DNAT'd traffic in"
        assert not syn_arrives(out, "192.0.2.1", 8081, n["c"]), "not into an internal network"
        assert not connects(n["b"], "192.0.2.1", 8080), "nor from another network"
        assert connects(n["a2"], "192.0.2.1", 8080), "hairpin inside the network (icc on)"

        icc_off = NetworkRules(A.id, A.bridge, A.subnets4, A.subnets6, False, False, False)
        fw(host, "add_network", icc_off)
        assert not ping(n["a"], "10.99.11.2"), "icc off: routed traffic inside dropped"
        assert not ping(n["a2"], "10.99.1.2"), "icc off: routed traffic inside dropped"
        assert not connects(n["a2"], "192.0.2.1", 8080), "icc off: no hairpin either"
        assert ping(n["a"], "192.0.2.2") and connects(out, "192.0.2.1", 8080)
        fw(host, "add_network", a)
        assert ping(n["a"], "10.99.11.2"), "icc back on"

        not_internal = NetworkRules(C.id, C.bridge, C.subnets4, C.subnets6, False, True, False)
        fw(host, "add_network", not_internal)
        assert ping(n["c"], "192.0.2.2") and connects(out, "192.0.2.1", 8081)
        assert not ping(out, "10.99.3.2"), "still no unsolicited traffic in"
        fw(host, "add_network", C)
        assert not reaches(n["c"], "192.0.2.2", out)
        assert not syn_arrives(out, "192.0.2.1", 8081, n["c"])
        assert ping(n["c"], "10.99.13.2")

        fw(host, "remove_network", a)  # no longer a cnet network: plain routing again
        assert ping(out, "10.99.1.2") and ping(n["a"], "10.99.11.2")
    finally:
        for srv in servers:
            srv.kill()
            srv.wait()
