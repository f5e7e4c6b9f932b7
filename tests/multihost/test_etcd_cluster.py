"""A three-member etcd cluster on the simulated underlay, and the client's failover.

Member i runs in host i's namespace on 10.99.0.(i+1); the test talks to it from a host
namespace, as cnetd on that host would.
"""

from __future__ import annotations

import secrets
import threading
import time

import etcdharness
import harness
from cnet.cnm.etcd import EtcdClient, EtcdUnavailable, Event


def test_underlay_hosts_reach_each_other(etcd3):
    (ns1, _), (_, ip2), (_, ip3) = etcd3.underlay.hosts
    assert harness.ping(ns1, ip2) and harness.ping(ns1, ip3)
    link = ns1.ip("-o", "link", "show", "eth0").stdout
    assert "mtu 1500" in link
    assert etcd3.endpoints == "10.99.0.1:2379,10.99.0.2:2379,10.99.0.3:2379"


def test_write_via_member1_read_via_member3(etcd3):
    m1, _, m3 = etcd3.members
    prefix = f"/t{secrets.token_hex(4)}/"
    with etcdharness.in_netns(m1.ns):
        c1 = EtcdClient([m1.endpoint], prefix=prefix)
        rev = c1.put("network/ov1", {"vni": 4097})
        c1.close()
    with etcdharness.in_netns(m3.ns):
        c3 = EtcdClient([m3.endpoint], prefix=prefix)
        kv = c3.get("network/ov1")
        assert kv.value == {"vni": 4097} and kv.mod_revision == rev
        c3.delete_prefix("")
        c3.close()


def _leader_first(etcd3, ns) -> list:
    """The members, leader first (asked from inside `ns`)."""
    with etcdharness.in_netns(ns):
        c = EtcdClient(etcd3.endpoint_list, timeout=1)
        st = c.status()
        c.close()
    return sorted(etcd3.members, key=lambda m: not st[m.endpoint].get("leader"))


def _retry(fn, timeout: float = 10):
    """Call fn until it stops raising EtcdUnavailable (a leader election in progress)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_leader_killed_client_and_watch_carry_on(etcd3):
    host_ns = etcd3.underlay.hosts[2][0]
    members = _leader_first(etcd3, host_ns)
    leader = members[0]
    prefix = f"/t{secrets.token_hex(4)}/"
    with etcdharness.in_netns(host_ns):
        # the leader is the client's (and so the watch's) preferred member
        client = EtcdClient([m.endpoint for m in members], prefix=prefix)
        events: list[Event] = []
        lock = threading.Lock()

        def on_events(evs):
            with lock:
                events.extend(evs)

        w = client.watch("peer/", 0, on_events)
        try:
            assert w.wait_created(5)
            client.put("peer/a", {"vtep": "10.99.0.1"})
            harness.wait_for(lambda: len(events) == 1, timeout=1, what="first event")

            leader.kill()
            t0 = time.monotonic()
            _retry(lambda: client.put("peer/b", {"vtep": "10.99.0.2"}))
            _retry(lambda: client.delete("peer/a"))
            write_s = time.monotonic() - t0
            harness.wait_for(lambda: len(events) >= 3, timeout=5, what="events after kill")
            time.sleep(0.1)
            assert [(e.type, e.key) for e in events] == [
                ("put", "peer/a"), ("put", "peer/b"), ("delete", "peer/a")]
            assert client.get("peer/b").value == {"vtep": "10.99.0.2"}
            assert leader.endpoint not in client.healthy_endpoints()
            assert write_s < 8, f"writes resumed only after {write_s:.1f}s"

            # bring it back: it catches up and serves what was written without it
            leader.start(wait=True)
            solo = EtcdClient([leader.endpoint], prefix=prefix)
            assert _retry(lambda: solo.get("peer/b")).value == {"vtep": "10.99.0.2"}
            assert solo.get("peer/a") is None
            solo.put("peer/c", {"vtep": "10.99.0.3"})
            solo.close()
            harness.wait_for(lambda: len(events) >= 4, timeout=2, what="event via old leader")
            assert events[-1].key == "peer/c"
            assert sorted(client.healthy_endpoints()) == sorted(etcd3.endpoint_list)
        finally:
            w.cancel()
            client.delete_prefix("")
            client.close()
    assert not w.running


def test_follower_stopped_reads_and_writes_go_on(etcd3):
    host_ns = etcd3.underlay.hosts[0][0]
    follower = _leader_first(etcd3, host_ns)[-1]
    prefix = f"/t{secrets.token_hex(4)}/"
    with etcdharness.in_netns(host_ns):
        # the stopped follower first in the list: every call must fail over from it
        order = [follower.endpoint] + [e for e in etcd3.endpoint_list if e != follower.endpoint]
        client = EtcdClient(order, prefix=prefix)
        try:
            follower.stop()
            t0 = time.monotonic()
            client.put("k", {"v": 1})
            assert client.get("k").value == {"v": 1}
            assert time.monotonic() - t0 < 1  # a refused connection fails over at once
        finally:
            client.delete_prefix("")
            client.close()
    # the conftest restarts the follower after the test


def test_quorum_lost_fails_fast_then_watch_resumes(etcd3):
    m1, m2, m3 = etcd3.members
    prefix = f"/t{secrets.token_hex(4)}/"
    with etcdharness.in_netns(m3.ns):
        client = EtcdClient([m3.endpoint], prefix=prefix)
        events: list[Event] = []
        w = client.watch("q/", 0, events.extend)
        try:
            assert w.wait_created(5)
            client.put("q/a", {"v": 1})
            harness.wait_for(lambda: len(events) == 1, timeout=1, what="first event")
            m1.kill()
            m2.kill()

            def no_leader() -> str | None:
                try:
                    client.get("q/a")
                except EtcdUnavailable as e:
                    return str(e) if "no leader" in str(e) else None
                return None

            msg = harness.wait_for(no_leader, timeout=10, interval=0.2, what="no leader")
            assert msg == f"cluster store unavailable: {m3.endpoint}: etcdserver: no leader"
            st = client.status()[m3.endpoint]
            assert st == {"ok": False, "error": "etcdserver: no leader"}
            etcd3.heal()
            client.put("q/b", {"v": 2})
            harness.wait_for(lambda: len(events) >= 2, timeout=5, what="event after quorum")
            time.sleep(0.1)
            assert [e.key for e in events] == ["q/a", "q/b"]
        finally:
            w.cancel()
            client.delete_prefix("")
            client.close()
