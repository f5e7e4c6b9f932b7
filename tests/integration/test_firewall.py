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


def test_reset_masquerades_by_bridge() -> None:
    no_masq = NetworkRules("d4" * 32, "br-d", ("10.0.0.0/16",), (), False, True, False)
    cmds = render_reset([A, B, C, no_masq, A])
    assert cmds[0] == {"add": {"table": {"family": "inet", "name": "cnet"}}}
    assert cmds[1] == {"delete": {"table": {"family": "inet", "name": "cnet"}}}
    elems = {el["name"]: el["elem"] for el in _verbs(cmds, "add", "element")}
    assert elems["bridges"] == ["br-a", "br-b", "br-c", "br-d"]  # duplicates dropped
    assert elems["masq"] == ["br-a", "br-b"]  # not internal C, not D (masquerade off)
    assert not _verbs(cmds, "delete", "element")
    # No interval set anywhere: libnftables lists every interval set's elements before
    # any batch that adds or deletes an element (see bench/nft_batch.py).
    assert not [s for s in _verbs(cmds, "add", "set") if "interval" in s.get("flags", [])]
    masq_rules = [r for r in _verbs(cmds, "add", "rule")
                  if r["chain"] == "postrouting" and "@masq" in json.dumps(r)]
    assert len(masq_rules) == 1  # IPv4 and IPv6 alike
    assert "@masq" in json.dumps(masq_rules[0]) and '"masquerade"' in json.dumps(masq_rules[0])


def test_reset_rejects_conflicts() -> None:
    with pytest.raises(ValueError, match="bridge br-a"):
        render_reset([A, NetworkRules("f6" * 32, "br-a", (), (), False, True, True)])
    with pytest.raises(ValueError):
        NetworkRules("a1" * 32, "br-a", ("fd00::/64",), (), False, True, True)


def test_internal_network_rules() -> None:
    rules = _verbs(render_network(C), "add", "rule")
    out = [r["expr"] for r in rules if r["chain"] == C.chain_out]
    in_ = [r["expr"] for r in rules if r["chain"] == C.chain_in]
    assert out[-1] == [{"drop": None}]
    assert not any("ct" in json.dumps(e) and "dnat" in json.dumps(e) for e in in_)
    # No masquerade: the bridge is made absent from `masq` (add, then delete, in order).
    masq = [
        (verb, c[verb]["element"]["elem"])
        for c in render_network(C)
        for verb in c
        if "element" in c[verb] and c[verb]["element"]["name"] == "masq"
    ]
    assert masq == [("add", ["br-c"]), ("delete", ["br-c"])]
    masq = [c for c in render_network(A) if "masq" in json.dumps(c)]
    assert masq == [
        {"add": {"element": {"family": "inet", "table": "cnet", "name": "masq", "elem": ["br-a"]}}}
    ]


def test_removal_from_listing_deletes_only_what_is_there() -> None:
    present = Present(chains={A.chain_in}, bridges={"br-a"}, masq={"br-a"})
    present.maps["fwd_out"]["br-x"] = A.chain_in  # stray key still jumping to our chain
    cmds = render_removal(A, present)
    assert _verbs(cmds, "delete", "element") == [
        {"family": "inet", "table": "cnet", "name": "fwd_out", "elem": ["br-x"]},
        {"family": "inet", "table": "cnet", "name": "bridges", "elem": ["br-a"]},
        {"family": "inet", "table": "cnet", "name": "masq", "elem": ["br-a"]},
    ]
    assert [c["name"] for c in _verbs(cmds, "delete", "chain")] == [A.chain_in]
    # Another network's chain claims the bridge: its set elements stay.
    present.maps["fwd_in"]["br-a"] = B.chain_out
    names = [e["name"] for e in _verbs(render_removal(A, present), "delete", "element")]
    assert names == ["fwd_out"]


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


@pytest.mark.integration
@kernel
def test_reset_replaces_stale_state(netns: Callable[[], str]) -> None:
    ns = netns()
    fw(ns, "reset", [A, B])
    t = table(ns)
    assert t is not None
    assert t["chains"] == BASE_CHAINS | {A.chain_in, A.chain_out, B.chain_in, B.chain_out}
    assert sorted(t["bridges"]) == ["br-a", "br-b"]
    assert t["fwd_in"] == [
        ["br-a", {"jump": {"target": A.chain_out}}],
        ["br-b", {"jump": {"target": B.chain_out}}],
    ]
    assert sorted(t["masq"]) == ["br-a", "br-b"]

    fw(ns, "reset", [B])
    t = table(ns)
    assert t is not None
    assert t["chains"] == BASE_CHAINS | {B.chain_in, B.chain_out}
    assert t["bridges"] == ["br-b"]
    assert t["fwd_out"] == [["br-b", {"jump": {"target": B.chain_in}}]]
    assert t["masq"] == ["br-b"]


@pytest.mark.integration
@kernel
def test_add_remove_and_partial_state(netns: Callable[[], str]) -> None:
    ns = netns()
    empty = {"bridges": [], "masq": [], "fwd_in": [], "fwd_out": []}

    fw(ns, "add_network", A)  # no reset first: the base table is created on demand
    fw(ns, "add_network", A)  # re-adding is idempotent (chains flushed, elements equal)
    t = table(ns)
    assert t is not None and A.chain_out in t["chains"] and t["bridges"] == ["br-a"]
    assert t["masq"] == ["br-a"]
    no_masq = NetworkRules(A.id, A.bridge, A.subnets4, A.subnets6, False, False, False)
    fw(ns, "add_network", no_masq)  # re-adding with masquerade off takes it away
    t = table(ns)
    assert t is not None and t["masq"] == [] and t["bridges"] == ["br-a"]
    fw(ns, "add_network", A)
    fw(ns, "remove_network", no_masq)  # removal clears `masq` whatever the flag says
    t = table(ns)
    assert t is not None
    assert t["chains"] == BASE_CHAINS
    assert {k: t[k] for k in empty} == empty

    # A half-removed network (element and chain already gone) still removes cleanly.
    fw(ns, "add_network", B)
    nsx(ns, "nft", "delete", "element", "inet", "cnet", "masq", '{ "br-b" }')
    nsx(ns, "nft", "delete", "element", "inet", "cnet", "fwd_in", '{ "br-b" }')
    nsx(ns, "nft", "delete", "chain", "inet", "cnet", B.chain_out)
    fw(ns, "remove_network", B)
    fw(ns, "remove_network", B)  # already gone: no error
    t = table(ns)
    assert t is not None and t["chains"] == BASE_CHAINS
    assert {k: t[k] for k in empty} == empty

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
    (internal); host-outside link 192.0.2.0/24 and fd00:192:0:2::/64. The outside
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
