"""`cnet topology`'s renderers (pure functions of GET /topology's answer): DOT escaping
(checked by drawing hostile names with Graphviz and reading the SVG back), DOT layout of
two nodes sharing an overlay, the text tree's order and branches."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from cnet.cli.topology import dot_quote, render_tree, to_dot

DOT = shutil.which("dot")


def _att(net: str, ip: str = "", mac: str = "", ports=()) -> dict:
    return {"Network": net, "NetworkID": "id-" + net, "IPv4Address": ip, "IPv6Address": "",
            "MacAddress": mac, "Ports": list(ports)}


def _net(name: str, driver: str = "bridge", scope: str = "local", subnet: str = "",
         internal: bool = False) -> dict:
    return {"Name": name, "Id": "id-" + name, "Driver": driver, "Scope": scope,
            "Internal": internal, "EnableIPv6": False,
            "Subnets": [{"Subnet": subnet, "Gateway": ""}] if subnet else []}


def _ctr(name: str, *atts: dict, kind: str = "container", state: str = "running") -> dict:
    return {"Name": name, "Id": "" if kind == "remote" else "cid-" + name, "Kind": kind,
            "State": state, "Networks": list(atts)}


def two_nodes() -> dict:
    """node1 (this one): web on front and ov, db on back (internal), idle on nothing; node2:
    remote peer api on ov."""
    return {
        "Networks": [_net("back", subnet="10.2.0.0/24", internal=True),
                     _net("front", subnet="10.1.0.0/24"), _net("host", driver="host"),
                     _net("ov", driver="overlay", scope="global", subnet="10.9.0.0/24")],
        "Nodes": [
            {"Name": "node1", "ID": "n1", "Addr": "10.99.0.1", "Status": "Ready",
             "Self": True, "Networks": ["back", "front", "host", "ov"],
             "Containers": [
                 _ctr("db", _att("back", "10.2.0.2/24", "02:42:0a:02:00:02"), kind="sandbox",
                      state=""),
                 _ctr("idle", state="created"),
                 _ctr("web", _att("front", "10.1.0.2/24", "02:42:0a:01:00:02",
                                  ["0.0.0.0:8080->80/tcp"]),
                      _att("ov", "10.9.0.2/24", "02:42:0a:09:00:02"))]},
            {"Name": "node2", "ID": "n2", "Addr": "10.99.0.2", "Status": "Ready",
             "Self": False, "Networks": ["ov"],
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
    assert any(line.lstrip().startswith('"ctr:node2/api/"') for line in node2)
    assert any(line.startswith('  "net:id-ov" [') for line in outside)
    assert ('  "ctr:node1/web/cid-web" -- "net:id-front" [label="10.1.0.2\\n'
            '02:42:0a:01:00:02\\nports 0.0.0.0:8080->80/tcp"];') in lines
    assert '  "ctr:node2/api/" -- "net:id-ov" [label="10.9.0.3\\n02:42:0a:09:00:03"];' in lines
    assert sum('"ctr:node1/web/cid-web" [' in line for line in lines) == 1  # once, 2 edges


HOSTILE = ['we"ird', "back\\slash", "trail\\", "semi;colon--{x}", "<html>&amp;", "é☃"]


@pytest.mark.skipif(DOT is None, reason='Graphviz\'s "dot" is not installed')
def test_hostile_names_are_drawn_literally_by_graphviz():
    topo = two_nodes()
    topo["Nodes"][0]["Name"] = 'host "one"\\'
    topo["Networks"].append(_net(HOSTILE[0], subnet="10.3.0.0/24"))
    topo["Nodes"][0]["Networks"].append(HOSTILE[0])
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
