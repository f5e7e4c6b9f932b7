"""`cnet topology`: nodes, networks, containers, their addresses and published ports.

cnetd answers GET /topology (daemon/api_topology.py); this module only renders it: a
text tree (node -> network -> container) on stdout, or with `-o` a Graphviz picture
(`.dot`/`.gv`: DOT text; `.svg`/`.png`: DOT drawn by Graphviz's `dot`). The renderers
are pure functions of the answer (render_tree, to_dot). A file is written whole or not
at all (a temporary file beside it, renamed).

Nodes and networks are told apart by id, never by name (two nodes may share the default
name, the hostname; a local bridge and an overlay may share a name): where names collide
the heading adds the short id.
"""

from __future__ import annotations

import os

import click
from cnet.cli.common import client, fail

FORMATS = {".dot": None, ".gv": None, ".svg": "svg", ".png": "png"}
HIDDEN_DRIVERS = ("host", "null")  # shown only when something is attached to them
ASCII = ("|-- ", "`-- ", "|   ", "    ")
UNICODE = ("├── ", "└── ", "│   ", "    ")


# -- shared --------------------------------------------------------------------------------
def _addr(cidr: str) -> str:
    return cidr.split("/")[0] if cidr else ""


def _subnets(net: dict) -> str:
    return ", ".join(s["Subnet"] + (f" gw {s['Gateway']}" if s.get("Gateway") else "")
                     for s in net.get("Subnets") or [])


def _what(c: dict) -> str:
    """"container, running" / "sandbox" / "endpoint"; "" for a remote peer (unknown)."""
    if c["Kind"] == "remote":
        return ""
    return c["Kind"] + (f", {c['State']}" if c.get("State") else "")


def _short(oid: str) -> str:
    return oid[:12]


def _duplicates(items: list[dict]) -> set[str]:
    """The names that more than one of `items` carries."""
    seen: set[str] = set()
    dup: set[str] = set()
    for item in items:
        (dup if item["Name"] in seen else seen).add(item["Name"])
    return dup


def _node_head(node: dict, dup_names: set[str] = frozenset()) -> str:
    bits = [node["Addr"]] if node.get("Addr") else []
    bits.append(node.get("Status") or "Unknown")
    if node.get("Self"):
        bits.append("this node")
    if node["Name"] in dup_names and node.get("ID"):
        bits.append(f"id {_short(node['ID'])}")
    return f"{node['Name']} ({', '.join(bits)})"


def _net_kind(net: dict, dup_names: set[str] = frozenset()) -> str:
    bits = [net["Driver"], net["Scope"]] + (["internal"] if net.get("Internal") else [])
    if net["Name"] in dup_names and net.get("Id"):
        bits.append(f"id {_short(net['Id'])}")
    return ", ".join(bits)


def _layout(topo: dict, node: dict) -> tuple[list[dict], list[dict]]:
    """A node's networks in (name, id) order, each with the attachments on it (as
    (container, attachment) pairs, by container name); and its loose containers: on no
    network, or with published ports that reach none of its endpoints."""
    nets = {n["Id"]: n for n in topo["Networks"]}
    members: dict[str, list] = {nid: [] for nid in node["Networks"] if nid in nets}
    unknown: dict[str, dict] = {}
    loose = []
    for c in node["Containers"]:
        for att in c["Networks"]:
            nid = att.get("NetworkID") or ""
            members.setdefault(nid, []).append((c, att))
            if nid not in nets:
                unknown.setdefault(nid, {"Name": att["Network"], "Id": nid, "Driver": "?",
                                         "Scope": "?", "Subnets": []})
        if not c["Networks"] or c.get("UnattachedPorts"):
            loose.append(c)
    out = []
    for nid in members:
        net = nets.get(nid) or unknown[nid]
        if not members[nid] and net["Driver"] in HIDDEN_DRIVERS:
            continue
        out.append({"net": net, "members": sorted(members[nid],
                                                  key=lambda m: (m[0]["Name"], m[0]["Id"]))})
    out.sort(key=lambda g: (g["net"]["Name"], g["net"]["Id"]))
    return out, loose


def _loose_text(c: dict) -> list[str]:
    """A loose container: its ports reaching none of its endpoints (with their target)."""
    return ["ports " + ", ".join(c["UnattachedPorts"])] if c.get("UnattachedPorts") else []


def _attachment_text(att: dict) -> list[str]:
    bits = [a for a in (_addr(att["IPv4Address"]), _addr(att["IPv6Address"])) if a]
    if att.get("MacAddress"):
        bits.append(att["MacAddress"])
    if att.get("Ports"):
        bits.append("ports " + ", ".join(att["Ports"]))
    return bits


# -- text ----------------------------------------------------------------------------------
def render_tree(topo: dict, unicode: bool = True) -> str:
    """node -> network -> container, each line with its addresses; stable order."""
    tee, last, pipe, blank = UNICODE if unicode else ASCII
    lines: list[str] = []
    dup_nodes, dup_nets = _duplicates(topo["Nodes"]), _duplicates(topo["Networks"])
    for node in topo["Nodes"]:
        if lines:
            lines.append("")
        lines.append(_node_head(node, dup_nodes))
        groups, loose = _layout(topo, node)
        branches: list[tuple[str, list[str]]] = []
        for g in groups:
            net = g["net"]
            head = f"{net['Name']} ({_net_kind(net, dup_nets)})"
            if _subnets(net):
                head += "  " + _subnets(net)
            kids = []
            for c, att in g["members"]:
                what = _what(c)
                kids.append("  ".join([c["Name"] + (f" ({what})" if what else "")]
                                      + _attachment_text(att)))
            branches.append((head, kids or ["(no containers)"]))
        if loose:
            branches.append(("(no network)",
                             ["  ".join([c["Name"] + (f" ({_what(c)})" if _what(c) else "")]
                                        + _loose_text(c)) for c in loose]))
        if not branches:
            branches.append(("(no networks known)", []))
        for i, (head, kids) in enumerate(branches):
            end = i == len(branches) - 1
            lines.append((last if end else tee) + head)
            for j, kid in enumerate(kids):
                lines.append((blank if end else pipe)
                             + (last if j == len(kids) - 1 else tee) + kid)
    for warning in topo.get("Warnings") or []:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines) + "\n"


