"""The overlay driver's data plane on two "hosts" joined by a veth underlay.

No cnetd here: each host namespace runs a small agent process (the driver code from
the source tree, driven line by line over stdin/stdout) that builds a Kernel and an
OverlayDriver exactly as the daemon wires them. The assertions look at the kernel and
at packets with independent tools (ping, ip, bridge, ss, tcpdump).

Topology: host1 (10.98.0.1/24) --veth underlay (MTU 1400)-- host2 (10.98.0.2/24);
one container sandbox per host on overlay network VNI 4097: 10.0.1.2 and 10.0.1.3.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import pytest

UNDERLAY_MTU = 1400
VNI = 4097
NET_ID = "0f" + secrets.token_hex(31)  # 64 hex, like a network id
C1, C2 = "10.0.1.2", "10.0.1.3"
C1_6, C2_6 = "fd00:1::2", "fd00:1::3"
MAC1, MAC2 = "02:42:0a:00:01:02", "02:42:0a:00:01:03"

# ---------------------------------------------------------------------- the agent

AGENT = r'''
import json, os, sys, traceback
from cnet.cnm.driverapi import ClusterInfo, DriverContext, Peer
from cnet.cnm.model import Endpoint, Network
from cnet.cnm.osl import namespaces
from cnet.cnm.osl.kernel import Kernel
from cnet.drivers.overlay.driver import OverlayDriver

kernel = driver = None
networks, endpoints = {}, {}

def setup(a):
    global kernel, driver
    kernel = Kernel(a["netns_dir"])
    kernel.prepare()
    cluster = ClusterInfo(a["node"], a["node"], a["advertise"]) if a.get("cluster", True) else None
    ctx = DriverContext(a["daemon_id"], netlink=kernel, firewall=None, cluster=cluster)
    driver = OverlayDriver(ctx)

def network(a):
    net = Network(id=a["id"], name=a.get("name", "ov"), driver="overlay", scope="global",
                  created="", pools=[], enable_ipv6=a.get("ipv6", False),
                  options=a.get("options", {}), driver_state={"vni": a.get("vni")})
    driver.validate(net)
    if a.get("create", True):
        driver.create_network(net)
        networks[net.id] = net
    return "ok"

def sandbox(a):
    path = kernel.netns_path(a["name"])
    if not kernel.is_netns(path):
        kernel.create_netns(path)
    return path

def endpoint(a):
    ep = Endpoint(id=a["id"], name=a["id"][:8], network_id=a["network"], ipv4=a.get("ipv4"),
                  ipv6=a.get("ipv6"), mac=a["mac"], ifname=a.get("ifname"),
                  sandbox_id=a.get("sandbox"))
    driver.create_endpoint(networks[a["network"]], ep)
    endpoints[ep.id] = ep
    return ep.driver_state

def join(a):
    ep = endpoints[a["endpoint"]]
    info = driver.join(networks[ep.network_id], ep, a["sandbox"], a["ifname"])
    ep.ifname, ep.sandbox_id = a["ifname"], a["sandbox"]
    kernel.configure_interface(a["sandbox"], a["ifname"], [c for c in (ep.ipv4, ep.ipv6) if c])
    return {"ifname": info.ifname, "mtu": info.mtu, "gateway4": info.gateway4,
            "gateway6": info.gateway6}

def leave(a):
    ep = endpoints[a["endpoint"]]
    driver.leave(networks[ep.network_id], ep)
    return "ok"

def peer(a):
    p = Peer(**a["peer"])
    net = networks[a["network"]]
    (driver.peer_add if a["add"] else driver.peer_delete)(net, p)
    return "ok"

def restore(a):
    net = networks[a["network"]]
    return driver.restore(net, [(endpoints[e], k) for e, k in a["joined"]])

def owned(a):
    net = networks[a["network"]]
    return {"netns": sorted(driver.owned_netns(net)),
            "links": sorted(driver.owned_links(net, [])),
            "firewall": driver.firewall_rules(net)}

def delete_network(a):
    driver.delete_network(networks.pop(a["network"]))
    return "ok"

def configure(a):
    kernel.configure_interface(a["sandbox"], a["ifname"], a["addresses"])
    return "ok"

def shutdown(a):
    for path in kernel.list_netns():
        kernel.remove_netns(path)
    kernel.close()
    namespaces.remove_dir_mount(kernel.netns_dir)
    return "ok"

OPS = {f.__name__: f for f in (setup, network, sandbox, endpoint, join, leave, peer, restore,
                               owned, delete_network, configure, shutdown)}
for line in sys.stdin:
    req = json.loads(line)
    try:
        out = {"ok": True, "result": OPS[req["op"]](req)}
    except Exception as exc:
        out = {"ok": False, "type": type(exc).__name__, "error": str(exc),
               "trace": traceback.format_exc()}
    print(json.dumps(out), flush=True)
    if req["op"] == "shutdown":
        break
'''


class AgentError(Exception):
    def __init__(self, reply: dict):
        super().__init__(f"{reply['type']}: {reply['error']}")
        self.type = reply["type"]
        self.message = reply["error"]
        self.trace = reply.get("trace", "")


class Agent:
    """The driver code running inside one host namespace."""

    def __init__(self, host: harness.Netns, netns_dir: Path, node: str, advertise: str,
                 cluster: bool = True):
        env = dict(os.environ, PYTHONPATH=str(harness.REPO_ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={host.path}", sys.executable, "-c", AGENT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )
        self.netns_dir = netns_dir
        self.call("setup", netns_dir=str(netns_dir), node=node, advertise=advertise,
                  daemon_id="d" + node, cluster=cluster)

    def call(self, op: str, **args):
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"agent died during {op}: {err}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AgentError(reply)
        return reply["result"]

    def stop(self, clean: bool = True) -> None:
        """Shut down (removing its namespaces) or, with clean=False, just kill it: a
        daemon crash that leaves the kernel state behind."""
        if self.proc.poll() is None:
            if clean:
                with contextlib.suppress(Exception):
                    self.call("shutdown")
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


# ---------------------------------------------------------------------- the world


class Host:
    def __init__(self, n: int, ns: harness.Netns, root: Path):
        self.n = n
        self.ns = ns
        self.underlay_ip = f"10.98.0.{n}"
        self.netns_dir = root / f"h{n}" / "netns"
        self.agent: Agent | None = None
        self.sandbox = ""  # the container's namespace path
        self.endpoint = f"e{n}" + secrets.token_hex(31)
        self.ip, self.ip6, self.mac = (C1, C1_6, MAC1) if n == 1 else (C2, C2_6, MAC2)
        self.underlay_if = f"ul{n}{secrets.token_hex(3)}"

    def start_agent(self) -> Agent:
        self.agent = Agent(self.ns, self.netns_dir, f"node{self.n}", self.underlay_ip)
        return self.agent

    @property
    def overlay_ns(self) -> str:
        return str(self.netns_dir / ("ov-" + NET_ID[:12]))

    def peer(self) -> dict:
        """This host's endpoint as the other host's peer table has it."""
        return {"endpoint_id": self.endpoint, "ipv4": f"{self.ip}/24",
                "ipv6": f"{self.ip6}/64", "mac": self.mac, "vtep": self.underlay_ip,
                "node": f"node{self.n}"}


class World:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix=harness.unique_name() + "-"))
        self.hosts: list[Host] = []

    def build_underlay(self) -> None:
        for n in (1, 2):
            self.hosts.append(Host(n, harness.Netns(), self.root))
        h1, h2 = self.hosts
        harness.sh("ip", "-n", h1.ns.name, "link", "add", h1.underlay_if, "mtu",
                   str(UNDERLAY_MTU), "type", "veth", "peer", "name", h2.underlay_if,
                   "netns", h2.ns.name, "mtu", str(UNDERLAY_MTU))
        for h in self.hosts:
            h.ns.ip("addr", "add", f"{h.underlay_ip}/24", "dev", h.underlay_if)
            h.ns.ip("link", "set", h.underlay_if, "up")

    def start(self, options: dict | None = None, ipv6: bool = False) -> None:
        """Agents, the overlay network, one sandbox and one joined endpoint per host,
        and each host told about the other's endpoint."""
        for h in self.hosts:
            a = h.start_agent()
            a.call("network", id=NET_ID, vni=VNI, options=options or {}, ipv6=ipv6)
            h.sandbox = a.call("sandbox", name=f"c{h.n}")
            a.call("endpoint", network=NET_ID, id=h.endpoint, ipv4=f"{h.ip}/24",
                   ipv6=f"{h.ip6}/64" if ipv6 else None, mac=h.mac)
        self.info = [h.agent.call("join", endpoint=h.endpoint, sandbox=h.sandbox,
                                  ifname="eth0") for h in self.hosts]
        h1, h2 = self.hosts
        self.peer_add(h1, h2)
        self.peer_add(h2, h1)

    def peer_add(self, on: Host, remote: Host) -> None:
        on.agent.call("peer", network=NET_ID, add=True, peer=remote.peer())

    def peer_delete(self, on: Host, remote: Host) -> None:
        on.agent.call("peer", network=NET_ID, add=False, peer=remote.peer())

    def close(self) -> None:
        for h in self.hosts:
            if h.agent:
                h.agent.stop()
        # whatever a failed test left mounted under our directory, deepest first
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in sorted((m for m in mounts if m.startswith(str(self.root))), key=len,
                        reverse=True):
            harness.sh("umount", "-l", m, check=False)
        for h in self.hosts:
            h.ns.delete()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def world():
    w = World()
    try:
        w.build_underlay()
        yield w
    finally:
        w.close()


