"""macvlan/ipvlan drivers against an in-memory kernel: option parsing, validation, and the
paths this machine's kernel cannot run (802.1q sub-interfaces, ipvlan l3)."""

from __future__ import annotations

import itertools

import pytest
from cnet.cnm.driverapi import DriverContext
from cnet.cnm.errors import Conflict, FeatureMissing, InvalidParameter
from cnet.cnm.ipam import PoolConfig
from cnet.cnm.model import Endpoint, Network
from cnet.cnm.osl.netlink import LinkState
from cnet.drivers.ipvlan.driver import IpvlanDriver
from cnet.drivers.macvlan import options
from cnet.drivers.macvlan.driver import MacvlanDriver

HOST = "host"
_index = itertools.count(10)


class FakeNetlink:
    """One namespace: links by name; stacked links record their parent and kind."""

    def __init__(self, kernel: FakeKernel, ns: str):
        self.k, self.ns = kernel, ns
        self.links: dict[str, LinkState] = {}
        self.routes: set[tuple[str, int]] = set()
        self.defaults: dict[bool, object] = {}

    def add(self, ifname: str, kind: str | None = None, alias: str | None = None,
            master: int | None = None, mac: str = "aa:bb:cc:00:00:01") -> int:
        idx = next(_index)
        self.links[ifname] = LinkState(idx, ifname, kind, alias, master, True, True, 1500, mac)
        return idx

    def link_state(self, ifname=None, index=None):
        if ifname is not None:
            return self.links.get(ifname)
        return next((s for s in self.links.values() if s.index == index), None)

    def index(self, ifname):
        s = self.links.get(ifname)
        return s.index if s else None

    def delete_link(self, ifname):
        gone = self.links.pop(ifname, None)
        if gone is not None:  # its routes go with it
            self.routes = {r for r in self.routes if r[1] != gone.index}
        return gone is not None

    def _parent_name(self, index):
        return next(n for n, s in self.links.items() if s.index == index)

    def create_vlan(self, ifname, parent, vlan_id, alias):
        self._parent_name(parent)
        return self.add(ifname, "vlan", alias)

    def create_macvlan(self, ifname, parent, *, mode, alias, mac=None):
        self._parent_name(parent)
        return self.add(ifname, "macvlan", alias, mac=mac or "06:00:00:00:00:01")

    def create_macvlan_into(self, ifname, parent, netns_path, *, mode, mac=None, mtu=None):
        parent_mac = self.links[self._parent_name(parent)].address
        self.k.sandbox(netns_path).add(ifname, "macvlan",
                                       mac=parent_mac if mode == "passthru" else mac)

    def create_ipvlan_into(self, ifname, parent, netns_path, *, mode, mtu=None):
        parent_mac = self.links[self._parent_name(parent)].address
        self.k.sandbox(netns_path).add(ifname, "ipvlan", mac=parent_mac)

    def add_device_route(self, dst, index):
        self.routes.add((dst, index))

    def delete_device_route(self, dst, index):
        self.routes.discard((dst, index))

    def set_up(self, index):
        pass

    def add_device_default_route(self, index, v6=False):
        self.defaults[v6] = ("dev", index)

    def add_default_route(self, gw, index=None):
        self.defaults[":" in gw] = (gw, index)

    def has_default_route(self, v6=False):
        return v6 in self.defaults


class FakeKernel:
    host_netns_path = "/proc/4242/ns/net"  # the daemon's own (external joins go there)

    def __init__(self, features=("macvlan",)):
        self.features = set(features)
        self.host = FakeNetlink(self, HOST)
        self.sandboxes: dict[str, FakeNetlink] = {}
        self.configured: list[tuple[str, str, list[str]]] = []

    def has_link_feature(self, name):
        return name in self.features

    def sandbox(self, key):
        return self.sandboxes.setdefault(key, FakeNetlink(self, key))

    def is_namespace_file(self, key):
        return True

    def configure_interface(self, key, ifname, addresses):
        self.configured.append((key, ifname, addresses))


def _driver(cls, kernel):
    return cls(DriverContext(daemon_id="d" + str(next(_index)), netlink=kernel, firewall=None))


def _net(name, opts, driver="macvlan", subnet="10.1.0.0/24", gateway="10.1.0.1"):
    return Network(id=f"{name:0<64}"[:64], name=name, driver=driver, scope="local", created="",
                   pools=[PoolConfig(subnet, gateway)], options=opts)


