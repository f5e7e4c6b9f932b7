"""macvlan (and ipvlan) networks on a "physical" LAN built from namespaces.

The LAN: a switch (bridge `sw0` in a namespace of its own), a router namespace on it with
10.88.1.1/24 and 10.88.2.1/24 (and a WAN link to a remote host 198.51.100.2), an external
host 10.88.1.200/24 (default route via the router), and the cnet host (a harness.Daemon's
namespace) whose `lan0` (10.88.1.10/24) is a veth plugged into the switch: the parent.
Containers are sandboxes (`cnet sandbox create` + `cnet network connect`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import harness
import pytest

SUBNET, GATEWAY = "10.88.1.0/24", "10.88.1.1"
SUBNET2, GATEWAY2 = "10.88.2.0/24", "10.88.2.1"
HOST_IP, EXT_IP, REMOTE_IP = "10.88.1.10", "10.88.1.200", "198.51.100.2"
PARENT = "lan0"


@dataclass
class Lan:
    switch: harness.Netns
    router: harness.Netns
    ext: harness.Netns
    remote: harness.Netns
    host: harness.Netns  # the cnet host (the daemon's namespace)

    def plug_host(self) -> None:
        """(Re)connect the cnet host to the switch: `lan0` with HOST_IP."""
        port = "sh" + secrets.token_hex(3)
        self.switch.ip("link", "add", port, "type", "veth", "peer", "name", PARENT,
                       "netns", self.host.name)
        self.switch.ip("link", "set", port, "master", "sw0", "up")
        self.host.ip("addr", "add", f"{HOST_IP}/24", "dev", PARENT)
        self.host.ip("link", "set", PARENT, "up")

    def unplug_host(self) -> None:
        self.host.ip("link", "del", PARENT)  # its switch end goes with it

    def delete(self) -> None:
        for ns in (self.remote, self.ext, self.router, self.switch):
            ns.delete()


def _wire(a: harness.Netns, a_if: str, b: harness.Netns, b_if: str) -> None:
    a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)


@pytest.fixture
def lan(daemon_factory):
    """The LAN and a cnet daemon plugged into it (returned as (lan, daemon))."""
    made: list[harness.Netns] = []
    try:
        switch, router, ext, remote = (harness.Netns() for _ in range(4))
        made += [switch, router, ext, remote]
        switch.ip("link", "add", "sw0", "type", "bridge")
        switch.ip("link", "set", "sw0", "up")
        for ns, addrs in ((router, (f"{GATEWAY}/24", f"{GATEWAY2}/24")),
                          (ext, (f"{EXT_IP}/24",))):
            _wire(switch, "s" + ns.name[-8:], ns, "eth0")
            switch.ip("link", "set", "s" + ns.name[-8:], "master", "sw0", "up")
            for a in addrs:
                ns.ip("addr", "add", a, "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")
        _wire(router, "wan0", remote, "eth0")
        router.ip("addr", "add", "198.51.100.1/24", "dev", "wan0")
        router.ip("link", "set", "wan0", "up")
        remote.ip("addr", "add", f"{REMOTE_IP}/24", "dev", "eth0")
        remote.ip("link", "set", "eth0", "up")
        remote.ip("route", "add", "default", "via", "198.51.100.1")
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        ext.ip("route", "add", "default", "via", GATEWAY)
        d = daemon_factory(start=False)
        lan = Lan(switch, router, ext, remote, d.host_ns)
        lan.plug_host()
        d.start()
        yield lan, d
    finally:
        for ns in reversed(made):
            ns.delete()


def _state(d: harness.Daemon) -> dict:
    """What a refused operation must leave as it was: links, store, firewall."""
    links = d.run_in_host("ip", "-o", "link", "show", check=True).stdout
    return {
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        "networks": sorted(n["Name"] for n in d.cli_json("network", "ls", "--format", "json")),
        "sandboxes": json.dumps(d.api("GET", "/sandboxes").json(), sort_keys=True),
        "nft": d.run_in_host("nft", "list", "ruleset", check=True).stdout,
    }


def _refused(d: harness.Daemon, *args: str) -> str:
    before = _state(d)
    err = d.cli_error(*args)
    assert len(err.splitlines()) == 1, err
    assert _state(d) == before, f"refused {args} but state changed"
    return err


def _macvlan(d: harness.Daemon, name: str, *extra: str, subnet: str = SUBNET,
             gateway: str = GATEWAY) -> None:
    d.cli("network", "create", "-d", "macvlan", "--subnet", subnet, "--gateway", gateway,
          "-o", f"parent={PARENT}", *extra, name)


def _sandbox(d: harness.Daemon, name: str, network: str, *extra: str) -> str:
    d.cli("sandbox", "create", name)
    d.cli("network", "connect", *extra, network, name)
    return d.sandbox_key(name)


def _link_mac(target, ifname: str) -> str:
    """(Not /sys/class/net: sysfs shows the namespace that mounted it, not ours.)"""
    out = harness.nsexec(target, "ip", "-j", "link", "show", ifname, check=True).stdout
    return json.loads(out)[0]["address"]


def _mac(d: harness.Daemon, sandbox: str, ifname: str = "eth0") -> str:
    return _link_mac(d.sandbox_key(sandbox), ifname)


def _neigh_mac(ns: harness.Netns, ip: str) -> str | None:
    out = ns.ip("-j", "neigh", "show", ip).stdout
    entries = json.loads(out or "[]")
    return entries[0].get("lladdr") if entries else None


def test_external_host_and_containers_reach_each_other(lan):
    lan, d = lan
    _macvlan(d, "mv", "--ip-range", "10.88.1.64/28", "--aux-address", "printer=10.88.1.64",
             "-o", "macvlan_mode=bridge")
    s1 = _sandbox(d, "s1", "mv")
    s2 = _sandbox(d, "s2", "mv")
    ip1, ip2 = d.sandbox_ip("s1", "mv"), d.sandbox_ip("s2", "mv")
    # the ip-range, minus its aux address, and never the gateway
    assert (ip1, ip2) == ("10.88.1.65", "10.88.1.66")
    # a macvlan link with the endpoint's own MAC (02:42 + IPv4)
    details = harness.nsexec(s1, "ip", "-d", "link", "show", "eth0", check=True).stdout
    assert "macvlan mode bridge" in details
    assert _mac(d, "s1") == "02:42:0a:58:01:41"
    assert d.sandbox_inspect("s1")["Networks"]["mv"]["MacAddress"] == "02:42:0a:58:01:41"
    route = harness.nsexec(s1, "ip", "route", "show", "default", check=True).stdout
    assert f"via {GATEWAY} dev eth0" in route
    # both directions on the LAN, and beyond the router via the physical gateway
    assert harness.wait_ping(s1, EXT_IP)
    assert harness.ping(lan.ext, ip1) and harness.ping(lan.ext, ip2)
    assert harness.ping(s2, REMOTE_IP)
    with harness.TcpServer(lan.ext, 8080, b"from-ext\n", host="0.0.0.0"):
        assert harness.tcp_request(s1, EXT_IP, 8080) == b"from-ext\n"
    with harness.TcpServer(s1, 8081, b"from-container\n", host="0.0.0.0"):
        assert harness.tcp_request(lan.ext, ip1, 8081) == b"from-container\n"
    # the external host learned each container's own MAC by ARP
    assert _neigh_mac(lan.ext, ip1) == _mac(d, "s1")
    assert _neigh_mac(lan.ext, ip2) == _mac(d, "s2")
    assert _mac(d, "s1") != _mac(d, "s2")
    # bridge mode: siblings talk directly
    assert harness.ping(s1, ip2)
    # macvlan's known property: the host cannot reach its own containers via the parent
    assert not harness.ping(d.netns_path, ip1)
    view = d.cli_json("network", "inspect", "mv")[0]
    assert view["Driver"] == "macvlan"
    assert view["Status"] == {"Parent": PARENT, "ParentState": "up"}
    d.cli("network", "disconnect", "mv", "s1")
    assert harness.nsexec(s1, "ip", "link", "show", "eth0").returncode != 0
    d.cli("sandbox", "rm", "-f", "s1", "s2")
    d.cli("network", "rm", "mv")


def test_private_mode_isolates_siblings(lan):
    lan, d = lan
    _macvlan(d, "mvp", "-o", "macvlan_mode=private")
    s1, s2 = _sandbox(d, "p1", "mvp"), _sandbox(d, "p2", "mvp")
    ip2 = d.sandbox_ip("p2", "mvp")
    assert harness.wait_ping(s1, EXT_IP) and harness.wait_ping(s2, EXT_IP)
    assert "macvlan mode private" in harness.nsexec(s1, "ip", "-d", "link", "show", "eth0",
                                                    check=True).stdout
    assert not harness.ping(s1, ip2, count=2)
    d.cli("sandbox", "rm", "-f", "p1", "p2")


def test_two_networks_with_different_ranges_on_one_parent(lan):
    lan, d = lan
    _macvlan(d, "mva", "--ip-range", "10.88.1.128/28")
    _macvlan(d, "mvb", "--ip-range", "10.88.2.32/28", subnet=SUBNET2, gateway=GATEWAY2)
    a, b = _sandbox(d, "a1", "mva"), _sandbox(d, "b1", "mvb")
    ipa, ipb = d.sandbox_ip("a1", "mva"), d.sandbox_ip("b1", "mvb")
    assert ipa == "10.88.1.128" and ipb == "10.88.2.32"
    assert harness.wait_ping(a, EXT_IP) and harness.wait_ping(b, EXT_IP)
    assert harness.ping(lan.ext, ipa) and harness.ping(lan.ext, ipb)
    assert harness.ping(a, ipb)  # through the router, back onto the same segment
    # a third network overlapping one of them on the same parent: refused
    err = _refused(d, "network", "create", "-d", "macvlan", "--subnet", "10.88.1.0/25",
                   "-o", f"parent={PARENT}", "mvc")
    assert "overlaps" in err
    d.cli("sandbox", "rm", "-f", "a1", "b1")
    d.cli("network", "rm", "mva", "mvb")


def test_validation_errors_leave_nothing(lan):
    lan, d = lan
    d.cli("network", "create", "-o", "com.docker.network.bridge.name=cnbr1", "br1")
    d.cli("sandbox", "create", "x1")
    d.cli("network", "connect", "br1", "x1")
    veth = next(line.split(":")[1].strip().split("@")[0] for line in d.run_in_host(
        "ip", "-o", "link", "show", "master", "cnbr1", check=True).stdout.splitlines())
    d.run_in_host("ip", "link", "add", "hbr0", "type", "bridge", check=True)
    d.run_in_host("ip", "link", "add", "hp0", "master", "hbr0", "type", "veth", "peer",
                  "name", "hp1", check=True)
    base = ("network", "create", "-d", "macvlan", "--subnet", SUBNET)
    cases = [
        ((*base, "m1"), "need a parent interface"),
        ((*base, "-o", "parent=nosuch0", "m1"), 'parent interface "nosuch0" does not exist'),
        ((*base, "-o", "parent=cnbr1", "m1"), "bridge of a cnet bridge network"),
        ((*base, "-o", f"parent={veth}", "m1"), "cnet endpoint's interface"),
        ((*base, "-o", "parent=hp0", "m1"), 'is a port of "hbr0"'),
        ((*base, "-o", "parent=lo", "m1"), "loopback"),
        ((*base, "-o", f"parent={PARENT}", "-o", "macvlan_mode=fast", "m1"),
         'invalid macvlan_mode "fast"'),
        ((*base, "-o", f"parent={PARENT}", "-o", "vlan=3", "m1"),
         "unknown macvlan driver option: vlan"),
        ((*base, "-o", f"parent={PARENT}", "-o", "cnet.macvlan.host_interface=hp1", "m1"),
         'host interface name "hp1" is already in use'),
        ((*base, "-o", f"parent={PARENT}", "-o", "macvlan_mode=private",
          "-o", "cnet.macvlan.host_interface=mvh0", "m1"), "needs macvlan_mode bridge or vepa"),
        ((*base, "-o", f"parent={PARENT}.4095", "m1"), "invalid VLAN id 4095"),
    ]
    for args, want in cases:
        err = _refused(d, *args)
        assert want in err, (args, err)
    # passthru: one endpoint, the second refused
    _macvlan(d, "mpt", "-o", "macvlan_mode=passthru")
    s1 = _sandbox(d, "t1", "mpt")
    assert harness.wait_ping(s1, EXT_IP)
    assert "passthru" in harness.nsexec(s1, "ip", "-d", "link", "show", "eth0").stdout
    d.cli("sandbox", "create", "t2")
    err = _refused(d, "network", "connect", "mpt", "t2")
    assert "passthru" in err and "one" in err
    # passthru wants the parent alone
    err = _refused(d, *base[:-2], "--subnet", SUBNET2, "-o", f"parent={PARENT}", "m2")
    assert "passthru" in err
    d.cli("sandbox", "rm", "-f", "t1", "t2", "x1")
    d.cli("network", "rm", "mpt", "br1")
    d.run_in_host("ip", "link", "del", "hbr0", check=True)
    d.run_in_host("ip", "link", "del", "hp0", check=True)


def _kernel_has(d: harness.Daemon, feature: str) -> bool:
    feats = d.cli_json("info", "--format", "json")["KernelFeatures"]
    return next(f["Present"] for f in feats if f["Name"] == feature)


def test_vlan_parent_refused_without_8021q(lan):
    lan, d = lan
    if _kernel_has(d, "802.1q"):
        pytest.skip("this kernel has 802.1q: the refusal cannot be shown")
    err = _refused(d, "network", "create", "-d", "macvlan", "--subnet", SUBNET,
                   "-o", f"parent={PARENT}.30", "mv30")
    assert "802.1q VLAN" in err and "lacks" in err


def test_vlan_parent_sub_interface(lan):
    lan, d = lan
    if not _kernel_has(d, "802.1q"):
        pytest.skip("kernel lacks 802.1q VLAN (802.1q sub-interfaces as parents)")
    _macvlan(d, "v1", "--ip-range", "10.88.1.64/28", "-o", f"parent={PARENT}.30")
    d.run_in_host("ip", "link", "show", f"{PARENT}.30", check=True)
    d.cli("network", "rm", "v1")
    assert d.run_in_host("ip", "link", "show", f"{PARENT}.30", check=False).returncode != 0


def test_ipvlan_refused_without_kernel_support(lan):
    lan, d = lan
    if _kernel_has(d, "ipvlan"):
        pytest.skip("this kernel has ipvlan: the refusal cannot be shown")
    err = _refused(d, "network", "create", "-d", "ipvlan", "--subnet", SUBNET,
                   "-o", f"parent={PARENT}", "-o", "ipvlan_mode=l2", "iv")
    assert "ipvlan" in err and "lacks" in err


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_ipvlan(lan, mode):
    lan, d = lan
    if not _kernel_has(d, "ipvlan"):
        pytest.skip("kernel lacks ipvlan (ipvlan networks)")
    d.cli("network", "create", "-d", "ipvlan", "--subnet", SUBNET, "--gateway", GATEWAY,
          "--ip-range", "10.88.1.64/28", "-o", f"parent={PARENT}", "-o",
          f"ipvlan_mode={mode}", "iv")
    s1 = _sandbox(d, "i1", "iv")
    if mode == "l2":
        assert harness.wait_ping(s1, EXT_IP)
        host_mac = _link_mac(d.netns_path, PARENT)
        assert _mac(d, "i1") == host_mac
    else:
        route = harness.nsexec(s1, "ip", "route", "show", "default", check=True).stdout
        assert "dev eth0" in route
    d.cli("sandbox", "rm", "-f", "i1")
    d.cli("network", "rm", "iv")


def test_parent_removed_reported_then_endpoints_remade(lan):
    lan, d = lan
    _macvlan(d, "mv", "--ip-range", "10.88.1.64/28")
    s1 = _sandbox(d, "r1", "mv")
    ip1 = d.sandbox_ip("r1", "mv")
    mac1 = _mac(d, "r1")
    assert harness.wait_ping(s1, EXT_IP)

    lan.unplug_host()  # the kernel deletes every macvlan on it, in every namespace
    assert harness.nsexec(s1, "ip", "link", "show", "eth0").returncode != 0
    status = d.cli_json("network", "inspect", "mv")[0]["Status"]
    assert status["ParentState"] == "missing"
    info = d.cli("info").stdout
    assert f'WARNING: network "mv": parent interface "{PARENT}" is missing' in info
    d.cli("sandbox", "create", "r2")
    err = _refused(d, "network", "connect", "mv", "r2")
    assert "missing" in err

    # back: the next connect on the network remakes r1's interface too
    lan.plug_host()
    assert d.cli_json("network", "inspect", "mv")[0]["Status"]["ParentState"] == "returned"
    s2 = _sandbox(d, "r3", "mv")
    assert harness.wait_ping(s2, EXT_IP)
    assert harness.wait_ping(s1, EXT_IP)
    assert _mac(d, "r1") == mac1 and d.sandbox_ip("r1", "mv") == ip1
    assert harness.ping(lan.ext, ip1)

    # gone again, back while the daemon is down: remade at its start
    lan.unplug_host()
    d.stop()
    lan.plug_host()
    d.start()
    assert d.cli_json("network", "inspect", "mv")[0]["Status"]["ParentState"] == "up"
    assert harness.wait_ping(s1, EXT_IP) and harness.wait_ping(s2, EXT_IP)
    route = harness.nsexec(s1, "ip", "route", "show", "default", check=True).stdout
    assert f"via {GATEWAY} dev eth0" in route
    assert _mac(d, "r1") == mac1
    assert "WARNING" not in d.cli("info").stdout
    d.cli("sandbox", "rm", "-f", "r1", "r2", "r3")
    d.cli("network", "rm", "mv")


def test_host_interface_option(lan):
    lan, d = lan
    _macvlan(d, "mvh", "--ip-range", "10.88.1.64/28", "-o", "cnet.macvlan.host_interface=mvh0")
    s1 = _sandbox(d, "h1", "mvh")
    ip1 = d.sandbox_ip("h1", "mvh")
    link = d.run_in_host("ip", "-d", "link", "show", "mvh0", check=True).stdout
    assert "macvlan mode bridge" in link and f"cnet:{d.daemon_id}:" in link
    # the host reaches its own container (through mvh0), and the container the host
    assert harness.wait_ping(d.netns_path, ip1)
    assert harness.ping(s1, HOST_IP)
    assert harness.ping(lan.ext, ip1)
    d.cli("network", "disconnect", "mvh", "h1")
    assert ip1 not in d.run_in_host("ip", "route", "show", "dev", "mvh0").stdout
    d.cli("network", "connect", "mvh", "h1")
    d.restart()  # kept across a restart (owned, not "unknown")
    d.run_in_host("ip", "link", "show", "mvh0", check=True)
    assert harness.wait_ping(d.netns_path, d.sandbox_ip("h1", "mvh"))
    d.cli("sandbox", "rm", "-f", "h1")
    d.cli("network", "rm", "mvh")
    assert d.run_in_host("ip", "link", "show", "mvh0", check=False).returncode != 0


def test_busybox_containers_on_the_lan(lan, busybox_tar):
    """Containers (not bare sandboxes): a web server reached from the LAN, a client
    fetching from the external host, each on its macvlan."""
    lan, d = lan
    d.cli("image", "import", str(busybox_tar), "busybox")
    _macvlan(d, "mv", "--ip-range", "10.88.1.96/28")
    d.cli("run", "-d", "--name", "web", "--network", "mv", "--ip", "10.88.1.100", "busybox",
          "httpd", "-f", "-p", "80", "-h", "/etc")
    view = d.cli_json("inspect", "web")[0]["NetworkSettings"]["Networks"]["mv"]
    assert view["IPAddress"] == "10.88.1.100" and view["Gateway"] == GATEWAY
    assert view["MacAddress"] == "02:42:0a:58:01:64"
    harness.wait_for(lambda: harness.tcp_connect(lan.ext, "10.88.1.100", 80), timeout=10,
                     what="web on the LAN")
    reply = harness.tcp_request(lan.ext, "10.88.1.100", 80, b"GET /hostname HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.") and b"200" in reply.split(b"\r\n")[0]
    assert _neigh_mac(lan.ext, "10.88.1.100") == "02:42:0a:58:01:64"
    with harness.TcpServer(lan.ext, 8080, b"from-ext\n", host="0.0.0.0"):
        out = d.cli("run", "--rm", "--network", "mv", "busybox", "nc", EXT_IP, "8080").stdout
    assert out == "from-ext\n"
    d.cli("rm", "-f", "web")
    d.cli("network", "rm", "mv")
