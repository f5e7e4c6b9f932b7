"""`cnet trace`: a real probe, real nftables trace events, real packet sockets.

Each verdict is checked against what the network really does (ping/TCP from the same
sandbox), and the hops against the kernel's own tables read with `ip`/`bridge`.
"""

from __future__ import annotations

import json
import subprocess

import harness
import pytest


def _trace(d, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([harness.CNET, "-H", d.host, "trace", "--json", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _text(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([harness.CNET, "-H", d.host, "trace", *args],
                          capture_output=True, text=True, timeout=60)


def _trace_tables(d) -> list[str]:
    out = d.run_in_host("nft", "list", "tables").stdout
    return [line for line in out.splitlines() if "cnet_trace" in line]


def _host_veth(d, sandbox: str, network: str) -> str:
    """The node-side veth of a sandbox's endpoint, found by its alias (endpoint id)."""
    ep_id = d.sandbox_inspect(sandbox)["Networks"][network]["EndpointID"]
    links = json.loads(d.run_in_host("ip", "-j", "link", "show").stdout)
    for link in links:
        if link.get("ifalias", "").endswith(":" + ep_id):
            return link["ifname"]
    raise AssertionError(f"no veth for {sandbox} on {network}")


def _hops(report: dict, packet: str = "request") -> list[tuple[str, str, str]]:
    return [(h["Where"], h["Interface"], h["Direction"]) for h in report["Hops"]
            if h["Packet"] == packet]


@pytest.fixture
def two_nets(daemon):
    d = daemon
    d.cli("network", "create", "--subnet", "10.71.0.0/24", "tr1")
    d.cli("network", "create", "--subnet", "10.72.0.0/24", "tr2")
    for name, net in (("a", "tr1"), ("b", "tr1"), ("c", "tr2")):
        d.cli("sandbox", "create", name)
        d.cli("network", "connect", net, name)
    return d


def test_trace_allowed_path_same_network(two_nets):
    d = two_nets
    ip_b = d.sandbox_ip("b", "tr1")
    rc, rep = _trace(d, "a", "b")
    assert rc == 0, rep["Verdict"]
    assert rep["DestinationIP"] == ip_b and rep["Delivered"] is True
    assert rep["Verdict"].startswith("delivered to b (eth0)"), rep["Verdict"]
    assert rep["Answer"]["What"] == "echo-reply"
    veth_a, veth_b = _host_veth(d, "a", "tr1"), _host_veth(d, "b", "tr1")
    req = _hops(rep)
    # the request's path in order: out of a, into the bridge port, out of b's port, into b
    assert req.index(("a", "eth0", "out")) < req.index(("node", veth_a, "in")) \
        < req.index(("node", veth_b, "out")) < req.index(("b", "eth0", "in")), req
    assert ("a", "eth0", "in") in _hops(rep, "reply")
    # the FDB lookup names b's port, as the kernel's own table says
    mac_b = d.sandbox_inspect("b")["Networks"]["tr1"]["MacAddress"]
    fdb = d.run_in_host("bridge", "fdb", "show", "dev", veth_b).stdout
    assert mac_b in fdb
    assert any(f"FDB {mac_b} -> port {veth_b}" in s for s in rep["Lookups"]), rep["Lookups"]
    assert any(f"neighbour in a: {ip_b} is {mac_b}" in s for s in rep["Lookups"])
    # nothing of the trace stays behind
    assert _trace_tables(d) == []
    text = _text(d, "a", "b")
    assert text.returncode == 0
    assert text.stdout.strip().splitlines()[-1].startswith("verdict: delivered to b")


def test_trace_isolation_drop_names_the_rule(two_nets):
    d = two_nets
    ip_c = d.sandbox_ip("c", "tr2")
    assert not harness.ping(d.sandbox_key("a"), ip_c)  # really isolated
    rc, rep = _trace(d, "a", ip_c)
    assert rc == 1
    assert rep["Delivered"] is False
    drops = [r for r in rep["Rules"] if r["Verdict"] == "drop"]
    assert drops, rep["Rules"]
    assert drops[0]["Table"] == "inet cnet" and drops[0]["Chain"] == "forward"
    assert drops[0]["Rule"] == "iifname @bridges oifname @bridges drop"
    assert drops[0]["Comment"] == "isolation between networks"
    assert rep["Verdict"].startswith("dropped by inet cnet forward rule "), rep["Verdict"]
    assert rep["Verdict"].endswith("(isolation between networks): iifname @bridges "
                                   "oifname @bridges drop"), rep["Verdict"]
    # routed by the node: the source's route goes to its gateway, the node's to tr2
    assert any("via 10.71.0.1 dev eth0" in s for s in rep["Lookups"]), rep["Lookups"]
    assert any(s.startswith(f"route on the node: {ip_c} dev ") for s in rep["Lookups"])
    assert ("c", "eth0", "in") not in _hops(rep)
    assert _trace_tables(d) == []


def test_trace_published_port_shows_the_dnat(two_nets):
    d = two_nets
    res = d.api("POST", "/sandboxes/b/ports",
                {"Network": "tr1", "PortBindings": {"80/tcp": [{"HostPort": "18088"}]}})
    assert res.status == 200, res.body
    gw = "10.71.0.1"  # a's gateway: a node address
    ip_b = d.sandbox_ip("b", "tr1")
    with harness.TcpServer(d.sandbox_key("b"), 80):
        assert harness.tcp_connect(d.sandbox_key("a"), gw, 18088)  # it really works
        rc, rep = _trace(d, "a", gw, "--proto", "tcp", "--port", "18088")
        assert rc == 0, rep["Verdict"]
        assert rep["Answer"]["What"] == "SYN-ACK (port open)"
        dnat = [r for r in rep["Rules"] if "dnat" in r["Rule"]]
        assert dnat and f"{ip_b}:80" in dnat[0]["Rule"], rep["Rules"]
        assert dnat[0]["Chain"] == "pub-tcp-any-18088"
        assert any(r["Chain"] == "prerouting" and "jump pub-tcp-any-18088" in r["Verdict"]
                   for r in rep["Rules"]), rep["Rules"]
        assert f"DNAT: {gw} -> {ip_b}" in rep["Lookups"], rep["Lookups"]
        assert rep["Verdict"].startswith("delivered to b (eth0)"), rep["Verdict"]
        # from another network the published port is DNAT'd, then isolation drops it
        assert not harness.tcp_connect(d.sandbox_key("c"), "10.72.0.1", 18088, timeout=1)
        rc, rep = _trace(d, "c", "10.72.0.1", "--proto", "tcp", "--port", "18088",
                         "--timeout", "0.5")
        assert rc == 1
        assert any("dnat" in r["Rule"] for r in rep["Rules"]), rep["Rules"]
        assert rep["Verdict"].startswith("dropped by inet cnet forward"), rep["Verdict"]
    # the same port with nothing listening: delivered, answered by a reset
    rc, rep = _trace(d, "a", gw, "--proto", "tcp", "--port", "18088")
    assert rc == 0 and rep["Answer"]["What"] == "RST (port closed)", rep


def test_trace_to_the_outside_shows_the_masquerade(two_nets, outside):
    """Egress: routed by the node out of its uplink, source masqueraded (the outside
    namespace has no route back to the sandbox subnet: the answer proves the SNAT)."""
    d = two_nets
    assert harness.ping(d.sandbox_key("a"), outside.outside_ip)
    rc, rep = _trace(d, "a", outside.outside_ip)
    assert rc == 0, rep["Verdict"]
    assert rep["Verdict"].startswith(f"delivered: {outside.outside_ip} answered with "
                                     "echo-reply"), rep["Verdict"]
    masq = [r for r in rep["Rules"] if r["Chain"] == "postrouting"]
    assert masq and masq[0]["Rule"].endswith("masquerade"), rep["Rules"]
    assert masq[0]["Comment"] == "egress of a network" and masq[0]["Out"] == outside.host_if
    leaving = [h for h in rep["Hops"] if h["Where"] == "node"
               and h["Interface"] == outside.host_if and h["Direction"] == "out"]
    assert leaving and leaving[0]["Flow"].startswith(
        f"{outside.host_ip} -> {outside.outside_ip}"), rep["Hops"]  # the SNAT'd copy
    assert f"route on the node: {outside.outside_ip} dev {outside.host_if}" in rep["Lookups"]


def test_trace_no_answer_and_no_route(two_nets):
    d = two_nets
    rc, rep = _trace(d, "a", "10.71.0.200", "--timeout", "0.5")
    assert rc == 1
    assert rep["Verdict"].startswith("no answer from 10.71.0.200"), rep["Verdict"]
    assert "neighbour in a: 10.71.0.200 unresolved" in " ".join(rep["Lookups"])
    # the node has no route there: it answers with an ICMP error, which is not delivery
    rc, rep = _trace(d, "a", "203.0.113.5", "--timeout", "1")
    assert rc == 1
    assert rep["Verdict"].startswith("unreachable: ICMP destination unreachable from "
                                     "10.71.0.1"), rep["Verdict"]
    assert "route on the node: 203.0.113.5 is unreachable" in rep["Lookups"]
    d.cli("sandbox", "create", "lonely")  # no network, no route anywhere
    rc, rep = _trace(d, "lonely", "10.71.0.2", "--timeout", "0.5")
    assert rc == 1
    assert rep["Verdict"].startswith("no route"), rep["Verdict"]
    assert _trace_tables(d) == []


def test_trace_a_flooded_copy_is_not_a_delivery(two_nets):
    """b is gone but a still has its MAC: the bridge floods a's probe to every port,
    d's included; d does not hold the address, so nothing was delivered."""
    d = two_nets
    d.cli("sandbox", "create", "d")
    d.cli("network", "connect", "tr1", "d")
    ip_b = d.sandbox_ip("b", "tr1")
    assert harness.ping(d.sandbox_key("a"), ip_b)
    d.cli("sandbox", "rm", "-f", "b")
    rc, rep = _trace(d, "a", ip_b, "--timeout", "0.5")
    assert rc == 1, rep["Verdict"]
    flooded = [h for h in rep["Hops"] if h.get("Flooded")]
    assert flooded and flooded[0]["Where"] == "d", rep["Hops"]
    assert rep["Verdict"].startswith(f"no answer from {ip_b}"), rep["Verdict"]
    assert any("flooded to every port" in s for s in rep["Lookups"]), rep["Lookups"]


def test_trace_with_a_vanished_runtime_namespace(two_nets):
    """An external (CNI) sandbox whose namespace vanished: traces between others still
    work; tracing from it is refused in one line."""
    d = two_nets
    pod = harness.Netns()
    try:
        r = d.api("POST", "/sandboxes/create", {"Name": "pod", "Key": harness.netns_path(pod)})
        assert r.status == 201, r.json()
    finally:
        pod.delete()
    rc, rep = _trace(d, "a", "b")
    assert rc == 0, rep["Verdict"]
    proc = _text(d, "pod", "a")
    assert proc.returncode != 0
    assert proc.stderr.strip() == "Error: sandbox pod has no network namespace", proc.stderr
    d.api("DELETE", "/sandboxes/pod?force=1")


def test_trace_bad_input_one_line_errors(two_nets):
    d = two_nets
    for args, msg in (
        (["nosuch", "b"], 'no such container or sandbox: "nosuch"'),
        (["a", "nosuch"], 'no such container, sandbox or address: "nosuch"'),
        (["--proto", "tcp", "a", "b"], "--proto tcp needs --port N"),
        (["--port", "80", "a", "b"], "--port goes with --proto tcp or udp"),
        (["--proto", "sctp", "a", "b"], "sctp"),
    ):
        proc = _text(d, *args)
        assert proc.returncode != 0, args
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and msg in errors[0], (args, proc.stderr)
    assert _trace_tables(d) == []


def test_trace_udp_and_ipv6(daemon):
    d = daemon
    d.cli("network", "create", "--ipv6", "--subnet", "10.73.0.0/24", "--subnet",
          "fd00:73::/64", "tr6")
    for name in ("x", "y"):
        d.cli("sandbox", "create", name)
        d.cli("network", "connect", "tr6", name)
    # UDP to a port nobody listens on: delivered, answered by an ICMP port unreachable
    rc, rep = _trace(d, "x", "y", "--proto", "udp", "--port", "9999")
    assert rc == 0, rep["Verdict"]
    assert rep["Answer"]["What"] == "ICMP port unreachable (nothing listening)"
    assert ("y", "eth0", "in") in _hops(rep)
    # ICMPv6 echo to y's IPv6 address
    ip6 = d.sandbox_ip("y", "tr6", v6=True)
    assert harness.ping(d.sandbox_key("x"), ip6)
    rc, rep = _trace(d, "x", ip6)
    assert rc == 0, rep["Verdict"]
    assert rep["Verdict"].startswith("delivered to y (eth0)"), rep["Verdict"]
    assert rep["Answer"]["What"] == "echo-reply"
    assert ("y", "eth0", "in") in _hops(rep) and ("x", "eth0", "in") in _hops(rep, "reply")
    # IPv6 trace events: another network's address is dropped by the isolation rule
    d.cli("network", "create", "--ipv6", "--subnet", "10.74.0.0/24", "--subnet",
          "fd00:74::/64", "tr6b")
    d.cli("sandbox", "create", "z")
    d.cli("network", "connect", "tr6b", "z")
    rc, rep = _trace(d, "x", d.sandbox_ip("z", "tr6b", v6=True), "--timeout", "0.5")
    assert rc == 1 and rep["Verdict"].startswith("dropped by inet cnet forward rule "), rep
    assert _trace_tables(d) == []
