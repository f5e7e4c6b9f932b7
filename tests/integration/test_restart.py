"""cnetd restarts: the data plane outlives the daemon, state comes back identical, and
the kernel is reconciled with the store (missing objects recreated, strays removed)."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import harness


def ping_all(*probes: tuple[str, str]) -> list[bool]:
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        return list(pool.map(lambda p: harness.ping(*p), probes))


def host_links(d: harness.Daemon) -> dict[str, dict]:
    proc = d.run_in_host("ip", "-j", "link")
    return {x["ifname"]: x for x in json.loads(proc.stdout)}


def state(d: harness.Daemon) -> dict:
    """Everything the daemon reports about its objects."""
    nets = d.cli_json("network", "ls", "--format", "json")
    sbs = d.cli_json("sandbox", "ls", "--format", "json")
    return {
        "networks": nets,
        "sandboxes": sbs,
        "network_inspect": d.cli_json("network", "inspect", *[n["Name"] for n in nets]),
        "sandbox_inspect": d.cli_json("sandbox", "inspect", *[s["Name"] for s in sbs])
        if sbs else [],
        "ls": d.cli("network", "ls").stdout + d.cli("sandbox", "ls", "-q").stdout,
    }


def setup_pair(d: harness.Daemon, net: str = "n", *names: str) -> dict[str, str]:
    names = names or ("a", "b")
    if net not in {n["Name"] for n in d.cli_json("network", "ls", "--format", "json")}:
        d.cli("network", "create", net)
    keys = {}
    for sb in names:
        d.cli("sandbox", "create", sb)
        d.cli("network", "connect", net, sb)
        keys[sb] = d.sandbox_key(sb)
    return keys


def all_ips(d: harness.Daemon) -> list[str]:
    return [ep["IPAddress"] for sb in d.cli_json("sandbox", "ls", "--format", "json")
            for ep in d.sandbox_inspect(sb["Name"])["Networks"].values()]


def start_flow(key: str, ip: str, count: int = 100) -> subprocess.Popen:
    return subprocess.Popen(
        ["nsenter", f"--net={key}", "ping", "-n", "-q", "-i", "0.05", "-W", "1",
         "-c", str(count), ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def flow_result(flow: subprocess.Popen) -> tuple[int, int]:
    out, _ = flow.communicate(timeout=30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_restart_keeps_dataplane_and_state(daemon):
    d = daemon
    keys = setup_pair(d)
    ipa, ipb = d.sandbox_ip("a", "n"), d.sandbox_ip("b", "n")
    assert ping_all((keys["a"], ipb), (keys["b"], ipa)) == [True, True]
    before = state(d)
    links_before = {n: x["ifindex"] for n, x in host_links(d).items()}

    flow = start_flow(keys["a"], ipb)
    try:
        time.sleep(0.3)
        d.stop()  # SIGTERM
        assert not d.sock.exists() or d.cli("info", check=False).returncode != 0
        # Nobody home, yet the sandboxes still talk.
        assert ping_all((keys["a"], ipb), (keys["b"], ipa)) == [True, True]
        d.start()
        still_running = flow.poll() is None
    finally:
        sent, received = flow_result(flow)
    assert still_running, "the ping flow ended before the daemon was back: make it longer"
    assert sent == 100 and received >= 99, (sent, received)

    assert state(d) == before
    # Nothing was recreated behind the sandboxes' backs.
    assert {n: x["ifindex"] for n, x in host_links(d).items()} == links_before

    # New endpoints get fresh addresses: the allocations survived the restart.
    keys |= setup_pair(d, "n", "c")
    ipc = d.sandbox_ip("c", "n")
    assert ipc not in (ipa, ipb)
    assert len(set(all_ips(d))) == 3
    assert ping_all((keys["c"], ipa), (keys["a"], ipc)) == [True, True]


def test_kill9_then_restart(daemon):
    d = daemon
    keys = setup_pair(d)
    ipa, ipb = d.sandbox_ip("a", "n"), d.sandbox_ip("b", "n")
    before = state(d)

    d.kill()  # SIGKILL: no chance to clean up
    assert ping_all((keys["a"], ipb), (keys["b"], ipa)) == [True, True]
    d.start()
    assert state(d) == before
    assert ping_all((keys["a"], ipb), (keys["b"], ipa)) == [True, True]

    keys |= setup_pair(d, "n", "c")
    ipc = d.sandbox_ip("c", "n")
    assert ipc not in (ipa, ipb)
    assert harness.ping(keys["c"], ipa)
    # And it can still tear down what it made before the crash.
    d.cli("sandbox", "rm", "-f", "a")
    assert not harness.ping(keys["c"], ipa)


def test_reconcile_after_kernel_changes_while_down(daemon):
    d = daemon
    daemon_id = d.cli_json("info", "--format", "json")["DaemonID"]
    d.cli("network", "create", "-o", "com.docker.network.bridge.enable_icc=false", "m")
    keys = setup_pair(d)
    keys |= setup_pair(d, "m", "c", "e")
    ipa, ipb = d.sandbox_ip("a", "n"), d.sandbox_ip("b", "n")
    ipc, ipe = d.sandbox_ip("c", "m"), d.sandbox_ip("e", "m")
    gw_m = d.sandbox_inspect("c")["Networks"]["m"]["Gateway"]
    ids = {n: d.cli_json("network", "inspect", n)[0]["Id"] for n in ("n", "m")}
    bridges = {n: f"br-{i[:12]}" for n, i in ids.items()}
    assert ping_all((keys["a"], ipb), (keys["a"], ipc), (keys["c"], ipe)) == [True, False, False]
    before = state(d)

    # A stray link carrying this daemon's mark, unknown to its store.
    stray, peer = f"ctx{secrets.token_hex(4)}", f"cty{secrets.token_hex(4)}"
    d.run_in_host("ip", "link", "add", stray, "type", "veth", "peer", "name", peer)
    d.run_in_host("ip", "link", "set", stray, "alias", f"cnet:{daemon_id}:deadbeef")

    d.stop()
    d.run_in_host("nft", "delete", "table", "inet", "cnet")
    assert harness.ping(keys["a"], ipc)  # the damage is real: no isolation left...
    for bridge in bridges.values():
        d.run_in_host("ip", "link", "del", bridge)
    assert not harness.ping(keys["a"], ipb)  # ...and the networks are cut

    d.start()
    links = host_links(d)
    assert stray not in links and peer not in links
    for sb, net in (("a", "n"), ("b", "n"), ("c", "m"), ("e", "m")):
        veth = "veth" + d.sandbox_inspect(sb)["Networks"][net]["EndpointID"][:7]
        assert links[veth].get("master") == bridges[net], (veth, links[veth])
        # Port flags die with the old bridge: icc=false must isolate the ports again.
        port = json.loads(d.run_in_host("ip", "-d", "-j", "link", "show", veth).stdout)[0]
        assert port["linkinfo"]["info_slave_data"]["isolated"] is (net == "m"), veth
    table = json.loads(d.run_in_host("nft", "-j", "list", "table", "inet", "cnet").stdout)
    elems = {o["set"]["name"]: o["set"].get("elem", []) for o in table["nftables"] if "set" in o}
    for net, bridge in bridges.items():
        assert bridge in elems["bridges"] and bridge in elems["masq"]
        # icc=false (network m) is in no `icc` element: its routed traffic is dropped.
        assert ({"concat": [bridge, bridge]} in elems["icc"]) is (net == "n"), net
    # Packets agree: the networks work again, isolated again (icc=false included).
    assert harness.wait_ping(keys["a"], ipb, timeout=5)
    assert ping_all(
        (keys["b"], ipa), (keys["c"], gw_m), (keys["e"], gw_m),
        (keys["a"], ipc), (keys["c"], ipa), (keys["c"], ipe), (keys["e"], ipc),
    ) == [True] * 3 + [False] * 4
    assert state(d) == before