def _ep(n=2, ip="10.1.0.{}/24"):
    return Endpoint(id=f"e{n:0>63}", name="", network_id="", ipv4=ip.format(n),
                    mac=f"02:42:0a:01:00:{n:02x}")


def _create(driver, net):
    driver.validate(net)
    driver.create_network(net)
    return net


# -- options -------------------------------------------------------------------------------
def test_options_defaults_and_errors():
    o = options.parse_macvlan({"parent": "eth0"})
    assert (o.parent, o.mode, o.vlan) == ("eth0", "bridge", None)
    assert options.parse_macvlan({"parent": "eth0.30"}).vlan == ("eth0", 30)
    assert options.parse_ipvlan({"parent": "eth0"}).mode == "l2"
    for bad, want in [({}, "need a parent"), ({"parent": "a" * 16}, "invalid parent"),
                      ({"parent": "e", "macvlan_mode": "x"}, "invalid macvlan_mode"),
                      ({"parent": "e.0"}, "invalid VLAN id 0"),
                      ({"parent": "e", "mtu": "9000"}, "unknown macvlan driver option"),
                      ({"parent": "e", "macvlan_mode": "passthru",
                        options.HOST_INTERFACE: "h0"}, "bridge or vepa")]:
        with pytest.raises(InvalidParameter, match=want):
            options.parse_macvlan(bad)
    with pytest.raises(InvalidParameter, match="invalid ipvlan_mode"):
        options.parse_ipvlan({"parent": "e", "ipvlan_mode": "l4"})
    with pytest.raises(InvalidParameter, match="ipvlan_flag"):
        options.parse_ipvlan({"parent": "e", "ipvlan_flag": "private"})


# -- validation --------------------------------------------------------------------------------
def test_features_missing_are_named():
    k = FakeKernel(features=("macvlan",))
    k.host.add("eth0")
    with pytest.raises(FeatureMissing, match="802.1q VLAN"):
        _driver(MacvlanDriver, k).validate(_net("n", {"parent": "eth0.30"}))
    with pytest.raises(FeatureMissing, match="ipvlan"):
        _driver(IpvlanDriver, k).validate(_net("n", {"parent": "eth0"}, "ipvlan"))
    assert k.host.links.keys() == {"eth0"}


def test_parent_conflicts():
    k = FakeKernel(features=("macvlan", "ipvlan"))
    k.host.add("eth0")
    br = k.host.add("br0", "bridge")
    k.host.add("port0", "veth", master=br)
    mac, ipv = _driver(MacvlanDriver, k), _driver(IpvlanDriver, k)
    ipv.ctx = mac.ctx  # one daemon
    k.host.add("cnbr", "bridge", alias=mac.ctx.alias("x"))
    cases = [("nosuch", "does not exist"), ("port0", 'port of "br0"'),
             ("cnbr", "bridge of a cnet bridge network"), ("lo", "loopback")]
    k.host.add("lo")
    for parent, want in cases:
        with pytest.raises((InvalidParameter, Conflict), match=want):
            mac.validate(_net("n", {"parent": parent}))
    _create(mac, _net("m1", {"parent": "eth0"}))
    with pytest.raises(Conflict, match="macvlan or ipvlan"):
        ipv.validate(_net("i1", {"parent": "eth0"}, "ipvlan"))
    with pytest.raises(Conflict, match="passthru"):
        mac.validate(_net("m2", {"parent": "eth0", "macvlan_mode": "passthru"}))
    _create(mac, _net("m3", {"parent": "eth0", "macvlan_mode": "private"}))  # modes mix


def test_ipvlan_one_mode_per_parent_and_l3_routes():
    k = FakeKernel(features=("ipvlan",))
    k.host.add("eth0", mac="aa:bb:cc:dd:ee:ff")
    ipv = _driver(IpvlanDriver, k)
    net = _create(ipv, _net("i1", {"parent": "eth0", "ipvlan_mode": "l3"}, "ipvlan"))
    with pytest.raises(Conflict, match="one mode per parent"):
        ipv.validate(_net("i2", {"parent": "eth0", "ipvlan_mode": "l2"}, "ipvlan"))
    ep = _ep()
    info = ipv.join(net, ep, "/sb1", "eth0")
    assert info.gateway4 is None  # l3: no gateway, a device route
    assert k.sandbox("/sb1").defaults[False][0] == "dev"
    assert ep.mac == "aa:bb:cc:dd:ee:ff"  # ipvlan shares the parent's MAC
    net2 = _create(ipv, _net("i3", {"parent": "eth0", "ipvlan_mode": "l3"}, "ipvlan",
                             subnet="10.2.0.0/24", gateway="10.2.0.1"))
    assert net2.driver_state["parent"] == "eth0"


