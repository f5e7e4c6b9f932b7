"""`cnet topology`'s renderers (pure functions of GET /topology's answer): DOT escaping
(checked by drawing hostile names with Graphviz and reading the SVG back), DOT layout of
two nodes sharing an overlay, the text tree's order and branches; nodes and networks
that share a name kept apart by id, in the renderers and in the daemon's assembly of
the answer; published ports placed on the endpoint holding their DNAT target."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from cnet.cli.topology import dot_quote, render_tree, to_dot
from cnet.daemon.api_topology import _place, assemble
from cnet.runtime.ports import PortPublisher, port_text

DOT = shutil.which("dot")


def _att(net: str, ip: str = "", mac: str = "", ports=()) -> dict:
    return {"Network": net, "NetworkID": "id-" + net, "IPv4Address": ip, "IPv6Address": "",
            "MacAddress": mac, "Ports": list(ports)}


def _net(name: str, driver: str = "bridge", scope: str = "local", subnet: str = "",
         internal: bool = False) -> dict:
    return {"Name": name, "Id": "id-" + name, "Driver": driver, "Scope": scope,
            "Internal": internal, "EnableIPv6": False,
            "Subnets": [{"Subnet": subnet, "Gateway": ""}] if subnet else []}


def _ctr(name: str, *atts: dict, kind: str = "container", state: str = "running",
         stray=()) -> dict:
    return {"Name": name, "Id": "" if kind == "remote" else "cid-" + name, "Kind": kind,
            "State": state, "Networks": list(atts), "UnattachedPorts": list(stray)}


def two_nodes() -> dict:
    """node1 (this one): web on front and ov, db on back (internal), idle on nothing; node2:
    remote peer api on ov."""
    return {
        "Networks": [_net("back", subnet="10.2.0.0/24", internal=True),
                     _net("front", subnet="10.1.0.0/24"), _net("host", driver="host"),
                     _net("ov", driver="overlay", scope="global", subnet="10.9.0.0/24")],
        "Nodes": [
            {"Name": "node1", "ID": "n1", "Addr": "10.99.0.1", "Status": "Ready",
             "Self": True, "Networks": ["id-back", "id-front", "id-host", "id-ov"],
             "Containers": [
                 _ctr("db", _att("back", "10.2.0.2/24", "02:42:0a:02:00:02"), kind="sandbox",
                      state=""),
                 _ctr("idle", state="created"),
                 _ctr("web", _att("front", "10.1.0.2/24", "02:42:0a:01:00:02",
                                  ["0.0.0.0:8080->80/tcp"]),
                      _att("ov", "10.9.0.2/24", "02:42:0a:09:00:02"))]},
            {"Name": "node2", "ID": "n2", "Addr": "10.99.0.2", "Status": "Ready",
             "Self": False, "Networks": ["id-ov"],
             "Containers": [_ctr("api", _att("ov", "10.9.0.3/24", "02:42:0a:09:00:03"),
                                 kind="remote", state="")]},
        ],
        "Warnings": [],
    }


TREE = """\
node1 (10.99.0.1, Ready, this node)
├── back (bridge, local, internal)  10.2.0.0/24
│   └── db (sandbox)  10.2.0.2  02:42:0a:02:00:02
├── front (bridge, local)  10.1.0.0/24
│   └── web (container, running)  10.1.0.2  02:42:0a:01:00:02  ports 0.0.0.0:8080->80/tcp
├── ov (overlay, global)  10.9.0.0/24
│   └── web (container, running)  10.9.0.2  02:42:0a:09:00:02
└── (no network)
    └── idle (container, created)

node2 (10.99.0.2, Ready)
└── ov (overlay, global)  10.9.0.0/24
    └── api  10.9.0.3  02:42:0a:09:00:03
