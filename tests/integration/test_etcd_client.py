"""cnet.cnm.etcd against a real etcd member (one per module, in a throwaway namespace).

Each test talks to it from inside that namespace (etcdharness.in_netns) with its own
key prefix, so tests cannot see each other's keys.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time

import etcdharness
import harness
import pytest
from cnet.cnm.errors import CnetError, Conflict
from cnet.cnm.etcd import (
    Compare,
    EtcdClient,
    EtcdUnavailable,
    Event,
    LeaseNotFound,
    Op,
)
from cnet.cnm.etcdstore import EtcdStore
from cnet.cnm.store import Txn


@pytest.fixture(scope="module")
def member():
    reason = etcdharness.requirements_missing()
    if reason:
        pytest.skip(reason)
    with etcdharness.single_etcd() as m:
        yield m
    assert not etcdharness.leftover_processes()


@pytest.fixture
def inside(member):
    """Run the test inside the member's namespace."""
    with etcdharness.in_netns(member.ns):
        yield member


@pytest.fixture
def prefix() -> str:
    return f"/t{secrets.token_hex(4)}/"


@pytest.fixture
def client(inside, prefix):
    c = EtcdClient([inside.endpoint], prefix=prefix)
    yield c
    c.close()


def _collector():
    events: list[Event] = []
    arrived: list[float] = []
    lock = threading.Lock()

    def on_events(evs: list[Event]) -> None:
        now = time.monotonic()
        with lock:
            events.extend(evs)
            arrived.extend([now] * len(evs))

    return events, arrived, on_events


def test_put_get_delete(client):
    assert client.get("network/a") is None
    rev = client.put("network/a", {"name": "a", "n": 1})
    kv = client.get("network/a")
    assert kv.value == {"name": "a", "n": 1}
    assert kv.key == "network/a"
    assert kv.mod_revision == kv.create_revision == rev
    rev2 = client.put("network/a", {"name": "a", "n": 2})
    assert rev2 > rev
    kv = client.get("network/a")
    assert (kv.value["n"], kv.version, kv.mod_revision) == (2, 2, rev2)
    assert client.delete("network/a") is True
    assert client.delete("network/a") is False
    assert client.get("network/a") is None


def test_range_and_prefix_isolation(inside, client, prefix):
    for k in ("a/1", "a/2", "a/3", "ab", "b/1"):
        last = client.put(k, {"k": k})
    other = EtcdClient([inside.endpoint], prefix=prefix.rstrip("/") + "x/")
    try:
        other.put("a/9", {"k": "other"})
        kvs, rev = client.range("a/")
        assert [kv.key for kv in kvs] == ["a/1", "a/2", "a/3"]  # not "ab", not other's
        assert rev >= last
        assert [kv.key for kv in other.range("")[0]] == ["a/9"]
        assert [kv.key for kv in client.range("")[0]] == ["a/1", "a/2", "a/3", "ab", "b/1"]
        assert client.delete_prefix("a/") == 3
        assert [kv.key for kv in client.range("")[0]] == ["ab", "b/1"]
        assert other.get("a/9").value == {"k": "other"}
    finally:
        other.delete_prefix("")
        other.close()


def test_range_reads_pages_at_one_revision(client):
    import cnet.cnm.etcd as etcd

    for i in range(25):
        client.put(f"p/{i:03d}", {"i": i})
    old = etcd._PAGE
    etcd._PAGE = 7  # several pages
    try:
        kvs, _ = client.range("p/")
    finally:
        etcd._PAGE = old
    assert [kv.value["i"] for kv in kvs] == list(range(25))


def test_txn_absent_guard(client):
    ok, rev = client.txn([Compare.absent("ipam/n1/10.0.0.2")],
                         [Op.put("ipam/n1/10.0.0.2", {"ep": "e1"})])
    assert ok and rev > 0
    res = client.txn_ex([Compare.absent("ipam/n1/10.0.0.2")],
                        [Op.put("ipam/n1/10.0.0.2", {"ep": "e2"})],
                        [Op.get("ipam/n1/10.0.0.2")])
    assert not res.succeeded
    assert res.reads[0][0].value == {"ep": "e1"}
    assert client.get("ipam/n1/10.0.0.2").value == {"ep": "e1"}
    # mod_revision and value guards, multi-op success branch
    ok, _ = client.txn([Compare.mod_revision("ipam/n1/10.0.0.2", rev),
                        Compare.value_equals("ipam/n1/10.0.0.2", {"ep": "e1"})],
                       [Op.delete("ipam/n1/10.0.0.2"), Op.put("ipam/n1/10.0.0.3", {"ep": "e1"})])
    assert ok
    assert client.get("ipam/n1/10.0.0.2") is None
    ok, _ = client.txn([Compare.exists("ipam/n1/10.0.0.3")], [Op.delete_prefix("ipam/n1/")])
    assert ok and client.range("ipam/")[0] == []


