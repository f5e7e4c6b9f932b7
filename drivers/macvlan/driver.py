"""The macvlan driver: containers as hosts of the physical network behind a parent interface.

Each endpoint is a macvlan link on the parent (`-o parent=IFACE`, Docker's option names),
born inside its sandbox with its final name and its own MAC (02:42 + IPv4, like every cnet
endpoint), so it answers ARP on the LAN as a host of its own; its address comes from the
network's (physical) subnet and its default route goes via the network's gateway, the
physical router. Modes (`-o macvlan_mode=`): bridge (siblings talk directly, the default),
private (they cannot), vepa (through the switch, which must hairpin), passthru (one
endpoint takes over the parent; it keeps the parent's MAC, reported as the endpoint's).

The host cannot reach its own macvlan containers through the parent: the kernel does
not deliver frames between a macvlan and its parent. `-o cnet.macvlan.host_interface=NAME`
makes a macvlan NAME in the daemon's namespace on the same parent (the network's mode, alias
cnet:<daemon>:<network>), with a host route to each joined endpoint's address through it.
"""

from __future__ import annotations

from cnet.cnm.errors import Conflict
from cnet.cnm.model import Endpoint, Network
from cnet.drivers.macvlan.base import ParentLinkDriver
from cnet.drivers.macvlan.options import MACVLAN_KNOWN, ParentOptions, parse_macvlan


def host_interface_mac(network_id: str) -> str:
    """Fixed and locally administered, from the network id: stable when it is remade."""
    return "06:" + ":".join(network_id[i:i + 2] for i in range(0, 10, 2))


class MacvlanDriver(ParentLinkDriver):
    name = "macvlan"
    kind = "macvlan"
    options = MACVLAN_KNOWN

    def parse(self, options: dict[str, str]) -> ParentOptions:
        return parse_macvlan(options)

    def validate(self, network: Network) -> None:
        super().validate(network)
        host_if = self.parse(network.options).host_interface
        if host_if and self.kernel.host.index(host_if) is not None:
            raise Conflict(f'host interface name "{host_if}" is already in use by another '
                           "interface")

    def create_link(self, network: Network, endpoint: Endpoint, opts: ParentOptions,
                    parent: int, sandbox_key: str, ifname: str) -> None:
        passthru = opts.mode == "passthru"
        self.kernel.host.create_macvlan_into(ifname, parent, sandbox_key, mode=opts.mode,
                                             mac=None if passthru else endpoint.mac)
        if passthru:  # it has the parent's MAC; setting another would change the parent's
            state = self.kernel.sandbox(sandbox_key).link_state(ifname)
            if state is not None and state.address:
                endpoint.mac = state.address

    # -- the host-side interface ------------------------------------------------------------
    def network_extras(self, network: Network, opts: ParentOptions, parent: int) -> None:
        if not opts.host_interface:
            return
        host = self.kernel.host
        state = host.link_state(opts.host_interface)
        if state is not None and state.kind == "macvlan" and state.alias == self.ctx.alias(
                network.id):
            return
        if state is not None:  # a stale one of ours (e.g. of an old parent): make it again
            host.delete_link(opts.host_interface)
        host.create_macvlan(opts.host_interface, parent, mode=opts.mode,
                            alias=self.ctx.alias(network.id), mac=host_interface_mac(network.id))

    def remove_extras(self, network: Network, opts: ParentOptions) -> None:
        if opts.host_interface:
            self.kernel.host.delete_link(opts.host_interface)

    def _host_routes(self, endpoint: Endpoint) -> list[str]:
        return [c.split("/")[0] for c in (endpoint.ipv4, endpoint.ipv6) if c]

    def _route_via_host_interface(self, endpoint: Endpoint, opts: ParentOptions,
                                  add: bool) -> None:
        """With -o cnet.macvlan.host_interface: the host's route to the endpoint."""
        if not opts.host_interface:
            return
        host = self.kernel.host
        idx = host.index(opts.host_interface)
        if idx is None:
            return
        for ip in self._host_routes(endpoint):
            (host.add_device_route if add else host.delete_device_route)(ip, idx)

    def endpoint_joined(self, network: Network, endpoint: Endpoint,
                        opts: ParentOptions) -> None:
        self._route_via_host_interface(endpoint, opts, add=True)

    def endpoint_leaving(self, network: Network, endpoint: Endpoint,
                         opts: ParentOptions) -> None:
        self._route_via_host_interface(endpoint, opts, add=False)
