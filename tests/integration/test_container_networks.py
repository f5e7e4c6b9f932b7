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
import sqlite3

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


def test_published_ports_follow_the_container_when_their_network_goes(cdaemon, outside):
    d = cdaemon
    d.cli("network", "create", "--subnet", "10.97.1.0/24", "pa")
    d.cli("network", "create", "--subnet", "10.97.2.0/24", "pb")
    web(d, "w", "pa", "-p", "18099:80")
    pa_ip = ip_on(d, "w", "pa")
    assert harness.wait_for(lambda: http_get(outside.path), timeout=5) == "hi-from-w"
    d.cli("network", "connect", "pb", "w")
    pb_ip = ip_on(d, "w", "pb")
    assert dnat_targets(d, 18099) == {pa_ip}  # a connect leaves them where they are
    # The network carrying them goes: they move to w's address on pb, same host port.
    d.cli("network", "disconnect", "pa", "w")
    assert dnat_targets(d, 18099) == {pb_ip}
    assert ports_of(d, "w") == PUBLISHED
    # pa's address is free again: a container given it gets none of w's traffic.
    web(d, "squatter", "pa", "--ip", pa_ip)
    assert ip_on(d, "squatter", "pa") == pa_ip
    assert http_get(outside.path) == "hi-from-w"
    assert http_get(d.host_ns, "http://127.0.0.1:18099/") == "hi-from-w"
    # No bridge network left: unpublished, the port refuses, nothing shows it.
    d.cli("network", "disconnect", "pb", "w")
    assert dnat_targets(d, 18099) == set()
    assert http_get(outside.path) == ""
    assert ports_of(d, "w") == ("", {})
    assert "18099" not in d.cli("ps").stdout
    # Back on a bridge network: published again, to the new address.
    d.cli("network", "connect", "pb", "w")
    pb_ip = ip_on(d, "w", "pb")
    assert dnat_targets(d, 18099) == {pb_ip}
    assert http_get(outside.path) == "hi-from-w"
    assert ports_of(d, "w") == PUBLISHED
    # A second bridge network joined later does not take them; restarts keep them on pb.
    d.cli("network", "connect", "pa", "w")
    assert dnat_targets(d, 18099) == {pb_ip}
    d.cli("restart", "-t", "1", "w")
    pb_ip = ip_on(d, "w", "pb")
    assert dnat_targets(d, 18099) == {pb_ip}
    assert harness.wait_for(lambda: http_get(outside.path), timeout=5) == "hi-from-w"
    d.restart()
    assert dnat_targets(d, 18099) == {pb_ip}
    assert http_get(outside.path) == "hi-from-w" and ports_of(d, "w") == PUBLISHED
    d.cli("rm", "-f", "w", "squatter")
    assert dnat_targets(d, 18099) == set()


def test_a_random_host_port_keeps_its_number_when_it_moves(cdaemon, outside):
    d = cdaemon
    d.cli("network", "create", "--subnet", "10.97.3.0/24", "pc")
    web(d, "r", "bridge", "-p", "80")
    port = int(d.cli("port", "r", "80").stdout.strip().rsplit(":", 1)[1])
    d.cli("network", "connect", "pc", "r")
    d.cli("network", "disconnect", "bridge", "r")
    assert dnat_targets(d, port) == {ip_on(d, "r", "pc")}
    assert d.cli("port", "r", "80").stdout.strip() == f"0.0.0.0:{port}"
    assert http_get(outside.path, f"http://192.0.2.1:{port}/") == "hi-from-r"


def test_ports_wait_for_a_network_with_external_connectivity(cdaemon, outside):
    """As Docker: with no bridge network (none, or only internal ones) a container with
    -p starts without its bindings; a connect to a bridge network publishes them, and a
    restart after leaving it starts again without them."""
    d = cdaemon
    d.cli("network", "create", "--internal", "--subnet", "10.97.4.0/24", "inner")
    web(d, "lone", "inner", "-p", "18099:80")
    assert inspect(d, "lone")["State"]["Running"]
    assert d.cli("port", "lone").stdout.strip() == "" and dnat_targets(d, 18099) == set()
    d.cli("network", "create", "--subnet", "10.97.5.0/24", "outer")
    d.cli("network", "connect", "outer", "lone")
    assert dnat_targets(d, 18099) == {ip_on(d, "lone", "outer")}
    assert http_get(outside.path) == "hi-from-lone"
    d.cli("network", "disconnect", "outer", "lone")
    d.cli("restart", "lone")
    assert inspect(d, "lone")["State"]["Running"] and dnat_targets(d, 18099) == set()
    assert http_get(outside.path) == ""


