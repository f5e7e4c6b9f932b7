"""The bridge driver on a real kernel: who reaches whom, egress, NAT, options, cleanup.

Every assertion is on real packets (ping, TCP) or on kernel state read with `ip`/`nft`
in the daemon's namespace, never on what cnetd says it did.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import harness

OUTSIDE_IP = "192.0.2.2"
HOST_OUTSIDE_IP = "192.0.2.1"


# --------------------------------------------------------------------------- helpers


def ping_all(*probes: tuple[str, str]) -> list[bool]:
    """harness.ping(ns, ip) for every (ns, ip), concurrently (failures cost 1 s each)."""
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        return list(pool.map(lambda p: harness.ping(*p), probes))


def ipj(target, *args: str):
    """`ip -j ARGS` inside `target` (a netns path or Netns), parsed."""
    return json.loads(harness.nsexec(target, "ip", "-j", *args, check=True).stdout or "[]")


def addrs(target, ifname: str) -> set[str]:
    """Global-scope addresses of `ifname` in `target`, as "addr/prefix"."""
    out = set()
    for link in ipj(target, "addr", "show", "dev", ifname):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                out.add(f"{a['local']}/{a['prefixlen']}")
    return out


def link(target, ifname: str) -> dict | None:
    proc = harness.nsexec(target, "ip", "-d", "-j", "link", "show", "dev", ifname)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def gateway(d: harness.Daemon, net: str, v6: bool = False) -> str:
    for cfg in d.cli_json("network", "inspect", net)[0]["IPAM"]["Config"]:
        if (":" in cfg["Subnet"]) == v6:
            return cfg["Gateway"]
    raise AssertionError(f"network {net} has no IPv{6 if v6 else 4} config")


def bridge_of(d: harness.Daemon, net: str) -> str:
    info = d.cli_json("network", "inspect", net)[0]
    return info["Options"].get("com.docker.network.bridge.name") or f"br-{info['Id'][:12]}"


def attach(d: harness.Daemon, net: str, *sandboxes: str, **ips: str) -> dict[str, str]:
    """Create (if needed) and connect sandboxes; return {name: netns path}."""
    existing = {s["Name"] for s in d.cli_json("sandbox", "ls", "--format", "json")}
    keys = {}
    for sb in sandboxes:
        if sb not in existing:
            d.cli("sandbox", "create", sb)
        extra = ("--ip", ips[sb]) if sb in ips else ()
        d.cli("network", "connect", *extra, net, sb)
        keys[sb] = d.sandbox_key(sb)
    return keys


def nft_table(d: harness.Daemon) -> list[dict]:
    proc = d.run_in_host("nft", "-j", "list", "table", "inet", "cnet")
    return json.loads(proc.stdout)["nftables"]


def nft_chains(d: harness.Daemon) -> set[str]:
    return {o["chain"]["name"] for o in nft_table(d) if "chain" in o}


def nft_set_elems(d: harness.Daemon) -> dict[str, list]:
    """Elements of every set and map of the table, by name."""
    out = {}
    for o in nft_table(d):
        for kind in ("set", "map"):
            if kind in o:
                out[o[kind]["name"]] = o[kind].get("elem", [])
    return out


class PeerServer:
    """TCP server in a namespace that answers each connection with the peer's address."""

    def __init__(self, target, port: int):
        self.target, self.port = target, port

    def __enter__(self) -> PeerServer:
        code = (
            "import socket\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {self.port})); s.listen(16)\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    c, a = s.accept()\n"
            "    c.sendall(a[0].encode()); c.close()\n"
        )
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={harness.netns_path(self.target)}", sys.executable, "-c", code],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()

    def peer_seen_from(self, target, ip: str) -> str:
        return harness.tcp_request(target, ip, self.port, timeout=2).decode()


# --------------------------------------------------------------------------- reachability


def test_same_network_reachable_other_network_isolated(daemon):
    d = daemon
    d.cli("network", "create", "n1")
    d.cli("network", "create", "n2")
    keys = attach(d, "n1", "a", "b")
    keys |= attach(d, "n2", "c")
    ip = {sb: d.sandbox_ip(sb, net) for sb, net in (("a", "n1"), ("b", "n1"), ("c", "n2"))}
    gw1, gw2 = gateway(d, "n1"), gateway(d, "n2")

    assert ping_all((keys["a"], ip["b"]), (keys["b"], ip["a"])) == [True, True]
    # Each still reaches its own gateway...
    assert ping_all((keys["a"], gw1), (keys["b"], gw1), (keys["c"], gw2)) == [True] * 3
    # ...but nothing crosses between the networks, in either direction.
    assert ping_all(
        (keys["a"], ip["c"]), (keys["c"], ip["a"]), (keys["b"], ip["c"]), (keys["c"], ip["b"])
    ) == [False] * 4