"""


def test_tree_is_node_network_container_in_name_order():
    assert render_tree(two_nodes()) == TREE


def test_tree_ascii_branches_and_warnings():
    topo = two_nodes()
    topo["Warnings"] = ["cluster store unreachable"]
    text = render_tree(topo, unicode=False)
    assert text.isascii()
    assert text.splitlines()[1] == "|-- back (bridge, local, internal)  10.2.0.0/24"
    assert text.splitlines()[2] == "|   `-- db (sandbox)  10.2.0.2  02:42:0a:02:00:02"
    assert text.rstrip().endswith("WARNING: cluster store unreachable")


def test_dot_quote_escapes_quotes_backslashes_and_control_characters():
    assert dot_quote('a"b') == r'"a\"b"'
    assert dot_quote("a\\b") == r'"a\\b"'
    assert dot_quote("a\\") == r'"a\\"'  # a trailing backslash cannot eat the quote
    assert dot_quote("two\nlines") == r'"two\nlines"'
    assert dot_quote("t\tab\x00\x7f") == '"tab"'
    assert dot_quote("{x};--[y]<z>") == '"{x};--[y]<z>"'  # inert inside quotes
    assert dot_quote("é☃") == '"é☃"'
    assert dot_quote("a&amp;b") == '"a&amp;amp;b"'  # Graphviz decodes entities in labels


def test_dot_places_local_networks_in_their_node_and_overlays_between_nodes():
    text = to_dot(two_nodes())
    lines = text.splitlines()
    assert lines[0] == "graph cnet {" and lines[-1] == "}"
    start1 = lines.index('  subgraph "cluster_0" {')
    start2 = lines.index('  subgraph "cluster_1" {')
    end1 = lines.index("  }", start1)
    end2 = lines.index("  }", start2)
    node1, node2, outside = lines[start1:end1], lines[start2:end2], lines[end2 + 1:]
    assert any(line.lstrip().startswith('"net:id-front"') for line in node1)
    assert any('"net:id-back"' in line and 'style="rounded,dashed"' in line
               for line in node1)  # internal: dashed
    assert not any('"net:id-host"' in line for line in lines)  # empty host net hidden
    assert any(line.lstrip().startswith('"ctr:n2/api/"') for line in node2)
    assert any(line.startswith('  "net:id-ov" [') for line in outside)
    assert ('  "ctr:n1/web/cid-web" -- "net:id-front" [label="10.1.0.2\\n'
            '02:42:0a:01:00:02\\nports 0.0.0.0:8080->80/tcp"];') in lines
    assert '  "ctr:n2/api/" -- "net:id-ov" [label="10.9.0.3\\n02:42:0a:09:00:03"];' in lines
    assert sum('"ctr:n1/web/cid-web" [' in line for line in lines) == 1  # once, 2 edges


HOSTILE = ['we"ird', "back\\slash", "trail\\", "semi;colon--{x}", "<html>&amp;", "é☃"]


@pytest.mark.skipif(DOT is None, reason='Graphviz\'s "dot" is not installed')
def test_hostile_names_are_drawn_literally_by_graphviz():
    topo = two_nodes()
    topo["Nodes"][0]["Name"] = 'host "one"\\'
    topo["Networks"].append(_net(HOSTILE[0], subnet="10.3.0.0/24"))
    topo["Nodes"][0]["Networks"].append("id-" + HOSTILE[0])
    topo["Nodes"][0]["Containers"] += [
        _ctr(name, _att(HOSTILE[0], f"10.3.0.{i + 2}/24", ports=[f'x"{i}\\'])) for i, name
        in enumerate(HOSTILE)]
    topo["Nodes"][0]["Containers"].append(_ctr("multi\nline", _att("front", "10.1.0.9/24")))
    proc = subprocess.run([DOT, "-Tsvg"], input=to_dot(topo).encode(), capture_output=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    assert not proc.stderr, proc.stderr.decode()  # no syntax warning either
    root = ET.fromstring(proc.stdout)
    texts = {t.text for t in root.iter() if t.tag.endswith("text") and t.text}
    assert 'host "one"\\ (10.99.0.1, Ready, this node)' in texts
    for i, name in enumerate(HOSTILE):
        assert name in texts, (name, texts)
        assert f'ports x"{i}\\' in texts
    assert {"multi", "line"} <= texts  # a newline in a name is a line break, not a syntax error


# -- names are not identities -----------------------------------------------------------------
def _dup_nets() -> dict:
    """One node with a local bridge "dup" (web) and an overlay "dup" (api): same name,
    two networks."""
    bridge = dict(_net("dup", subnet="10.1.0.0/24"), Id="b" * 64)
    overlay = dict(_net("dup", driver="overlay", scope="global", subnet="10.9.0.0/24"),
                   Id="o" * 64)
    web = _ctr("web", dict(_att("dup", "10.1.0.2/24"), NetworkID="b" * 64))
    api = _ctr("api", dict(_att("dup", "10.9.0.2/24"), NetworkID="o" * 64))
    return {"Networks": [bridge, overlay], "Warnings": [], "Nodes": [
        {"Name": "node1", "ID": "n1", "Addr": "", "Status": "Ready", "Self": True,
         "Networks": ["b" * 64, "o" * 64], "Containers": [api, web]}]}


def test_tree_keeps_two_networks_of_one_name_apart():
    assert render_tree(_dup_nets()) == f"""\
