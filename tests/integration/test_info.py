"""`cnet info`: the kernel features it reports must match what the kernel really does.

Reality is probed independently here with `ip` / `nft` in a throwaway namespace.
"""

from __future__ import annotations

import json

import harness

FEATURES = ("bridge", "veth", "vxlan", "macvlan", "802.1q", "ipvlan", "nftables", "esp")

# feature -> commands that succeed (in a fresh namespace holding bridge `p`) iff present
PROBES = {
    "bridge": [["ip", "link", "add", "b0", "type", "bridge"]],
    "veth": [["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]],
    "vxlan": [["ip", "link", "add", "x0", "type", "vxlan", "id", "42", "dstport", "4789"]],
    "macvlan": [["ip", "link", "add", "m0", "link", "p", "type", "macvlan", "mode", "bridge"]],
    "802.1q": [["ip", "link", "add", "p.10", "link", "p", "type", "vlan", "id", "10"]],
    "ipvlan": [["ip", "link", "add", "i0", "link", "p", "type", "ipvlan", "mode", "l2"]],
    "nftables": [["nft", "add", "table", "inet", "probe"]],
    "esp": [["ip", "xfrm", "state", "add", "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "esp",
             "spi", "0x100", "mode", "transport",
             "enc", "cbc(aes)", "0x000102030405060708090a0b0c0d0e0f",
             "auth", "hmac(sha256)",
             "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"]],
}


def kernel_reality() -> dict[str, bool]:
    with harness.Netns() as ns:
        ns.ip("link", "add", "p", "type", "bridge")
        return {
            feature: all(harness.nsexec(ns, *cmd).returncode == 0 for cmd in cmds)
            for feature, cmds in PROBES.items()
        }


def test_info_kernel_features_match_reality(daemon):
    d = daemon
    info = d.cli_json("info", "--format", "json")
    reported = {f["Name"]: f["Present"] for f in info["KernelFeatures"]}
    assert sorted(reported) == sorted(FEATURES)
    assert reported == kernel_reality()
    for f in info["KernelFeatures"]:
        assert isinstance(f["Present"], bool)
        assert f["Disables"]  # says what a missing feature costs

    # The table output says the same, one line per feature.
    text = d.cli("info").stdout
    rows = {}
    for line in text.split("Kernel Features:", 1)[1].splitlines()[2:]:
        name, status, *_ = line.split()
        rows[name] = status
    assert rows == {n: "present" if p else "missing" for n, p in reported.items()}


def test_info_describes_this_daemon(daemon):
    d = daemon
    info = d.cli_json("info", "--format", "json")
    assert info["DataRoot"] == str(d.data_root) and info["ExecRoot"] == str(d.exec_root)
    assert {"bridge", "host", "null"} <= set(info["Drivers"])
    assert (info["Networks"], info["Sandboxes"]) == (3, 0)
    # The daemon id is the one marking its kernel objects: the predefined bridge's alias.
    proc = harness.nsexec(d.netns_path, "ip", "-j", "link", "show", "cnet0", check=True)
    alias = json.loads(proc.stdout)[0]["ifalias"]
    assert alias.startswith(f"cnet:{info['DaemonID']}:")
    d.cli("sandbox", "create", "a")
    d.cli("network", "create", "n")
    info = d.cli_json("info", "--format", "json")
    assert (info["Networks"], info["Sandboxes"]) == (4, 1)


def test_info_reports_the_cgroup_version_of_this_machine(daemon):
    import os

    info = daemon.cli_json("info", "--format", "json")
    unified = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    assert info["CgroupVersion"] == ("2" if unified else "1")
    assert info["CgroupDriver"] == "cgroupfs"


def test_bridge_none_skips_the_predefined_bridge(daemon_factory):
    d = daemon_factory(args=["--bridge", "none"])
    names = d.cli("network", "ls", "--format", "json").stdout
    assert '"bridge"' not in names and '"host"' in names and '"none"' in names
    assert "cnet0" not in d.run_in_host("ip", "-o", "link").stdout
