"""The CNM controller: networks, endpoints and sandboxes, their lifecycle and state.

Every public method is one API operation: it validates first, then applies with
an undo stack, and persists with one store transaction. The controller is used
from a single thread (the daemon's kernel worker), so it needs no locks.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable

from cnet.cnm import ids
from cnet.cnm.driverapi import ClusterInfo, Driver, DriverContext, Peer
from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.ipam import GLOBAL_POOLS, Ipam
from cnet.cnm.model import Endpoint, Network, Sandbox
from cnet.cnm.osl.kernel import Kernel
from cnet.cnm.store import Store, Txn
from cnet.cnm.timefmt import now
from cnet.cnm.undo import Undo
from netaddr import IPAddress

log = logging.getLogger(__name__)

PREDEFINED = (("bridge", "bridge"), ("host", "host"), ("none", "null"))
NO_CONNECT = ("host", "null")
# The node-local bridge that gives egress to sandboxes joined only to networks without a
# gateway (overlays): Docker's docker_gwbridge.
GATEWAY_NETWORK = "cnet_gwbridge"
GATEWAY_OPTIONS = {
    "com.docker.network.bridge.name": GATEWAY_NETWORK,
    "com.docker.network.bridge.enable_icc": "false",
    "com.docker.network.bridge.enable_ip_masquerade": "true",
}
VNI_FIRST, VNI_LAST = 4096, (1 << 24) - 1
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


def mac_for(ipv4_cidr: str | None) -> str:
    """Docker's classic scheme: 02:42 followed by the IPv4 address bytes."""
    if ipv4_cidr:
        tail = IPAddress(ipv4_cidr.split("/")[0]).packed
    else:
        tail = secrets.token_bytes(4)
    return "02:42:" + ":".join(f"{b:02x}" for b in tail)


def _ip_key(network_id: str, cidr: str) -> str:
    return f"ipam/{network_id}/{cidr.split('/')[0]}"


def _peer_key(network_id: str, endpoint_id: str) -> str:
    return f"peer/{network_id}/{endpoint_id}"


def peer_from_record(rec: dict) -> Peer:
    return Peer(endpoint_id=rec["endpoint"], ipv4=rec.get("ipv4"), ipv6=rec.get("ipv6"),
                mac=rec["mac"], vtep=rec["vtep"], node=rec["node"])


