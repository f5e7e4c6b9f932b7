"""The bridge driver: one Linux bridge per network, one veth per endpoint.

Isolation: routed traffic is filtered by the network's chains in the cnet
nftables table; with enable_icc=false the veths are also isolated bridge ports
(IFLA_BRPORT_ISOLATED), so endpoints cannot reach each other at layer 2 while
the gateway stays reachable.
"""

from __future__ import annotations

from cnet.cnm.driverapi import Driver, JoinInfo
from cnet.cnm.errors import Conflict
from cnet.cnm.ids import short
from cnet.cnm.model import Endpoint, Network
from cnet.cnm.osl.kernel import Kernel
from cnet.drivers.bridge.options import KNOWN, BridgeOptions
from cnet.ingress.firewall import Firewall, NetworkRules

DEFAULT_BRIDGE = "cnet0"


def bridge_mac(network_id: str) -> str:
    """A fixed, locally administered MAC derived from the network id (stable across a
    restore that recreates the bridge)."""
    return "02:" + ":".join(network_id[i:i + 2] for i in range(0, 10, 2))


def host_veth_name(endpoint: Endpoint) -> str:
    return "veth" + endpoint.id[:7]


class BridgeDriver(Driver):
    name = "bridge"
    scope = "local"
    options = KNOWN

    def __init__(self, ctx):
        super().__init__(ctx)
        self._bridge_index: dict[str, int] = {}  # network id -> ifindex, saves a lookup per join

    @property
    def kernel(self) -> Kernel:
        return self.ctx.netlink  # type: ignore[return-value]

    @property
    def firewall(self) -> Firewall:
        return self.ctx.firewall  # type: ignore[return-value]

    # -- networks -------------------------------------------------------------
    def validate(self, network: Network) -> None:
        opts = BridgeOptions.parse(network.options)
        name = opts.bridge_name or f"br-{short(network.id)}"
        if self.kernel.host.index(name) is not None:
            raise Conflict(f'bridge name "{name}" is already in use by another interface')
        network.driver_state["bridge"] = name

    def create_network(self, network: Network) -> None:
        opts = BridgeOptions.parse(network.options)
        name = network.driver_state["bridge"]
        self._create_bridge(network, opts)
        try:
            if not network.internal:
                self.kernel.enable_forwarding(network.enable_ipv6)
            self.firewall.add_network(self.firewall_rules(network))
        except BaseException:
            self.kernel.host.delete_link(name)
            raise

    def _create_bridge(self, network: Network, opts: BridgeOptions) -> None:
        host = self.kernel.host
        name = network.driver_state["bridge"]
        idx = host.create_bridge(name, self.ctx.alias(network.id), opts.mtu,
                                 bridge_mac(network.id))
        self._bridge_index[network.id] = idx
        try:
            for pool in network.pools:
                prefix = pool.subnet.split("/")[1]
                host.add_address(idx, f"{pool.gateway}/{prefix}")
            self.kernel.allow_localnet(name)
            host.set_up(idx)
        except BaseException:
            host.delete_link(name)
            raise

    def delete_network(self, network: Network) -> None:
        errors = []
        try:
            self.firewall.remove_network(self.firewall_rules(network))
        except Exception as exc:  # best effort: still remove the bridge
            errors.append(exc)
        self.kernel.host.delete_link(network.driver_state["bridge"])
        self._bridge_index.pop(network.id, None)
        if errors:
            raise errors[0]

    def firewall_rules(self, network: Network) -> NetworkRules:
        opts = BridgeOptions.parse(network.options)
        return NetworkRules(
            id=network.id,
            bridge=network.driver_state["bridge"],
            subnets4=tuple(p.subnet for p in network.pools if not p.v6),
            subnets6=tuple(p.subnet for p in network.pools if p.v6),
            internal=network.internal,
            icc=opts.icc,
            masquerade=opts.masquerade,
        )

    # -- endpoints ------------------------------------------------------------------
    def create_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        endpoint.driver_state["veth"] = host_veth_name(endpoint)

    def join(self, network: Network, endpoint: Endpoint, sandbox_key: str,
             ifname: str) -> JoinInfo:
        opts = BridgeOptions.parse(network.options)
        self._create_veth(network, endpoint, sandbox_key, ifname, opts)
        if network.internal:
            return JoinInfo(ifname=ifname, mtu=opts.mtu)
        pool4, pool6 = network.pool(False), network.pool(True)
        return JoinInfo(
            ifname=ifname,
            gateway4=pool4.gateway if pool4 and endpoint.ipv4 else None,
            gateway6=pool6.gateway if pool6 and endpoint.ipv6 else None,
            mtu=opts.mtu,
        )

    def _create_veth(self, network: Network, endpoint: Endpoint, sandbox_key: str,
                     ifname: str, opts: BridgeOptions) -> None:
        host = self.kernel.host
        bridge = self._bridge(network)
        veth = endpoint.driver_state["veth"]
        idx = host.create_veth_into(
            veth, ifname, sandbox_key, alias=self.ctx.alias(endpoint.id), master=bridge,
            peer_mac=endpoint.mac, mtu=opts.mtu,
        )
        if not opts.icc:
            try:
                host.set_port_isolated(idx)
            except BaseException:
                host.delete_link(veth)
                raise

    def _bridge(self, network: Network) -> int | None:
        idx = self._bridge_index.get(network.id)
        if idx is None:
            idx = self.kernel.host.index(network.driver_state["bridge"])
            if idx is not None:
                self._bridge_index[network.id] = idx
        return idx

    def leave(self, network: Network, endpoint: Endpoint) -> None:
        self.kernel.host.delete_link(endpoint.driver_state["veth"])

    # -- restart ------------------------------------------------------------------------
    def restore(self, network: Network, joined: list[tuple[Endpoint, str]]) -> list[str]:
        host = self.kernel.host
        opts = BridgeOptions.parse(network.options)
        self._bridge_index.pop(network.id, None)
        if self._bridge(network) is None:
            self._create_bridge(network, opts)
        bridge = self._bridge(network)
        masters = {link.ifname: link.master for link in host.links()}
        recreated = []
        for endpoint, key in joined:
            veth = endpoint.driver_state["veth"]
            if veth not in masters:
                if key is None:
                    continue  # joined for dockerd, which configured it: never remade here
                self.kernel.sandbox(key).delete_link(endpoint.ifname or "")
                self._create_veth(network, endpoint, key, endpoint.ifname or "eth0", opts)
                recreated.append(endpoint.id)
            elif masters[veth] != bridge:
                # The veth survived but its bridge did not (or it was detached): attach
                # it to the current bridge again; port flags do not survive a detach.
                idx = host.index(veth)
                host.set_master(idx, bridge)
                if not opts.icc:
                    host.set_port_isolated(idx)
        if not network.internal:
            self.kernel.enable_forwarding(network.enable_ipv6)
        return recreated

    def owned_links(self, network: Network, endpoints: list[Endpoint]) -> set[str]:
        names = {network.driver_state["bridge"]}
        names.update(e.driver_state["veth"] for e in endpoints
                     if e.sandbox_id or e.driver_state.get("external_sandbox"))
        return names