node1 (Ready, this node)
├── dup (bridge, local, id {"b" * 12})  10.1.0.0/24
│   └── web (container, running)  10.1.0.2
└── dup (overlay, global, id {"o" * 12})  10.9.0.0/24
    └── api (container, running)  10.9.0.2
"""


def test_dot_draws_two_networks_of_one_name_each_with_its_edges():
    lines = to_dot(_dup_nets()).splitlines()
    bridge, overlay = f'"net:{"b" * 64}"', f'"net:{"o" * 64}"'
    assert sum(ln.lstrip().startswith(bridge + " [") for ln in lines) == 1
    assert sum(ln.lstrip().startswith(overlay + " [") for ln in lines) == 1
    assert f'  "ctr:n1/web/cid-web" -- {bridge} [label="10.1.0.2"];' in lines
    assert f'  "ctr:n1/api/cid-api" -- {overlay} [label="10.9.0.2"];' in lines
    assert sum(" -- " in ln for ln in lines) == 2


def _same_name_nodes() -> dict:
    """Two nodes both called "host" (the default name, the hostname), each with a
    container "c" on the overlay."""
    topo = two_nodes()
    for node, ip in zip(topo["Nodes"], ("10.9.0.2/24", "10.9.0.3/24"), strict=True):
        node["Name"] = "host"
        node["Networks"] = ["id-ov"]
        node["Containers"] = [_ctr("c", _att("ov", ip), kind="container" if node["Self"]
                                   else "remote", state="running" if node["Self"] else "")]
    topo["Networks"] = [n for n in topo["Networks"] if n["Name"] == "ov"]
    return topo


def test_tree_and_dot_keep_two_nodes_of_one_name_apart():
    assert render_tree(_same_name_nodes()) == """\
host (10.99.0.1, Ready, this node, id n1)
└── ov (overlay, global)  10.9.0.0/24
    └── c (container, running)  10.9.0.2

host (10.99.0.2, Ready, id n2)
└── ov (overlay, global)  10.9.0.0/24
    └── c  10.9.0.3
