"""`cnet topology` in a cluster: two cnetd on the etcd3 underlay, a sandbox on each on one
overlay; asked on either node, both appear, each under its own node (the remote one from
the peer table), and `--node` keeps one node."""

from __future__ import annotations

import json

import harness
import pytest


@pytest.fixture
def pair(etcd3):
    daemons: list[harness.Daemon] = []
    try:
        for i, (ns, ip) in enumerate(etcd3.underlay.hosts[:2]):
            d = harness.Daemon(ns, name=f"topo{i + 1}", args=[
                "--cluster-store", f"etcd://{etcd3.endpoints}", "--advertise-addr", ip,
                "--node-name", f"topo{i + 1}"])
            daemons.append(d)
            d.start()
        yield daemons
    finally:
        for d in daemons:  # what the test made, then the daemons
            for name in ("s1", "s2"):
                d.cli("sandbox", "rm", "-f", name, check=False)
        if daemons:
            daemons[0].cli("network", "rm", "topo-ov", check=False)
        errors = []
        for d in daemons:
            errors += harness.shutdown_daemon(d)
        assert not errors, errors


def _tree(d, *args: str) -> dict[str, dict[str, list[str]]]:
    """{node name: {network name: [container lines]}} of `cnet topology` on `d`."""
    out: dict[str, dict[str, list[str]]] = {}
    node = net = ""
    for line in d.cli("topology", *args, env={"PYTHONIOENCODING": "utf-8"}).stdout.splitlines():
        if not line.strip():
            continue
        if not line.startswith(("├", "└", "│", " ")):
            node = line.split()[0]
            out[node] = {}
        elif line[:4] in ("├── ", "└── "):
            net = line[4:].split()[0]
            out[node][net] = []
        else:
            out[node][net].append(line[8:])
    return out


def test_topology_shows_both_nodes_containers_on_one_overlay(pair, tmp_path):
    d1, d2 = pair
    d1.cli("network", "create", "-d", "overlay", "--attachable", "--subnet",
           "10.98.0.0/24", "topo-ov")
    harness.wait_for(lambda: d2.cli("network", "inspect", "topo-ov",
                                    check=False).returncode == 0, timeout=5, what="topo-ov")
    for d, name in ((d1, "s1"), (d2, "s2")):
        d.cli("sandbox", "create", name)
        d.cli("network", "connect", "topo-ov", name)
    ip1, ip2 = d1.sandbox_ip("s1", "topo-ov"), d2.sandbox_ip("s2", "topo-ov")

    def both_seen(d) -> dict:
        tree = _tree(d)
        lines = {n: tree.get(n, {}).get("topo-ov", []) for n in ("topo1", "topo2")}
        return lines if (any(ln.startswith("s1 ") and f"  {ip1}  " in ln
                             for ln in lines["topo1"])
                         and any(ln.startswith("s2") and f"  {ip2}  " in ln
                                 for ln in lines["topo2"])) else {}

    for d in pair:  # asked on either node: each sandbox under its own node
        lines = harness.wait_for(lambda d=d: both_seen(d), timeout=5, what=f"peers on {d.name}")
        assert not any(ln.startswith("s2") for ln in lines["topo1"])
        assert not any(ln.startswith("s1") for ln in lines["topo2"])
    # --node: one node; asked on node1 about node2, what the peer table holds of it
    only2 = _tree(d1, "--node", "topo2")
    assert list(only2) == ["topo2"] and list(only2["topo2"]) == ["topo-ov"]
    assert [ln.split()[0] for ln in only2["topo2"]["topo-ov"]] == ["s2"]
    # the JSON names the nodes with their underlay address and state
    body = json.loads(d1.api("GET", "/topology").body)
    assert [(n["Name"], n["Addr"], n["Status"], n["Self"]) for n in body["Nodes"]] == [
        ("topo1", "10.99.0.1", "Ready", True), ("topo2", "10.99.0.2", "Ready", False)]
    # DOT: s2 drawn inside node2's cluster, joined to the overlay drawn outside both
    out = tmp_path / "cluster.dot"
    d1.cli("topology", "-o", out)
    lines = out.read_text().splitlines()
    ov = d1.cli_json("network", "inspect", "topo-ov")[0]["Id"]
    start = next(i for i, ln in enumerate(lines) if "topo2 (10.99.0.2, Ready)" in ln)
    end = lines.index("  }", start)
    assert any(ln.startswith('    "ctr:topo2/s2/') for ln in lines[start:end])
    assert any(ln.startswith(f'  "net:{ov}" [') for ln in lines[end:])
    assert any(ln.startswith('  "ctr:topo2/s2/') and f'-- "net:{ov}" [label="{ip2}\\n' in ln
               for ln in lines)
