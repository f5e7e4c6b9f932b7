"""`cnet network inspect --verbose`: the Kernel, Firewall and DNS sections, each checked
against what `ip`, `bridge`, `nft` and `dig` show independently in the namespaces."""

from __future__ import annotations

import json
import shutil

import harness
import pytest

HOST_PORT = "18091"


def _ipj(target, *args: str) -> list[dict]:
    """`ip -j ARGS` inside a namespace (a path), as JSON."""
    return json.loads(harness.nsexec(target, "ip", "-j", *args, check=True).stdout or "[]")


def _verbose(d, net: str) -> dict:
    return d.cli_json("network", "inspect", "--verbose", net)[0]


def _dig(key: str, name: str) -> list[str]:
    proc = harness.nsexec(key, "dig", "@127.0.0.11", "+short", "+time=2", "+tries=1", name)
    return proc.stdout.split()


def _bridge_setup(d) -> dict[str, dict]:
    """Network vnet with sandboxes a and b that have pinged each other; returns per
    sandbox its key, IP, eth0 MAC and the name of its host-side port (all read with
    `ip`, not from cnet)."""
    d.cli("network", "create", "--subnet", "10.87.0.0/24", "vnet")
    out = {}
    for name in ("a", "b"):
        d.cli("sandbox", "create", name)
        d.cli("network", "connect", "vnet", name)
    for name in ("a", "b"):
        key = d.sandbox_key(name)
        eth0 = _ipj(key, "link", "show", "eth0")[0]
        port = _ipj(d.netns_path, "link", "show")  # the veth whose index eth0 points at
        host_if = next(link["ifname"] for link in port if link["ifindex"] == eth0["link_index"])
        out[name] = {"key": key, "ip": d.sandbox_ip(name, "vnet"), "mac": eth0["address"],
                     "port": host_if}
    assert harness.ping(out["a"]["key"], out["b"]["ip"], count=2)
    assert harness.ping(out["b"]["key"], out["a"]["ip"], count=1)
    return out


def test_bridge_network_kernel_section(daemon):
    d = daemon
    sb = _bridge_setup(d)
    assert harness.ping(sb["a"]["key"], "10.87.0.1")  # the node learns a's address too
    v = _verbose(d, "vnet")
    assert set(v["Containers"]) and v["Name"] == "vnet"  # Docker's fields stay
    k = v["Kernel"]
    br = k["Bridge"]
    link = _ipj(d.netns_path, "link", "show", br["Name"])[0]
    assert (br["Index"], br["MAC"], br["MTU"]) == (link["ifindex"], link["address"],
                                                   link["mtu"])
    assert br["State"] == "up" and br["Carrier"] is True
    assert "10.87.0.1/24" in br["Addresses"]
    assert sorted(br["Addresses"]) == sorted(
        f"{a['local']}/{a['prefixlen']}"
        for a in _ipj(d.netns_path, "addr", "show", br["Name"])[0]["addr_info"])

    # both ports, each with its endpoint and sandbox
    ports = {p["Interface"]: p for p in k["Ports"]}
    assert set(ports) == {sb["a"]["port"], sb["b"]["port"]}
    for name in ("a", "b"):
        p = ports[sb[name]["port"]]
        assert p["Container"] == name and p["ContainerMAC"] == sb[name]["mac"]
        assert p["Endpoint"] == v["Containers"][d.sandbox_inspect(name)["Id"]]["EndpointID"]

    # both sandboxes' MACs learned on their own ports; the bridge's own MAC local
    fdb = {(e["MAC"], e["Port"]): e for e in k["FDB"]}
    for name in ("a", "b"):
        e = fdb[(sb[name]["mac"], sb[name]["port"])]
        assert e["Kind"] == "learned" and e["Container"] == name
    assert fdb[(br["MAC"], br["Name"])]["Kind"] == "local"
    shown = json.loads(harness.nsexec(d.netns_path, "bridge", "-j", "fdb", "show", "br",
                                      br["Name"], check=True).stdout)
    learned = {(e["mac"], e["ifname"]) for e in shown if "permanent" not in e.get("state", "")
               and not e.get("flags")}
    assert learned == {(e["MAC"], e["Port"]) for e in k["FDB"] if e["Kind"] == "learned"}

    # the node's own entry for a, on the bridge (where it answered a's ping)
    n = next(n for n in k["Neighbours"] if "Sandbox" not in n and n["IP"] == sb["a"]["ip"])
    assert (n["Interface"], n["MAC"], n["Container"]) == (br["Name"], sb["a"]["mac"], "a")
    assert any(x["dst"] == sb["a"]["ip"] and x["lladdr"] == sb["a"]["mac"]
               for x in _ipj(d.netns_path, "neigh", "show", "dev", br["Name"]))

    # a's neighbour table holds b (and b's holds a), as `ip neigh` shows it
    neigh = {(n.get("Sandbox"), n["IP"]): n for n in k["Neighbours"]}
    for me, other in (("a", "b"), ("b", "a")):
        n = neigh[(me, sb[other]["ip"])]
        assert (n["MAC"], n["Interface"], n["Container"]) == (sb[other]["mac"], "eth0", other)
        ipn = _ipj(sb[me]["key"], "neigh", "show", "dev", "eth0")
        assert {"dst": sb[other]["ip"], "lladdr": sb[other]["mac"]}.items() <= next(
            x for x in ipn if x["dst"] == sb[other]["ip"]).items()
        assert n["State"].split("|")[0] in {s for x in ipn if x["dst"] == sb[other]["ip"]
                                            for s in x["state"]}