def test_a_connect_that_cannot_publish_again_is_undone(cdaemon, outside):
    """Unpublished (no bridge network left), then its host port taken by another: a
    connect to a bridge network fails as Docker's does (the join cannot program the
    bindings) and leaves nothing; the other container keeps the port."""
    d = cdaemon
    d.cli("network", "create", "--subnet", "10.97.6.0/24", "pd")
    web(d, "w", "bridge", "-p", "18099:80")
    d.cli("network", "disconnect", "bridge", "w")
    web(d, "x", "bridge", "-p", "18099:80")
    assert harness.wait_for(lambda: http_get(outside.path), timeout=5) == "hi-from-x"
    err = d.cli_error("network", "connect", "pd", "w")
    assert "port is already allocated" in err
    assert inspect(d, "w")["NetworkSettings"]["Networks"] == {}
    assert ports_of(d, "w") == ("", {})
    assert d.cli_json("network", "inspect", "pd")[0]["Containers"] == {}
    assert dnat_targets(d, 18099) == {ip_on(d, "x", "bridge")}
    assert http_get(outside.path) == "hi-from-x"
    d.cli("rm", "-f", "x")
    d.cli("network", "connect", "pd", "w")
    assert dnat_targets(d, 18099) == {ip_on(d, "w", "pd")}
    assert http_get(outside.path) == "hi-from-w"


def test_inspect_of_a_created_container_on_a_network_given_by_id(cdaemon):
    d = cdaemon
    net_id = d.cli("network", "create", "byid").stdout.strip()
    d.cli("create", "--name", "full", "--network", net_id, "busybox", "true")
    d.cli("create", "--name", "short", "--network", net_id[:12], "busybox", "true")
    for name in ("full", "short"):
        nets = inspect(d, name)["NetworkSettings"]["Networks"]
        assert list(nets) == ["byid"] and nets["byid"]["NetworkID"] == net_id, nets


def test_disconnect_by_name_of_a_network_given_by_id(cdaemon):
    d = cdaemon
    net_id = d.cli("network", "create", "--subnet", "10.97.4.0/24", "byid").stdout.strip()
    d.cli("create", "--name", "c", "--network", net_id, "busybox", "sleep", "600")
    err = d.cli_error("network", "connect", "byid", "c")
    assert "already exists in network byid" in err
    d.cli("network", "disconnect", "byid", "c")
    assert inspect(d, "c")["NetworkSettings"]["Networks"] == {}
    d.cli("network", "connect", "byid", "c")
    d.cli("network", "disconnect", net_id[:12], "c")
    assert inspect(d, "c")["NetworkSettings"]["Networks"] == {}
    # Running: the endpoint goes from the kernel too.
    d.cli("run", "-d", "--name", "r", "--network", net_id[:12], "busybox", "sleep", "600")
    ip = ip_on(d, "r", "byid")
    assert ip in d.cli("exec", "r", "ip", "-4", "addr").stdout
    d.cli("network", "disconnect", "byid", "r")
    assert inspect(d, "r")["NetworkSettings"]["Networks"] == {}
    assert ip not in d.cli("exec", "r", "ip", "-4", "addr").stdout
    assert d.cli_json("network", "inspect", "byid")[0]["Containers"] == {}
    d.cli("rm", "-f", "r")


