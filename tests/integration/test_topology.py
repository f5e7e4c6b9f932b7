"""`cnet topology`: every container and network with its addresses and published ports,
as a text tree, as DOT and drawn by Graphviz (SVG read back as XML, PNG by its magic);
bad input gives one error line and leaves no file behind."""

from __future__ import annotations

import os
import re
import shutil
import socket
import xml.etree.ElementTree as ET

import pytest

DOT = shutil.which("dot")
NEEDS_DOT = pytest.mark.skipif(DOT is None, reason='Graphviz\'s "dot" is not installed')


def _setup(d) -> dict[str, dict[str, dict]]:
    """Networks front (bridge), back (internal), spare (empty); sandboxes a (front, port
    18081 published through /sandboxes/a/ports), b (front + back), c (back); container
    web on front with -p 18080:80, container idle (created, never started) on back.
    Returns {container: {network: {"ip", "mac"}}} as inspect reports them."""
    d.cli("network", "create", "--subnet", "10.94.0.0/24", "front")
    d.cli("network", "create", "--internal", "--subnet", "10.95.0.0/24", "back")
    d.cli("network", "create", "--subnet", "10.96.0.0/24", "spare")
    for name, nets in (("a", ["front"]), ("b", ["front", "back"]), ("c", ["back"])):
        d.cli("sandbox", "create", name)
        for net in nets:
            d.cli("network", "connect", net, name)
    res = d.api("POST", "/sandboxes/a/ports",
                {"Network": "front", "PortBindings": {"80/tcp": [{"HostPort": "18081"}]}})
    assert res.status == 200, res.body
    d.cli("run", "-d", "--name", "web", "--network", "front", "-p", "18080:80", "busybox",
          "sleep", "600")
    d.cli("create", "--name", "idle", "--network", "back", "busybox", "true")
    want: dict[str, dict[str, dict]] = {}
    for name in ("a", "b", "c"):
        nets = d.sandbox_inspect(name)["Networks"]
        want[name] = {n: {"ip": e["IPAddress"], "mac": e["MacAddress"]} for n, e in
                      nets.items()}
    nets = d.cli_json("inspect", "web")[0]["NetworkSettings"]["Networks"]
    want["web"] = {n: {"ip": e["IPAddress"], "mac": e["MacAddress"]} for n, e in nets.items()}
    assert want["web"]["front"]["ip"].startswith("10.94.0.")
    return want