def test_internal_network_has_no_egress(daemon, outside):
    d = daemon
    d.cli("network", "create", "--internal", "--subnet", "10.78.0.0/24", "int")
    keys = attach(d, "int", "a", "b")
    ipa, ipb = d.sandbox_ip("a", "int"), d.sandbox_ip("b", "int")

    for key in keys.values():
        assert [r for r in ipj(key, "route") if r["dst"] == "default"] == []
        assert [r for r in ipj(key, "-6", "route") if r["dst"] == "default"] == []
    assert ping_all((keys["a"], ipb), (keys["b"], ipa)) == [True, True]
    assert not harness.ping(keys["a"], OUTSIDE_IP)

    # Even with a default route put in by hand and a route back from outside, the
    # host must not forward: the drop is the firewall's, not just a missing route.
    # (The host forwards in general: the predefined bridge network turned it on.)
    assert d.run_in_host("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    harness.nsexec(keys["a"], "ip", "route", "add", "default", "via", "10.78.0.1", check=True)
    outside.run("ip", "route", "add", "10.78.0.0/24", "via", HOST_OUTSIDE_IP)
    assert not harness.ping(keys["a"], OUTSIDE_IP)


def test_masquerade_and_no_masquerade(daemon, outside):
    d = daemon
    d.cli("network", "create", "--subnet", "10.79.0.0/24", "nat")
    d.cli("network", "create", "--subnet", "10.80.0.0/24",
          "-o", "com.docker.network.bridge.enable_ip_masquerade=false", "nonat")
    keys = attach(d, "nat", "a")
    keys |= attach(d, "nonat", "b")

    with PeerServer(outside, 8080) as srv:
        # `outside` has no route to 10.79.0.0/24: an answer proves the source was NATed.
        assert harness.ping(keys["a"], OUTSIDE_IP)
        assert harness.tcp_connect(keys["a"], OUTSIDE_IP, 8080)
        assert srv.peer_seen_from(keys["a"], OUTSIDE_IP) == HOST_OUTSIDE_IP

        # Without masquerade the packets leave with the sandbox's own source...
        assert not harness.ping(keys["b"], OUTSIDE_IP)
        # ...which a route back on the outside proves: then it works, un-NATed.
        outside.run("ip", "route", "add", "10.80.0.0/24", "via", HOST_OUTSIDE_IP)
        assert harness.ping(keys["b"], OUTSIDE_IP)
        assert srv.peer_seen_from(keys["b"], OUTSIDE_IP) == d.sandbox_ip("b", "nonat")


def test_icc_disabled(daemon):
    d = daemon
    d.cli("network", "create", "--subnet", "10.81.0.0/24",
          "-o", "com.docker.network.bridge.enable_icc=false", "noicc")
    d.cli("network", "create", "--subnet", "10.82.0.0/24", "icc")
    keys = attach(d, "noicc", "a", "b")
    keys |= attach(d, "icc", "c", "e")
    ip = {sb: d.sandbox_ip(sb, net)
          for sb, net in (("a", "noicc"), ("b", "noicc"), ("c", "icc"), ("e", "icc"))}

    assert ping_all((keys["a"], ip["b"]), (keys["b"], ip["a"])) == [False, False]
    assert ping_all((keys["a"], "10.81.0.1"), (keys["b"], "10.81.0.1")) == [True, True]
    # Kernel state: the host ends of the veths are isolated bridge ports.
    for sb in ("a", "b"):
        ep = d.sandbox_inspect(sb)["Networks"]["noicc"]["EndpointID"]
        info = link(d.netns_path, "veth" + ep[:7])
        assert info["linkinfo"]["info_slave_data"]["isolated"] is True

    # Routed through the gateway (a host route via the bridge address), the packet
    # would hairpin through the host: the firewall drops it when icc is off...
    harness.nsexec(keys["a"], "ip", "route", "add", ip["b"], "via", "10.81.0.1", check=True)
    harness.nsexec(keys["b"], "ip", "route", "add", ip["a"], "via", "10.81.0.1", check=True)
    # ...while the same trick works on a network with icc on (control).
    harness.nsexec(keys["c"], "ip", "route", "add", ip["e"], "via", "10.82.0.1", check=True)
    assert ping_all((keys["a"], ip["b"]), (keys["c"], ip["e"])) == [False, True]


# --------------------------------------------------------------------------- addressing


def test_static_ip(daemon):
    d = daemon
    d.cli("network", "create", "--subnet", "10.77.0.0/24", "st")
    keys = attach(d, "st", "a", "b", a="10.77.0.50")

    assert addrs(keys["a"], "eth0") == {"10.77.0.50/24"}
    assert d.sandbox_ip("a", "st") == "10.77.0.50"
    assert d.sandbox_ip("b", "st") != "10.77.0.50"
    assert harness.ping(keys["b"], "10.77.0.50")

    # --ip needs a user-configured subnet: refused on the default bridge and on a
    # network whose subnet was picked by cnet, and nothing is attached.
    d.cli("network", "create", "auto")
    d.cli("sandbox", "create", "c")
    auto_net = ipaddress.ip_network(
        d.cli_json("network", "inspect", "auto")[0]["IPAM"]["Config"][0]["Subnet"])
    for net, want in (("bridge", "172.17.0.50"), ("auto", str(auto_net[50]))):
        d.cli_error("network", "connect", "--ip", want, net, "c")
    assert d.sandbox_inspect("c")["Networks"] == {}
    assert [x["ifname"] for x in ipj(d.sandbox_key("c"), "link")] == ["lo"]


def test_ipv6_dual_stack(daemon):
    d = daemon
    d.cli("network", "create", "--ipv6", "--subnet", "fd00:77::/64", "v6")
    keys = attach(d, "v6", "a", "b")
    v4 = {sb: d.sandbox_ip(sb, "v6") for sb in keys}
    v6 = {sb: d.sandbox_ip(sb, "v6", v6=True) for sb in keys}
    gw6 = gateway(d, "v6", v6=True)
    assert ipaddress.ip_address(gw6) in ipaddress.ip_network("fd00:77::/64")

    for sb, key in keys.items():
        assert ipaddress.ip_address(v6[sb]) in ipaddress.ip_network("fd00:77::/64")
        assert ipaddress.ip_address(v4[sb]).version == 4
        assert {a.split("/")[0] for a in addrs(key, "eth0")} == {v4[sb], v6[sb]}
        routes = [r for r in ipj(key, "-6", "route", "show", "default")]
        assert [(r.get("gateway"), r.get("dev")) for r in routes] == [(gw6, "eth0")]
    assert ping_all(
        (keys["a"], v6["b"]), (keys["b"], v6["a"]), (keys["a"], v4["b"]), (keys["a"], gw6)
    ) == [True] * 4

    # --ipv6 without a v6 subnet: a ULA /64 is picked, and really configured.
    d.cli("network", "create", "--ipv6", "ula")
    keys = attach(d, "ula", "c")
    subnets = [c["Subnet"] for c in d.cli_json("network", "inspect", "ula")[0]["IPAM"]["Config"]]
    ula = [ipaddress.ip_network(s) for s in subnets if ":" in s]
    assert len(ula) == 1 and ula[0].prefixlen == 64
    assert ula[0].subnet_of(ipaddress.ip_network("fd00::/8"))
    c6 = d.sandbox_ip("c", "ula", v6=True)
    assert ipaddress.ip_address(c6) in ula[0]
    assert c6 in {a.split("/")[0] for a in addrs(keys["c"], "eth0")}
    assert harness.ping(keys["c"], gateway(d, "ula", v6=True))


# --------------------------------------------------------------------------- options


def test_mtu_bridge_name_and_second_interface(daemon):
    d = daemon
    bridge = f"cnbr{secrets.token_hex(3)}"
    d.cli("network", "create", "--subnet", "10.83.0.0/24",
          "-o", f"com.docker.network.bridge.name={bridge}",
          "-o", "com.docker.network.driver.mtu=1400", "m")
    d.cli("network", "create", "--subnet", "10.84.0.0/24", "other")
    keys = attach(d, "m", "a")
    key = keys["a"]

    br = link(d.netns_path, bridge)
    assert br is not None and br["linkinfo"]["info_kind"] == "bridge"
    assert br["mtu"] == 1400
    assert link(key, "eth0")["mtu"] == 1400
    # Real packets: 1400 bytes fit, 1401 do not (DF set; the sandbox refuses to send).
    ok = harness.nsexec(key, "ping", "-c1", "-W1", "-M", "do", "-s", "1372", "10.83.0.1")
    too_big = harness.nsexec(key, "ping", "-c1", "-W1", "-M", "do", "-s", "1373", "10.83.0.1")
    assert ok.returncode == 0 and too_big.returncode != 0

    # A second network: eth1, with its address, a host veth on the other bridge.
    d.cli("network", "connect", "other", "a")
    eth1 = d.sandbox_inspect("a")["Networks"]["other"]
    assert eth1["InterfaceName"] == "eth1"
    assert addrs(key, "eth1") == {f"{eth1['IPAddress']}/{eth1['IPPrefixLen']}"}
    assert link(key, "eth1")["mtu"] == 1500
    host_veth = "veth" + eth1["EndpointID"][:7]
    assert link(d.netns_path, host_veth)["master"] == bridge_of(d, "other")
    assert harness.ping(key, "10.84.0.1")

    d.cli("network", "disconnect", "other", "a")
    assert link(key, "eth1") is None
    assert link(d.netns_path, host_veth) is None
    assert harness.ping(key, "10.83.0.1")


# --------------------------------------------------------------------------- lifecycle


def test_inspect_prune_and_rm(daemon):
    d = daemon
    d.cli("network", "create", "--subnet", "10.85.0.0/24", "used")
    d.cli("network", "create", "unused1")
    d.cli("network", "create", "--subnet", "10.86.0.0/24", "unused2")
    keys = attach(d, "used", "a")

    info = d.cli_json("network", "inspect", "used")[0]
    for field in ("Name", "Id", "Created", "Scope", "Driver", "EnableIPv6", "IPAM", "Internal",
                  "Attachable", "Ingress", "Containers", "Options", "Labels"):
        assert field in info, field
    assert (info["Name"], info["Driver"], info["Scope"]) == ("used", "bridge", "local")
    assert info["IPAM"]["Config"] == [{"Subnet": "10.85.0.0/24", "Gateway": "10.85.0.1"}]
    sb = d.sandbox_inspect("a")
    member = info["Containers"][sb["Id"]]
    assert member["Name"] == "a"
    assert member["EndpointID"] == sb["Networks"]["used"]["EndpointID"]
    assert member["IPv4Address"] in addrs(keys["a"], "eth0")  # what the kernel has

    bridges = {n: bridge_of(d, n) for n in ("used", "unused1", "unused2")}
    elems = nft_set_elems(d)
    for n in bridges:
        assert bridges[n] in elems["bridges"] and bridges[n] in elems["masq"]
        assert {"concat": [bridges[n], bridges[n]]} in elems["icc"]
    assert not {c for c in nft_chains(d) if c.startswith("net-")}  # no per-network chain

    out = d.cli("network", "prune", "-f").stdout
    assert set(out.split()[2:]) == {"unused1", "unused2"}
    names = {n["Name"] for n in d.cli_json("network", "ls", "--format", "json")}
    assert names == {"bridge", "host", "none", "used"}
    for n in ("unused1", "unused2"):
        assert link(d.netns_path, bridges[n]) is None
        assert bridges[n] not in json.dumps(nft_set_elems(d))
    assert link(d.netns_path, bridges["used"]) is not None
    assert harness.ping(keys["a"], "10.85.0.1")

    d.cli_error("network", "rm", "used")  # in use
    d.cli("network", "disconnect", "used", "a")
    d.cli("network", "rm", "used")
    assert link(d.netns_path, bridges["used"]) is None
    elems = json.dumps(nft_set_elems(d))
    assert bridges["used"] not in elems and "10.85.0.0" not in elems
    assert "cnet0" in elems  # the predefined network is untouched
    d.cli_error("network", "inspect", "used")



def test_ipv4_only_endpoints_stay_silent_on_ipv6(daemon):
    """No IPv6 on eth0 of an IPv4-only network (no MLD/RS/DAD flooded to every port);
    an endpoint of an IPv6 network has it back on, link-local included."""
    d = daemon
    d.cli("network", "create", "v4only")
    d.cli("network", "create", "--ipv6", "--subnet", "fd00:78::/64", "dual")
    keys = attach(d, "v4only", "q")
    v6_on_eth0 = ipj(keys["q"], "-6", "addr", "show", "dev", "eth0")
    assert [a for link in v6_on_eth0 for a in link.get("addr_info", [])] == []
    d.cli("network", "connect", "dual", "q")
    eth1 = [a["local"] for link in ipj(keys["q"], "-6", "addr", "show", "dev", "eth1")
            for a in link.get("addr_info", [])]
    assert any(a.startswith("fe80:") for a in eth1)
    assert d.sandbox_ip("q", "dual", v6=True) in eth1
