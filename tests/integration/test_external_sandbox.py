"""External sandboxes: a runtime's namespace (CNI's CNI_NETNS) used, never made or
removed, by cnet — what it accepts as one, and what a restart does with them."""

from __future__ import annotations

import harness
import pytest


def _create(daemon, name: str, key) -> harness.ApiResponse:
    return daemon.api("POST", "/sandboxes/create", {"Name": name, "Key": key})


@pytest.mark.parametrize("key, reason", [
    ("/proc/1/ns/net", ""),  # "the host's own ...", or EPERM where pid 1 is out of reach
    ("/proc/self/ns/mnt", "not a network namespace"),
    ("run/netns/x", "not an absolute path"),
    ("/nonexistent/netns", "No such file"),
    ("/etc/hostname", "not a namespace file"),
])
def test_only_a_runtimes_network_namespace_is_accepted(daemon, key, reason):
    r = _create(daemon, "ext", key)
    assert r.status == 400 and reason in r.json()["message"], r.json()
    assert daemon.cli_json("sandbox", "ls", "--format", "json") == []


def test_the_daemons_own_namespace_is_refused(daemon):
    r = _create(daemon, "ext", f"/proc/{daemon.pid}/ns/net")
    assert r.status == 400 and "host's own" in r.json()["message"]


def test_a_vanished_namespace_is_forgotten_and_routes_of_others_are_kept(daemon):
    """At restart a sandbox whose namespace went while cnetd was down is dropped with
    its endpoint and address; a default route cnet did not make survives."""
    daemon.cli("network", "create", "--subnet", "10.71.0.0/24", "ext-net")
    daemon.cli("network", "create", "--internal", "--subnet", "10.72.0.0/24", "ext-int")
    with harness.Netns() as pod1, harness.Netns() as pod2:
        for name, ns in (("pod1", pod1), ("pod2", pod2)):
            r = _create(daemon, name, harness.netns_path(ns))
            assert r.status == 201, r.json()
        daemon.cli("network", "connect", "--ip", "10.71.0.10", "ext-net", "pod1")
        # pod2: another plugin's interface and default route, then cnet's internal network
        pod2.ip("link", "add", "other0", "type", "veth", "peer", "name", "other1")
        pod2.ip("addr", "add", "192.0.2.10/24", "dev", "other0")
        pod2.ip("link", "set", "other0", "up")
        pod2.ip("route", "add", "default", "via", "192.0.2.1")
        daemon.cli("network", "connect", "ext-int", "pod2")
        daemon.stop()
        pod1.delete()
        daemon.start()
        assert [s["Name"] for s in daemon.cli_json("sandbox", "ls", "--format", "json")] \
            == ["pod2"]
        assert daemon.cli_json("network", "inspect", "ext-net")[0]["Containers"] == {}
        assert "default via 192.0.2.1" in pod2.ip("route").stdout
        # pod1's address is free again
        with harness.Netns() as pod3:
            assert _create(daemon, "pod3", harness.netns_path(pod3)).status == 201
            daemon.cli("network", "connect", "--ip", "10.71.0.10", "ext-net", "pod3")
            daemon.cli("sandbox", "rm", "-f", "pod3")
        daemon.cli("sandbox", "rm", "-f", "pod2")
        assert "default via 192.0.2.1" in pod2.ip("route").stdout
    daemon.cli("network", "rm", "ext-net", "ext-int")