def test_records_of_older_versions_keyed_by_name_or_id_prefix(cdaemon):
    """Records written before networks were stored by id keep working: keyed by the name
    or by the id prefix the user typed."""
    d = cdaemon
    net_id = d.cli("network", "create", "--subnet", "10.97.5.0/24", "old").stdout.strip()
    d.cli("create", "--name", "byname", "--network", "old", "busybox", "sleep", "600")
    d.cli("create", "--name", "byprefix", "--network", "old", "busybox", "sleep", "600")
    d.stop()
    db = sqlite3.connect(str(d.data_root / "cnet.db"))
    try:
        for name, key in (("byname", "old"), ("byprefix", net_id[:12])):
            ((k, v),) = [(k, json.loads(v)) for k, v in db.execute(
                "SELECT key, value FROM kv WHERE key LIKE 'container/%'")
                if json.loads(v)["Name"] == name]
            v["Networks"] = {key: {}}
            db.execute("UPDATE kv SET value = ? WHERE key = ?", (json.dumps(v), k))
        db.commit()
    finally:
        db.close()
    d.start()
    for name in ("byname", "byprefix"):
        nets = inspect(d, name)["NetworkSettings"]["Networks"]
        assert list(nets) == ["old"] and nets["old"]["NetworkID"] == net_id
    d.cli("start", "byname", "byprefix")
    ip = ip_on(d, "byname", "old")
    assert ip.startswith("10.97.5.")
    assert harness.wait_for(lambda: d.cli("exec", "byprefix", "ping", "-c1", "-W1", ip,
                                          check=False).returncode == 0, timeout=5)
    d.cli("network", "disconnect", net_id, "byname")
    d.cli("network", "disconnect", "old", "byprefix")
    for name in ("byname", "byprefix"):
        assert inspect(d, name)["NetworkSettings"]["Networks"] == {}
    assert d.cli_json("network", "inspect", "old")[0]["Containers"] == {}
    d.cli("rm", "-f", "byname", "byprefix")


def edit_record(d: harness.Daemon, name: str, change) -> None:
    """With the daemon stopped: apply `change` to container `name`'s stored record."""
    db = sqlite3.connect(str(d.data_root / "cnet.db"))
    try:
        ((k, v),) = [(k, json.loads(v)) for k, v in db.execute(
            "SELECT key, value FROM kv WHERE key LIKE 'container/%'")
            if json.loads(v)["Name"] == name]
        change(v)
        db.execute("UPDATE kv SET value = ? WHERE key = ?", (json.dumps(v), k))
        db.commit()
    finally:
        db.close()


def stored_networks(d: harness.Daemon, name: str) -> list[str]:
    db = sqlite3.connect(str(d.data_root / "cnet.db"))
    try:
        return [list(json.loads(v)["Networks"]) for _, v in db.execute(
            "SELECT key, value FROM kv WHERE key LIKE 'container/%'")
            if json.loads(v)["Name"] == name][0]
    finally:
        db.close()


def test_low_level_routes_refuse_a_containers_sandbox(cdaemon, outside):
    """DELETE /sandboxes/<container>, and leaving, deleting or joining endpoints of a
    container's sandbox, would bypass the runtime (addresses given back, the host port
    still DNATed to them): refused with one line; bare sandboxes keep these routes."""
    d = cdaemon
    d.cli("network", "create", "--subnet", "10.97.7.0/24", "pe")
    web(d, "w", "bridge", "-p", "18099:80")
    cid = inspect(d, "w")["Id"]
    ip = ip_on(d, "w", "bridge")
    ep_id = inspect(d, "w")["NetworkSettings"]["Networks"]["bridge"]["EndpointID"]
    assert harness.wait_for(lambda: http_get(outside.path), timeout=5) == "hi-from-w"
    for method, path, body, hint in (
            ("DELETE", f"/sandboxes/{cid}?force=1", None, "use cnet rm"),
            ("DELETE", "/sandboxes/w", None, "use cnet rm"),
            ("POST", f"/endpoints/{ep_id}/leave", {}, "use cnet network disconnect"),
            ("DELETE", f"/endpoints/{ep_id}", None, "use cnet network disconnect")):
        res = d.api(method, path, body)
        assert res.status == 409, (path, res.body)
        assert res.json()["message"] == f"w is a container: {hint}", res.body
    err = d.cli_error("sandbox", "rm", "-f", "w")
    assert "w is a container: use cnet rm" in err and len(err.splitlines()) == 1
    new = d.api("POST", "/endpoints/create", {"Network": "pe", "Name": "extra"}).json()
    res = d.api("POST", f"/endpoints/{new['Id']}/join", {"Sandbox": "w"})
    assert res.status == 409 and "use cnet network connect" in res.json()["message"]
    assert d.api("DELETE", f"/endpoints/{new['Id']}").status == 204
    # Nothing moved: the container keeps its address and its port.
    assert list(inspect(d, "w")["NetworkSettings"]["Networks"]) == ["bridge"]
    assert dnat_targets(d, 18099) == {ip} and http_get(outside.path) == "hi-from-w"
    # A bare sandbox still goes through them.
    d.cli("sandbox", "create", "bare")
    d.cli("network", "connect", "pe", "bare")
    bare_ep = d.sandbox_inspect("bare")["Networks"]["pe"]["EndpointID"]
    assert d.api("POST", f"/endpoints/{bare_ep}/leave", {}).status == 200
    assert d.api("DELETE", f"/endpoints/{bare_ep}").status == 204
    assert d.api("DELETE", "/sandboxes/bare?force=1").status == 204
    d.cli("rm", "-f", "w")
    assert dnat_targets(d, 18099) == set()


