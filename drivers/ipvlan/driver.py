"""The ipvlan driver (Docker's `-d ipvlan -o parent=IFACE -o ipvlan_mode=l2|l3|l3s`).

Like macvlan (see drivers/macvlan/base.py), but every endpoint shares the parent's MAC:
for switches that allow one MAC per port. l2: the endpoints are hosts of the parent's
segment (ARP, default route via the network's gateway). l3/l3s: the parent routes, no
broadcast or ARP leaves it; the endpoints get `default dev ethN` and the physical network
needs a route to the subnet via the host. Refused, naming the missing feature, on kernels
without ipvlan (`cnet info`).
"""

from __future__ import annotations

from cnet.cnm.driverapi import JoinInfo
from cnet.cnm.model import Endpoint, Network
from cnet.drivers.macvlan.base import ParentLinkDriver
from cnet.drivers.macvlan.options import IPVLAN_KNOWN, ParentOptions, parse_ipvlan


class IpvlanDriver(ParentLinkDriver):
    name = "ipvlan"
    kind = "ipvlan"
    options = IPVLAN_KNOWN

    def parse(self, options: dict[str, str]) -> ParentOptions:
        return parse_ipvlan(options)

    def create_link(self, network: Network, endpoint: Endpoint, opts: ParentOptions,
                    parent: int, sandbox_key: str, ifname: str) -> None:
        self.kernel.host.create_ipvlan_into(ifname, parent, sandbox_key, mode=opts.mode)
        state = self.kernel.sandbox(sandbox_key).link_state(ifname)
        if state is not None and state.address:
            endpoint.mac = state.address  # the parent's: report what the LAN sees

    def join_info(self, network: Network, endpoint: Endpoint, opts: ParentOptions,
                  sandbox_key: str, ifname: str) -> JoinInfo:
        if opts.mode == "l2" or network.internal:
            return super().join_info(network, endpoint, opts, sandbox_key, ifname)
        nl = self.kernel.sandbox(sandbox_key)
        idx = nl.index(ifname)
        assert idx is not None
        nl.set_up(idx)  # a device route needs the link up
        for cidr, v6 in ((endpoint.ipv4, False), (endpoint.ipv6, True)):
            if cidr:
                nl.add_device_default_route(idx, v6)
        return JoinInfo(ifname=ifname)
