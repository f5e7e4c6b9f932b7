"""Sandboxes: their namespace bind mounts, removal, `sandbox exec`, and the low-level
endpoint API (create / join / leave / delete), checked against the kernel."""

from __future__ import annotations

import json
import os

import harness


def mounted(path: str) -> bool:
    """True if `path` is a mount point (an nsfs bind mount) in our mount namespace."""
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def links(target) -> dict[str, dict]:
    proc = harness.nsexec(target, "ip", "-j", "link", check=True)
    return {x["ifname"]: x for x in json.loads(proc.stdout)}


def v4addrs(target, ifname: str) -> set[str]:
    proc = harness.nsexec(target, "ip", "-j", "-4", "addr", "show", "dev", ifname, check=True)
    return {f"{a['local']}/{a['prefixlen']}"
            for x in json.loads(proc.stdout) for a in x.get("addr_info", [])}


def test_sandbox_namespace_is_a_bind_mount_removed_by_rm(daemon):
    d = daemon
    sid = d.cli("sandbox", "create", "a").stdout.strip()
    sb = d.sandbox_inspect("a")
    key = sb["Key"]
    assert sb["Id"] == sid
    assert key == str(d.exec_root / "netns" / sid)
    assert mounted(key)
    assert os.listdir(d.exec_root / "netns") == [sid]
    # A network namespace of its own, not the daemon's, with only loopback (up).
    assert os.stat(key).st_ino != os.stat(d.netns_path).st_ino
    lo = links(key)
    assert list(lo) == ["lo"] and "UP" in lo["lo"]["flags"]
    assert [s["Name"] for s in d.cli_json("sandbox", "ls", "--format", "json")] == ["a"]

    assert d.cli("sandbox", "rm", "a").stdout.strip() == "a"
    assert not mounted(key)
    assert not os.path.exists(key)
    assert d.cli("sandbox", "ls", "-q").stdout == ""
    d.cli_error("sandbox", "inspect", "a")


def test_sandbox_rm_connected_needs_force(daemon):
    d = daemon
    d.cli("sandbox", "create", "a")
    d.cli("network", "create", "--subnet", "10.90.0.0/24", "n")
    d.cli("network", "connect", "bridge", "a")
    d.cli("network", "connect", "n", "a")
    sb = d.sandbox_inspect("a")
    key = sb["Key"]
    veths = ["veth" + ep["EndpointID"][:7] for ep in sb["Networks"].values()]
    assert set(veths) <= set(links(d.netns_path))

    err = d.cli_error("sandbox", "rm", "a")
    assert len(err.splitlines()) == 1
    assert mounted(key) and set(veths) <= set(links(d.netns_path))
    assert harness.ping(key, "10.90.0.1") and harness.ping(key, "172.17.0.1")

    d.cli("sandbox", "rm", "-f", "a")
    assert not mounted(key) and not os.path.exists(key)
    assert not set(veths) & set(links(d.netns_path))
    assert d.cli_json("network", "inspect", "n")[0]["Containers"] == {}
    assert d.cli_json("network", "inspect", "bridge")[0]["Containers"] == {}
    # Its addresses went back to the pool: the next sandbox gets the first one again.
    d.cli("sandbox", "create", "b")
    d.cli("network", "connect", "n", "b")
    assert d.sandbox_ip("b", "n") == sb["Networks"]["n"]["IPAddress"]


def test_sandbox_exec(daemon):
    d = daemon
    d.cli("sandbox", "create", "a")
    d.cli("network", "connect", "bridge", "a")
    ip = d.sandbox_ip("a", "bridge")

    proc = d.cli("sandbox", "exec", "a", "--", "ip", "-j", "addr")
    seen = {x["ifname"]: x for x in json.loads(proc.stdout)}
    assert set(seen) == {"lo", "eth0"}
    eth0 = {a["local"] for a in seen["eth0"]["addr_info"] if a["family"] == "inet"}
    assert eth0 == {ip}
    assert seen["eth0"]["address"] == d.sandbox_inspect("a")["Networks"]["bridge"]["MacAddress"]
    # It really runs inside the sandbox: same namespace inode as the Key.
    inode = d.cli("sandbox", "exec", "a", "--", "stat", "-L", "-c", "%i",
                  "/proc/self/ns/net").stdout.strip()
    assert int(inode) == os.stat(d.sandbox_key("a")).st_ino
    # The command's exit status is cnet's, its output untouched.
    assert d.cli("sandbox", "exec", "a", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    assert d.cli("sandbox", "exec", "a", "--", "false", check=False).returncode == 1
    proc = d.cli("sandbox", "exec", "a", "--", "ping", "-c1", "-W1", "172.17.0.1", check=False)
    assert proc.returncode == 0, proc.stderr
    proc = d.cli("sandbox", "exec", "a", "--", "no-such-command-xyz", check=False)
    assert proc.returncode == 127 and proc.stderr.startswith("Error:")
    assert len(d.cli_error("sandbox", "exec", "nosuch", "--", "true").splitlines()) == 1


def test_endpoint_api_steps(daemon):
    """POST /endpoints/create, /join, /leave, DELETE: each step visible in the kernel."""
    d = daemon
    d.cli("network", "create", "--subnet", "10.91.0.0/24", "n")
    d.cli("sandbox", "create", "a")
    d.cli("sandbox", "create", "b")
    d.cli("network", "connect", "n", "b")
    key_a, key_b = d.sandbox_key("a"), d.sandbox_key("b")
    before = set(links(d.netns_path))

    r = d.api("POST", "/endpoints/create",
              {"Network": "n", "Name": "ep1", "IPv4Address": "10.91.0.77"})
    assert r.status == 201, r.body
    ep = r.json()
    assert ep["IPAddress"] == "10.91.0.77"
    assert set(links(d.netns_path)) == before  # created, not joined: no veth yet

    r = d.api("POST", f"/endpoints/{ep['Id']}/join", {"Sandbox": "a"})
    assert r.status == 200, r.body
    assert r.json()["InterfaceName"] == "eth0"
    assert v4addrs(key_a, "eth0") == {"10.91.0.77/24"}
    assert "veth" + ep["Id"][:7] in links(d.netns_path)
    assert harness.ping(key_b, "10.91.0.77")
    assert d.sandbox_inspect("a")["Networks"]["n"]["EndpointID"] == ep["Id"]
    # The address is taken while the endpoint exists.
    d.cli("sandbox", "create", "c")
    d.cli_error("network", "connect", "--ip", "10.91.0.77", "n", "c")

    assert d.api("DELETE", f"/endpoints/{ep['Id']}").status == 409  # still joined
    r = d.api("POST", f"/endpoints/{ep['Id']}/leave")
    assert r.status == 200, r.body
    assert "eth0" not in links(key_a)
    assert set(links(d.netns_path)) == before
    assert not harness.ping(key_b, "10.91.0.77")

    assert d.api("DELETE", f"/endpoints/{ep['Id']}").status == 204
    assert d.api("GET", f"/endpoints/{ep['Id']}").status == 404
    d.cli("network", "connect", "--ip", "10.91.0.77", "n", "c")  # released
    assert harness.ping(key_b, "10.91.0.77")

    assert d.api("POST", "/endpoints/create", {"Network": "nosuch"}).status == 404
