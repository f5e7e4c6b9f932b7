"""`cnet topology` in a cluster: two cnetd on the etcd3 underlay, a sandbox on each on one
overlay; asked on either node, both appear, each under its own node (the remote one from
the peer table), and `--node` keeps one node. Nodes are told apart by id: two daemons
started without --node-name both carry the hostname, and both appear with their
sandboxes."""

from __future__ import annotations

import json
import re
import socket

import harness
import pytest


@pytest.fixture
def pair(node_pair):
    """Two daemons named topo1 and topo2."""
    return node_pair("topo")


@pytest.fixture
def unnamed_pair(node_pair):
    """Two daemons started without --node-name: both named after the (one) hostname."""
    return node_pair("topo", named=False)


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
    ip1, ip2 = pair.overlay("topo-ov", "10.98.0.0/24")

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
    mine = {d1.daemon_id, d2.daemon_id}  # not the nodes of other tests (Down, same store)
    assert [(n["Name"], n["Addr"], n["Status"], n["Self"]) for n in body["Nodes"]
            if n["ID"] in mine] == [
        ("topo1", "10.99.0.1", "Ready", True), ("topo2", "10.99.0.2", "Ready", False)]
    # DOT: s2 drawn inside node2's cluster, joined to the overlay drawn outside both
    out = tmp_path / "cluster.dot"
    d1.cli("topology", "-o", out)
    lines = out.read_text().splitlines()
    ov = d1.cli_json("network", "inspect", "topo-ov")[0]["Id"]
    start = next(i for i, ln in enumerate(lines) if "topo2 (10.99.0.2, Ready)" in ln)
    end = lines.index("  }", start)
    assert any(ln.startswith(f'    "ctr:{d2.daemon_id}/s2/') for ln in lines[start:end])
    assert any(ln.startswith(f'  "net:{ov}" [') for ln in lines[end:])
    assert any(ln.startswith(f'  "ctr:{d2.daemon_id}/s2/')
               and f'-- "net:{ov}" [label="{ip2}\\n' in ln for ln in lines)


def test_two_nodes_named_after_one_hostname_are_both_shown(unnamed_pair, tmp_path):
    """Without --node-name both nodes are called after the hostname: asked on either,
    both nodes appear (by id), each with its own sandbox; the tree tells them apart by
    their short id, DOT draws one cluster each."""
    d1, d2 = unnamed_pair
    host = socket.gethostname()
    ip1, ip2 = unnamed_pair.overlay("topo-ov", "10.98.0.0/24")
    ids = {d1.daemon_id: ("s1", ip1), d2.daemon_id: ("s2", ip2)}
    assert None not in ids and len(ids) == 2
    # the peer table names each node by its id as well (network inspect --verbose)
    peers = d1.cli_json("network", "inspect", "--verbose", "topo-ov")[0]["Peers"]
    assert sorted((p["Name"], p["NodeID"], p["IP"]) for p in peers) == sorted(
        [(host, d1.daemon_id, "10.99.0.1"), (host, d2.daemon_id, "10.99.0.2")])

    def nodes_seen(d) -> list[dict]:
        nodes = [n for n in json.loads(d.api("GET", "/topology").body)["Nodes"]
                 if n["ID"] in ids]  # not the nodes of earlier tests (Down, same store)
        got = {n["ID"]: [(c["Name"], a["IPv4Address"].split("/")[0])
                         for c in n["Containers"] for a in c["Networks"]
                         if a["Network"] == "topo-ov"] for n in nodes}
        return nodes if got == {i: [v] for i, v in ids.items()} else []

    for d in unnamed_pair:  # asked on either node: both nodes, each with its sandbox
        nodes = harness.wait_for(lambda d=d: nodes_seen(d), timeout=5,
                                 what=f"both nodes on {d.name}")
        assert [(n["Name"], n["ID"], n["Self"]) for n in nodes] == [
            (host, d.daemon_id, True),
            (host, (ids.keys() - {d.daemon_id}).pop(), False)]
    # the tree: two node heads of one name, told apart by their short id (other nodes
    # listed are those of earlier tests: Down, same store)
    text = d1.cli("topology", env={"PYTHONIOENCODING": "utf-8"}).stdout
    blocks = {b.splitlines()[0]: b for b in text.split("\n\n")}
    head1 = f"{host} (10.99.0.1, Ready, this node, id {d1.daemon_id[:12]})"
    head2 = f"{host} (10.99.0.2, Ready, id {d2.daemon_id[:12]})"
    assert list(blocks)[0] == head1 and head2 in blocks
    assert re.search(rf"└── s1 \(sandbox\)  {re.escape(ip1)}  ", blocks[head1])
    assert "s2" not in blocks[head1]
    assert re.search(rf"└── s2  {re.escape(ip2)}  ", blocks[head2]) and "s1" not in blocks[head2]
    # DOT: one cluster per node, each sandbox inside its own
    out = tmp_path / "same.dot"
    d2.cli("topology", "-o", out)
    lines = out.read_text().splitlines()
    for node_id, (name, _) in ids.items():
        (start,) = [i for i, ln in enumerate(lines) if ln.startswith("    label=")
                    and f"id {node_id[:12]})" in ln]
        inside = lines[start:lines.index("  }", start)]
        assert any(ln.startswith(f'    "ctr:{node_id}/{name}/') for ln in inside), inside
        other = "s2" if name == "s1" else "s1"
        assert not any(ln.startswith(f'    "ctr:{node_id}/{other}/') for ln in inside)