def test_lease_expires_unless_kept_alive(client):
    kept, dropped = client.lease_grant(2), client.lease_grant(2)
    assert kept and dropped and kept != dropped
    client.put("node/kept", {"n": 1}, lease=kept)
    client.put("node/dropped", {"n": 2}, lease=dropped)
    assert client.get("node/kept").lease == kept
    deadline = time.monotonic() + 8
    while client.get("node/dropped") is not None:
        assert time.monotonic() < deadline, "key of an expired lease still there"
        assert client.lease_keepalive(kept) > 0
        time.sleep(0.3)
    assert client.lease_keepalive(dropped) == 0
    assert client.get("node/kept") is not None  # outlived its TTL thanks to keepalive
    client.lease_revoke(kept)
    assert client.get("node/kept") is None
    assert client.lease_keepalive(kept) == 0
    client.lease_revoke(kept)  # already gone: no error
    with pytest.raises(LeaseNotFound):
        client.put("node/late", {"n": 3}, lease=kept)


def test_watch_puts_and_deletes_in_order_fast(client):
    events, arrived, on_events = _collector()
    w = client.watch("ep/", 0, on_events)
    try:
        assert w.wait_created(5)
        client.put("other/x", {"ignored": True})
        sent = []
        for i in range(5):
            sent.append(time.monotonic())
            client.put(f"ep/{i}", {"i": i})
        sent.append(time.monotonic())
        client.delete("ep/0")
        harness.wait_for(lambda: len(events) >= 6, timeout=1, what="6 watch events")
        time.sleep(0.05)
        assert [(e.type, e.key) for e in events] == [
            *[("put", f"ep/{i}") for i in range(5)], ("delete", "ep/0")]
        assert events[0].value == {"i": 0} and events[-1].value is None
        revs = [e.revision for e in events]
        assert revs == sorted(revs) and len(set(revs)) == 6
        lat = max(a - s for a, s in zip(arrived, sent, strict=True))
        assert lat < 0.5, f"watch delivery took {lat * 1000:.0f} ms"
    finally:
        t0 = time.monotonic()
        w.cancel()
        assert time.monotonic() - t0 < 1 and not w.running


def test_watch_from_revision_replays_history(client):
    r1 = client.put("h/a", {"v": 1})
    client.put("h/b", {"v": 2})
    client.delete("h/a")
    events, _, on_events = _collector()
    w = client.watch("h/", r1, on_events)
    try:
        harness.wait_for(lambda: len(events) >= 3, timeout=2, what="replayed events")
        assert [(e.type, e.key) for e in events] == [
            ("put", "h/a"), ("put", "h/b"), ("delete", "h/a")]
    finally:
        w.cancel()


def test_watch_compacted_history_resets(client):
    r1 = client.put("c/a", {"v": 1})
    client.put("c/b", {"v": 2})
    r3 = client.put("c/c", {"v": 3})
    client.compact(r3)
    events, _, on_events = _collector()
    resets = []

    def on_reset() -> int:
        kvs, rev = client.range("c/")
        resets.append([kv.key for kv in kvs])
        return rev

    w = client.watch("c/", r1, on_events, on_reset=on_reset)
    try:
        harness.wait_for(lambda: resets, timeout=2, what="on_reset")
        assert resets == [["c/a", "c/b", "c/c"]]
        assert w.wait_created(2)
        client.put("c/d", {"v": 4})
        harness.wait_for(lambda: events, timeout=2, what="event after reset")
        assert [e.key for e in events] == ["c/d"]
    finally:
        w.cancel()


def test_watch_resumes_after_etcd_restart_without_loss(inside, client):
    events, _, on_events = _collector()
    errors: list[str] = []
    w = client.watch("r/", 0, on_events, on_error=errors.append)
    try:
        assert w.wait_created(5)
        client.put("r/a", {"v": 1})
        client.put("r/b", {"v": 2})
        harness.wait_for(lambda: len(events) == 2, timeout=2, what="events before restart")
        inside.stop()
        inside.start(wait=True)
        # written before the watch has reconnected: replayed from history, once
        client.put("r/c", {"v": 3})
        client.delete("r/a")
        harness.wait_for(lambda: len(events) >= 4, timeout=5, what="events after restart")
        time.sleep(0.1)
        assert [(e.type, e.key) for e in events] == [
            ("put", "r/a"), ("put", "r/b"), ("put", "r/c"), ("delete", "r/a")]
        assert errors and all("\n" not in e for e in errors)
    finally:
        w.cancel()
    assert not w.running


