"""`cnet network inspect --verbose` of an overlay on two hosts: the VTEP (VNI, UDP port,
local address), vxlan0's MAC -> remote VTEP entries naming the peer's node and
container, its permanent neighbour entries, checked with `ip`/`bridge` in the overlay
namespace; no section before the node's first local join."""

from __future__ import annotations

import json

import harness

VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


def _in(path: str, *cmd: str):
    return json.loads(harness.nsexec(path, *cmd, check=True).stdout or "[]")


def test_overlay_vtep_fdb_and_neighbours(node_pair):
    n1, n2 = node_pair("node")
    n1.cli("network", "create", "-d", "overlay", "--attachable", "--subnet", "10.62.0.0/24",
           "ov-v")
    harness.wait_for(lambda: n2.cli("network", "inspect", "ov-v", check=False).returncode == 0,
                     timeout=5, what="ov-v on node2")
    try:
        n1.cli("sandbox", "create", "s1")
        n1.cli("network", "connect", "ov-v", "s1")
        assert n2.cli_json("network", "inspect", "-v", "ov-v")[0]["Kernel"] == {}
        n2.cli("sandbox", "create", "s2")
        n2.cli("network", "connect", "ov-v", "s2")
        key1, key2 = n1.sandbox_key("s1"), n2.sandbox_key("s2")
        ip2 = n2.sandbox_ip("s2", "ov-v")
        mac2 = _in(key2, "ip", "-j", "link", "show", "eth0")[0]["address"]
        assert harness.wait_ping(key1, ip2)

        v = n1.cli_json("network", "inspect", "--verbose", "ov-v")[0]
        k = v["Kernel"]
        ovns = k["Namespace"]
        assert ovns.endswith("/ov-" + v["Id"][:12])
        vx = _in(ovns, "ip", "-d", "-j", "link", "show", "vxlan0")[0]["linkinfo"]["info_data"]
        vtep = k["VTEP"]
        assert vtep["Interface"] == "vxlan0" and vtep["State"] == "up"
        assert vtep["VNI"] == vx["id"] == int(v["Options"][VNI_OPTION])
        assert (vtep["Port"], vtep["Local"]) == (vx["port"], vx["local"]) == (4789, "10.99.0.1")
        assert k["Bridge"]["Name"] == "br0"
        ports = {p["Interface"]: p for p in k["Ports"]}
        assert "vxlan0" in ports and "Container" not in ports["vxlan0"]
        assert "s1" in {p.get("Container") for p in ports.values()}

        # s2's MAC -> node2's VTEP, as `bridge fdb` shows it on vxlan0
        [e] = [e for e in k["FDB"] if e["MAC"] == mac2 and e["Port"] == "vxlan0"
               and "Remote" in e]
        assert (e["Remote"], e["Node"], e["Container"], e["Kind"]) == (
            "10.99.0.2", "node2", "s2", "static")
        shown = _in(ovns, "bridge", "-j", "fdb", "show", "dev", "vxlan0")
        assert {"mac": mac2, "dst": "10.99.0.2"}.items() <= next(
            x for x in shown if x["mac"] == mac2 and "dst" in x).items()
        [n] = [n for n in k["Neighbours"] if n["Interface"] == "vxlan0" and n["IP"] == ip2]
        assert (n["MAC"], n["State"], n["Container"]) == (mac2, "PERMANENT", "s2")
        assert {"dst": ip2, "lladdr": mac2}.items() <= _in(
            ovns, "ip", "-j", "neigh", "show", "dev", "vxlan0", ip2)[0].items()

        assert {p["Name"] for p in v["Peers"]} == {"node1", "node2"}
        assert v["Firewall"]["Sets"] == [] and v["Firewall"]["Bridge"] == ""
        assert set(v["DNS"]["Sandboxes"]) == {"s1"}
    finally:
        n1.cli("sandbox", "rm", "-f", "s1", check=False)
        n2.cli("sandbox", "rm", "-f", "s2", check=False)
        harness.wait_for(lambda: n1.cli("network", "rm", "ov-v", check=False).returncode == 0,
                         timeout=10, what="network rm ov-v")