def test_bridge_network_firewall_section(daemon):
    d = daemon
    sb = _bridge_setup(d)
    res = d.api("POST", "/sandboxes/a/ports",
                {"Network": "vnet", "PortBindings": {"80/tcp": [{"HostPort": HOST_PORT}]}})
    assert res.status == 200, res.body
    fw = _verbose(d, "vnet")["Firewall"]
    bridge = fw["Bridge"]
    assert fw["Table"] == "inet cnet" and bridge.startswith("br-")
    assert fw["Sets"] == ["bridges", "masq", "icc"]
    for name in ("bridges", "masq"):
        elems = json.loads(harness.nsexec(d.netns_path, "nft", "-j", "list", "set", "inet",
                                          "cnet", name, check=True).stdout)
        assert bridge in json.dumps(elems)
    rules = [f'{r["Chain"]}: {r["Rule"]}' for r in fw["Rules"]]
    assert "forward: iifname . oifname @icc accept" in rules
    assert "forward: iifname @bridges oifname @bridges drop" in rules
    assert "postrouting: iifname @masq oifname != @bridges masquerade" in rules
    assert not any("@internal" in r for r in rules)

    [pub] = fw["Published"]
    chain = f"pub-tcp-any-{HOST_PORT}"
    assert (pub["Map"], pub["Element"], pub["Chain"]) == ("pub_any", f"tcp . {HOST_PORT}",
                                                          chain)
    assert (pub["Address"], pub["Port"], pub["Container"]) == (sb["a"]["ip"], 80, "a")
    nft = harness.nsexec(d.netns_path, "nft", "list", "chain", "inet", "cnet", chain,
                         check=True).stdout
    assert pub["Rule"] in nft and f"dnat ip to {sb['a']['ip']}:80" in pub["Rule"]
    pub_any = harness.nsexec(d.netns_path, "nft", "list", "map", "inet", "cnet", "pub_any",
                             check=True).stdout
    assert f"tcp . {HOST_PORT} : jump {chain}" in pub_any


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (bind9-dnsutils)")
def test_dns_counters_go_up(daemon):
    d = daemon
    sb = _bridge_setup(d)
    before = _verbose(d, "vnet")["DNS"]
    assert set(before["Sandboxes"]) == {"a", "b"}
    assert _dig(sb["a"]["key"], "b") == [sb["b"]["ip"]]
    assert _dig(sb["a"]["key"], "a.vnet") == [sb["a"]["ip"]]
    after = _verbose(d, "vnet")["DNS"]
    a0, a1 = before["Sandboxes"]["a"], after["Sandboxes"]["a"]
    assert a1["queries"] - a0["queries"] == 2 and a1["local"] - a0["local"] == 2
    assert after["Sandboxes"]["b"] == before["Sandboxes"]["b"]
    assert after["Total"] == {k: a1[k] + after["Sandboxes"]["b"][k] for k in a1}


def test_internal_network_without_icc(daemon):
    d = daemon
    d.cli("network", "create", "--internal", "--subnet", "10.88.0.0/24",
          "-o", "com.docker.network.bridge.enable_icc=false", "inet1")
    d.cli("sandbox", "create", "c")
    d.cli("network", "connect", "inet1", "c")
    v = _verbose(d, "inet1")
    fw = v["Firewall"]
    assert fw["Sets"] == ["bridges", "internal"]
    icc = harness.nsexec(d.netns_path, "nft", "list", "set", "inet", "cnet", "icc",
                         check=True).stdout
    assert fw["Bridge"] not in icc
    rules = [r["Rule"] for r in fw["Rules"]]
    assert "iifname @internal drop" in rules and "oifname @internal drop" in rules
    assert not any("@icc" in r or "@masq" in r for r in rules)
    assert fw["Published"] == []
    [port] = v["Kernel"]["Ports"]
    assert port["Container"] == "c"
    assert v["DNS"]["Sandboxes"].keys() == {"c"}


def test_missing_table_and_macvlan_parent(daemon, outside):
    """A table deleted behind cnetd's back gives an empty Firewall section, not an error;
    a macvlan network shows its parent link as `ip` does."""
    d = daemon
    d.cli("network", "create", "-d", "macvlan", "-o", f"parent={outside.host_if}",
          "--subnet", "10.86.0.0/24", "mv")
    d.cli("sandbox", "create", "m")
    d.cli("network", "connect", "mv", "m")
    v = _verbose(d, "mv")
    parent = v["Kernel"]["Parent"]
    link = _ipj(d.netns_path, "link", "show", outside.host_if)[0]
    assert (parent["Name"], parent["Index"], parent["MAC"], parent["State"]) == (
        outside.host_if, link["ifindex"], link["address"], "up")
    assert v["Firewall"]["Sets"] == [] and v["Firewall"]["Published"] == []
    d.run_in_host("nft", "delete", "table", "inet", "cnet")
    v = _verbose(d, "mv")
    assert v["Firewall"] == {} and v["Kernel"]["Parent"]["Name"] == outside.host_if


def test_a_bridge_deleted_behind_cnets_back_shows_missing(daemon):
    d = daemon
    d.cli("network", "create", "--subnet", "10.88.0.0/24", "gone")
    br = _verbose(d, "gone")["Kernel"]["Bridge"]["Name"]
    d.run_in_host("ip", "link", "del", br)
    assert _verbose(d, "gone")["Kernel"] == {"Bridge": {"Name": br, "State": "missing"}}