def test_unavailable_is_one_line(inside):
    # one endpoint refuses, one accepts TCP but never answers
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        port = silent.getsockname()[1]
        c = EtcdClient(["127.0.0.1:1", f"127.0.0.1:{port}"], timeout=0.3)
        with pytest.raises(EtcdUnavailable) as ei:
            c.get("x")
        c.close()
    finally:
        silent.close()
    msg = str(ei.value)
    assert msg == (f"cluster store unavailable: 127.0.0.1:1: connection refused; "
                   f"127.0.0.1:{port}: timed out")
    assert isinstance(ei.value, CnetError) and ei.value.status == 503


def test_failover_to_a_live_endpoint_and_status(inside, prefix):
    c = EtcdClient(["127.0.0.1:1", inside.endpoint], prefix=prefix)
    try:
        c.put("f", {"ok": True})
        assert c.get("f").value == {"ok": True}
        assert c.endpoints[c._preferred] == inside.endpoint  # sticks to the live one
        st = c.status()
        assert st["127.0.0.1:1"] == {"ok": False, "error": "connection refused"}
        assert st[inside.endpoint]["ok"] and st[inside.endpoint]["leader"]
        assert c.healthy_endpoints() == [inside.endpoint]
        c.delete("f")
    finally:
        c.close()


def test_wait_until_reachable(inside):
    errors: list[str] = []
    stop = threading.Event()
    c = EtcdClient(["127.0.0.1:1"], timeout=0.3)

    def on_error(msg: str) -> None:
        errors.append(msg)
        if len(errors) == 2:
            stop.set()

    t0 = time.monotonic()
    assert c.wait_until_reachable(on_error, stop) is False
    assert 0.4 < time.monotonic() - t0 < 2  # one 0.5 s back-off between the tries
    assert errors == ["cluster store unavailable: 127.0.0.1:1: connection refused"] * 2
    c.close()
    live = inside.client()
    assert live.wait_until_reachable(errors.append) is True
    live.close()
    assert len(errors) == 2


def test_etcdstore_commit_conflict_and_lease(client):
    store = EtcdStore(client)
    assert store.path.startswith(f"etcd://{client.endpoints[0]}")
    store.commit(Txn(puts={"network/n1": {"name": "n1"}, "ipam/n1/10.0.0.2": {"ep": 1}},
                     absent=["ipam/n1/10.0.0.2"]))
    assert store.get("network/n1") == {"name": "n1"}
    assert store.list("ipam/n1/") == {"ipam/n1/10.0.0.2": {"ep": 1}}
    with pytest.raises(Conflict, match="ipam/n1/10.0.0.2 already exists"):
        store.commit(Txn(puts={"ipam/n1/10.0.0.3": {"ep": 2}, "ipam/n1/10.0.0.2": {"ep": 2}},
                         absent=["ipam/n1/10.0.0.3", "ipam/n1/10.0.0.2"]))
    assert store.get("ipam/n1/10.0.0.3") is None  # nothing of the failed txn applied
    # delete + put of one key in one txn (etcd refuses duplicates: the put wins)
    store.commit(Txn(puts={"network/n1": {"name": "n1", "v": 2}},
                     deletes=["network/n1", "ipam/n1/10.0.0.2"]))
    assert store.get("network/n1") == {"name": "n1", "v": 2}
    assert store.list("ipam/") == {}
    # keys listed in Txn.leased are put with the store's lease
    store.lease = client.lease_grant(30)
    txn = Txn(puts={"node/h1": {"ip": "10.99.0.1"}, "network/n2": {"name": "n2"}})
    txn.leased = ["node/h1"]
    store.commit(txn)
    assert client.get("node/h1").lease == store.lease
    assert client.get("network/n2").lease == 0
    client.lease_revoke(store.lease)
    assert store.get("node/h1") is None
    seen = []
    store.watch("network/", lambda k, v: seen.append((k, v)))
    store.delete("network/n2")
    assert seen == [("network/n2", None)]
    store.close()  # not its client: still usable
    assert client.get("network/n1") is not None
    owned = EtcdStore(client.endpoints, prefix=client.prefix)  # opens (and closes) its own
    assert owned.list("network/") == {"network/n1": {"name": "n1", "v": 2}}
    owned.close()
    with pytest.raises(EtcdUnavailable):
        owned.get("network/n1")


def test_concurrent_callers_share_one_client(client):
    """IP allocation from several threads at once: every address handed out once."""
    won: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def allocate(worker: int) -> None:
        try:
            for i in range(40):
                key = f"ipam/n/10.0.0.{i}"
                ok, _ = client.txn([Compare.absent(key)], [Op.put(key, {"w": worker})])
                if ok:
                    with lock:
                        won.append((worker, key))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=allocate, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(k for _, k in won) == sorted(f"ipam/n/10.0.0.{i}" for i in range(40))
    kvs, _ = client.range("ipam/n/")
    assert {kv.key: kv.value["w"] for kv in kvs} == {k: w for w, k in won}
