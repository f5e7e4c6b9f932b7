"""This node's membership in a cluster, and the cluster's state fed to the controller.

The node registers under an etcd lease it keeps alive (`node/<id>` stays, `alive/<id>`
goes with the lease: the node is then shown Down). Its peer records (`peer/<net>/<ep>`)
are tied to the same lease, so when a node dies its endpoints vanish from every other
node's data plane without anyone deciding it. One watch on the whole cnet prefix
delivers every change (networks, addresses, peers) to the kernel worker in order;
nothing is polled. No consensus or gossip of our own: etcd is the cluster.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cnet.cnm.controller import Controller
from cnet.cnm.driverapi import ClusterInfo
from cnet.cnm.errors import Conflict
from cnet.cnm.etcd import EtcdClient, Op
from cnet.cnm.etcdstore import EtcdStore
from cnet.cnm.model import Network
from cnet.cnm.store import Txn
from cnet.cnm.timefmt import now

from cnet import __version__

log = logging.getLogger(__name__)
DEFAULT_TTL = 10  # seconds a node may stay silent before it is Down and its peers go

Snapshot = tuple[dict[str, dict], int]  # key -> value, and the revision it was read at


def _addr(cidr: str | None) -> str:
    return (cidr or "").split("/")[0]


def parse_cluster_store(url: str) -> list[str]:
    """etcd://HOST:PORT[,HOST:PORT...] -> ["HOST:PORT", ...]; ValueError with the reason."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "etcd":
        raise ValueError(f"unsupported cluster store {url!r}: use etcd://HOST:PORT[,HOST:PORT]")
    endpoints = [e.strip() for e in rest.strip("/").split(",") if e.strip()]
    for e in endpoints:
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid etcd endpoint {e!r}: HOST:PORT")
    if not endpoints:
        raise ValueError("the cluster store URL names no endpoint")
    return endpoints