# -- DOT -----------------------------------------------------------------------------------
def dot_quote(text: str) -> str:
    """A DOT double-quoted string that Graphviz draws as `text`: backslashes and quotes
    escaped, `&` as an entity (Graphviz decodes entities in labels), line breaks as DOT's
    centred line break, other control characters dropped."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "&":
            out.append("&amp;")
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ch == "\x7f":
            continue
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _label(*lines: str) -> str:
    """Several text lines as one label: each escaped, joined by DOT's line break."""
    return '"' + "\\n".join(dot_quote(line)[1:-1] for line in lines if line) + '"'


def _net_id(net: dict) -> str:
    return dot_quote("net:" + (net.get("Id") or net["Name"]))


def _ctr_id(node: dict, c: dict) -> str:
    return dot_quote(f"ctr:{node.get('ID') or node['Name']}/{c['Name']}/{c.get('Id') or ''}")


def _ctr_node(cid: str, c: dict) -> str:
    return (f"    {cid} [shape=component, "
            f"label={_label(c['Name'], _what(c), *_loose_text(c))}];")


def to_dot(topo: dict) -> str:
    """The topology as a Graphviz graph: one cluster per node holding its containers and
    its local networks; global (overlay) networks outside the clusters, shared by their
    nodes; one edge per attachment, labelled with its addresses, MAC and ports."""
    out = ["graph cnet {",
           '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, compound=true];',
           '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
    drawn: set[str] = set()
    edges: list[str] = []
    dup_nodes, dup_nets = _duplicates(topo["Nodes"]), _duplicates(topo["Networks"])

    def net_node(net: dict, indent: str) -> None:
        key = net.get("Id") or net["Name"]
        if key in drawn:
            return
        drawn.add(key)
        style = "rounded,dashed" if net.get("Internal") else "rounded"
        subnets = [s for s in _subnets(net).split(", ") if s]
        out.append(f'{indent}{_net_id(net)} [shape=box, style="{style}", color="#1f6fb2", '
                   f"label={_label(net['Name'], _net_kind(net, dup_nets), *subnets)}];")

    for i, node in enumerate(topo["Nodes"]):
        groups, loose = _layout(topo, node)
        out.append(f"  subgraph {dot_quote(f'cluster_{i}')} {{")
        out.append(f"    label={_label(_node_head(node, dup_nodes))};")
        out.append('    style="rounded"; color="#888888";')
        for g in groups:
            if g["net"].get("Scope") != "global":
                net_node(g["net"], "    ")
        seen: set[str] = set()
        for g in groups:
            for c, att in g["members"]:
                cid = _ctr_id(node, c)
                if cid not in seen:
                    seen.add(cid)
                    out.append(_ctr_node(cid, c))
                edges.append(f"  {cid} -- {_net_id(g['net'])} "
                             f"[label={_label(*_attachment_text(att))}];")
        for c in loose:
            cid = _ctr_id(node, c)
            if cid not in seen:
                seen.add(cid)
                out.append(_ctr_node(cid, c))
        out.append("  }")
    for node in topo["Nodes"]:
        for g in _layout(topo, node)[0]:
            if g["net"].get("Scope") == "global":
                net_node(g["net"], "  ")
    out += edges
    out.append("}")
    return "\n".join(out) + "\n"


# -- the command ---------------------------------------------------------------------------
def _write_atomically(path: str, produce) -> None:
    """`produce(tmp)` writes a temporary file beside `path`; renamed into place only when
    it succeeded, removed otherwise."""
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cnet-topology-", dir=directory)
    os.close(fd)
    try:
        produce(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@click.command()
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Draw to FILE instead of printing a tree: .svg or .png (needs Graphviz's "
                   "`dot`), .dot/.gv (the DOT text).")
@click.option("--node", metavar="NAME", help="Only this node (name or id).")
def topology(path: str | None, node: str | None) -> None:
    """Show nodes, networks, containers, their addresses and published ports."""
    import shutil
    import sys

    fmt = dot_bin = None
    if path:
        ext = os.path.splitext(path)[1].lower()
        if ext not in FORMATS:
            fail(f'-o {path}: unknown file type "{ext or "(none)"}" (use .svg, .png or .dot)')
        fmt = FORMATS[ext]
        if fmt:
            dot_bin = shutil.which("dot")
            if dot_bin is None:
                fail(f'-o {path}: {fmt.upper()} output needs Graphviz\'s "dot" '
                     "(apt install graphviz)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            fail(f"-o {path}: no such directory {parent}")
    topo = client().get("/topology", query={"node": node} if node else None)
    if not path:
        enc = (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "")
        click.echo(render_tree(topo, unicode=enc == "utf8"), nl=False)
        return
    text = to_dot(topo)
    if not fmt:
        def produce(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
    else:
        def produce(tmp: str) -> None:
            import subprocess

            proc = subprocess.run([dot_bin, f"-T{fmt}", "-o", tmp], input=text.encode(),
                                  capture_output=True)
            if proc.returncode != 0:
                why = proc.stderr.decode(errors="replace").strip().splitlines()
                fail(f"dot failed: {why[-1] if why else f'exit status {proc.returncode}'}")
    _write_atomically(path, produce)