@pytest.fixture
def two_hosts(world):
    world.start()
    return world


# ---------------------------------------------------------------------- probes


def ip_json(ns: str, *args: str) -> list:
    return json.loads(harness.nsexec(ns, "ip", "-j", *args, check=True).stdout or "[]")


def vtep_entries(host: Host) -> list[tuple[str, str]]:
    """(MAC, VTEP) of vxlan0's own forwarding entries (not br0's learned `master` ones)."""
    fdb = json.loads(harness.nsexec(host.overlay_ns, "bridge", "-j", "fdb", "show", "dev",
                                    "vxlan0", check=True).stdout)
    return [(e["mac"], e["dst"]) for e in fdb if "self" in e.get("flags", [])]


class Capture:
    """tcpdump on a host's underlay interface, into a pcap file read back in Python."""

    def __init__(self, host: Host, path: Path, filt: str = "udp"):
        self.path = path
        # --immediate-mode: packets reach the file at once, not when a ring block retires
        # (a SIGINT before that loses them); -Z root: write where root may
        self.proc = host.ns.popen("tcpdump", "-i", host.underlay_if, "-n", "-U",
                                  "--immediate-mode", "-Z", "root", "-s", "200",
                                  "-w", str(path), filt, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "tcpdump: listening on ..." once capturing
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"tcpdump did not start: {line}")

    def stop(self) -> list[bytes]:
        if self.proc.poll() is None:
            time.sleep(0.2)  # let the last packets through the capture buffer
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self.proc.stderr.close()
        return read_pcap(self.path)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes() if path.exists() else b""
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frames.append(data[off + 16: off + 16 + incl])
        off += 16 + incl
    return frames


