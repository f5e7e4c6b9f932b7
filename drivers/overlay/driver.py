"""The overlay driver: one VXLAN segment per network across the cluster's nodes.

As Docker's overlay does it: on each node, lazily at the first local join, a network
namespace `ov-<network id[:12]>` (under the exec root, beside the sandboxes) holds a
bridge `br0` and a VXLAN device `vxlan0` (the VNI the controller allocated in the
cluster store). vxlan0 is created through the daemon's own netlink handle, so its UDP
socket (port 4789 by default) lives in the daemon's namespace and the tunnel rides the
node's underlay, while the device sits in the overlay namespace. Each local endpoint is
a veth from br0 into its container.

The data plane is static: no learning, no flooding. For every remote endpoint (the
cluster's peer table, `peer_add`) vxlan0 gets an FDB entry `MAC dst VTEP` and a
permanent neighbour entry `IP lladdr MAC`; with `proxy` on, the VTEP answers the
containers' ARP and neighbour solicitations itself from that table. A frame for a MAC
without an entry is dropped (there is no all-zeros default entry to flood to).
When two known peers share a MAC or IP (an address that moved from a dead node's
endpoint to a new one), its entries follow the most recently added peer, and go back to
the other one when that peer is deleted.

The overlay gives containers no gateway (and the host namespace nothing: no links, no
firewall rules); the controller adds an endpoint on the node's gateway bridge for egress.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from cnet.cnm.driverapi import Driver, JoinInfo, Peer
from cnet.cnm.errors import CnetError, FeatureMissing, InvalidParameter
from cnet.cnm.model import Endpoint, Network
from cnet.cnm.osl import arp
from cnet.cnm.osl.kernel import Kernel
from cnet.drivers.overlay.options import KNOWN, MAX_VNI, OverlayOptions

log = logging.getLogger(__name__)

BRIDGE = "br0"
VXLAN = "vxlan0"
# What encapsulation adds in front of the inner frame: outer Ethernet 14 + IP + UDP 8
# + VXLAN 8; IPv4 header 20, IPv6 40.
OVERHEAD = {4: 50, 6: 70}
FALLBACK_UNDERLAY_MTU = 1500  # when the advertise address is on no local link

NO_CLUSTER = ("overlay networks need a cluster store: start cnetd with "
              "--cluster-store etcd://HOST:PORT --advertise-addr IP")
NO_ESP = ("encrypted overlay networks need IPsec ESP (kernel xfrm/esp4), "
          "which this kernel lacks")
NO_IPSEC = "encrypted overlay networks are not supported: cnet has no IPsec data plane"


def namespace_name(network_id: str) -> str:
    """The per-network namespace holding br0 and vxlan0 (under the daemon's netns dir)."""
    return "ov-" + network_id[:12]


def _veth(endpoint: Endpoint) -> str:
    return endpoint.driver_state.get("veth") or "veth" + endpoint.id[:7]


def _ip(cidr: str) -> str:
    """The address of a CIDR, in the kernel's spelling (IPv6 compressed)."""
    return ipaddress.ip_address(cidr.split("/")[0]).compressed


def _ips(peer: Peer, ipv6: bool) -> list[str]:
    return [_ip(c) for c in (peer.ipv4, peer.ipv6 if ipv6 else None) if c]


@dataclass
class _Sandbox:
    """The overlay namespace of one network on this node."""

    path: str
    bridge: int  # ifindex of br0 inside it
    vxlan: int  # ifindex of vxlan0 inside it
    mtu: int
    ipv6: bool  # the network has IPv6: vxlan0 holds IPv6 neighbour entries too


class OverlayDriver(Driver):
    name = "overlay"
    scope = "global"
    options = KNOWN
    needs_gateway_bridge = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self._sandboxes: dict[str, _Sandbox] = {}  # network id -> its namespace here
        self._local: dict[str, set[str]] = {}  # network id -> endpoints joined on this node
        # network id -> endpoint id -> remote endpoint; kept even while no local endpoint
        # exists (peers may arrive before the first join), programmed when one does
        self._peers: dict[str, dict[str, Peer]] = {}

    @property
    def kernel(self) -> Kernel:
        return self.ctx.netlink  # type: ignore[return-value]

    def _path(self, network: Network) -> str:
        return self.kernel.netns_path(namespace_name(network.id))

    # -- networks -------------------------------------------------------------
    def validate(self, network: Network) -> None:
        if self.ctx.cluster is None:
            raise InvalidParameter(NO_CLUSTER)
        opts = OverlayOptions.parse(network.options)
        if opts.encrypted:
            # Never fake it: without an IPsec data plane, refuse, naming what is missing.
            if not self.kernel.has_esp():
                raise FeatureMissing(NO_ESP)
            raise InvalidParameter(NO_IPSEC)

    def create_network(self, network: Network) -> None:
        """Nothing to create yet: the namespace waits for the first local join."""
        self._vni(network)
        OverlayOptions.parse(network.options)

    def delete_network(self, network: Network) -> None:
        self._remove_sandbox(network)
        self._local.pop(network.id, None)
        self._peers.pop(network.id, None)

    def _vni(self, network: Network) -> int:
        vni = network.driver_state.get("vni")
        if not isinstance(vni, int) or isinstance(vni, bool) or not 1 <= vni <= MAX_VNI:
            raise CnetError(f"overlay network {network.name} has no valid VNI ({vni!r})")
        return vni

    def _mtu(self, network: Network, opts: OverlayOptions) -> int:
        if opts.mtu:
            return opts.mtu
        local = self._advertise_addr()
        underlay = self.kernel.host.mtu_of_address(local)
        if underlay is None:
            log.warning("advertise address %s is on no local link: assuming MTU %d",
                        local, FALLBACK_UNDERLAY_MTU)
            underlay = FALLBACK_UNDERLAY_MTU
        return underlay - OVERHEAD[6 if ":" in local else 4]

    def _advertise_addr(self) -> str:
        if self.ctx.cluster is None:
            raise InvalidParameter(NO_CLUSTER)
        return self.ctx.cluster.advertise_addr

    # -- the overlay namespace --------------------------------------------------------
    def _ensure_sandbox(self, network: Network) -> _Sandbox:
        """The network's namespace with br0 and vxlan0, made (or completed) if needed."""
        sb = self._sandboxes.get(network.id)
        if sb is not None:
            return sb
        opts = OverlayOptions.parse(network.options)
        vni = self._vni(network)
        mtu = self._mtu(network, opts)
        path = self._path(network)
        created = False
        if not self.kernel.is_netns(path):
            self.kernel.remove_netns(path)  # an unmounted file a crash may have left
            self.kernel.create_netns(path)
            created = True
        try:
            sb = self._build(network, path, vni, opts.port, mtu)
            self._sandboxes[network.id] = sb
            self._sync_peers(network, sb)
        except BaseException:
            self._sandboxes.pop(network.id, None)
            if created:
                self._destroy(path)
            raise
        return sb

    def _build(self, network: Network, path: str, vni: int, port: int, mtu: int) -> _Sandbox:
        """br0 and vxlan0 inside `path`: keep what exists, create what is missing."""
        nl = self.kernel.sandbox(path)
        links = {link.ifname: link for link in nl.links()}
        alias = self.ctx.alias(network.id)
        br = links.get(BRIDGE)
        if br is not None and br.kind != "bridge":
            nl.delete_link(BRIDGE)
            br = None
        bridge = br.index if br is not None else nl.create_bridge(BRIDGE, alias, mtu)
        nl.set_up(bridge)
        local = self._advertise_addr()
        vx = links.get(VXLAN)
        if vx is not None:
            have = nl.vxlan_config(vx.index)
            if have is None or (have.vni, have.port) != (vni, port) or not have.local \
                    or _ip(have.local) != _ip(local) or not have.socket_elsewhere:
                # not the tunnel this node would make now (another VNI, port or advertise
                # address, or a socket inside the overlay namespace): make it again
                log.info("overlay %s: replacing %s (%s)", network.name, VXLAN, have)
                nl.delete_link(VXLAN)
                vx = None
        if vx is None:
            vxlan = self.kernel.create_vxlan(path, VXLAN, vni=vni, port=port, local=local,
                                             mtu=mtu, alias=alias, master=bridge)
        else:
            vxlan = vx.index
            nl.set_link(vxlan, master=bridge, up=True)
        if network.enable_ipv6:
            # The namespace starts with IPv6 off, and the kernel refuses IPv6 neighbour
            # entries on a link without IPv6 (EINVAL); proxy ND answers from them.
            self.kernel.enable_ipv6(path, VXLAN)
        return _Sandbox(path=path, bridge=bridge, vxlan=vxlan, mtu=mtu,
                        ipv6=network.enable_ipv6)

    def _remove_sandbox(self, network: Network) -> None:
        self._sandboxes.pop(network.id, None)
        path = self._path(network)
        if self.kernel.is_netns(path):
            self._destroy(path)
        else:
            self.kernel.remove_netns(path)  # a stale file, if any

    def _destroy(self, path: str) -> None:
        """Remove an overlay namespace, vxlan0 first.

        A VXLAN device is registered with the namespace of its socket (the daemon's):
        deleting it now frees its VNI there at once, instead of whenever the kernel
        gets round to dismantling the unmounted namespace (a re-join right after the
        last leave would otherwise find the VNI still taken: EEXIST).
        """
        try:
            self.kernel.sandbox(path).delete_link(VXLAN)
        finally:
            self.kernel.remove_netns(path)

    # -- endpoints ------------------------------------------------------------------
    def create_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        endpoint.driver_state["veth"] = "veth" + endpoint.id[:7]

    def join(self, network: Network, endpoint: Endpoint, sandbox_key: str,
             ifname: str) -> JoinInfo:
        sb = self._ensure_sandbox(network)
        local = self._local.setdefault(network.id, set())
        try:
            self._create_veth(sb, endpoint, sandbox_key, ifname)
        except BaseException:
            if not local:
                self._remove_sandbox(network)
            raise
        local.add(endpoint.id)
        return JoinInfo(ifname=ifname, mtu=sb.mtu)  # no gateway: the gateway bridge gives it

    def _create_veth(self, sb: _Sandbox, endpoint: Endpoint, sandbox_key: str,
                     ifname: str) -> None:
        self.kernel.sandbox(sb.path).create_veth_into(
            _veth(endpoint), ifname, sandbox_key, alias=self.ctx.alias(endpoint.id),
            master=sb.bridge, peer_mac=endpoint.mac, mtu=sb.mtu,
        )

    def leave(self, network: Network, endpoint: Endpoint) -> None:
        local = self._local.get(network.id, set())
        local.discard(endpoint.id)
        path = self._path(network)
        try:
            if network.id in self._sandboxes or self.kernel.is_netns(path):
                self.kernel.sandbox(path).delete_link(_veth(endpoint))
        finally:
            if not local:
                self._local.pop(network.id, None)
                self._remove_sandbox(network)

    # -- peers (remote endpoints) ---------------------------------------------------------
    def _is_local(self, peer: Peer) -> bool:
        return self.ctx.cluster is not None and peer.node == self.ctx.cluster.node_id

    def peer_add(self, network: Network, peer: Peer) -> None:
        if self._is_local(peer):
            return  # a local endpoint: reached through br0
        peers = self._peers.setdefault(network.id, {})
        old = peers.get(peer.endpoint_id)
        if old != peer:
            # a new or changed peer moves to the end: the table's order is the order
            # peers were last added in, and the latest wins a MAC or IP two peers share
            peers.pop(peer.endpoint_id, None)
        peers[peer.endpoint_id] = peer
        sb = self._sandboxes.get(network.id)
        if sb is None:
            return
        touched = [peer] if old is None or old == peer else [old, peer]
        self._reprogram(sb, touched, peers.values())
        if peer.ipv4 and old != peer:
            # wake containers already waiting for this address (see cnm/osl/arp.py)
            try:
                arp.announce(sb.path, BRIDGE, _ip(peer.ipv4), peer.mac)
            except OSError as exc:
                log.warning("overlay %s: gratuitous ARP for %s failed: %s", network.name,
                            peer.ipv4, exc)

    def peer_delete(self, network: Network, peer: Peer) -> None:
        peers = self._peers.get(network.id, {})
        gone = peers.pop(peer.endpoint_id, None)
        if gone is None:
            return  # unknown, or local
        sb = self._sandboxes.get(network.id)
        if sb is not None:
            self._reprogram(sb, [gone], peers.values())

    def _owners(self, sb: _Sandbox, peers) -> tuple[dict[str, Peer], dict[str, Peer]]:
        """Who each MAC's FDB entry and each IP's neighbour entry belongs to: when two
        known peers share one (an address, and with it a 02:42 MAC, that moved from a
        dead node's endpoint to a new one elsewhere), the most recently added peer."""
        by_mac: dict[str, Peer] = {}
        by_ip: dict[str, Peer] = {}
        for p in peers:  # in the order they were added: later ones overwrite
            by_mac[p.mac.lower()] = p
            for ip in _ips(p, sb.ipv6):
                by_ip[ip] = p
        return by_mac, by_ip

    def _reprogram(self, sb: _Sandbox, touched: list[Peer], peers) -> None:
        """Set the entries of the MACs and IPs of `touched` from the known `peers`:
        each to the peer that owns it now (fdb_add/neigh_add replace), or removed when
        no known peer uses it any more. A peer that left thus hands a shared MAC or IP
        back to the remaining one instead of leaving it pointed at a stale VTEP."""
        by_mac, by_ip = self._owners(sb, peers)
        nl = self.kernel.sandbox(sb.path)
        macs = {p.mac.lower(): p.mac for p in touched}
        for key, mac in macs.items():
            owner = by_mac.get(key)
            if owner is None:
                nl.fdb_del(sb.vxlan, mac)
            else:
                nl.fdb_add(sb.vxlan, owner.mac, owner.vtep)
        for ip in dict.fromkeys(ip for p in touched for ip in _ips(p, sb.ipv6)):
            owner = by_ip.get(ip)
            if owner is None:
                nl.neigh_del(sb.vxlan, ip)
            else:
                nl.neigh_add(sb.vxlan, ip, owner.mac)

    def _sync_peers(self, network: Network, sb: _Sandbox) -> None:
        """Make vxlan0's static entries exactly the known remote peers (a reused
        namespace may hold entries of peers that left while the daemon was down); a MAC
        or IP two peers share goes to the most recently added one."""
        by_mac, by_ip = self._owners(sb, self._peers.get(network.id, {}).values())
        nl = self.kernel.sandbox(sb.path)
        for mac, dst in nl.fdb_entries(sb.vxlan):
            if dst and mac and mac.lower() not in by_mac:
                nl.fdb_del(sb.vxlan, mac)
        for ip, _mac in nl.neigh_entries(sb.vxlan):
            if ip and _ip(ip) not in by_ip:
                nl.neigh_del(sb.vxlan, ip)
        for peer in by_mac.values():
            nl.fdb_add(sb.vxlan, peer.mac, peer.vtep)
        for ip, peer in by_ip.items():
            nl.neigh_add(sb.vxlan, ip, peer.mac)

    # -- restart ------------------------------------------------------------------------
    def restore(self, network: Network, joined: list[tuple[Endpoint, str]]) -> list[str]:
        """Reuse the overlay namespace if it survived (completing br0/vxlan0), recreate
        missing veths, drop veths of endpoints that are gone; no local endpoint: no
        namespace. Peers are programmed as the cluster store (re)announces them."""
        self._sandboxes.pop(network.id, None)
        self._local[network.id] = {ep.id for ep, _ in joined}
        if not joined:
            self._local.pop(network.id, None)
            self._remove_sandbox(network)
            return []
        sb = self._ensure_sandbox(network)
        nl = self.kernel.sandbox(sb.path)
        links = {link.ifname: link for link in nl.links()}
        wanted = {_veth(ep) for ep, _ in joined}
        prefix = f"cnet:{self.ctx.daemon_id}:"
        for link in links.values():
            if link.kind == "veth" and link.ifname not in wanted and (
                    link.alias or "").startswith(prefix):
                log.info("overlay %s: removing unknown interface %s", network.name,
                         link.ifname)
                nl.delete_link(link.ifname)
        recreated = []
        for endpoint, key in joined:
            link = links.get(_veth(endpoint))
            if link is None:
                if key is None:
                    continue  # joined for dockerd, which configured it: never remade here
                ifname = endpoint.ifname or "eth0"
                self.kernel.sandbox(key).delete_link(ifname)
                self._create_veth(sb, endpoint, key, ifname)
                recreated.append(endpoint.id)
            elif link.master != sb.bridge:
                nl.set_link(link.index, master=sb.bridge, up=True)
        return recreated

    def owned_netns(self, network: Network) -> set[str]:
        """The overlay namespace's path, whether or not it exists now: a restart's
        reconcile may ask before restore() has looked at it (restore removes it when
        no local endpoint is left)."""
        return {self._path(network)}

    def owned_links(self, network: Network, endpoints: list[Endpoint]) -> set[str]:
        return set()  # nothing in the host namespace

    def firewall_rules(self, network: Network) -> object | None:
        return None  # egress goes through the gateway bridge, which has its own rules