def test_records_a_crash_left_behind(cdaemon, outside):
    """A crash between giving an endpoint back and saving the record leaves the record
    listing the network: `network disconnect` then drops the entry. A crash before a
    publish was recorded leaves bindings asked for but no Ports: the daemon's start
    publishes them."""
    d = cdaemon
    pf_id = d.cli("network", "create", "--subnet", "10.97.8.0/24", "pf").stdout.strip()
    web(d, "w", "bridge", "-p", "18099:80")
    ip = ip_on(d, "w", "bridge")
    d.stop()

    def crashed(rec: dict) -> None:
        rec["Networks"][pf_id] = {}
        rec["Ports"] = {}

    edit_record(d, "w", crashed)
    d.start()
    assert dnat_targets(d, 18099) == {ip}
    assert ports_of(d, "w") == PUBLISHED
    assert harness.wait_for(lambda: http_get(outside.path), timeout=5) == "hi-from-w"
    d.cli("network", "disconnect", "pf", "w")
    assert list(inspect(d, "w")["NetworkSettings"]["Networks"]) == ["bridge"]
    assert pf_id not in stored_networks(d, "w")
    assert dnat_targets(d, 18099) == {ip} and http_get(outside.path) == "hi-from-w"
    d.cli("rm", "-f", "w")


def test_a_deleted_networks_key_is_never_taken_for_another_network(cdaemon):
    """A stopped container keeps the key of a network deleted since: start says so, and
    `network disconnect` with the key as stored (id, or an old record's name) drops it.
    An old record keyed by a deleted network's all-hex name is not re-keyed to a network
    whose id happens to start with it."""
    d = cdaemon
    gone_id = d.cli("network", "create", "gone").stdout.strip()
    other_id = d.cli("network", "create", "other").stdout.strip()
    d.cli("create", "--name", "c", "--network", "gone", "busybox", "true")
    d.cli("network", "connect", "bridge", "c")
    d.cli("network", "rm", "gone")
    res = d.api("POST", "/containers/c/start")  # (the CLI says "No such container" on a 404)
    assert res.status == 404 and gone_id in res.json()["message"]
    d.cli("network", "disconnect", gone_id, "c")
    assert list(inspect(d, "c")["NetworkSettings"]["Networks"]) == ["bridge"]
    # An older version's record, keyed by the name of a deleted network "<hex>".
    hexname = other_id[:2]
    d.stop()
    edit_record(d, "c", lambda rec: rec["Networks"].update({hexname: {}}))
    d.start()
    assert hexname in stored_networks(d, "c")
    res = d.api("POST", "/containers/c/start")
    assert res.status == 404 and res.json()["message"] == f"network {hexname} not found"
    assert d.cli_json("network", "inspect", "other")[0]["Containers"] == {}
    d.cli("network", "disconnect", hexname, "c")
    assert stored_networks(d, "c") == [inspect(d, "c")["NetworkSettings"]["Networks"]
                                       ["bridge"]["NetworkID"]]
    d.cli("start", "c")
    d.cli("rm", "-f", "c")