def vxlan_inner(frame: bytes, port: int = 4789) -> tuple[int, int] | None:
    """(VNI, inner ethertype) of an IPv4/UDP VXLAN frame to `port`, else None."""
    if len(frame) < 14 + 20 + 8 + 8 + 14 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:
        return None
    udp = 14 + ihl
    if struct.unpack_from("!H", frame, udp + 2)[0] != port:
        return None
    vx = udp + 8
    vni = int.from_bytes(frame[vx + 4: vx + 7], "big")
    inner = vx + 8
    return vni, struct.unpack_from("!H", frame, inner + 12)[0]


ETH_ARP, ETH_IP = 0x0806, 0x0800


# ---------------------------------------------------------------------- tests


def test_vxlan_socket_stays_in_host_namespace(two_hosts):
    """The kernel fact the design rests on: vxlan0 is created through the host handle
    with IFLA_NET_NS_FD, so the device is in the overlay namespace and its UDP socket
    in the host's."""
    h1 = two_hosts.hosts[0]
    host_udp = harness.nsexec(h1.ns.path, "ss", "-Hnuln", check=True).stdout
    assert ":4789 " in host_udp
    ov_udp = harness.nsexec(h1.overlay_ns, "ss", "-Hnuln", check=True).stdout
    assert ov_udp.strip() == ""
    links = {x["ifname"]: x for x in ip_json(h1.overlay_ns, "-d", "link", "show")}
    vx = links["vxlan0"]
    data = vx["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"]) == (VNI, 4789, h1.underlay_ip)
    assert data["learning"] is False and data["proxy"] is True
    assert not data.get("l2miss") and not data.get("l3miss")
    assert vx["master"] == "br0" and "UP" in vx["flags"]
    assert vx["ifalias"] == f"cnet:dnode1:{NET_ID}"
    assert vx["mtu"] == UNDERLAY_MTU - 50 and links["br0"]["mtu"] == UNDERLAY_MTU - 50
    veth = "veth" + h1.endpoint[:7]
    assert links[veth]["master"] == "br0" and links[veth]["ifalias"] == \
        f"cnet:dnode1:{h1.endpoint}"
    # nothing of the overlay in the host namespace but the socket
    host_links = {x["ifname"] for x in ip_json(h1.ns.path, "link", "show")}
    assert host_links == {"lo", h1.underlay_if}
    # the container interface: MAC, MTU = underlay - 50, addresses; no gateway given
    eth0 = ip_json(h1.sandbox, "addr", "show", "eth0")[0]
    assert eth0["address"] == MAC1 and eth0["mtu"] == UNDERLAY_MTU - 50
    assert f"{C1}/24" in {f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"]}
    assert two_hosts.info[0] == {"ifname": "eth0", "mtu": UNDERLAY_MTU - 50,
                                 "gateway4": None, "gateway6": None}


def test_ping_across_hosts_with_static_fdb_and_local_arp(two_hosts, tmp_path):
    h1, h2 = two_hosts.hosts
    with Capture(h1, tmp_path / "ping.pcap") as cap:
        assert harness.wait_ping(h1.sandbox, C2, timeout=5)
        assert harness.ping(h2.sandbox, C1)
        # the largest unfragmented packet the MTU allows crosses (1350 + 50 = underlay)
        big = str(UNDERLAY_MTU - 50 - 28)
        assert harness.nsexec(h1.sandbox, "ping", "-c1", "-W2", "-M", "do", "-s", big,
                              C2).returncode == 0
        frames = cap.stop()
    inner = [x for x in map(vxlan_inner, frames) if x]
    assert inner and all(vni == VNI for vni, _ in inner)
    # ARP was answered by the local VTEP (proxy): none crossed the underlay
    assert {t for _, t in inner} == {ETH_IP}
    # static entries only: the peer's MAC to its VTEP; no 00:00:00:00:00:00 default
    fdb = json.loads(harness.nsexec(h1.overlay_ns, "bridge", "-j", "fdb", "show", "dev",
                                    "vxlan0", check=True).stdout)
    own = [e for e in fdb if "self" in e["flags"]]  # not br0's (`master`) entries
    assert [(e["mac"], e["dst"], e["state"]) for e in own] == [
        (MAC2, h2.underlay_ip, "permanent")]
    assert not any(e["mac"] == "00:00:00:00:00:00" for e in fdb)
    neigh = ip_json(h1.overlay_ns, "neigh", "show", "dev", "vxlan0")
    assert [(n["dst"], n["lladdr"]) for n in neigh] == [(C2, MAC2)]
    assert neigh[0]["state"] == ["PERMANENT"]


def test_arp_is_answered_even_with_the_underlay_down(two_hosts):
    """proxy: the VTEP answers from its neighbour table, the remote host is not asked."""
    h1, _ = two_hosts.hosts
    h1.ns.ip("link", "set", h1.underlay_if, "down")
    harness.nsexec(h1.sandbox, "ip", "neigh", "flush", "dev", "eth0", check=True)
    assert not harness.ping(h1.sandbox, C2)  # the echo cannot cross...
    entry = ip_json(h1.sandbox, "neigh", "show", C2, "dev", "eth0")
    assert entry and entry[0]["lladdr"] == MAC2  # ...but the address was resolved
    assert not set(entry[0]["state"]) & {"FAILED", "INCOMPLETE"}


def test_no_flooding_to_unknown_addresses(two_hosts, tmp_path):
    h1, h2 = two_hosts.hosts
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    # a MAC without an FDB entry: the bridge hands the frame to vxlan0, which drops it
    harness.nsexec(h1.sandbox, "ip", "neigh", "replace", "10.0.1.10", "lladdr",
                   "02:42:0a:00:01:0a", "dev", "eth0", check=True)
    with Capture(h1, tmp_path / "unknown.pcap") as cap:
        # at once: an address nobody announced (its ARP request stays unanswered and is
        # sent nowhere), and the unknown MAC (two echoes each)
        pings = [subprocess.Popen(["nsenter", f"--net={h1.sandbox}", "ping", "-n", "-c2",
                                   "-i0.2", "-W1", ip], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for ip in ("10.0.1.9", "10.0.1.10")]
        for p in pings:
            p.communicate(timeout=10)
        assert [p.returncode for p in pings] == [1, 1]
        frames = cap.stop()
    assert [x for x in map(vxlan_inner, frames) if x] == []
    # the capture did work: a known peer's traffic shows up
    with Capture(h1, tmp_path / "known.pcap") as cap:
        assert harness.ping(h1.sandbox, C2)
        frames = cap.stop()
    assert any(vxlan_inner(f) for f in frames)


def test_peer_delete_stops_traffic_and_peer_add_restores_it(two_hosts):
    h1, h2 = two_hosts.hosts
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    two_hosts.peer_delete(h1, h2)
    assert vtep_entries(h1) == []
    assert ip_json(h1.overlay_ns, "neigh", "show", "dev", "vxlan0") == []
    harness.nsexec(h1.sandbox, "ip", "neigh", "flush", "dev", "eth0", check=True)
    assert not harness.ping(h1.sandbox, C2, count=2)
    two_hosts.peer_delete(h1, h2)  # twice: nothing left to delete, no error
    two_hosts.peer_add(h1, h2)
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    # a changed peer (new VTEP) replaces the old entry
    moved = dict(h2.peer(), vtep="10.98.0.99")
    h1.agent.call("peer", network=NET_ID, add=True, peer=moved)
    assert vtep_entries(h1) == [(MAC2, "10.98.0.99")]
    # the local node's own endpoints are never programmed as peers
    h1.agent.call("peer", network=NET_ID, add=True, peer=dict(
        h1.peer(), endpoint_id="x" * 64, mac="02:42:0a:00:01:07", ipv4="10.0.1.7/24"))
    assert ip_json(h1.overlay_ns, "neigh", "show", "10.0.1.7", "dev", "vxlan0") == []


def test_a_shared_mac_and_ip_go_to_the_most_recently_added_peer(two_hosts):
    """An address (and its 02:42 MAC) that moved from a dead node's endpoint to a live
    one: both peers are known for a while. The entries follow the most recently added
    one, and whichever is deleted hands them back to the other."""
    h1, h2 = two_hosts.hosts
    live = h2.peer()
    stale = dict(live, endpoint_id="d" * 64, vtep="10.98.0.99", node="node9")

    def peer(p: dict, add: bool = True) -> None:
        h1.agent.call("peer", network=NET_ID, add=add, peer=p)

    def entries() -> tuple[list, list]:
        neigh = ip_json(h1.overlay_ns, "neigh", "show", "dev", "vxlan0")
        return vtep_entries(h1), [(n["dst"], n["lladdr"]) for n in neigh]

    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    peer(stale)  # the newer one wins
    assert entries() == ([(MAC2, "10.98.0.99")], [(C2, MAC2)])
    peer(live)  # the older one announced again, unchanged: still older
    assert entries() == ([(MAC2, "10.98.0.99")], [(C2, MAC2)])
    # the newer one deleted: the entries point at the remaining (older) one again
    peer(stale, add=False)
    assert entries() == ([(MAC2, h2.underlay_ip)], [(C2, MAC2)])
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    # the reverse: the older one deleted, the newer one keeps them
    peer(stale)
    peer(live, add=False)
    assert entries() == ([(MAC2, "10.98.0.99")], [(C2, MAC2)])
    peer(stale, add=False)
    assert entries() == ([], [])
    # a namespace rebuilt from the peer table (_sync_peers): the most recently added
    # or changed peer wins, not the one known first
    peer(dict(live, vtep="10.98.0.98"))
    peer(stale)
    peer(live)  # changed (its VTEP): now the most recent
    assert entries() == ([(MAC2, h2.underlay_ip)], [(C2, MAC2)])
    h1.agent.call("leave", endpoint=h1.endpoint)
    assert not os.path.exists(h1.overlay_ns)
    h1.agent.call("join", endpoint=h1.endpoint, sandbox=h1.sandbox, ifname="eth0")
    assert entries() == ([(MAC2, h2.underlay_ip)], [(C2, MAC2)])
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)


def test_peers_before_the_first_join_are_programmed_at_join(world):
    h1, h2 = world.hosts
    for h in world.hosts:
        a = h.start_agent()
        a.call("network", id=NET_ID, vni=VNI)
        h.sandbox = a.call("sandbox", name=f"c{h.n}")
        a.call("endpoint", network=NET_ID, id=h.endpoint, ipv4=f"{h.ip}/24", mac=h.mac)
    world.peer_add(h1, h2)
    world.peer_add(h2, h1)
    assert not os.path.exists(h1.overlay_ns)  # lazily: nothing until a local join
    for h in world.hosts:
        h.agent.call("join", endpoint=h.endpoint, sandbox=h.sandbox, ifname="eth0")
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)


