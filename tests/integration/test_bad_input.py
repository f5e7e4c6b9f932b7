"""Bad input: one `Error:` line on stderr, a non-zero exit, and nothing changed.

"Nothing changed" is checked on the kernel (links in the daemon's namespace and in every
sandbox, the whole nft ruleset, the namespaces under the exec root) and on the daemon's
lists, before and after each command. One daemon (with some state) serves every case.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import harness
import pytest


@dataclass
class World:
    d: harness.Daemon
    ip_a: str  # address of sandbox a on network n1


@pytest.fixture(scope="module")
def world():
    reason = harness.requirements_missing()
    if reason:
        pytest.skip(reason)
    ns = harness.Netns()
    d = harness.Daemon(ns)
    try:
        d.start()
        d.cli("network", "create", "--subnet", "10.88.0.0/24", "n1")
        d.cli("network", "create", "n2")
        for sb in ("a", "b", "c"):
            d.cli("sandbox", "create", sb)
        d.cli("network", "connect", "n1", "a")
        d.cli("network", "connect", "--ip", "10.88.0.20", "n1", "b")
        d.cli("network", "connect", "bridge", "b")
        yield World(d, d.sandbox_ip("a", "n1"))
    finally:
        errors = harness.shutdown_daemon(d)
        ns.delete()
        harness.fail_on_teardown_errors(errors)


@pytest.fixture(autouse=True)
def _attach_logs(request, world):
    harness.register_daemon(request, world.d)


def _ip_json(target, *args: str):
    return json.loads(harness.nsexec(target, "ip", "-j", *args, check=True).stdout or "[]")


def _global_addrs(target) -> list[tuple]:
    return sorted((x["ifname"], a["local"], a["prefixlen"])
                  for x in _ip_json(target, "addr")
                  for a in x.get("addr_info", []) if a.get("scope") == "global")


def _links(target) -> list[dict]:
    # operstate is the kernel's own business (a new bridge goes UNKNOWN -> UP by itself)
    return [{k: v for k, v in x.items() if k != "operstate"} for x in _ip_json(target, "link")]


def kernel_and_daemon_state(d: harness.Daemon) -> dict:
    sandboxes = d.api("GET", "/sandboxes").json()
    return {
        "host_links": _links(d.netns_path),
        "host_addrs": _global_addrs(d.netns_path),
        "nft": d.run_in_host("nft", "-j", "list", "ruleset").stdout,
        "networks": d.cli("network", "ls", "-q").stdout,
        "network_inspect": d.api("GET", "/networks").json(),
        "sandboxes": sandboxes,
        "netns": sorted(os.listdir(d.exec_root / "netns")),
        "sandbox_links": {s["Name"]: _links(s["Key"]) for s in sandboxes},
        "sandbox_addrs": {s["Name"]: _global_addrs(s["Key"]) for s in sandboxes},
    }


CASES = {
    "invalid CIDR": ["network", "create", "--subnet", "10.0.0.0/33", "x"],
    "CIDR not an address": ["network", "create", "--subnet", "not-a-cidr", "x"],
    "CIDR with host bits": ["network", "create", "--subnet", "10.60.0.1/24", "x"],
    "gateway outside subnet": ["network", "create", "--subnet", "10.61.0.0/24",
                               "--gateway", "10.62.0.1", "x"],
    "overlapping subnets": ["network", "create", "--subnet", "10.88.0.0/16", "x"],
    "overlapping default bridge": ["network", "create", "--subnet", "172.17.5.0/24", "x"],
    "duplicate network name": ["network", "create", "n1"],
    "name with space": ["network", "create", "bad name"],
    "name starting with dash": ["network", "create", "--", "-x"],
    "sandbox name with space": ["sandbox", "create", "bad name"],
    "duplicate sandbox name": ["sandbox", "create", "a"],
    "unknown driver": ["network", "create", "-d", "nosuchdriver", "x"],
    "unknown option": ["network", "create", "-o", "com.example.nosuch=1", "x"],
    "bad mtu": ["network", "create", "-o", "com.docker.network.driver.mtu=abc", "x"],
    "bad icc value": ["network", "create", "-o", "com.docker.network.bridge.enable_icc=maybe",
                      "x"],
    "bridge name in use": ["network", "create", "-o", "com.docker.network.bridge.name=cnet0",
                           "x"],
    "remove network in use": ["network", "rm", "n1"],
    "remove predefined bridge": ["network", "rm", "bridge"],
    "remove unknown network": ["network", "rm", "nosuch"],
    "connect twice": ["network", "connect", "n1", "a"],
    "connect unknown sandbox": ["network", "connect", "n1", "nosuch"],
    "connect unknown network": ["network", "connect", "nosuch", "c"],
    "connect to host network": ["network", "connect", "host", "c"],
    "ip already used": ["network", "connect", "--ip", "10.88.0.20", "n1", "c"],
    "ip outside subnet": ["network", "connect", "--ip", "10.99.0.5", "n1", "c"],
    "ip without user subnet": ["network", "connect", "--ip", "172.17.0.99", "bridge", "c"],
    "disconnect not connected": ["network", "disconnect", "n2", "a"],
    "remove connected sandbox": ["sandbox", "rm", "a"],
    "remove unknown sandbox": ["sandbox", "rm", "nosuch"],
    "inspect unknown network": ["network", "inspect", "nosuch"],
}


@pytest.mark.parametrize("args", CASES.values(), ids=CASES.keys())
def test_bad_input_changes_nothing(world, args):
    d = world.d
    before = kernel_and_daemon_state(d)
    proc = d.cli(*args, check=False)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    after = kernel_and_daemon_state(d)
    for key in before:
        assert after[key] == before[key], f"{key} changed"


def test_dataplane_still_works_after_all_that(world):
    d = world.d
    assert harness.ping(d.sandbox_key("b"), world.ip_a)
    assert d.sandbox_inspect("c")["Networks"] == {}