def _tree(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse the text tree: {node line: {network line: [container lines]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    node = net = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("WARNING"):
            continue
        if not line.startswith(("├", "└", "│", " ")):
            node = line
            out[node] = {}
        elif line[:4] in ("├── ", "└── "):
            net = line[4:]
            out[node][net] = []
        else:
            assert line[4:8] in ("├── ", "└── "), line
            out[node][net].append(line[8:])
    return out


def _by_name(lines) -> dict[str, str]:
    return {line.split()[0]: line for line in lines}


def test_topology_text_tree_shows_every_container_and_network(cdaemon):
    d = cdaemon
    want = _setup(d)
    text = d.cli("topology", env={"PYTHONIOENCODING": "utf-8"}).stdout
    tree = _tree(text)
    assert len(tree) == 1
    (head, nets), = tree.items()
    assert head.startswith(socket.gethostname() + " (") and "this node" in head
    names = {line.split()[0]: line for line in nets}
    assert {"front", "back", "spare", "bridge"} <= set(names)
    assert "host" not in names and "none" not in names  # nothing on them: hidden
    assert "internal" in names["back"] and "10.95.0.0/24 gw 10.95.0.1" in names["back"]
    assert "internal" not in names["front"]
    assert nets[names["spare"]] == ["(no containers)"]
    front = _by_name(nets[names["front"]])
    back = _by_name(nets[names["back"]])
    assert sorted(front) == ["a", "b", "web"]  # name order
    assert list(front) == sorted(front)
    assert sorted(back) == ["b", "c", "idle"]
    for name, attached in want.items():
        for net, addr in attached.items():
            line = {"front": front, "back": back}[net][name]
            assert f"  {addr['ip']}  " in line and addr["mac"] in line, line
    assert "(container, running)" in front["web"] and "(sandbox)" in front["a"]
    assert "(container, created)" in back["idle"]
    assert front["web"].endswith("ports 0.0.0.0:18080->80/tcp")
    assert front["a"].endswith("ports 0.0.0.0:18081->80/tcp")
    assert "ports" not in front["b"] and "ports" not in back["b"]
    # the same tree for this node by name; ASCII branches when stdout is not UTF-8
    assert d.cli("topology", "--node", socket.gethostname(),
                 env={"PYTHONIOENCODING": "utf-8"}).stdout == text
    ascii_text = d.cli("topology", env={"PYTHONIOENCODING": "ascii"}).stdout
    assert ascii_text.isascii() and "`-- " in ascii_text
    assert ascii_text.replace("|-- ", "├── ").replace("`-- ", "└── ").replace(
        "|   ", "│   ") == text


DOT_NODE = re.compile(r'^\s+"((?:net|ctr):[^"]*)" \[.*label="([^"]*)"\];$')
DOT_EDGE = re.compile(r'^\s+"(ctr:[^"]*)" -- "(net:[^"]*)" \[label="([^"]*)"\];$')


def test_topology_dot_and_svg_name_every_container_network_and_address(cdaemon, tmp_path):
    d = cdaemon
    want = _setup(d)
    nets = {n["Name"]: n["Id"] for n in d.cli_json("network", "ls", "--format", "json")}
    path = tmp_path / "topo.dot"
    d.cli("topology", "-o", path)
    text = path.read_text()
    assert text.startswith("graph cnet {") and text.rstrip().endswith("}")
    labels = {}
    edges: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        if m := DOT_EDGE.match(line):
            edges[(m[1].split("/")[1], m[2][4:])] = m[3]
        elif m := DOT_NODE.match(line):
            labels[m[1]] = m[2]
    net_labels = {k[4:]: v for k, v in labels.items() if k.startswith("net:")}
    for name in ("front", "back", "spare", "bridge"):
        assert net_labels[nets[name]].startswith(name + "\\n"), net_labels
    assert "10.95.0.0/24 gw 10.95.0.1" in net_labels[nets["back"]]
    ctrs = {k.split("/")[1] for k in labels if k.startswith("ctr:")}
    assert ctrs == {"a", "b", "c", "web", "idle"}
    for name, attached in want.items():
        for net, addr in attached.items():
            label = edges[(name, nets[net])]
            assert label.split("\\n")[:2] == [addr["ip"], addr["mac"]], label
    assert edges[("web", nets["front"])].endswith("ports 0.0.0.0:18080->80/tcp")
    assert edges[("a", nets["front"])].endswith("ports 0.0.0.0:18081->80/tcp")
    assert ("idle", nets["back"]) in edges
    if DOT is None:
        return
    # Graphviz reads it, and draws it: SVG is XML naming everything, PNG is a PNG
    svg = tmp_path / "topo.svg"
    d.cli("topology", "-o", svg)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    texts = {t.text for t in root.iter() if t.tag.endswith("text") and t.text}
    for name, attached in want.items():
        assert name in texts
        for addr in attached.values():
            assert addr["ip"] in texts and addr["mac"] in texts
    assert {"front", "back", "spare", "idle", "0.0.0.0:18080->80/tcp"} <= texts | {
        t.replace("ports ", "") for t in texts}
    png = tmp_path / "topo.png"
    d.cli("topology", "-o", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["topo.dot", "topo.png", "topo.svg"]


def test_topology_bad_input_one_line_errors_and_no_file(daemon, tmp_path):
    d = daemon
    err = d.cli_error("topology", "-o", tmp_path / "topo.txt")
    assert 'unknown file type ".txt"' in err and "\n" not in err
    err = d.cli_error("topology", "--node", "nosuchnode")
    assert "No such node: nosuchnode" in err and "\n" not in err
    err = d.cli_error("topology", "--node", "nosuchnode", "-o", tmp_path / "topo.dot")
    assert "No such node: nosuchnode" in err
    err = d.cli_error("topology", "-o", tmp_path / "missing" / "topo.dot")
    assert "no such directory" in err
    # no Graphviz on PATH: one line naming it, exit 1, nothing written
    empty = tmp_path / "bin"
    empty.mkdir()
    err = d.cli_error("topology", "-o", tmp_path / "topo.svg", env={"PATH": str(empty)})
    assert err == (f'Error: -o {tmp_path / "topo.svg"}: SVG output needs Graphviz\'s "dot" '
                   "(apt install graphviz)")
    assert os.listdir(tmp_path) == ["bin"]
    # a `dot` that fails halfway leaves no partial file either
    fake = empty / "dot"
    fake.write_text("#!/bin/sh\nfor a; do o=$a; done\necho partial > \"$o\"\n"
                    "echo 'Error: syntax error in line 1' >&2\nexit 1\n")
    fake.chmod(0o755)
    err = d.cli_error("topology", "-o", tmp_path / "topo.png", env={"PATH": str(empty)})
    assert err == "Error: dot failed: Error: syntax error in line 1"
    assert os.listdir(tmp_path) == ["bin"]


def test_topology_on_a_fresh_daemon(daemon):
    """Only the predefined networks: the bridge shown empty, nothing else."""
    text = daemon.cli("topology", env={"PYTHONIOENCODING": "utf-8"}).stdout
    tree = _tree(text)
    (nets,) = tree.values()
    assert [line.split()[0] for line in nets] == ["bridge"]
    assert list(nets.values()) == [["(no containers)"]]
    res = daemon.api("GET", "/topology")
    assert res.status == 200
    body = res.json()
    assert [n["Name"] for n in body["Nodes"]] == [socket.gethostname()]
    assert {n["Name"] for n in body["Networks"]} == {"bridge", "host", "none"}


def _topology_json(d) -> dict:
    res = d.api("GET", "/topology")
    assert res.status == 200, res.body
    return res.json()


def _entry(body: dict, name: str) -> dict:
    (node,) = [n for n in body["Nodes"] if n["Self"]]
    (c,) = [c for c in node["Containers"] if c["Name"] == name]
    return c


def test_networks_given_by_id_are_shown_on_that_network(cdaemon):
    """`create/run --network <id prefix>`: the container's configured key is the id the
    user gave, not the name: created, it is still on that network (not "(no network)");
    running, it is there once, with its address."""
    d = cdaemon
    d.cli("network", "create", "--subnet", "10.93.0.0/24", "byid")
    net_id = d.cli_json("network", "inspect", "byid")[0]["Id"]
    d.cli("create", "--name", "made", "--network", net_id[:12], "busybox", "true")
    d.cli("run", "-d", "--name", "going", "--network", net_id[:12], "busybox", "sleep", "600")
    ip = d.cli_json("inspect", "going")[0]["NetworkSettings"]["Networks"]["byid"]["IPAddress"]
    assert ip.startswith("10.93.0.")
    body = _topology_json(d)
    assert [(a["NetworkID"], a["IPv4Address"]) for a in _entry(body, "made")["Networks"]] == [
        (net_id, "")]
    assert [(a["NetworkID"], a["IPv4Address"].split("/")[0])
            for a in _entry(body, "going")["Networks"]] == [(net_id, ip)]
    tree = _tree(d.cli("topology", env={"PYTHONIOENCODING": "utf-8"}).stdout)
    (nets,) = tree.values()
    heads = {line.split()[0]: line for line in nets}
    assert "(no" not in heads  # no "(no network)" branch
    members = _by_name(nets[heads["byid"]])
    assert list(members) == ["going", "made"] and len(nets[heads["byid"]]) == 2
    assert "(container, created)" in members["made"] and f"  {ip}  " in members["going"]


def _dnat_targets(d, port: int) -> set[str]:
    """The addresses cnet's nft table DNATs TCP host port `port` to (read from the kernel:
    the pub_any element's chain and its dnat rules)."""
    out = d.run_in_host("nft", "list", "table", "inet", "cnet").stdout
    chains = dict(re.findall(r"\n\tchain (\S+) \{\n(.*?)\n\t\}", out, re.S))
    via = re.findall(rf"tcp \. {port} : (?:jump|goto) ([\w-]+)", out)
    return {t for name in via for t in re.findall(r"dnat ip to ([\d.]+):\d+",
                                                  chains.get(name, ""))}


def test_published_ports_are_shown_where_the_kernel_sends_them(cdaemon):
    """Ports are read from the publisher, not recomputed: after `network connect pb` they
    stay on pa's endpoint; after `network disconnect pa` the runtime re-points them at
    pb's address (as Docker moves them to the next gateway endpoint) and they are shown
    there, the kernel agreeing."""
    d = cdaemon
    d.cli("network", "create", "--subnet", "10.91.0.0/24", "pa")
    d.cli("network", "create", "--subnet", "10.92.0.0/24", "pb")
    d.cli("run", "-d", "--name", "w", "--network", "pa", "-p", "18099:80", "busybox",
          "sleep", "600")
    pa_ip = d.cli_json("inspect", "w")[0]["NetworkSettings"]["Networks"]["pa"]["IPAddress"]
    d.cli("network", "connect", "pb", "w")
    pb_ip = d.cli_json("inspect", "w")[0]["NetworkSettings"]["Networks"]["pb"]["IPAddress"]
    assert _dnat_targets(d, 18099) == {pa_ip}
    atts = {a["Network"]: a for a in _entry(_topology_json(d), "w")["Networks"]}
    assert atts["pa"]["Ports"] == ["0.0.0.0:18099->80/tcp"] and atts["pb"]["Ports"] == []
    d.cli("network", "disconnect", "pa", "w")
    assert _dnat_targets(d, 18099) == {pb_ip}
    w = _entry(_topology_json(d), "w")
    assert [(a["Network"], a["IPv4Address"].split("/")[0], a["Ports"])
            for a in w["Networks"]] == [("pb", pb_ip, ["0.0.0.0:18099->80/tcp"])]
    assert w["UnattachedPorts"] == []
    tree = _tree(d.cli("topology", env={"PYTHONIOENCODING": "utf-8"}).stdout)
    (nets,) = tree.values()
    heads = {line.split()[0]: line for line in nets}
    assert "(no" not in heads
    (on_pb,) = nets[heads["pb"]]
    assert on_pb.startswith("w (container, running)")
    assert on_pb.endswith("ports 0.0.0.0:18099->80/tcp"), on_pb
