"""Overlay networks across three hosts: three namespaces on an underlay bridge, a
three-member etcd cluster on them, one cnetd per host joined with --cluster-store.

The daemons live for the module (starting them and importing busybox is the slow
part); every test makes its own network and containers and removes them. Order
matters only at the end: the tests that stop an etcd member, restart a daemon or
kill a node run last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import harness
import pytest

TTL = 3  # --node-ttl: a killed node is Down after this many seconds


@pytest.fixture(scope="module")
def nodes(etcd3, busybox_tar):
    daemons: list[harness.Daemon] = []
    try:
        for i, (ns, ip) in enumerate(etcd3.underlay.hosts):
            d = harness.Daemon(ns, name=f"node{i + 1}", args=[
                "--cluster-store", f"etcd://{etcd3.endpoints}", "--advertise-addr", ip,
                "--node-name", f"node{i + 1}", "--node-ttl", str(TTL)])
            daemons.append(d)
            d.start()
            d.cli("image", "import", str(busybox_tar), "busybox")
            # The daemon's cgroup parent (/cnet/<id>) lives as long as the daemon: make it
            # now, or the first test would be blamed for it.
            d.cli("run", "--rm", "--network", "none", "busybox", "true")
        yield daemons
    finally:
        errors = []
        for d in daemons:
            errors += harness.shutdown_daemon(d)
        assert not errors, errors


@pytest.fixture(autouse=True)
def _logs(request, nodes):
    """A failing test's report carries the three daemons' logs."""
    for d in nodes:
        harness.register_daemon(request, d)


class Workload:
    """Networks and containers a test made, removed at the end whatever happened."""

    def __init__(self, nodes: list[harness.Daemon]):
        self.nodes = nodes
        self.containers: list[tuple[harness.Daemon, str]] = []
        self.sandboxes: list[tuple[harness.Daemon, str]] = []
        self.networks: list[str] = []

    def network(self, name: str, *args: str, on: int = 0) -> dict:
        self.nodes[on].cli("network", "create", "-d", "overlay", "--attachable", *args, name)
        self.networks.append(name)
        for d in self.nodes:  # every node sees it (through its etcd watch)
            harness.wait_for(lambda d=d: d.cli("network", "inspect", name,
                                                check=False).returncode == 0,
                             timeout=5, what=f"{name} on {d.name}")
        return self.nodes[on].cli_json("network", "inspect", name)[0]

    def run(self, on: int, name: str, network: str, *args: str) -> None:
        d = self.nodes[on]
        self.containers.append((d, name))
        d.cli("run", "-d", "--name", name, "--network", network, *args, "busybox",
              "sleep", "600")

    def close(self) -> None:
        for d, name in reversed(self.containers):
            d.cli("rm", "-f", name, check=False)
        for d, name in reversed(self.sandboxes):
            d.cli("sandbox", "rm", "-f", name, check=False)
        for name in reversed(self.networks):
            harness.wait_for(lambda name=name: self.nodes[0].cli(
                "network", "rm", name, check=False).returncode == 0,
                timeout=10, what=f"network rm {name}")


@pytest.fixture
def work(nodes):
    w = Workload(nodes)
    try:
        yield w
    finally:
        w.close()


def pings(d: harness.Daemon, container: str, target: str, count: int = 1,
          wait: int = 2) -> bool:
    return d.cli("exec", container, "ping", "-c", str(count), "-W", str(wait), target,
                 check=False, timeout=30).returncode == 0


def container_ip(d: harness.Daemon, name: str, network: str) -> str:
    info = d.cli_json("inspect", name)[0]
    return info["NetworkSettings"]["Networks"][network]["IPAddress"]


def nodes_by_name(d: harness.Daemon) -> dict[str, dict]:
    return {n["Name"]: n for n in d.cli_json("node", "ls", "--format", "json")}


# -- membership ---------------------------------------------------------------------------
def test_every_node_is_listed_ready(nodes):
    for d in nodes:
        listed = nodes_by_name(d)
        assert set(listed) == {"node1", "node2", "node3"}
        assert all(n["Status"] == "Ready" for n in listed.values())
        assert [n["Name"] for n in listed.values() if n["Self"]] == [d.name]
    out = nodes[0].cli("node", "ls").stdout.splitlines()
    assert out[0].split() == ["ID", "NAME", "ADDRESS", "STATUS", "AVAILABILITY"]
    assert re.search(r"^\S+ \*\s+node1\s+10\.99\.0\.1\s+Ready\s+Active$", out[1])
    node2 = nodes[0].cli_json("node", "inspect", "node2")[0]
    assert node2["Addr"] == "10.99.0.2" and node2["Status"] == "Ready"


# -- the data plane -------------------------------------------------------------------------
def test_containers_on_three_hosts_ping_each_other_by_name(nodes, work):
    net = work.network("ov-names")
    vni = int(net["Options"]["com.docker.network.driver.overlay.vxlanid_list"])
    assert vni >= 4096 and net["Scope"] == "global" and net["Driver"] == "overlay"
    for i in range(3):
        work.run(i, f"c{i + 1}", "ov-names")
    for i, d in enumerate(nodes):
        for j in range(3):
            if i != j:
                assert pings(d, f"c{i + 1}", f"c{j + 1}"), f"c{i + 1} -> c{j + 1}"
    # The name resolves to the address IPAM gave the remote container.
    c3 = container_ip(nodes[2], "c3", "ov-names")
    out = nodes[0].cli("exec", "c1", "nslookup", "c3", "127.0.0.11").stdout
    assert c3 in out
    # prune on another node leaves a network that is in use elsewhere.
    nodes[1].cli("network", "prune", "-f")
    assert nodes[1].cli("network", "inspect", "ov-names", check=False).returncode == 0
        # --verbose: the peers are the three nodes, each with its container.
    peers = nodes[0].cli_json("network", "inspect", "--verbose", "ov-names")[0]["Peers"]
    assert sorted((p["Name"], p["IP"]) for p in peers) == [
        ("node1", "10.99.0.1"), ("node2", "10.99.0.2"), ("node3", "10.99.0.3")]
    assert {e["Name"] for p in peers for e in p["Endpoints"]} == {"c1", "c2", "c3"}


def _capture(d: harness.Daemon, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([harness.CNET, "-H", d.host, "capture", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if not line.startswith("capturing on"):
        proc.kill()
        pytest.fail(f"capture did not start: {line}{proc.communicate()[1]}")
    return proc


def _records(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_capture_on_the_vtep_and_the_underlay(nodes, work):
    work.network("ov-cap")
    work.run(0, "k1", "ov-cap")
    work.run(1, "k2", "ov-cap")
    ip1, ip2 = container_ip(nodes[0], "k1", "ov-cap"), container_ip(nodes[1], "k2", "ov-cap")
    assert pings(nodes[0], "k1", ip2)
    vtep = _capture(nodes[0], "ov-cap", "-i", "vtep", "-f", "icmp", "-c", "2",
                    "--duration", "20")
    under = _capture(nodes[0], "node", "-f", "udp port 4789", "-c", "2", "--duration", "20")
    assert pings(nodes[0], "k1", ip2)
    inner = _records(vtep)
    assert [(r["interface"], r["src"], r["dst"], r["protocol"]) for r in inner] == [
        ("ov-cap/vxlan0", ip1, ip2, "ICMP"), ("ov-cap/vxlan0", ip2, ip1, "ICMP")]
    outer = _records(under)
    assert [(r["src"], r["dst"], r["protocol"]) for r in outer] == [
        ("10.99.0.1", "10.99.0.2", "VXLAN"), ("10.99.0.2", "10.99.0.1", "VXLAN")]
    # --decap: outer VTEPs named after the nodes, the VNI, the inner flow by container
    vni = int(nodes[0].cli_json("network", "inspect", "ov-cap")[0]["Options"][
        "com.docker.network.driver.overlay.vxlanid_list"])
    decap = _capture(nodes[0], "node", "--decap", "-f", "udp port 4789", "-c", "2",
                     "--duration", "20")
    assert pings(nodes[0], "k1", ip2)
    recs = _records(decap)
    assert [(r["outer"]["src_name"], r["outer"]["dst_name"], r["outer"]["vni"],
             r["src_name"], r["dst_name"], r["protocol"]) for r in recs] == [
        ("node1", "node2", vni, "k1", "k2", "ICMP"), ("node2", "node1", vni, "k2", "k1", "ICMP")]
    assert "[VXLAN node1(10.99.0.1) -> node2(10.99.0.2) vni" in recs[0]["info"]


def test_mtu_is_the_underlay_minus_50_unless_set(nodes, work):
    work.network("ov-mtu")
    work.network("ov-mtu1300", "-o", "com.docker.network.driver.mtu=1300")
    work.run(0, "m1", "ov-mtu")
    work.run(1, "m2", "ov-mtu1300")
    assert "mtu 1450" in nodes[0].cli("exec", "m1", "ip", "link", "show", "eth0").stdout
    assert "mtu 1300" in nodes[1].cli("exec", "m2", "ip", "link", "show", "eth0").stdout
    # A full-size packet crosses without fragmentation (DF set): 1450 - 28 bytes of headers.
    work.run(1, "m3", "ov-mtu")
    assert nodes[0].cli("exec", "m1", "ping", "-c", "1", "-W", "2", "-s", "1422", "-M",
                        "do", "m3", check=False).returncode in (0, 1)
    assert pings(nodes[0], "m1", "m3")


def test_egress_through_the_gateway_bridge(nodes, work):
    """An overlay-only container reaches the underlay (another host's address) through
    cnet_gwbridge with masquerade, and its default route is there."""
    work.network("ov-egress")
    work.run(0, "e1", "ov-egress")
    routes = nodes[0].cli("exec", "e1", "ip", "route").stdout
    assert re.search(r"default via 172\.\d+\.0\.1 dev eth1", routes), routes
    assert pings(nodes[0], "e1", "10.99.0.3")
    gw = nodes[0].cli_json("network", "inspect", "cnet_gwbridge")[0]
    assert gw["Options"]["com.docker.network.bridge.enable_icc"] == "false"


@pytest.mark.no_leak_check  # restarts node1's cnetd (a new process; see below)
def test_the_gateway_endpoint_follows_the_other_networks_and_survives_a_restart(
        nodes, work):
    """On a bridge network and an overlay, a container's default route is the bridge's;
    disconnected from the bridge it gets cnet_gwbridge, kept across a daemon restart."""
    nodes[0].cli("network", "create", "gwtest-br")
    work.networks.append("gwtest-br")
    work.network("ov-gw")
    work.run(0, "g1", "gwtest-br")
    nodes[0].cli("network", "connect", "ov-gw", "g1")
    assert "cnet_gwbridge" not in nodes[0].cli_json("sandbox", "inspect", "g1")[0]["Networks"]
    nodes[0].cli("network", "disconnect", "gwtest-br", "g1")
    assert "cnet_gwbridge" in nodes[0].cli_json("sandbox", "inspect", "g1")[0]["Networks"]
    nodes[0].restart()
    routes = nodes[0].cli("exec", "g1", "ip", "route").stdout
    assert re.search(r"default via 172\.\d+\.0\.1 dev eth\d", routes), routes
    assert pings(nodes[0], "g1", "10.99.0.2")


def test_no_flooding_to_unknown_addresses(etcd3, nodes, work):
    """A ping to an overlay address nobody holds never leaves as VXLAN: no flood entry."""
    work.network("ov-flood", "--subnet", "10.77.0.0/24")
    work.run(0, "f1", "ov-flood")
    ns = etcd3.underlay.hosts[0][0]
    cap = subprocess.Popen(["nsenter", f"--net={harness.netns_path(ns)}", "tcpdump", "-nli",
                            "eth0", "-c", "1", "udp port 4789"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)
        assert not pings(nodes[0], "f1", "10.77.0.200", count=2, wait=1)
        time.sleep(0.3)
        assert cap.poll() is None, f"VXLAN left the host: {cap.stdout.read()}"
    finally:
        cap.kill()
        cap.wait()


def test_parallel_attach_on_all_hosts_gives_unique_addresses(nodes, work):
    work.network("ov-par")
    per_node = 8
    names = [(i, f"p{i}-{k}") for i in range(3) for k in range(per_node)]
    for i, name in names:
        nodes[i].cli("sandbox", "create", name)
        work.sandboxes.append((nodes[i], name))
    errors: list[str] = []

    def connect(i: int, name: str) -> None:
        proc = nodes[i].cli("network", "connect", "ov-par", name, check=False)
        if proc.returncode:
            errors.append(proc.stderr)

    threads = [threading.Thread(target=connect, args=a) for a in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ips = [nodes[i].sandbox_ip(name, "ov-par") for i, name in names]
    assert len(set(ips)) == len(ips), sorted(ips)
    # and they are real: the first sandbox on node1 reaches the last one on node3.
    src = nodes[0].sandbox_key(names[0][1])
    assert harness.wait_ping(src, ips[-1], timeout=5)


def test_connect_on_one_host_is_reachable_from_another_within_a_second(nodes, work):
    """r1 on node1 is already pinging the address r2 will get on node2; its unanswered
    ARP is asked again only every 5 s here (retrans_time_ms; 1 s by default), yet the
    first reply comes well within a second of the connect: the peer is programmed and
    announced by a gratuitous ARP that completes r1's waiting neighbour entry."""
    work.network("ov-conn", "--subnet", "10.61.0.0/24")
    work.run(0, "r1", "ov-conn")
    harness.sh("nsenter", f"--net={nodes[0].sandbox_key('r1')}", "sysctl", "-qw",
               "net.ipv4.neigh.eth0.retrans_time_ms=5000")
    nodes[1].cli("sandbox", "create", "r2")
    work.sandboxes.append((nodes[1], "r2"))
    pinger = subprocess.Popen(
        [harness.CNET, "-H", nodes[0].host, "exec", "r1", "ping", "-i", "0.02", "-c", "500",
         "10.61.0.50"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)  # r1 asked for .50 once; the next ARP would be in 4 s
        start = time.monotonic()
        nodes[1].cli("network", "connect", "--ip", "10.61.0.50", "ov-conn", "r2")
        for line in pinger.stdout:  # type: ignore[union-attr]
            if "bytes from 10.61.0.50" in line:
                break
        elapsed = time.monotonic() - start
    finally:
        pinger.kill()
        pinger.wait()
    assert elapsed < 0.8, f"first reply {elapsed:.2f} s after connect"
    # A node with no endpoint of its own still may not remove a network others use.
    assert "active endpoints" in nodes[2].cli_error("network", "rm", "ov-conn")


# -- bad input ----------------------------------------------------------------------------
def test_overlapping_overlay_subnets_are_refused_on_any_node(nodes, work):
    work.network("ov-sub", "--subnet", "10.60.0.0/24")
    err = nodes[2].cli_error("network", "create", "-d", "overlay", "--subnet", "10.60.0.0/25",
                             "ov-sub2")
    assert "overlaps" in err
    err = nodes[1].cli_error("network", "create", "-d", "overlay", "ov-sub")
    assert "already exists" in err
    # a chosen VNI: used as asked, unique in the cluster, in range
    vni = "com.docker.network.driver.overlay.vxlanid_list"
    net = work.network("ov-vni", "-o", f"{vni}=5000")
    assert net["Options"][vni] == "5000"
    err = nodes[2].cli_error("network", "create", "-d", "overlay", "-o", f"{vni}=5000", "v2")
    assert "VNI 5000 is already in use" in err
    assert "out of range" in nodes[2].cli_error("network", "create", "-d", "overlay",
                                                "-o", f"{vni}=4000", "v3")


def test_encrypted_is_refused_naming_the_kernel_feature(nodes):
    err = nodes[0].cli_error("network", "create", "-d", "overlay", "-o", "encrypted", "sec")
    assert "ESP" in err
    assert nodes[0].cli("network", "inspect", "sec", check=False).returncode != 0


def test_not_attachable_overlay_refuses_standalone_containers(nodes, work):
    nodes[0].cli("network", "create", "-d", "overlay", "ov-noattach")
    work.networks.append("ov-noattach")
    err = nodes[0].cli_error("run", "-d", "--name", "na", "--network", "ov-noattach",
                             "busybox", "sleep", "60")
    work.containers.append((nodes[0], "na"))
    assert "attachable" in err


# -- failures ---------------------------------------------------------------------------------
def test_one_etcd_member_down_does_not_stop_the_cluster(etcd3, nodes, work):
    work.network("ov-etcd")
    work.run(0, "k1", "ov-etcd")
    etcd3.members[0].stop()
    try:
        work.run(2, "k3", "ov-etcd")
        assert pings(nodes[2], "k3", "k1")
        work.network("ov-etcd2", on=1)
    finally:
        etcd3.members[0].start()


# The module's daemons are restarted here: the per-test leak check would take the new
# cnetd processes for leaks (the module's teardown still removes everything).
@pytest.mark.no_leak_check
def test_restarting_one_daemon_does_not_disturb_the_others(nodes, work):
    work.network("ov-restart")
    for i in range(3):
        work.run(i, f"s{i + 1}", "ov-restart")
    assert pings(nodes[0], "s1", "s3")
    flow = subprocess.Popen(
        [harness.CNET, "-H", nodes[0].host, "exec", "s1", "ping", "-c", "40", "-i", "0.1",
         "-W", "1", "s3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    nodes[1].restart()
    out, _ = flow.communicate(timeout=30)
    received = int(re.search(r"(\d+) packets received", out).group(1))
    assert received >= 39, out
    # The restarted node re-learned the peer table from etcd.
    assert pings(nodes[1], "s2", "s1") and pings(nodes[1], "s2", "s3")


@pytest.mark.no_leak_check
def test_a_killed_node_goes_down_and_comes_back(nodes, work):
    work.network("ov-down")
    for i in range(3):
        work.run(i, f"d{i + 1}", "ov-down")
    assert pings(nodes[0], "d1", "d3")
    d3_ip = container_ip(nodes[2], "d3", "ov-down")
    work.network("ov-dead")
    work.run(2, "x3", "ov-dead")  # only node3 has an endpoint on ov-dead
    nodes[2].kill()
    try:
        harness.wait_for(lambda: nodes_by_name(nodes[0])["node3"]["Status"] == "Down",
                         timeout=TTL + 5, what="node3 Down")
        # Its address on ov-dead stays reserved: the network cannot go, and says why.
        err = nodes[0].cli_error("network", "rm", "ov-dead")
        assert "nodes that are down: node3" in err and "cnet node rm" in err
        assert "is Ready" in nodes[0].cli_error("node", "rm", "node2")
        assert "itself" in nodes[0].cli_error("node", "rm", "node1")
        # `node rm` forgets the dead node and what it held.
        nodes[0].cli("node", "rm", "node3")
        assert "node3" not in nodes_by_name(nodes[0])
        # Its peers are gone everywhere: no path to d3, by name or address...
        harness.wait_for(lambda: not any(
            p["Name"] == "node3" for p in nodes[0].cli_json(
                "network", "inspect", "--verbose", "ov-down")[0]["Peers"]),
            timeout=2, what="node3's peers removed")
        assert not pings(nodes[0], "d1", d3_ip)
        # ...while the others keep talking.
        assert pings(nodes[0], "d1", "d2") and pings(nodes[1], "d2", "d1")
    finally:
        nodes[2].start()
    harness.wait_for(lambda: nodes_by_name(nodes[0])["node3"]["Status"] == "Ready",
                     timeout=5, what="node3 Ready")
    harness.wait_for(lambda: pings(nodes[0], "d1", "d3", wait=1), timeout=5,
                     what="d1 -> d3 after node3 returned")
    assert json.loads(nodes[2].cli("inspect", "d3").stdout)[0]["State"]["Running"]
    # Back, it registered again and reclaimed x3's address: ov-dead is in use again.
    assert "active endpoints" in nodes[0].cli_error("network", "rm", "ov-dead")


def test_a_paused_node_registers_again_with_its_peers(nodes, work):
    """A node silent past its lease (SIGSTOP) is Down and its peers go; when it wakes up
    its keepalive finds the lease gone, it registers again and republishes its peers."""
    work.network("ov-pause")
    work.run(0, "q1", "ov-pause")
    work.run(1, "q2", "ov-pause")
    assert pings(nodes[0], "q1", "q2")
    os.kill(nodes[1].pid, signal.SIGSTOP)
    try:
        harness.wait_for(lambda: nodes_by_name(nodes[0])["node2"]["Status"] == "Down",
                         timeout=TTL + 5, what="node2 Down")
        harness.wait_for(lambda: not pings(nodes[0], "q1", "q2", wait=1), timeout=3,
                         what="q2 unreachable once node2's peers are gone")
    finally:
        os.kill(nodes[1].pid, signal.SIGCONT)
    harness.wait_for(lambda: nodes_by_name(nodes[0])["node2"]["Status"] == "Ready",
                     timeout=TTL + 5, what="node2 Ready again")
    harness.wait_for(lambda: pings(nodes[0], "q1", "q2", wait=1), timeout=5,
                     what="q1 -> q2 after node2 came back")
