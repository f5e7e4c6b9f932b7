"""`cnet trace` across hosts: a probe from a sandbox on one node to a sandbox on
another over an overlay names the remote VTEP (the other node's underlay address) in
the FDB lookup and on the encapsulated hop seen leaving the underlay, and is delivered
(the echo answered)."""

from __future__ import annotations

import json
import subprocess

import harness


def test_trace_overlay_path_names_the_remote_vtep(node_pair, etcd3):
    d1, d2 = pair = node_pair("trace")
    vtep2 = etcd3.underlay.hosts[1][1]
    _, ip2 = pair.overlay("trace-ov", "10.97.0.0/24", ("t1", "t2"))
    assert harness.wait_ping(d1.sandbox_key("t1"), ip2)
    vni = int(d1.cli_json("network", "inspect", "trace-ov")[0]["Options"][
        "com.docker.network.driver.overlay.vxlanid_list"])
    proc = subprocess.run([harness.CNET, "-H", d1.host, "trace", "--json", "t1", "t2"],
                          capture_output=True, text=True, timeout=60)
    rep = json.loads(proc.stdout)
    assert proc.returncode == 0, rep["Verdict"]
    assert rep["DestinationIP"] == ip2  # t2 is remote: resolved as t1's DNS would
    assert rep["Verdict"].startswith("delivered: t2 answered with echo-reply"), rep["Verdict"]
    assert any(f"-> remote VTEP {vtep2} (node trace2)" in s for s in rep["Lookups"]), \
        rep["Lookups"]
    encapsulated = [h for h in rep["Hops"] if h.get("Vxlan") and h["Packet"] == "request"]
    assert encapsulated, rep["Hops"]
    assert encapsulated[0]["Where"] == "node" and encapsulated[0]["Direction"] == "out"
    assert encapsulated[0]["Vxlan"]["Dst"] == vtep2 and encapsulated[0]["Vxlan"]["VNI"] == vni
    assert encapsulated[0]["Vxlan"]["DstNode"] == "trace2"
    where = [h["Where"] for h in rep["Hops"] if h["Packet"] == "request"]
    assert where.index("t1") < where.index("overlay trace-ov") < where.index("node")
    assert any(h.get("Vxlan") and h["Packet"] == "reply" and h["Vxlan"]["Src"] == vtep2
               for h in rep["Hops"])