def test_last_leave_removes_the_overlay_namespace(two_hosts):
    h1, h2 = two_hosts.hosts
    a = h1.agent
    assert a.call("owned", network=NET_ID) == {
        "netns": [h1.overlay_ns], "links": [], "firewall": None}
    # a second local endpoint: the namespace stays until the last one leaves
    a.call("endpoint", network=NET_ID, id="f" * 64, ipv4="10.0.1.4/24",
           mac="02:42:0a:00:01:04")
    sb2 = a.call("sandbox", name="c1b")
    a.call("join", endpoint="f" * 64, sandbox=sb2, ifname="eth0")
    assert harness.ping(sb2, C1)  # local traffic through br0
    a.call("leave", endpoint="f" * 64)
    assert os.path.exists(h1.overlay_ns)
    assert "eth0" not in {x["ifname"] for x in ip_json(sb2, "link", "show")}
    a.call("leave", endpoint=h1.endpoint)
    assert not os.path.exists(h1.overlay_ns)
    assert "4789" not in harness.nsexec(h1.ns.path, "ss", "-Hnuln", check=True).stdout
    # join again at once: the VNI was freed with vxlan0, peers are still known
    a.call("join", endpoint=h1.endpoint, sandbox=h1.sandbox, ifname="eth0")
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    a.call("leave", endpoint=h1.endpoint)
    a.call("delete_network", network=NET_ID)
    assert not os.path.exists(h1.overlay_ns)


