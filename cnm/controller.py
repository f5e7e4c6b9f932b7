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
from cnet.cnm.driverapi import ClusterInfo, Driver, DriverContext, JoinInfo
from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.globalscope import GlobalScope, ip_key
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


def external_ifname(ep: Endpoint) -> str:
    """The temporary name of an endpoint's interface joined for dockerd (Join's SrcName)."""
    return "cnc" + ep.id[:7]


def check_mac(mac: str) -> str:
    """A unicast MAC in xx:xx:xx:xx:xx:xx form (lower case), or InvalidParameter."""
    parts = mac.lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p)
                                  for p in parts) or int(parts[0], 16) & 1:
        raise InvalidParameter(f"invalid MAC address {mac!r}")
    return ":".join(parts)


def mac_for(ipv4_cidr: str | None) -> str:
    """Docker's classic scheme: 02:42 followed by the IPv4 address bytes."""
    if ipv4_cidr:
        tail = IPAddress(ipv4_cidr.split("/")[0]).packed
    else:
        tail = secrets.token_bytes(4)
    return "02:42:" + ":".join(f"{b:02x}" for b in tail)


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
        # Global-scope networks' records and the peer table (with a cluster store only).
        self.glob = GlobalScope(self, gstore, cluster) if gstore and cluster else None
        self._tearing_down: set[str] = set()  # sandboxes being removed: no gateway added
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
    def create_network(self, req: dict, predefined: bool = False,
                       network_id: str | None = None) -> Network:
        """Docker's network create request (`network_id`: an id chosen by the caller,
        e.g. dockerd's through the remote driver API)."""
        name = req.get("Name") or ""
        ids.check_name("network", name)
        if name == GATEWAY_NETWORK and not predefined:
            raise InvalidParameter(f"network name {name} is reserved for the gateway bridge")
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
            if driver.scope == "global" and self.glob is None:
                raise InvalidParameter(
                    f'{driver_name} networks need a cluster store: start cnetd with '
                    '--cluster-store etcd://HOST:PORT --advertise-addr IP')
            pools = self.ipam.plan(configs, enable_ipv6,
                                   GLOBAL_POOLS if driver.scope == "global" else None)
        if network_id is not None and (network_id in self.networks or not (
                len(network_id) == 64 and all(c in "0123456789abcdef" for c in network_id))):
            raise InvalidParameter(f"invalid or used network id {network_id!r}")
        net = Network(
            id=network_id or ids.new_id(), name=name, driver=driver_name, scope=driver.scope,
            created=now(),
            pools=pools, enable_ipv6=enable_ipv6, internal=bool(req.get("Internal")),
            attachable=bool(req.get("Attachable")), options=options, labels=labels,
            user_subnets=bool(configs), predefined=predefined,
        )
        driver.validate(net)
        with Undo() as undo:
            self.ipam.register(net.id, pools)
            undo.push(self.ipam.unregister, net.id)
            if self.glob and net.scope == "global":
                net.driver_state["vni"] = self.glob.pick_vni(net)
            driver.create_network(net)
            undo.push(driver.delete_network, net)
            if self.glob and net.scope == "global":
                self.glob.commit_network(net)
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
        if self.glob and net.scope == "global":
            self.glob.delete_network(net)  # the cluster first: it may refuse
        self.driver(net).delete_network(net)
        self.ipam.unregister(net.id)
        if net.scope != "global":
            self.store.delete(f"network/{net.id}")
        del self.networks[net.id]
        log.info("deleted network %s", net.name)
        return net

    def prune_networks(self) -> list[str]:
        removed = []
        for net in list(self.networks.values()):
            if not net.predefined and not self.network_endpoints(net.id):
                try:
                    removed.append(self.delete_network(net.id).name)
                except Conflict:  # in use on another node: not unused
                    continue
        return removed

    # -- endpoints --------------------------------------------------------------------
    def _new_endpoint(self, net: Network, name: str, ipv4: str | None, ipv6: str | None,
                      aliases: Iterable[str], undo: Undo, mac: str | None = None,
                      endpoint_id: str | None = None) -> Endpoint:
        if (ipv4 or ipv6) and not net.user_subnets:
            raise InvalidParameter("user specified IP address is supported only when "
                                   "connecting to networks with user configured subnets")
        if ipv6 and not net.enable_ipv6:
            raise InvalidParameter(f"network {net.name} does not have IPv6 enabled")
        if endpoint_id is not None and endpoint_id in self.endpoints:
            raise Conflict(f"endpoint {ids.short(endpoint_id)} already exists")
        ep = Endpoint(id=endpoint_id or ids.new_id(), name=name, network_id=net.id,
                      aliases=list(aliases))
        for version, want in ((4, ipv4), (6, ipv6)):
            if self.ipam.has_family(net.id, version):
                cidr = self._allocate(net, ep.id, version, want)
                undo.push(self._release, net, cidr)
                setattr(ep, f"ipv{version}", cidr)
            elif want:
                raise InvalidParameter(f"network {net.name} has no IPv{version} subnet")
        ep.mac = check_mac(mac) if mac else mac_for(ep.ipv4)
        driver = self.driver(net)
        driver.create_endpoint(net, ep)
        undo.push(driver.delete_endpoint, net, ep)
        return ep

    def _allocate(self, net: Network, endpoint_id: str, version: int,
                  want: str | None) -> str:
        """An address from the network's pool; on a global network reserved in the
        cluster store at once (never twice across nodes)."""
        if self.glob and net.scope == "global":
            return self.glob.reserve(net, endpoint_id, version, want)
        return self.ipam.allocate(net.id, version, want)

    def _release(self, net: Network, cidr: str) -> None:
        if self.glob and net.scope == "global":
            self.glob.release(net, cidr)
        else:
            self.ipam.release(net.id, cidr)

    def _endpoint_txn(self, ep: Endpoint, txn: Txn) -> None:
        txn.puts[f"endpoint/{ep.id}"] = ep.to_record()
        if self.networks[ep.network_id].scope == "global":
            return  # its addresses were reserved in the cluster store
        for cidr in (ep.ipv4, ep.ipv6):
            if cidr:
                key = ip_key(ep.network_id, cidr)
                txn.puts[key] = {"endpoint": ep.id}
                txn.absent.append(key)

    def create_endpoint(self, network_ref: str, name: str = "", ipv4: str | None = None,
                        ipv6: str | None = None, aliases: Iterable[str] = (),
                        mac: str | None = None, endpoint_id: str | None = None) -> Endpoint:
        net = self.network(network_ref)
        if net.driver in NO_CONNECT:
            raise InvalidParameter(f"endpoints cannot be created on the {net.name} network")
        with Undo() as undo:
            ep = self._new_endpoint(net, name, ipv4, ipv6, aliases, undo, mac, endpoint_id)
            txn = Txn()
            self._endpoint_txn(ep, txn)
            self.store.commit(txn)
        self.endpoints[ep.id] = ep
        return ep

    def delete_endpoint(self, ref: str) -> None:
        ep = self.endpoint(ref)
        if ep.sandbox_id:
            raise Conflict(f"endpoint {ids.short(ep.id)} is still joined to a sandbox")
        if ep.driver_state.get("external_sandbox"):
            self.leave_external(ep.id)
        # dockerd moves an externally joined link back under its temporary name after
        # Leave (a macvlan survives that): it goes with the endpoint.
        self.kernel.host.delete_link(external_ifname(ep))
        self._forget_endpoint(ep, Txn())

    def _forget_endpoint(self, ep: Endpoint, txn: Txn) -> None:
        """Drop the endpoint and give its addresses back. On a global network the local
        record goes first: a crash in between leaves an address key this node no longer
        uses (removed at its next start), never an endpoint whose address is free."""
        net = self.networks[ep.network_id]
        self.driver(net).delete_endpoint(net, ep)
        txn.deletes.append(f"endpoint/{ep.id}")
        cidrs = [c for c in (ep.ipv4, ep.ipv6) if c]
        global_ = self.glob is not None and net.scope == "global"
        if not global_:
            txn.deletes += [ip_key(net.id, c) for c in cidrs]
        self.store.commit(txn)
        del self.endpoints[ep.id]
        for cidr in cidrs:
            self.ipam.release(net.id, cidr)
        if global_:
            self.glob.delete([ip_key(net.id, c) for c in cidrs])  # type: ignore[union-attr]

    # -- join / leave ----------------------------------------------------------------------
    def _next_ifname(self, sb: Sandbox) -> str:
        used = {self.endpoints[e].ifname for e in sb.endpoints}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"

    def _join(self, ep: Endpoint, sb: Sandbox, undo: Undo, ifname: str | None = None) -> None:
        net = self.networks[ep.network_id]
        if net.scope == "global" and not net.attachable:
            raise InvalidParameter(f"network {net.name} is not manually attachable "
                                   "(create it with --attachable)")
        if any(self.endpoints[e].network_id == net.id for e in sb.endpoints):
            raise Conflict(f"endpoint with name {sb.name} already exists in network {net.name}")
        if ifname and any(self.endpoints[e].ifname == ifname for e in sb.endpoints):
            raise Conflict(f"sandbox {sb.name} already has an interface {ifname}")
        driver = self.driver(net)
        info = driver.join(net, ep, sb.key, ifname or self._next_ifname(sb))
        undo.push(driver.leave, net, ep)
        if info.ifname:
            self.kernel.configure_interface(sb.key, info.ifname,
                                            [a for a in (ep.ipv4, ep.ipv6) if a])
        ep.sandbox_id, ep.ifname = sb.id, info.ifname
        ep.gateway4, ep.gateway6 = info.gateway4, info.gateway6
        sb.endpoints.append(ep.id)
        undo.push(self._unjoin_record, ep, sb)
        if self.glob and net.scope == "global":
            self.glob.publish(ep, sb)
            undo.push(self.glob.unpublish, ep)
        self._apply_routes(sb)
        undo.push(self._apply_routes, sb)

    def _unjoin_record(self, ep: Endpoint, sb: Sandbox) -> None:
        if ep.id in sb.endpoints:
            sb.endpoints.remove(ep.id)
        ep.sandbox_id = ep.ifname = ep.gateway4 = ep.gateway6 = None

    def _leave(self, ep: Endpoint, sb: Sandbox) -> None:
        net = self.networks[ep.network_id]
        if self.glob and net.scope == "global":
            self.glob.unpublish(ep)
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
            elif not sb.external:
                # (in a runtime's namespace a default route may be another plugin's; ours
                # went with our interface)
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
        self.store.commit(Txn(puts={f"endpoint/{ep.id}": ep.to_record(),
                                    f"sandbox/{sb.id}": sb.to_record()}))
        self._resync_gateway(sb)
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
        if sb.id in self._tearing_down:
            return False
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
            if net.name == GATEWAY_NETWORK and net.scope == "local":
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

    def _resync_gateway(self, sb: Sandbox) -> None:
        """After a leave or disconnect (already committed): add or drop the gateway-bridge
        endpoint as one more operation of its own, undone as a whole if it fails."""
        with Undo() as undo:
            txn = Txn()
            self._sync_gateway(sb, undo, txn)
            if txn.puts:
                txn.puts[f"sandbox/{sb.id}"] = sb.to_record()
                self.store.commit(txn)

    # -- connect / disconnect (endpoint + join in one operation) ---------------------------------
    def connect(self, network_ref: str, target: str, ipv4: str | None = None,
                ipv6: str | None = None, aliases: Iterable[str] = (),
                ifname: str | None = None, mac: str | None = None) -> Endpoint:
        """Endpoint + join in one operation. `ifname`/`mac`: the interface name and MAC
        inside the sandbox (CNI passes both); by default eth<N> and 02:42+IPv4."""
        net, sb = self.network(network_ref), self.sandbox(target)
        if net.driver in NO_CONNECT:
            raise InvalidParameter("container cannot be disconnected from host network or "
                                   "connected to host network")
        if any(self.endpoints[e].network_id == net.id for e in sb.endpoints):
            raise Conflict(f"endpoint with name {sb.name} already exists in network {net.name}")
        with Undo() as undo:
            ep = self._new_endpoint(net, sb.name, ipv4, ipv6, aliases, undo, mac)
            self.endpoints[ep.id] = ep
            undo.push(self.endpoints.pop, ep.id)
            self._join(ep, sb, undo, ifname)
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
        self._forget_endpoint(ep, Txn(puts={f"sandbox/{sb.id}": sb.to_record()}))
        self._tell("endpoint_left", ep, sb)
        self._resync_gateway(sb)

    # -- dockerd's remote driver API: dockerd moves and configures the interface ----------------
    def join_external(self, endpoint_ref: str, sandbox_key: str) -> tuple[str, JoinInfo]:
        """Join for a sandbox cnet does not manage: the endpoint's interface is made in
        the daemon's own namespace under a temporary name (returned), for dockerd to move
        into `sandbox_key` and configure (Docker's remote driver API: Join's SrcName)."""
        ep = self.endpoint(endpoint_ref)
        if ep.sandbox_id or ep.driver_state.get("external_sandbox"):
            raise Conflict(f"endpoint {ids.short(ep.id)} is already joined to a sandbox")
        net = self.networks[ep.network_id]
        driver = self.driver(net)
        ifname = external_ifname(ep)
        with Undo() as undo:
            info = driver.join(net, ep, self.kernel.host_netns_path, ifname)
            undo.push(driver.leave, net, ep)
            ep.gateway4, ep.gateway6 = info.gateway4, info.gateway6
            ep.driver_state["external_sandbox"] = sandbox_key
            undo.push(ep.driver_state.pop, "external_sandbox")
            if self.glob and net.scope == "global":
                self.glob.publish(ep, None)
                undo.push(self.glob.unpublish, ep)
            self.store.put(f"endpoint/{ep.id}", ep.to_record())
        return ifname, info

    def leave_external(self, endpoint_ref: str) -> Endpoint:
        ep = self.endpoint(endpoint_ref)
        if not ep.driver_state.get("external_sandbox"):
            raise Conflict(f"endpoint {ids.short(ep.id)} is not joined to a sandbox")
        net = self.networks[ep.network_id]
        if self.glob and net.scope == "global":
            self.glob.unpublish(ep)
        try:
            self.driver(net).leave(net, ep)
        finally:  # dockerd goes on whatever we answer: never keep a half-left endpoint
            del ep.driver_state["external_sandbox"]
            ep.gateway4 = ep.gateway6 = None
            self.store.put(f"endpoint/{ep.id}", ep.to_record())
        return ep

    # -- sandboxes ------------------------------------------------------------------------------
    def create_sandbox(self, name: str, labels: dict[str, str] | None = None,
                       sandbox_id: str | None = None, key: str | None = None) -> Sandbox:
        """A new namespace, or with `key` one that exists already (a runtime's, as CNI
        gives it): cnet then uses it but never creates or removes it."""
        ids.check_name("sandbox", name)
        if any(s.name == name for s in self.sandboxes.values()):
            raise Conflict(f'sandbox name "{name}" is already in use')
        if key is not None:
            problem = self.kernel.runtime_netns_problem(key)
            if problem:
                raise InvalidParameter(f"sandbox key {key!r}: {problem}")
            if any(s.key == key for s in self.sandboxes.values()):
                raise Conflict(f"namespace {key} is already a sandbox")
        sid = sandbox_id or ids.new_id()
        sb = Sandbox(id=sid, name=name, created=now(), key=key or self.kernel.netns_path(sid),
                     labels=dict(labels or {}), external=key is not None)
        with Undo() as undo:
            if not sb.external:
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
        self._tearing_down.add(sb.id)
        for ep_id in list(sb.endpoints):
            if ep_id not in sb.endpoints:  # the gateway endpoint goes with the last overlay
                continue
            try:
                self.disconnect(self.endpoints[ep_id].network_id, sb.id)
            except Exception as exc:  # best effort teardown, reported at the end
                errors.append(exc)
        self._tell("sandbox_removed", sb)
        try:
            if sb.external:
                self.kernel.forget_netns(sb.key)  # the runtime's: only our handle goes
            else:
                self.kernel.remove_netns(sb.key)
        except Exception as exc:
            errors.append(exc)
        self._tearing_down.discard(sb.id)
        if not sb.endpoints:
            self.store.delete(f"sandbox/{sb.id}")
            del self.sandboxes[sb.id]
            self._routes.pop(sb.id, None)
        if errors:
            raise errors[0]
        return sb

