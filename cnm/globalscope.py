"""Global-scope networks: their records in the cluster store (etcd) and the peer table.

What lives in the store, under guarded transactions so that two nodes never hand out
the same thing:

- `network/<id>` with `vni/<vni>`, `netname/<name>` and `subnet/<cidr>` (one create
  transaction; a VNI or automatic subnet another node took meanwhile is skipped);
- `ipam/<net>/<ip>`: an address, reserved when the endpoint is made (`present` guard
  on the network: no address on a network being removed);
- `peer/<net>/<ep>`: a joined endpoint (address, MAC, the node's VTEP, DNS names), tied
  to the node's lease so that it vanishes with a dead node.

A delete that fails because the store is unreachable is remembered and retried
(`flush_pending`, after the next successful lease renewal): a stale peer would keep
the other nodes' FDB, neighbour and DNS entries alive.

Runs on the kernel worker thread, like the controller that owns it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cnet.cnm import ids
from cnet.cnm.driverapi import ClusterInfo, Peer
from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.ipam import GLOBAL_POOLS
from cnet.cnm.model import Endpoint, Network, Sandbox
from cnet.cnm.store import KeyExists, KeyMissing, Store, Txn

if TYPE_CHECKING:
    from cnet.cnm.controller import Controller

log = logging.getLogger(__name__)

VNI_FIRST, VNI_LAST = 4096, (1 << 24) - 1
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


def ip_key(network_id: str, cidr: str) -> str:
    return f"ipam/{network_id}/{cidr.split('/')[0]}"


def peer_key(network_id: str, endpoint_id: str) -> str:
    return f"peer/{network_id}/{endpoint_id}"


def subnet_key(cidr: str) -> str:
    return "subnet/" + cidr.replace("/", "_")


def peer_from_record(rec: dict) -> Peer:
    return Peer(endpoint_id=rec["endpoint"], ipv4=rec.get("ipv4"), ipv6=rec.get("ipv6"),
                mac=rec["mac"], vtep=rec["vtep"], node=rec["node"])


class GlobalScope:
    def __init__(self, ctl: Controller, store: Store, cluster: ClusterInfo):
        self.ctl = ctl
        self.store = store
        self.cluster = cluster
        # Remote endpoints (the peer table without ours): network id -> endpoint id -> record
        self.peers: dict[str, dict[str, dict]] = {}
        self.pending_deletes: set[str] = set()  # to retry once the store answers again
        self._taken_vnis: set[int] = set()

    # -- networks ----------------------------------------------------------------------
    def pick_vni(self, net: Network) -> int:
        """The VNI asked for (-o vxlanid_list) or the lowest one no known network uses."""
        want = net.options.get(VNI_OPTION)
        if want:  # its form was checked by the driver's validate(); the range is ours
            vni = int(want)
            if not VNI_FIRST <= vni <= VNI_LAST:
                raise InvalidParameter(f"VNI {vni} is out of range ({VNI_FIRST}-{VNI_LAST})")
            return vni
        used = {n.driver_state.get("vni") for n in self.ctl.networks.values()}
        vni = VNI_FIRST
        while vni in used or vni in self._taken_vnis:
            vni += 1
        return vni

    def commit_network(self, net: Network) -> None:
        """Record, VNI, name and subnets in one transaction. A VNI or an automatically
        picked subnet another node took meanwhile is skipped (and that node's network
        learnt at once); a name or a user subnet taken anywhere is refused."""
        ipam = self.ctl.ipam
        for _ in range(64):
            guarded = {f"vni/{net.driver_state['vni']}": {"network": net.id},
                       f"netname/{net.name}": {"network": net.id}}
            guarded.update({subnet_key(p.subnet): {"network": net.id} for p in net.pools})
            try:
                self.store.commit(Txn(puts={f"network/{net.id}": net.to_record(), **guarded},
                                      absent=list(guarded)))
                return
            except KeyExists as exc:
                if exc.value and exc.value.get("network") == net.id:
                    return  # our own write, applied before a retry on another member
                kind = exc.key.split("/", 1)[0]
                if kind == "netname":
                    raise Conflict(f"network with name {net.name} already exists") from None
                if kind == "vni":
                    if VNI_OPTION in net.options:
                        raise Conflict(f"VNI {net.driver_state['vni']} is already in use") \
                            from None
                    self._taken_vnis.add(net.driver_state["vni"])
                    net.driver_state["vni"] = self.pick_vni(net)
                    continue
                taken = exc.key.split("/", 1)[1].replace("_", "/")
                if net.user_subnets or not exc.value:
                    raise Conflict("Pool overlaps with other one on this address space: "
                                   f"{taken}") from None
                self._learn_network(exc.value.get("network", ""))
                ipam.unregister(net.id)
                net.pools = ipam.plan([], net.enable_ipv6, GLOBAL_POOLS)
                ipam.register(net.id, net.pools)
        raise Conflict(f"could not create network {net.name}: the cluster keeps changing")

    def _learn_network(self, network_id: str) -> None:
        rec = self.store.get(f"network/{network_id}")
        if rec is not None:
            self.add_network(Network.from_record(rec))

    def delete_network(self, net: Network) -> None:
        """Remove the network's records, refusing while any node has an address on it."""
        held = self.store.list(f"ipam/{net.id}/")
        if held:
            alive = {k.split("/", 1)[1] for k in self.store.list("alive/")}
            down = sorted({str(v.get("node")) for v in held.values()} - alive)
            msg = f"network {net.name} has active endpoints"
            if down:
                names = [str((self.store.get(f"node/{n}") or {}).get("Name", n)) for n in down]
                msg += (f" (also on nodes that are down: {', '.join(names)}; "
                        "`cnet node rm NODE` removes a dead node's records)")
            raise Conflict(msg)
        deletes = [f"network/{net.id}", f"vni/{net.driver_state.get('vni')}",
                   f"netname/{net.name}", *(subnet_key(p.subnet) for p in net.pools)]
        try:
            self.store.commit(Txn(deletes=deletes, present=[f"network/{net.id}"]))
        except KeyMissing:
            pass  # removed by another node already: only our own copy is left
        self.peers.pop(net.id, None)

    def add_network(self, net: Network) -> None:
        """A global network appeared in the cluster store (another node made it)."""
        ctl = self.ctl
        if net.id in ctl.networks:
            return
        ctl.ipam.register(net.id, net.pools)
        ctl.networks[net.id] = net
        for rec in self.peers.get(net.id, {}).values():
            ctl.driver(net).peer_add(net, peer_from_record(rec))
        log.info("cluster: network %s (%s) appeared", net.name, ids.short(net.id))

    def forget_network(self, network_id: str) -> None:
        """A global network was removed from the cluster store."""
        ctl = self.ctl
        net = ctl.networks.get(network_id)
        if net is None or net.scope != "global":
            self.peers.pop(network_id, None)
            return
        if ctl.network_endpoints(net.id):
            log.error("cluster: network %s was removed while this node has endpoints on it",
                      net.name)
            return
        self.peers.pop(network_id, None)
        try:
            ctl.driver(net).delete_network(net)
        finally:
            ctl.ipam.unregister(net.id)
            del ctl.networks[net.id]
        ctl._tell("network_removed", net)
        log.info("cluster: network %s was removed", net.name)

    # -- addresses ---------------------------------------------------------------------
    def reserve(self, net: Network, endpoint_id: str, version: int, want: str | None) -> str:
        """An address from the network's pool, reserved at once in the store: one
        another node took since our cache last heard is skipped (kept marked as used)."""
        ipam = self.ctl.ipam
        cidr = ipam.allocate(net.id, version, want)
        for _ in range(256):
            key = ip_key(net.id, cidr)
            try:
                self.store.commit(Txn(
                    puts={key: {"endpoint": endpoint_id, "node": self.cluster.node_id}},
                    absent=[key], present=[f"network/{net.id}"]))
                return cidr
            except KeyExists as exc:
                if exc.value and exc.value.get("endpoint") == endpoint_id:
                    return cidr  # our own write, applied before a retry on another member
                if want:
                    raise Conflict(f"Address already in use: {want}") from None
                cidr = ipam.allocate(net.id, version)
            except KeyMissing:
                ipam.release(net.id, cidr)
                raise NotFound(f"network {net.name} was removed") from None
            except BaseException:
                ipam.release(net.id, cidr)
                raise
        raise Conflict(f"could not reserve an address on network {net.name}")

    def release(self, net: Network, cidr: str) -> None:
        self.ctl.ipam.release(net.id, cidr)
        self.delete([ip_key(net.id, cidr)])

    # -- peers ---------------------------------------------------------------------------
    def peer_record(self, ep: Endpoint, sb: Sandbox | None) -> dict:
        """`sb` None: an endpoint joined for dockerd (no cnet sandbox; its own name)."""
        c = self.cluster
        names = self.ctl.endpoint_names(ep, sb) if sb else [n for n in (ep.name,) if n]
        return {"endpoint": ep.id, "ipv4": ep.ipv4, "ipv6": ep.ipv6, "mac": ep.mac,
                "vtep": c.advertise_addr, "node": c.node_id, "node_name": c.node_name,
                "sandbox": sb.name if sb else ep.name, "names": names}

    def publish(self, ep: Endpoint, sb: Sandbox | None) -> None:
        key = peer_key(ep.network_id, ep.id)
        self.store.commit(Txn(puts={key: self.peer_record(ep, sb)}, leased=[key]))

    def unpublish(self, ep: Endpoint) -> None:
        self.delete([peer_key(ep.network_id, ep.id)])

    def local_peers(self) -> dict[str, dict]:
        """Peer records of this node's joined endpoints on global networks, by key."""
        ctl = self.ctl
        out = {}
        for ep in ctl.endpoints.values():
            net = ctl.networks.get(ep.network_id)
            if net is None or net.scope != "global":
                continue
            if ep.sandbox_id:
                out[peer_key(net.id, ep.id)] = self.peer_record(ep, ctl.sandboxes[ep.sandbox_id])
            elif ep.driver_state.get("external_sandbox"):
                out[peer_key(net.id, ep.id)] = self.peer_record(ep, None)
        return out

    def apply_peer(self, network_id: str, endpoint_id: str, rec: dict | None) -> None:
        """A change in the cluster's peer table (our own entries are skipped)."""
        if rec is not None and rec.get("node") == self.cluster.node_id:
            return
        ctl = self.ctl
        table = self.peers.setdefault(network_id, {})
        net = ctl.networks.get(network_id)
        if rec is None:
            old = table.pop(endpoint_id, None)
            if old is not None and net is not None:
                ctl.driver(net).peer_delete(net, peer_from_record(old))
                ctl._tell("peer_left", net, endpoint_id)
            return
        table[endpoint_id] = rec
        if net is not None:
            ctl.driver(net).peer_add(net, peer_from_record(rec))
            ctl._tell("peer_joined", net, endpoint_id, rec)

    # -- deletes that must not be lost ------------------------------------------------------
    def delete(self, keys: list[str]) -> None:
        """Delete now, or remember to (a stale peer or address must not outlive its
        endpoint just because the store was away for a moment)."""
        try:
            self.store.commit(Txn(deletes=keys))
        except Exception as exc:
            log.warning("cluster: could not delete %s now (%s): will retry", keys, exc)
            self.pending_deletes.update(keys)

    def flush_pending(self) -> None:
        if not self.pending_deletes:
            return
        keys = sorted(self.pending_deletes)
        try:
            self.store.commit(Txn(deletes=keys))
        except Exception as exc:
            log.warning("cluster: %d deletes still pending: %s", len(keys), exc)
            return
        self.pending_deletes.difference_update(keys)
        log.info("cluster: %d pending deletes done", len(keys))