class Cluster:
    def __init__(self, client: EtcdClient, store: EtcdStore, info: ClusterInfo,
                 submit: Callable[..., None], ttl: int = DEFAULT_TTL):
        self.client = client
        self.store = store
        self.info = info
        self.submit = submit  # queue work on the kernel worker
        self.ttl = ttl
        self.ctl: Controller | None = None
        self._stop = threading.Event()
        self._watch = None
        self._keepalive: threading.Thread | None = None
        store.on_lease_lost = self._rejoin

    # -- start ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        kvs, rev = self.client.range("")
        return {kv.key: kv.value for kv in kvs}, rev

    @staticmethod
    def networks(snap: Snapshot) -> list[Network]:
        return [Network.from_record(v) for k, v in snap[0].items() if k.startswith("network/")]

    @staticmethod
    def preload_peers(ctl: Controller, snap: Snapshot) -> None:
        """Before the restart reconcile: the drivers know the remote peers when they
        rebuild an overlay, so its FDB is never left empty while the daemon starts."""
        assert ctl.glob is not None
        for key, value in snap[0].items():
            if key.startswith("peer/"):
                net_id, _, ep_id = key[len("peer/"):].partition("/")
                ctl.glob.apply_peer(net_id, ep_id, value)

    def start(self, ctl: Controller, snap: Snapshot) -> None:
        """Register, apply the snapshot (whose networks `load` already took), publish this
        node's peers, then follow every change from the snapshot's revision on."""
        self.ctl = ctl
        self._register()
        for key, value in snap[0].items():
            if not key.startswith("network/"):
                self._apply(key, value)
        self._drop_own_stale(snap[0])
        self._reclaim_own_addresses(snap[0])
        self._publish_local_peers()
        self._watch = self.client.watch("", snap[1] + 1, self._on_events, self._on_reset)
        self._keepalive = threading.Thread(target=self._keepalive_loop, name="etcd-lease",
                                           daemon=True)
        self._keepalive.start()

    def stop(self) -> None:
        """cnetd is stopping: stop following; the lease is left to expire (a quick
        restart keeps this node's peers in place everywhere)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()

    # -- membership -----------------------------------------------------------------------
    def _register(self) -> None:
        lease = self.client.lease_grant(self.ttl)
        self.store.lease = lease
        node = {"ID": self.info.node_id, "Name": self.info.node_name,
                "Addr": self.info.advertise_addr, "Version": __version__, "Joined": now()}
        self.client.txn([], [Op.put(f"node/{self.info.node_id}", node),
                             Op.put(f"alive/{self.info.node_id}", {"Since": now()}, lease=lease)])
        log.info("cluster: registered node %s (%s) under lease %x, ttl %d s",
                 self.info.node_name, self.info.advertise_addr, lease, self.ttl)

    def _keepalive_loop(self) -> None:
        unreachable = False
        while not self._stop.wait(self.ttl / 3):
            try:
                left = self.client.lease_keepalive(self.store.lease)
            except Exception as exc:  # this thread must live: the lease is the node
                if not unreachable:
                    log.warning("cluster: cannot renew the node lease: %s", exc)
                unreachable = True
                continue
            if unreachable:
                log.info("cluster: store reachable again")
                unreachable = False
            if left <= 0:
                log.warning("cluster: the node lease expired; registering again")
                self.submit(self._rejoin)
            elif self.ctl is not None and self.ctl.glob and self.ctl.glob.pending_deletes:
                self.submit(self.ctl.glob.flush_pending)

    def _rejoin(self) -> None:
        self._register()
        self._publish_local_peers()

    def remove_node(self, node: dict) -> None:
        """`cnet node rm`: forget a Down node and everything it held (its addresses on
        global networks; its peers went with its lease)."""
        if node["ID"] == self.info.node_id:
            raise Conflict("a node cannot remove itself")
        if node["Status"] == "Ready":
            raise Conflict(f"node {node['Name']} is Ready: stop its cnetd first (it would "
                           "register again)")
        kvs, _ = self.client.range("")
        keys = [kv.key for kv in kvs if kv.key.split("/", 1)[0] in ("ipam", "peer")
                and kv.value.get("node") == node["ID"]]
        keys.append(f"node/{node['ID']}")
        for i in range(0, len(keys), 100):  # etcd takes at most 128 operations per txn
            self.store.commit(Txn(deletes=keys[i:i + 100]))
        log.info("cluster: removed node %s and its %d records", node["Name"], len(keys) - 1)

    def nodes(self) -> list[dict]:
        """Every node that ever joined, Ready while its lease lives, else Down."""
        kvs, _ = self.client.range("")
        alive = {kv.key.split("/", 1)[1] for kv in kvs if kv.key.startswith("alive/")}
        out = []
        for kv in kvs:
            if kv.key.startswith("node/"):
                node = dict(kv.value)
                node["Status"] = "Ready" if node["ID"] in alive else "Down"
                node["Availability"] = "Active"
                node["Self"] = node["ID"] == self.info.node_id
                out.append(node)
        return sorted(out, key=lambda n: n["Name"])

    # -- this node's records ------------------------------------------------------------------
    def _publish_local_peers(self) -> None:
        assert self.ctl is not None and self.ctl.glob is not None
        peers = self.ctl.glob.local_peers()
        if peers:
            self.store.commit(Txn(puts=peers, leased=list(peers)))

    def _drop_own_stale(self, records: dict[str, dict]) -> None:
        """Records this node left behind for endpoints it no longer has (a crash between
        the kernel and the store, or a release while the store was unreachable)."""
        assert self.ctl is not None
        ctl = self.ctl
        stale = Txn()
        for key, value in records.items():
            kind = key.split("/", 1)[0]
            if kind in ("peer", "ipam") and value.get("node") == self.info.node_id:
                ep = ctl.endpoints.get(value.get("endpoint", ""))
                ip = key.split("/")[2] if kind == "ipam" else ""
                if ep is None or (kind == "peer" and not ep.sandbox_id) or (
                        kind == "ipam" and ip not in (_addr(ep.ipv4), _addr(ep.ipv6))):
                    stale.deletes.append(key)
                    if kind == "ipam":
                        net_id, ip = key.split("/")[1:3]
                        ctl.ipam.mark(net_id, ip, used=False)
        if stale.deletes:
            log.info("cluster: removing %d stale records of this node", len(stale.deletes))
            self.store.commit(stale)

    def _reclaim_own_addresses(self, records: dict[str, dict]) -> None:
        """This node's endpoints keep their addresses in the store (after `cnet node rm`
        of this node while it was away, or a crash before a reservation was written)."""
        assert self.ctl is not None
        ctl = self.ctl
        for ep in ctl.endpoints.values():
            net = ctl.networks.get(ep.network_id)
            if net is None or net.scope != "global":
                continue
            for cidr in (ep.ipv4, ep.ipv6):
                key = f"ipam/{net.id}/{_addr(cidr)}"
                if not cidr or key in records:
                    continue
                try:
                    self.store.commit(Txn(puts={key: {"endpoint": ep.id,
                                                      "node": self.info.node_id}},
                                          absent=[key]))
                    log.info("cluster: reclaimed %s on %s", cidr, net.name)
                except Conflict:
                    log.error("cluster: address %s of endpoint %s on %s was taken by "
                              "another node while this one was away", cidr,
                              ep.id[:12], net.name)

    # -- following the cluster ----------------------------------------------------------------
    def _on_events(self, events: list) -> None:  # watch thread
        self.submit(self._apply_events, events)

    def _on_reset(self) -> None:  # watch thread: the revision we followed was compacted
        self.submit(self._resync)

    def _apply_events(self, events: list) -> None:
        for ev in events:
            try:
                self._apply(ev.key, ev.value if ev.type == "put" else None)
            except Exception:
                log.exception("cluster: could not apply %s %s", ev.type, ev.key)

    def _apply(self, key: str, value: dict | None) -> None:
        ctl = self.ctl
        assert ctl is not None
        kind, _, rest = key.partition("/")
        glob = ctl.glob
        assert glob is not None
        if kind == "network":
            if value is None:
                glob.forget_network(rest)
            else:
                glob.add_network(Network.from_record(value))
        elif kind == "ipam":
            net_id, _, ip = rest.partition("/")
            if value is not None:
                if value.get("node") != self.info.node_id:
                    ctl.ipam.mark(net_id, ip, used=True)
            elif not self._holds(net_id, ip):
                ctl.ipam.mark(net_id, ip, used=False)
        elif kind == "peer":
            net_id, _, ep_id = rest.partition("/")
            glob.apply_peer(net_id, ep_id, value)

    def _holds(self, net_id: str, ip: str) -> bool:
        """One of this node's endpoints has `ip` (a late delete event of a released and
        already reused address must not free it)."""
        assert self.ctl is not None
        return any(ep.network_id == net_id and ip in (_addr(ep.ipv4), _addr(ep.ipv6))
                   for ep in self.ctl.endpoints.values())

    def _resync(self) -> None:
        """After a compaction: read everything again and apply the difference."""
        assert self.ctl is not None and self.ctl.glob is not None
        ctl, glob = self.ctl, self.ctl.glob
        records, _ = self.snapshot()
        for net in list(ctl.networks.values()):
            if net.scope == "global" and f"network/{net.id}" not in records:
                glob.forget_network(net.id)
        for net_id, table in list(glob.peers.items()):
            for ep_id in list(table):
                if f"peer/{net_id}/{ep_id}" not in records:
                    glob.apply_peer(net_id, ep_id, None)
        for key, value in sorted(records.items(), key=lambda kv: not kv[0].startswith("network/")):
            self._apply(key, value)