# -- 802.1q sub-interfaces (shared; the last network removes it) -------------------------------
def test_vlan_parent_made_shared_and_removed_with_the_last_network():
    k = FakeKernel(features=("macvlan", "802.1q"))
    k.host.add("eth0")
    mac = _driver(MacvlanDriver, k)
    n1 = _create(mac, _net("v1", {"parent": "eth0.30"}))
    assert k.host.links["eth0.30"].kind == "vlan"
    assert k.host.links["eth0.30"].alias == mac.ctx.alias(n1.id)
    n2 = _create(mac, _net("v2", {"parent": "eth0.30"}, subnet="10.2.0.0/24",
                           gateway="10.2.0.1"))
    assert mac.owned_links(n2, []) == {"eth0.30"}
    mac.delete_network(n1)
    assert "eth0.30" in k.host.links  # still used by v2
    mac.delete_network(n2)
    assert "eth0.30" not in k.host.links


def test_vlan_made_again_on_restore():
    k = FakeKernel(features=("macvlan", "802.1q"))
    k.host.add("eth0")
    mac = _driver(MacvlanDriver, k)
    net = _create(mac, _net("v1", {"parent": "eth0.30"}))
    ep = _ep()
    mac.join(net, ep, "/sb1", "eth0")
    ep.ifname = "eth0"
    k.host.delete_link("eth0.30")
    k.sandbox("/sb1").delete_link("eth0")  # the kernel takes the children with it
    fresh = _driver(MacvlanDriver, k)  # a daemon restart
    fresh.ctx = mac.ctx
    assert fresh.restore(net, [(ep, "/sb1")]) == [ep.id]
    assert k.host.links["eth0.30"].kind == "vlan"
    assert k.sandbox("/sb1").links["eth0"].address == ep.mac


# -- endpoints, passthru, heal -----------------------------------------------------------------
def test_passthru_one_endpoint_with_the_parents_mac():
    k = FakeKernel()
    k.host.add("eth0", mac="aa:00:00:00:00:09")
    mac = _driver(MacvlanDriver, k)
    net = _create(mac, _net("p", {"parent": "eth0", "macvlan_mode": "passthru"}))
    ep1 = _ep(2)
    mac.create_endpoint(net, ep1)
    mac.join(net, ep1, "/sb1", "eth0")
    assert ep1.mac == "aa:00:00:00:00:09"
    with pytest.raises(Conflict, match="passthru allows one"):
        mac.create_endpoint(net, _ep(3))


def test_parent_back_heals_joined_endpoints_at_next_join():
    k = FakeKernel()
    k.host.add("eth0")
    mac = _driver(MacvlanDriver, k)
    net = _create(mac, _net("m", {"parent": "eth0", options.HOST_INTERFACE: "mvh0"}))
    ep1 = _ep(2)
    ep1.gateway4 = "10.1.0.1"
    mac.join(net, ep1, "/sb1", "eth0")
    assert ("10.1.0.2", k.host.links["mvh0"].index) in k.host.routes
    # the parent goes: the kernel deletes its children everywhere
    for name in ("eth0", "mvh0"):
        k.host.delete_link(name)
    k.sandbox("/sb1").delete_link("eth0")
    assert mac.status(net)["ParentState"] == "missing"
    assert "missing" in mac.status(net)["Warning"]
    with pytest.raises(Conflict, match="missing"):
        mac.join(net, _ep(3), "/sb2", "eth0")
    k.host.add("eth0")
    assert mac.status(net)["ParentState"] == "returned"
    mac.join(net, _ep(3), "/sb2", "eth0")
    assert k.sandbox("/sb1").links["eth0"].address == ep1.mac
    assert ("/sb1", "eth0", ["10.1.0.2/24"]) in k.configured
    assert k.sandbox("/sb1").defaults[False] == ("10.1.0.1", k.sandbox("/sb1").index("eth0"))
    assert "mvh0" in k.host.links
    assert mac.status(net) == {"Parent": "eth0", "ParentState": "up"}
    mac.leave(net, ep1)
    assert "eth0" not in k.sandbox("/sb1").links
    assert not any(r[0] == "10.1.0.2" for r in k.host.routes)