def test_mtu_port_and_vni_options(world):
    world.start(options={"com.docker.network.driver.mtu": "1300",
                         "com.docker.network.driver.overlay.vxlan_port": "4790",
                         "com.docker.network.driver.overlay.vxlanid_list": str(VNI)})
    h1, h2 = world.hosts
    vx = ip_json(h1.overlay_ns, "-d", "link", "show", "vxlan0")[0]
    assert vx["linkinfo"]["info_data"]["id"] == VNI  # the controller's, from driver_state
    eth0 = ip_json(h1.sandbox, "link", "show", "eth0")[0]
    assert eth0["mtu"] == 1300 and world.info[0]["mtu"] == 1300
    udp = harness.nsexec(h1.ns.path, "ss", "-Hnuln", check=True).stdout
    assert ":4790 " in udp and ":4789 " not in udp
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)


def test_ipv6_across_hosts_with_proxy_nd(world):
    world.start(ipv6=True)
    h1, h2 = world.hosts
    assert harness.wait_ping(h1.sandbox, C2_6, timeout=5)
    neigh = ip_json(h1.overlay_ns, "-6", "neigh", "show", "dev", "vxlan0")
    assert [(n["dst"], n["lladdr"]) for n in neigh] == [(C2_6, MAC2)]


def test_bad_options_and_encryption_are_refused(world):
    h1 = world.hosts[0]
    a = h1.start_agent()
    cases = [
        ({"encrypted": ""}, "FeatureMissing", "encrypted overlay networks need IPsec ESP"),
        ({"encrypted": "true"}, "FeatureMissing", "kernel xfrm/esp4"),
        ({"com.docker.network.driver.overlay.vxlan_port": "0"}, "InvalidParameter",
         "invalid VXLAN port 0"),
        ({"com.docker.network.driver.mtu": "big"}, "InvalidParameter", 'invalid MTU "big"'),
        ({"com.docker.network.driver.overlay.vxlanid_list": "4097,4098"},
         "InvalidParameter", 'invalid VNI "4097,4098"'),
        ({"com.docker.network.driver.overlay.vxlanid_list": "+4097"}, "InvalidParameter",
         'invalid VNI "+4097"'),
        ({"com.docker.network.driver.overlay.vxlanid_list": "0"}, "InvalidParameter",
         "invalid VNI 0: must be between 1 and 16777215"),
        ({"com.docker.network.driver.overlay.vxlanid_list": "16777216"}, "InvalidParameter",
         "invalid VNI 16777216: must be between 1 and 16777215"),
        ({"com.docker.network.vxlanid_list": "4097"}, "InvalidParameter",
         "unknown overlay driver option"),
    ]
    for options, kind, text in cases:
        with pytest.raises(AgentError) as err:
            a.call("network", id=NET_ID, vni=VNI, options=options, create=False)
        assert (err.value.type, text in err.value.message) == (kind, True), err.value
        assert "\n" not in err.value.message
    # the VNI option is accepted (the controller checks its own range and hands the VNI
    # over in driver_state)
    for vni in ("42", str(VNI), "16777215"):
        a.call("network", id=NET_ID, vni=VNI, create=False,
               options={"com.docker.network.driver.overlay.vxlanid_list": vni})
    a.stop()
    single = Agent(h1.ns, h1.netns_dir, "node1", h1.underlay_ip, cluster=False)
    h1.agent = single
    with pytest.raises(AgentError) as err:
        single.call("network", id=NET_ID, vni=VNI, create=False)
    assert err.value.type == "InvalidParameter"
    assert "--cluster-store etcd://HOST:PORT --advertise-addr IP" in err.value.message


