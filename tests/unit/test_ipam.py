"""IPAM: pool choice, validation, allocation order, exhaustion, overlap."""

import pytest
from cnet.cnm.errors import Conflict, InvalidParameter
from cnet.cnm.ipam import GLOBAL_POOLS, Ipam, parse_pool_option


def test_default_pools_follow_docker_order():
    ipam = Ipam()
    first = ipam.plan([], enable_ipv6=False)
    assert first[0].subnet == "172.17.0.0/16" and first[0].gateway == "172.17.0.1"
    ipam.register("a", first)
    assert ipam.plan([], False)[0].subnet == "172.18.0.0/16"


def test_after_172_ranges_come_192_168_slash_20s():
    ipam = Ipam()
    for n in range(15):
        ipam.register(f"n{n}", ipam.plan([], False))
    assert ipam.plan([], False)[0].subnet == "192.168.0.0/20"


def test_freed_pool_is_reused_and_host_routes_are_skipped():
    ipam = Ipam(host_prefixes=lambda: ["172.17.5.0/24", "0.0.0.0/0"])
    p = ipam.plan([], False)
    assert p[0].subnet == "172.18.0.0/16"
    ipam.register("x", p)
    ipam.unregister("x")
    assert ipam.plan([], False)[0].subnet == "172.18.0.0/16"


def test_custom_default_pool():
    base, size = parse_pool_option("base=10.10.0.0/16,size=24")
    ipam = Ipam([(base, size)])
    assert ipam.plan([], False)[0].subnet == "10.10.0.0/24"
    with pytest.raises(InvalidParameter):
        parse_pool_option("base=10.10.0.0/16")
    with pytest.raises(InvalidParameter):
        parse_pool_option("base=10.10.0.0/16,size=8")


@pytest.mark.parametrize(
    "cfg, msg",
    [
        ({"Subnet": "10.1.0.0/33"}, "not a CIDR"),
        ({"Subnet": "bogus"}, "not a CIDR"),
        ({"Subnet": "10.1.0.5/24"}, "it should be 10.1.0.0/24"),
        ({"Subnet": "10.1.0.0/24", "Gateway": "10.2.0.1"}, "not in subnet"),
        ({"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.0"}, "not a usable address"),
        ({"Subnet": "10.1.0.0/24", "IPRange": "10.2.0.0/25"}, "not inside subnet"),
        ({"Subnet": "10.1.0.0/24", "AuxiliaryAddresses": {"r": "10.9.0.1"}}, "not in subnet"),
        ({"Subnet": "10.1.0.0/31"}, "too small"),
        ({"Gateway": "10.1.0.1"}, "need a --subnet"),
    ],
)
def test_bad_configs_are_refused(cfg, msg):
    with pytest.raises(InvalidParameter, match=msg):
        Ipam().plan([cfg], False)


def test_overlap_with_existing_network_refused():
    ipam = Ipam()
    ipam.register("a", ipam.plan([{"Subnet": "10.1.0.0/16"}], False))
    with pytest.raises(Conflict, match="overlaps"):
        ipam.plan([{"Subnet": "10.1.128.0/24"}], False)
    with pytest.raises(Conflict, match="overlaps"):
        ipam.plan([{"Subnet": "10.0.0.0/8"}], False)
    ipam.plan([{"Subnet": "10.2.0.0/16"}], False)


def test_ipv6_needs_flag_and_gets_ula_when_unset():
    with pytest.raises(InvalidParameter, match="--ipv6"):
        Ipam().plan([{"Subnet": "fd00:1::/64"}], False)
    pools = Ipam(ula_prefix="fd12:3456:789a::/48").plan([], True)
    assert [p.subnet for p in pools] == ["172.17.0.0/16", "fd12:3456:789a::/64"]
    assert pools[1].gateway == "fd12:3456:789a::1"


def test_allocation_skips_reserved_and_reuses_lowest_free():
    ipam = Ipam()
    pools = ipam.plan([{"Subnet": "10.5.0.0/29", "AuxiliaryAddresses": {"r": "10.5.0.3"}}],
                      False)
    ipam.register("n", pools)
    got = [ipam.allocate("n", 4) for _ in range(4)]
    assert got == ["10.5.0.2/29", "10.5.0.4/29", "10.5.0.5/29", "10.5.0.6/29"]
    with pytest.raises(Conflict, match="no available IPv4"):
        ipam.allocate("n", 4)
    ipam.release("n", "10.5.0.4/29")
    assert ipam.allocate("n", 4) == "10.5.0.4/29"


def test_static_addresses_and_ip_range():
    ipam = Ipam()
    ipam.register("n", ipam.plan([{"Subnet": "10.6.0.0/24", "IPRange": "10.6.0.128/25"}],
                                 False))
    assert ipam.allocate("n", 4) == "10.6.0.128/24"
    assert ipam.allocate("n", 4, "10.6.0.9") == "10.6.0.9/24"  # static may lie outside range
    with pytest.raises(Conflict, match="already in use"):
        ipam.allocate("n", 4, "10.6.0.9")
    with pytest.raises(Conflict, match="already in use"):
        ipam.allocate("n", 4, "10.6.0.1")  # the gateway
    with pytest.raises(InvalidParameter, match="not in subnet"):
        ipam.allocate("n", 4, "10.7.0.9")


def test_global_networks_take_docker_swarms_10_slash_8_in_slash_24s():
    ipam = Ipam()
    first = ipam.plan([], False, GLOBAL_POOLS)
    assert first[0].subnet == "10.0.0.0/24" and first[0].gateway == "10.0.0.1"
    ipam.register("ov1", first)
    assert ipam.plan([], False, GLOBAL_POOLS)[0].subnet == "10.0.1.0/24"
    # local networks keep the daemon's pools
    assert ipam.plan([], False)[0].subnet == "172.17.0.0/16"


def test_addresses_other_nodes_hold_are_skipped_and_given_back():
    ipam = Ipam()
    ipam.register("ov", ipam.plan([{"Subnet": "10.9.0.0/24"}], False))
    ipam.mark("ov", "10.9.0.2", used=True)  # another node's endpoint
    ipam.mark("ov", "10.9.0.2", used=True)  # told twice: still fine
    assert ipam.allocate("ov", 4) == "10.9.0.3/24"
    ipam.mark("ov", "10.9.0.2", used=False)
    assert ipam.allocate("ov", 4) == "10.9.0.2/24"
    ipam.mark("unknown-network", "10.9.0.9", used=True)  # ignored