class Controller:
    def __init__(self, store: Store, kernel: Kernel, firewall, ipam: Ipam, daemon_id: str,
                 default_bridge: bool = True, gstore: Store | None = None,
                 cluster: ClusterInfo | None = None):
        self.store = store  # local scope: the embedded SQLite store
        self.gstore = gstore  # global scope: the cluster store (etcd), None on a single host
        self.cluster = cluster
        self.kernel = kernel
        self.firewall = firewall
        self.ipam = ipam
        self.daemon_id = daemon_id
        self.default_bridge = default_bridge
        self.ctx = DriverContext(daemon_id=daemon_id, netlink=kernel, firewall=firewall,
                                 cluster=cluster)
        # Remote endpoints of global networks (the cluster's peer table, without ours):
        # network id -> endpoint id -> peer record.
        self.peers: dict[str, dict[str, dict]] = {}
        self._taken_vnis: set[int] = set()
        # The DNS names a sandbox's endpoint is known by (published with its peer record).
        self.endpoint_names = lambda ep, sb: [sb.name, *ep.aliases]
        self.drivers: dict[str, Driver] = {}
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self._routes: dict[str, tuple] = {}  # sandbox id -> default routes last applied
        # Told after each committed change: endpoint_joined(ep, sb), endpoint_left(ep, sb),
        # sandbox_removed(sb) (before its namespace goes), and for global networks
        # peer_joined(net, endpoint_id, rec), peer_left(net, endpoint_id),
        # network_removed(net). The embedded DNS listens.
        self.listeners: list = []

    def _tell(self, event: str, *args) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:
                log.exception("listener %s failed on %s", listener, event)

    def register_driver(self, cls: type[Driver]) -> None:
        self.drivers[cls.name] = cls(self.ctx)

    # -- lookups -------------------------------------------------------------
    def network(self, ref: str) -> Network:
        return ids.resolve("network", ref, self.networks.values(), lambda n: (n.id, n.name))

    def sandbox(self, ref: str) -> Sandbox:
        return ids.resolve("sandbox", ref, self.sandboxes.values(), lambda s: (s.id, s.name))

    def endpoint(self, ref: str) -> Endpoint:
        return ids.resolve("endpoint", ref, self.endpoints.values(), lambda e: (e.id, e.id))

    def network_endpoints(self, network_id: str) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.network_id == network_id]

    def driver(self, network: Network) -> Driver:
        return self.drivers[network.driver]

    # -- networks ------------------------------------------------------------------
    def create_network(self, req: dict, predefined: bool = False) -> Network:
        name = req.get("Name") or ""
        ids.check_name("network", name)
        if any(n.name == name for n in self.networks.values()):
            raise Conflict(f"network with name {name} already exists")
        driver_name = req.get("Driver") or "bridge"
        driver = self.drivers.get(driver_name)
        if driver is None:
            raise InvalidParameter(f'unknown network driver "{driver_name}"')
        if not driver.multi_instance and not predefined:
            raise InvalidParameter(f'only one instance of "{driver_name}" network is allowed')
        ipam_req = req.get("IPAM") or {}
        if (ipam_req.get("Driver") or "default") != "default":
            raise InvalidParameter(f'unknown IPAM driver "{ipam_req["Driver"]}"')
        options = {str(k): str(v) for k, v in (req.get("Options") or {}).items()}
        labels = {str(k): str(v) for k, v in (req.get("Labels") or {}).items()}
        configs = list(ipam_req.get("Config") or [])
        enable_ipv6 = bool(req.get("EnableIPv6"))
        if driver_name in NO_CONNECT:
            if configs or enable_ipv6 or options:
                raise InvalidParameter(f'the "{driver_name}" driver takes no subnet or options')
            pools = []
        else:
            if driver.scope == "global" and self.gstore is None:
                raise InvalidParameter(
                    f'{driver_name} networks need a cluster store: start cnetd with '
                    '--cluster-store etcd://HOST:PORT --advertise-addr IP')
            pools = self.ipam.plan(configs, enable_ipv6,
                                   GLOBAL_POOLS if driver.scope == "global" else None)
        net = Network(
            id=ids.new_id(), name=name, driver=driver_name, scope=driver.scope, created=now(),
            pools=pools, enable_ipv6=enable_ipv6, internal=bool(req.get("Internal")),
            attachable=bool(req.get("Attachable")), options=options, labels=labels,
            user_subnets=bool(configs), predefined=predefined,
        )
        driver.validate(net)
        with Undo() as undo:
            self.ipam.register(net.id, pools)
            undo.push(self.ipam.unregister, net.id)
            if net.scope == "global":
                net.driver_state["vni"] = self._pick_vni(net)
            driver.create_network(net)
            undo.push(driver.delete_network, net)
            if net.scope == "global":
                self._commit_global_network(net)
            else:
                self.store.put(f"network/{net.id}", net.to_record())
        self.networks[net.id] = net
        log.info("created network %s (%s, %s)", net.name, ids.short(net.id), driver_name)
        return net

    def delete_network(self, ref: str) -> Network:
        net = self.network(ref)
        if net.predefined:
            raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
        if self.network_endpoints(net.id):
            raise Conflict(f"network {net.name} has active endpoints")
        if net.scope == "global":
            assert self.gstore is not None
            if self.gstore.list(f"ipam/{net.id}/"):  # endpoints on other nodes
                raise Conflict(f"network {net.name} has active endpoints")
        self.driver(net).delete_network(net)
        self.ipam.unregister(net.id)
        if net.scope == "global":
            self.gstore.commit(Txn(deletes=[  # type: ignore[union-attr]
                f"network/{net.id}", f"vni/{net.driver_state['vni']}", f"netname/{net.name}"]))
            self.peers.pop(net.id, None)
        else:
            self.store.delete(f"network/{net.id}")
        del self.networks[net.id]
        log.info("deleted network %s", net.name)
        return net

    # -- global networks (cluster store) -------------------------------------------------
    def _pick_vni(self, net: Network) -> int:
        """The VNI asked for (-o vxlanid_list) or the lowest one no known network uses."""
        want = net.options.get(VNI_OPTION)
        if want:
            try:
                vni = int(want)
            except ValueError:
                raise InvalidParameter(f"invalid VNI {want!r}: an integer") from None
            if not VNI_FIRST <= vni <= VNI_LAST:
                raise InvalidParameter(f"VNI {vni} is out of range ({VNI_FIRST}-{VNI_LAST})")
            return vni
        used = {n.driver_state.get("vni") for n in self.networks.values()} | self._taken_vnis
        vni = VNI_FIRST
        while vni in used:
            vni += 1
        return vni

    def _commit_global_network(self, net: Network) -> None:
        """Network record, VNI and name in one etcd transaction; a VNI another node took
        in the meantime is skipped, a name taken anywhere in the cluster is refused."""
        assert self.gstore is not None
        for _ in range(64):
            vni = net.driver_state["vni"]
            keys = (f"vni/{vni}", f"netname/{net.name}")
            try:
                self.gstore.commit(Txn(puts={f"network/{net.id}": net.to_record(),
                                             keys[0]: {"network": net.id},
                                             keys[1]: {"network": net.id}},
                                       absent=list(keys)))
                return
            except Conflict as exc:
                if "netname/" in str(exc):
                    raise Conflict(f"network with name {net.name} already exists") from None
                if VNI_OPTION in net.options:
                    raise Conflict(f"VNI {vni} is already in use") from None
                self._taken_vnis.add(vni)
                net.driver_state["vni"] = self._pick_vni(net)
        raise Conflict("could not allocate a VNI")

    def add_global_network(self, net: Network) -> None:
        """A global network appeared in the cluster store (another node made it)."""
        if net.id in self.networks:
            return
        self.ipam.register(net.id, net.pools)
        self.networks[net.id] = net
        for rec in self.peers.get(net.id, {}).values():
            self.driver(net).peer_add(net, peer_from_record(rec))
        log.info("cluster: network %s (%s) appeared", net.name, ids.short(net.id))

    def forget_global_network(self, network_id: str) -> None:
        """A global network was removed from the cluster store."""
        net = self.networks.get(network_id)
        self.peers.pop(network_id, None)
        if net is None or net.scope != "global":
            return
        if self.network_endpoints(net.id):
            log.error("cluster: network %s was removed while this node has endpoints on it",
                      net.name)
            return
        try:
            self.driver(net).delete_network(net)
        finally:
            self.ipam.unregister(net.id)
            del self.networks[net.id]
        self._tell("network_removed", net)
        log.info("cluster: network %s was removed", net.name)

    def apply_peer(self, network_id: str, endpoint_id: str, rec: dict | None) -> None:
        """A change in the cluster's peer table (our own entries are skipped)."""
        if rec is not None and self.cluster and rec.get("node") == self.cluster.node_id:
            return
        table = self.peers.setdefault(network_id, {})
        net = self.networks.get(network_id)
        if rec is None:
            old = table.pop(endpoint_id, None)
            if old is not None and net is not None:
                self.driver(net).peer_delete(net, peer_from_record(old))
                self._tell("peer_left", net, endpoint_id)
            return
        table[endpoint_id] = rec
        if net is not None:
            self.driver(net).peer_add(net, peer_from_record(rec))
            self._tell("peer_joined", net, endpoint_id, rec)

    def peer_record(self, ep: Endpoint, sb: Sandbox) -> dict:
        assert self.cluster is not None
        return {"endpoint": ep.id, "ipv4": ep.ipv4, "ipv6": ep.ipv6, "mac": ep.mac,
                "vtep": self.cluster.advertise_addr, "node": self.cluster.node_id,
                "node_name": self.cluster.node_name, "sandbox": sb.name,
                "names": self.endpoint_names(ep, sb)}

    def _publish_peer(self, ep: Endpoint, sb: Sandbox) -> None:
        key = _peer_key(ep.network_id, ep.id)
        self.gstore.commit(Txn(puts={key: self.peer_record(ep, sb)},  # type: ignore[union-attr]
                               leased=[key]))

    def _unpublish_peer(self, ep: Endpoint) -> None:
        try:
            self.gstore.delete(_peer_key(ep.network_id, ep.id))  # type: ignore[union-attr]
        except Exception as exc:  # the lease or the next start removes it
            log.warning("cluster: could not remove peer %s: %s", ids.short(ep.id), exc)

    def local_peers(self) -> dict[str, dict]:
        """Peer records of this node's joined endpoints on global networks, by key."""
        out = {}
        for ep in self.endpoints.values():
            net = self.networks.get(ep.network_id)
            if net is not None and net.scope == "global" and ep.sandbox_id:
                out[_peer_key(net.id, ep.id)] = self.peer_record(
                    ep, self.sandboxes[ep.sandbox_id])
        return out

    def prune_networks(self) -> list[str]:
        removed = []
        for net in list(self.networks.values()):
            if not net.predefined and not self.network_endpoints(net.id):
                removed.append(self.delete_network(net.id).name)
        return removed

    # -- endpoints --------------------------------------------------------------------
    def _new_endpoint(self, net: Network, name: str, ipv4: str | None, ipv6: str | None,
                      aliases: Iterable[str], undo: Undo) -> Endpoint:
        if (ipv4 or ipv6) and not net.user_subnets:
            raise InvalidParameter("user specified IP address is supported only when "
                                   "connecting to networks with user configured subnets")
        if ipv6 and not net.enable_ipv6:
            raise InvalidParameter(f"network {net.name} does not have IPv6 enabled")
        ep = Endpoint(id=ids.new_id(), name=name, network_id=net.id, aliases=list(aliases))
        for version, want in ((4, ipv4), (6, ipv6)):
            if self.ipam.has_family(net.id, version):
                cidr = self._allocate(net, ep.id, version, want)
                undo.push(self._release, net, cidr)
                setattr(ep, f"ipv{version}", cidr)
            elif want:
                raise InvalidParameter(f"network {net.name} has no IPv{version} subnet")
        ep.mac = mac_for(ep.ipv4)
        driver = self.driver(net)
        driver.create_endpoint(net, ep)
        undo.push(driver.delete_endpoint, net, ep)
        return ep

    def _allocate(self, net: Network, endpoint_id: str, version: int,
                  want: str | None) -> str:
        """An address from the network's pool. On a global network it is reserved at once
        in the cluster store (a guarded transaction): an address another node took since
        our cache last heard is skipped, so no address is ever handed out twice."""
        cidr = self.ipam.allocate(net.id, version, want)
        if net.scope != "global":
            return cidr
        assert self.gstore is not None and self.cluster is not None
        for _ in range(256):
            key = _ip_key(net.id, cidr)
            try:
                self.gstore.commit(Txn(puts={key: {"endpoint": endpoint_id,
                                                   "node": self.cluster.node_id}},
                                       absent=[key]))
                return cidr
            except Conflict:  # someone else's: keep it marked as used here
                if want:
                    raise Conflict(f"Address already in use: {want}") from None
                cidr = self.ipam.allocate(net.id, version)
            except BaseException:
                self.ipam.release(net.id, cidr)
                raise
        raise Conflict(f"could not reserve an address on network {net.name}")

    def _release(self, net: Network, cidr: str) -> None:
        self.ipam.release(net.id, cidr)
        if net.scope == "global":
            self.gstore.delete(_ip_key(net.id, cidr))  # type: ignore[union-attr]

    def _endpoint_txn(self, ep: Endpoint, txn: Txn) -> None:
        txn.puts[f"endpoint/{ep.id}"] = ep.to_record()
        if self.networks[ep.network_id].scope == "global":
            return  # its addresses were reserved in the cluster store
        for cidr in (ep.ipv4, ep.ipv6):
            if cidr:
                key = _ip_key(ep.network_id, cidr)
                txn.puts[key] = {"endpoint": ep.id}
                txn.absent.append(key)

    def create_endpoint(self, network_ref: str, name: str = "", ipv4: str | None = None,
                        ipv6: str | None = None, aliases: Iterable[str] = ()) -> Endpoint:
        net = self.network(network_ref)
        if net.driver in NO_CONNECT:
            raise InvalidParameter(f"endpoints cannot be created on the {net.name} network")
        with Undo() as undo:
            ep = self._new_endpoint(net, name, ipv4, ipv6, aliases, undo)
            txn = Txn()
            self._endpoint_txn(ep, txn)
            self.store.commit(txn)
        self.endpoints[ep.id] = ep
        return ep

    def delete_endpoint(self, ref: str) -> None:
        ep = self.endpoint(ref)
        if ep.sandbox_id:
            raise Conflict(f"endpoint {ids.short(ep.id)} is still joined to a sandbox")
        self._forget_endpoint(ep, Txn())

    def _forget_endpoint(self, ep: Endpoint, txn: Txn) -> None:
        net = self.networks[ep.network_id]
        self.driver(net).delete_endpoint(net, ep)
        txn.deletes.append(f"endpoint/{ep.id}")
        gtxn = Txn()
        for cidr in (ep.ipv4, ep.ipv6):
            if cidr:
                self.ipam.release(net.id, cidr)
                (gtxn if net.scope == "global" else txn).deletes.append(_ip_key(net.id, cidr))
        if gtxn.deletes:
            try:
                self.gstore.commit(gtxn)  # type: ignore[union-attr]
            except Exception as exc:  # the next start releases what this node left
                log.warning("cluster: could not release %s: %s", gtxn.deletes, exc)
        self.store.commit(txn)
        del self.endpoints[ep.id]

    # -- join / leave ----------------------------------------------------------------------
    def _next_ifname(self, sb: Sandbox) -> str:
        used = {self.endpoints[e].ifname for e in sb.endpoints}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"

    def _join(self, ep: Endpoint, sb: Sandbox, undo: Undo) -> None:
        net = self.networks[ep.network_id]
        if net.scope == "global" and not net.attachable:
            raise InvalidParameter(f"network {net.name} is not manually attachable "
                                   "(create it with --attachable)")
        if any(self.endpoints[e].network_id == net.id for e in sb.endpoints):
            raise Conflict(f"endpoint with name {sb.name} already exists in network {net.name}")
        driver = self.driver(net)
        info = driver.join(net, ep, sb.key, self._next_ifname(sb))
        undo.push(driver.leave, net, ep)
        if info.ifname:
            self.kernel.configure_interface(sb.key, info.ifname,
                                            [a for a in (ep.ipv4, ep.ipv6) if a])
        ep.sandbox_id, ep.ifname = sb.id, info.ifname
        ep.gateway4, ep.gateway6 = info.gateway4, info.gateway6
        sb.endpoints.append(ep.id)
        undo.push(self._unjoin_record, ep, sb)
        if net.scope == "global":
            self._publish_peer(ep, sb)
            undo.push(self._unpublish_peer, ep)
        self._apply_routes(sb)
        undo.push(self._apply_routes, sb)

    def _unjoin_record(self, ep: Endpoint, sb: Sandbox) -> None:
        if ep.id in sb.endpoints:
            sb.endpoints.remove(ep.id)
        ep.sandbox_id = ep.ifname = ep.gateway4 = ep.gateway6 = None

    def _leave(self, ep: Endpoint, sb: Sandbox) -> None:
        net = self.networks[ep.network_id]
        if net.scope == "global":
            self._unpublish_peer(ep)
        self.driver(net).leave(net, ep)
        self._unjoin_record(ep, sb)
        self._apply_routes(sb)

    def _apply_routes(self, sb: Sandbox, force: bool = False) -> None:
        """Default routes follow the first joined endpoint that has a gateway (per family)."""
        joined = [self.endpoints[e] for e in sb.endpoints]
        gw4 = next((e for e in joined if e.gateway4), None)
        gw6 = next((e for e in joined if e.gateway6), None)
        want = (gw4.ifname if gw4 else None, gw4.gateway4 if gw4 else None,
                gw6.ifname if gw6 else None, gw6.gateway6 if gw6 else None)
        if not force and self._routes.get(sb.id, (None,) * 4) == want:
            return
        nl = self.kernel.sandbox(sb.key)
        for ifname, gw, v6 in ((want[0], want[1], False), (want[2], want[3], True)):
            if gw and ifname:
                nl.add_default_route(gw, nl.index(ifname))
            else:
                nl.delete_default_route(v6)
        self._routes[sb.id] = want

    def join(self, endpoint_ref: str, sandbox_ref: str) -> Endpoint:
        ep, sb = self.endpoint(endpoint_ref), self.sandbox(sandbox_ref)
        if ep.sandbox_id:
            raise Conflict(f"endpoint {ids.short(ep.id)} is already joined to a sandbox")
        with Undo() as undo:
            self._join(ep, sb, undo)
            txn = Txn(puts={f"endpoint/{ep.id}": ep.to_record()})
            self._sync_gateway(sb, undo, txn)
            txn.puts[f"sandbox/{sb.id}"] = sb.to_record()
            self.store.commit(txn)
        self._tell("endpoint_joined", ep, sb)
        return ep

    def leave(self, endpoint_ref: str) -> Endpoint:
        ep = self.endpoint(endpoint_ref)
        if not ep.sandbox_id:
            raise Conflict(f"endpoint {ids.short(ep.id)} is not joined to a sandbox")
        sb = self.sandboxes[ep.sandbox_id]
        self._leave(ep, sb)
        self._sync_gateway(sb, Undo(), Txn())
        self.store.commit(Txn(puts={f"endpoint/{ep.id}": ep.to_record(),
                                    f"sandbox/{sb.id}": sb.to_record()}))
        self._tell("endpoint_left", ep, sb)
        return ep

    # -- the gateway bridge (egress for sandboxes on overlays only) -------------------------
    def _gateway_endpoint(self, sb: Sandbox) -> Endpoint | None:
        for e in sb.endpoints:
            ep = self.endpoints[e]
            if self.networks[ep.network_id].name == GATEWAY_NETWORK:
                return ep
        return None

    def _gateway_wanted(self, sb: Sandbox) -> bool:
        """Joined to a non-internal network without a gateway, and to none with one."""
        need = False
        for e in sb.endpoints:
            ep = self.endpoints[e]
            net = self.networks[ep.network_id]
            if net.name == GATEWAY_NETWORK:
                continue
            if ep.gateway4:
                return False
            need = need or (self.driver(net).needs_gateway_bridge and not net.internal)
        return need

    def _gateway_network(self) -> Network:
        for net in self.networks.values():
            if net.name == GATEWAY_NETWORK:
                return net
        return self.create_network({"Name": GATEWAY_NETWORK, "Driver": "bridge",
                                    "Options": GATEWAY_OPTIONS}, predefined=True)

    def _sync_gateway(self, sb: Sandbox, undo: Undo, txn: Txn) -> None:
        """Add or remove the sandbox's endpoint on the gateway bridge (Docker's
        docker_gwbridge): it carries the default route of a sandbox that is only on
        overlays, and goes once the sandbox joins a network that has a gateway."""
        wanted, gw_ep = self._gateway_wanted(sb), self._gateway_endpoint(sb)
        if wanted and gw_ep is None:
            net = self._gateway_network()
            ep = self._new_endpoint(net, f"gateway_{ids.short(sb.id)}", None, None, (), undo)
            self.endpoints[ep.id] = ep
            undo.push(self.endpoints.pop, ep.id)
            self._join(ep, sb, undo)
            self._endpoint_txn(ep, txn)
        elif not wanted and gw_ep is not None:
            self._leave(gw_ep, sb)
            self._forget_endpoint(gw_ep, Txn(puts={f"sandbox/{sb.id}": sb.to_record()}))

    # -- connect / disconnect (endpoint + join in one operation) ---------------------------------
    def connect(self, network_ref: str, target: str, ipv4: str | None = None,
                ipv6: str | None = None, aliases: Iterable[str] = ()) -> Endpoint:
        net, sb = self.network(network_ref), self.sandbox(target)
        if net.driver in NO_CONNECT:
            raise InvalidParameter("container cannot be disconnected from host network or "
                                   "connected to host network")
        if any(self.endpoints[e].network_id == net.id for e in sb.endpoints):
            raise Conflict(f"endpoint with name {sb.name} already exists in network {net.name}")
        with Undo() as undo:
            ep = self._new_endpoint(net, sb.name, ipv4, ipv6, aliases, undo)
            self.endpoints[ep.id] = ep
            undo.push(self.endpoints.pop, ep.id)
            self._join(ep, sb, undo)
            txn = Txn()
            self._endpoint_txn(ep, txn)
            self._sync_gateway(sb, undo, txn)
            txn.puts[f"sandbox/{sb.id}"] = sb.to_record()
            self.store.commit(txn)
        self._tell("endpoint_joined", ep, sb)
        return ep

    def disconnect(self, network_ref: str, target: str, force: bool = False) -> None:
        net, sb = self.network(network_ref), self.sandbox(target)
        ep = next((self.endpoints[e] for e in sb.endpoints
                   if self.endpoints[e].network_id == net.id), None)
        if ep is None:
            raise NotFound(f"sandbox {sb.name} is not connected to network {net.name}")
        self._leave(ep, sb)
        self._sync_gateway(sb, Undo(), Txn())
        self._forget_endpoint(ep, Txn(puts={f"sandbox/{sb.id}": sb.to_record()}))
        self._tell("endpoint_left", ep, sb)

    # -- sandboxes ------------------------------------------------------------------------------
    def create_sandbox(self, name: str, labels: dict[str, str] | None = None,
                       sandbox_id: str | None = None) -> Sandbox:
        ids.check_name("sandbox", name)
        if any(s.name == name for s in self.sandboxes.values()):
            raise Conflict(f'sandbox name "{name}" is already in use')
        sid = sandbox_id or ids.new_id()
        sb = Sandbox(id=sid, name=name, created=now(), key=self.kernel.netns_path(sid),
                     labels=dict(labels or {}))
        with Undo() as undo:
            self.kernel.create_netns(sb.key)
            undo.push(self.kernel.remove_netns, sb.key)
            self.store.put(f"sandbox/{sb.id}", sb.to_record())
        self.sandboxes[sb.id] = sb
        return sb

    def delete_sandbox(self, ref: str, force: bool = False) -> Sandbox:
        sb = self.sandbox(ref)
        if sb.endpoints and not force:
            names = ", ".join(self.networks[self.endpoints[e].network_id].name
                              for e in sb.endpoints)
            raise Conflict(f"sandbox {sb.name} is connected to {names}: disconnect it or use -f")
        errors: list[Exception] = []
        for ep_id in list(sb.endpoints):
            if ep_id not in sb.endpoints:  # the gateway endpoint goes with the last overlay
                continue
            try:
                self.disconnect(self.endpoints[ep_id].network_id, sb.id)
            except Exception as exc:  # best effort teardown, reported at the end
                errors.append(exc)
        self._tell("sandbox_removed", sb)
        try:
            self.kernel.remove_netns(sb.key)
        except Exception as exc:
            errors.append(exc)
        if not sb.endpoints:
            self.store.delete(f"sandbox/{sb.id}")
            del self.sandboxes[sb.id]
            self._routes.pop(sb.id, None)
        if errors:
            raise errors[0]
        return sb