"""
    lines = to_dot(_same_name_nodes()).splitlines()
    assert '  "ctr:n1/c/cid-c" -- "net:id-ov" [label="10.9.0.2"];' in lines
    assert '  "ctr:n2/c/" -- "net:id-ov" [label="10.9.0.3"];' in lines
    assert sum(ln.startswith('  subgraph "cluster_') for ln in lines) == 2


def _local_part() -> dict:
    """What _local answers on node "host" (id n1): a bridge "dup" (c1 on it) and an
    overlay "dup" whose peers are this node (c1) and another node also named "host"
    (id n2, c2)."""
    ov_peers = [
        {"Name": "host", "IP": "10.99.0.1", "NodeID": "n1", "Endpoints": [
            {"Name": "c1", "EndpointID": "e1" * 32, "MacAddress": "02:00:00:00:00:01",
             "IPv4Address": "10.9.0.2/24", "IPv6Address": ""}]},
        {"Name": "host", "IP": "10.99.0.2", "NodeID": "n2", "Endpoints": [
            {"Name": "c2", "EndpointID": "e2" * 32, "MacAddress": "02:00:00:00:00:02",
             "IPv4Address": "10.9.0.3/24", "IPv6Address": ""}]}]
    bridge = dict(_net("dup", subnet="10.1.0.0/24"), Id="b" * 64)
    overlay = dict(_net("dup", driver="overlay", scope="global", subnet="10.9.0.0/24"),
                   Id="o" * 64)
    c1 = _ctr("c1", dict(_att("dup", "10.9.0.2/24"), NetworkID="o" * 64),
              dict(_att("dup", "10.1.0.2/24"), NetworkID="b" * 64))
    return {"Networks": [overlay, bridge], "Containers": [c1], "Peers": {"o" * 64: ov_peers},
            "DaemonID": "n1"}


def _me() -> dict:
    return {"Name": "host", "ID": "n1", "Addr": "10.99.0.1", "Status": "Ready", "Self": True}


@pytest.mark.parametrize("store", ["listed", "unreachable"])
def test_assemble_keys_nodes_and_networks_by_id(store):
    known = [] if store == "unreachable" else [
        dict(_me(), Status="Ready", Self=True),
        {"Name": "host", "ID": "n2", "Addr": "10.99.0.2", "Status": "Ready", "Self": False}]
    topo = assemble(_local_part(), _me(), known, None, [])
    assert [(n["Name"], n["ID"], n["Self"]) for n in topo["Nodes"]] == [
        ("host", "n1", True), ("host", "n2", False)]
    me, other = topo["Nodes"]
    assert me["Networks"] == ["b" * 64, "o" * 64]  # (name, id) order
    assert [(a["NetworkID"], a["IPv4Address"]) for a in me["Containers"][0]["Networks"]] == [
        ("b" * 64, "10.1.0.2/24"), ("o" * 64, "10.9.0.2/24")]
    assert other["Networks"] == ["o" * 64]
    assert [(c["Name"], c["Kind"]) for c in other["Containers"]] == [("c2", "remote")]
    assert other["Containers"][0]["Networks"][0]["IPv4Address"] == "10.9.0.3/24"
    assert [n["Id"] for n in topo["Networks"]] == ["b" * 64, "o" * 64]
    tree = render_tree(topo)
    assert tree.count("c1 (container, running)") == 2 and tree.count("c2  10.9.0.3") == 1
    # --node by id keeps the other one, whatever its name
    only = assemble(_local_part(), _me(), known, "n2", [])
    assert [n["ID"] for n in only["Nodes"]] == ["n2"]
    assert [n["Id"] for n in only["Networks"]] == ["o" * 64]


# -- published ports ------------------------------------------------------------------------
def test_port_text_is_dockers():
    assert port_text("", 8080, 80, "tcp") == "0.0.0.0:8080->80/tcp"
    assert port_text("127.0.0.1", "53", "53", "udp") == "127.0.0.1:53->53/udp"
    assert port_text("0.0.0.0", 1, 2, "", target="10.0.0.2") == "0.0.0.0:1->10.0.0.2:2/tcp"
    # `cnet ps` writes its PORTS column with it
    from cnet.cli.container import _ports_text

    assert _ports_text([{"IP": "", "PublicPort": 8080, "PrivatePort": 80, "Type": "tcp"},
                        {"IP": "127.0.0.1", "PublicPort": 53, "PrivatePort": 53,
                         "Type": "udp"}]) == "0.0.0.0:8080->80/tcp, 127.0.0.1:53->53/udp"


class _Ep:
    def __init__(self, eid: str, ipv4: str):
        self.id, self.ipv4 = eid, ipv4


def test_published_ports_go_on_the_endpoint_holding_their_target():
    pub = PortPublisher(None)
    pub.publish("c1", "10.2.0.5", {"PortBindings": {
        "80/tcp": [{"HostPort": "18080"}], "53/udp": [{"HostIp": "127.0.0.1",
                                                      "HostPort": "18053"}]}}, {})
    got = pub.published("c1")
    assert [p.text() for p in got] == ["0.0.0.0:18080->80/tcp", "127.0.0.1:18053->53/udp"]
    assert {p.target_ip for p in got} == {"10.2.0.5"}
    # the target is the second endpoint (not the first bridge one): placed there
    joined = [(_Ep("e1", "10.1.0.5/24"), None), (_Ep("e2", "10.2.0.5/24"), None)]
    assert _place(got, joined) == (
        {"e2": ["0.0.0.0:18080->80/tcp", "127.0.0.1:18053->53/udp"]}, [])
    # the target address left (disconnected): on the container, with its target
    assert _place(got, joined[:1]) == (
        {}, ["0.0.0.0:18080->10.2.0.5:80/tcp", "127.0.0.1:18053->10.2.0.5:53/udp"])
    pub.release("c1")
    assert pub.published("c1") == [] and pub.published("nobody") == []


def test_ports_reaching_no_endpoint_are_shown_on_the_loose_container():
    topo = two_nodes()
    web = topo["Nodes"][0]["Containers"][2]
    web["UnattachedPorts"] = ["0.0.0.0:18099->10.3.0.2:80/tcp"]
    lines = render_tree(topo).splitlines()
    assert lines[7:10] == [
        "└── (no network)",
        "    ├── idle (container, created)",
        "    └── web (container, running)  ports 0.0.0.0:18099->10.3.0.2:80/tcp"]
    dot = to_dot(topo)
    assert ('"ctr:n1/web/cid-web" [shape=component, label="web\\ncontainer, running\\n'
            'ports 0.0.0.0:18099->10.3.0.2:80/tcp"];') in dot
