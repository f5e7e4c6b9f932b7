"""A container's networks: published ports follow its endpoints, and networks given by id
(or an id prefix) are the same networks as when given by name.

Docker (libnetwork's sbJoin/sbLeave): the port bindings belong to the sandbox's endpoint
that provides external connectivity; when that endpoint leaves, they are revoked there
and programmed on the next such endpoint, if any. cnet's is the first joined bridge
endpoint with an IPv4 address: checked on the kernel (the DNAT target in `nft -j list
table inet cnet`) and with real traffic from the `outside` namespace.
"""

from __future__ import annotations

import json

import harness

HTTPD = "mkdir -p /www && echo hi-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"
URL = "http://192.0.2.1:18099/"


def inspect(d: harness.Daemon, name: str) -> dict:
    return d.cli_json("inspect", name)[0]


def ip_on(d: harness.Daemon, name: str, net: str) -> str:
    return inspect(d, name)["NetworkSettings"]["Networks"][net]["IPAddress"]


def http_get(target, url: str = URL) -> str:
    """curl from a namespace; empty string on failure (refused, timeout)."""
    proc = harness.nsexec(target, "curl", "-s", "-m", "2", url)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def web(d: harness.Daemon, name: str, network: str, *args: str) -> None:
    d.cli("run", "-d", "--name", name, "--network", network, *args, "busybox",
          "sh", "-c", HTTPD.format(name=name))


def dnat_targets(d: harness.Daemon, port: int, proto: str = "tcp") -> set[str]:
    """The addresses the kernel DNATs host port `port` (any host address) to, read from
    `nft -j list table inet cnet`: the pub_any element's chain and its dnat rules."""
    out = json.loads(d.run_in_host("nft", "-j", "list", "table", "inet", "cnet").stdout)
    objs = out["nftables"]
    chains = set()
    for o in objs:
        if o.get("map", {}).get("name") == "pub_any":
            for key, verdict in o["map"].get("elem", []):
                if key == {"concat": [proto, port]}:
                    chains.add((verdict.get("jump") or verdict.get("goto"))["target"])
    return {e["dnat"]["addr"] for o in objs if o.get("rule", {}).get("chain") in chains
            for e in o["rule"]["expr"] if "dnat" in e}


def ports_of(d: harness.Daemon, name: str) -> tuple[str, dict]:
    return d.cli("port", name).stdout.strip(), inspect(d, name)["NetworkSettings"]["Ports"]


PUBLISHED = ("80/tcp -> 0.0.0.0:18099", {"80/tcp": [{"HostIp": "0.0.0.0",
                                                     "HostPort": "18099"}]})


def test_inspect_of_a_created_container_on_a_network_given_by_id(cdaemon):
    d = cdaemon
    net_id = d.cli("network", "create", "byid").stdout.strip()
    d.cli("create", "--name", "full", "--network", net_id, "busybox", "true")
    d.cli("create", "--name", "short", "--network", net_id[:12], "busybox", "true")
    for name in ("full", "short"):
        nets = inspect(d, name)["NetworkSettings"]["Networks"]
        assert list(nets) == ["byid"] and nets["byid"]["NetworkID"] == net_id, nets
