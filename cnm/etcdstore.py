"""The Store interface backed by etcd (multi-host: `--cluster-store etcd://...`).

Every Store.commit is one etcd txn: the `absent` guards become create_revision == 0
compares, the success branch deletes then puts, and the failure branch reads the guarded
keys so that Conflict can name the one that exists without a second round trip.
"""

from __future__ import annotations

from collections.abc import Callable

from cnet.cnm.etcd import Compare, EtcdClient, LeaseNotFound, Op
from cnet.cnm.store import KeyExists, KeyMissing, Store, Txn, Value


class EtcdStore(Store):
    def __init__(
        self,
        client: EtcdClient | list[str] | str,
        *,
        prefix: str = "/cnet/",
        timeout: float = 2.0,
    ):
        """`client`: a shared EtcdClient (not closed by close()), or endpoints to open one."""
        super().__init__()
        if isinstance(client, EtcdClient):
            self._owns_client = False
        else:
            client = EtcdClient(client, prefix=prefix, timeout=timeout)
            self._owns_client = True
        self.client = client
        self.endpoints = list(client.endpoints)
        #: what `cnet info` shows as the store's location
        self.path = "etcd://" + ",".join(self.endpoints) + client.prefix.rstrip("/")
        #: lease id attached to puts of the keys a Txn lists in `leased` (0: none)
        self.lease = 0
        # Called when a leased write finds the lease gone (the cluster registers again).
        self.on_lease_lost: Callable[[], None] | None = None

    def get(self, key: str) -> Value | None:
        kv = self.client.get(key)
        return kv.value if kv else None

    def list(self, prefix: str) -> dict[str, Value]:
        kvs, _ = self.client.range(prefix)
        return {kv.key: kv.value for kv in kvs}

    def _commit(self, txn: Txn) -> None:
        leased = set(getattr(txn, "leased", None) or ())
        # etcd rejects a txn naming one key twice; a delete followed by a put of the same
        # key is just the put (as in SQLiteStore, where the put wins).
        deletes = list(dict.fromkeys(k for k in txn.deletes if k not in txn.puts))
        absent = list(dict.fromkeys(txn.absent))
        present = list(dict.fromkeys(getattr(txn, "present", None) or ()))
        if not deletes and not txn.puts and not absent and not present:
            return

        def attempt():
            success = [Op.delete(k) for k in deletes] + [
                Op.put(k, v, lease=self.lease if k in leased else 0)
                for k, v in txn.puts.items()
            ]
            return self.client.txn_ex(
                [Compare.absent(k) for k in absent] + [Compare.exists(k) for k in present],
                success, [Op.get(k) for k in absent + present],
            )

        try:
            res = attempt()
        except LeaseNotFound:
            # The node's lease expired (a long pause, the store away): register again
            # (which republishes this node's records) and retry once with the new lease.
            if not leased or self.on_lease_lost is None:
                raise
            self.on_lease_lost()
            res = attempt()
        if not res.succeeded:
            for key, kvs in zip(absent, res.reads, strict=False):
                if kvs:
                    raise KeyExists(key, kvs[0].value)
            for key, kvs in zip(present, res.reads[len(absent):], strict=False):
                if not kvs:
                    raise KeyMissing(key)
            raise KeyExists(absent[0] if absent else present[0])  # changed in between

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