@pytest.mark.parametrize("wrong_vxlan", [False, True], ids=["vxlan-kept", "vxlan-replaced"])
def test_restore_after_a_crash_reuses_the_namespace(two_hosts, wrong_vxlan):
    h1, h2 = two_hosts.hosts
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    ino = os.stat(h1.overlay_ns).st_ino
    h1.agent.stop(clean=False)  # the daemon dies; namespaces and links stay
    # while it was down: its veth vanished, and a stale peer entry is present
    harness.nsexec(h1.overlay_ns, "ip", "link", "del", "veth" + h1.endpoint[:7], check=True)
    harness.nsexec(h1.overlay_ns, "bridge", "fdb", "add", "02:42:0a:00:01:09", "dev",
                   "vxlan0", "dst", "10.98.0.9", "self", "permanent", check=True)
    wrong = {"id": VNI, "port": 4789, "local": h1.underlay_ip}
    if wrong_vxlan:
        # and vxlan0 was remade by hand inside the overlay namespace (its socket there)
        # with another VNI: restore must replace it
        wrong["id"] = 999
        harness.nsexec(h1.overlay_ns, "ip", "link", "del", "vxlan0", check=True)
        harness.nsexec(h1.overlay_ns, "ip", "link", "add", "vxlan0", "type", "vxlan", "id",
                       "999", "dstport", "4789", "local", h1.underlay_ip, check=True)
    vx = ip_json(h1.overlay_ns, "-d", "link", "show", "vxlan0")[0]["linkinfo"]["info_data"]
    assert {k: vx[k] for k in wrong} == wrong
    a = h1.start_agent()
    a.call("network", id=NET_ID, vni=VNI)
    a.call("sandbox", name="c1")
    a.call("endpoint", network=NET_ID, id=h1.endpoint, ipv4=f"{C1}/24", mac=MAC1,
           ifname="eth0", sandbox="c1")
    recreated = a.call("restore", network=NET_ID, joined=[[h1.endpoint, h1.sandbox]])
    assert recreated == [h1.endpoint]
    assert os.stat(h1.overlay_ns).st_ino == ino  # the same namespace file, reused
    assert vtep_entries(h1) == []  # only known peers stay (none announced yet)
    vx = ip_json(h1.overlay_ns, "-d", "link", "show", "vxlan0")[0]
    assert (vx["linkinfo"]["info_data"]["id"], vx["master"]) == (VNI, "br0")
    assert ":4789 " in harness.nsexec(h1.ns.path, "ss", "-Hnuln", check=True).stdout
    assert harness.nsexec(h1.overlay_ns, "ss", "-Hnuln", check=True).stdout.strip() == ""
    a.call("configure", sandbox=h1.sandbox, ifname="eth0", addresses=[f"{C1}/24"])
    two_hosts.peer_add(h1, h2)  # the cluster store announces the peers again
    assert harness.wait_ping(h1.sandbox, C2, timeout=5)
    # a second restore with everything in place recreates nothing
    assert a.call("restore", network=NET_ID, joined=[[h1.endpoint, h1.sandbox]]) == []
    assert harness.ping(h1.sandbox, C2)
    # restore with no local endpoint left: the namespace goes
    assert a.call("restore", network=NET_ID, joined=[]) == []
    assert not os.path.exists(h1.overlay_ns)
