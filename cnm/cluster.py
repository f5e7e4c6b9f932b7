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
from cnet.cnm.etcd import EtcdClient, EtcdUnavailable, Op
from cnet.cnm.etcdstore import EtcdStore
from cnet.cnm.model import Network
from cnet.cnm.store import Txn
from cnet.cnm.timefmt import now

from cnet import __version__

log = logging.getLogger(__name__)
DEFAULT_TTL = 10  # seconds a node may stay silent before it is Down and its peers go

Snapshot = tuple[dict[str, dict], int]  # key -> value, and the revision it was read at


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

    def start(self, ctl: Controller, snap: Snapshot) -> None:
        """Register, apply the snapshot (whose networks `load` already took), publish this
        node's peers, then follow every change from the snapshot's revision on."""
        self.ctl = ctl
        self._register()
        for key, value in snap[0].items():
            if not key.startswith("network/"):
                self._apply(key, value)
        self._drop_own_stale(snap[0])
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
            except EtcdUnavailable as exc:
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

    def _rejoin(self) -> None:
        self._register()
        self._publish_local_peers()

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
        assert self.ctl is not None
        peers = self.ctl.local_peers()
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
                if ep is None or (kind == "peer" and not ep.sandbox_id):
                    stale.deletes.append(key)
                    if kind == "ipam":
                        net_id, ip = key.split("/")[1:3]
                        ctl.ipam.mark(net_id, ip, used=False)
        if stale.deletes:
            log.info("cluster: removing %d stale records of this node", len(stale.deletes))
            self.store.commit(stale)

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
        if kind == "network":
            if value is None:
                ctl.forget_global_network(rest)
            else:
                ctl.add_global_network(Network.from_record(value))
        elif kind == "ipam":
            net_id, _, ip = rest.partition("/")
            if value is not None:
                if value.get("node") != self.info.node_id:
                    ctl.ipam.mark(net_id, ip, used=True)
            elif not self._holds(net_id, ip):
                ctl.ipam.mark(net_id, ip, used=False)
        elif kind == "peer":
            net_id, _, ep_id = rest.partition("/")
            ctl.apply_peer(net_id, ep_id, value)

    def _holds(self, net_id: str, ip: str) -> bool:
        """One of this node's endpoints has `ip` (a late delete event of a released and
        already reused address must not free it)."""
        assert self.ctl is not None
        return any(ep.network_id == net_id and ip in ((ep.ipv4 or "").split("/")[0],
                                                      (ep.ipv6 or "").split("/")[0])
                   for ep in self.ctl.endpoints.values())

    def _resync(self) -> None:
        """After a compaction: read everything again and apply the difference."""
        assert self.ctl is not None
        ctl = self.ctl
        records, _ = self.snapshot()
        for net in list(ctl.networks.values()):
            if net.scope == "global" and f"network/{net.id}" not in records:
                ctl.forget_global_network(net.id)
        for net_id, table in list(ctl.peers.items()):
            for ep_id in list(table):
                if f"peer/{net_id}/{ep_id}" not in records:
                    ctl.apply_peer(net_id, ep_id, None)
        for key, value in sorted(records.items(), key=lambda kv: not kv[0].startswith("network/")):
            self._apply(key, value)
