"""`cnet dns lookup` answers what the container's resolver answers; `cnet dns stats` counts."""

from __future__ import annotations

import harness


def test_lookup_and_stats(cdaemon):
    d = cdaemon
    d.cli("network", "create", "localnet")
    d.cli("run", "-d", "--name", "c1", "--network", "localnet", "--network-alias", "web",
          "busybox", "sleep", "600")
    d.cli("run", "-d", "--name", "c2", "--network", "localnet", "busybox", "sleep", "600")
    ip = d.cli_json("inspect", "c1")[0]["NetworkSettings"]["Networks"]["localnet"]["IPAddress"]
    res = d.cli_json("dns", "lookup", "web", "--from", "c2", "--format", "json")
    assert res["Rcode"] == "NOERROR" and res["Answers"] == [ip] and "local" in res["Source"]
    # The same answer over the wire, from inside c2's namespace.
    key = d.cli_json("inspect", "c2")[0]["NetworkSettings"]["SandboxKey"]
    dig = harness.nsexec(key, "dig", "+short", "@127.0.0.11", "web", check=True).stdout
    assert dig.split() == [ip]
    rows = d.cli("dns", "stats").stdout.splitlines()
    assert rows[0].split()[:3] == ["NETWORK", "QUERIES", "LOCAL"]
    row = next(r for r in rows if r.startswith("localnet")).split()
    counts = dict(zip(rows[0].split(), row, strict=True))
    assert int(counts["QUERIES"]) >= 2 and int(counts["LOCAL"]) >= 2
    # A container on the default bridge has no embedded DNS: a clear one-line error.
    d.cli("run", "-d", "--name", "b", "busybox", "sleep", "600")
    assert "no embedded DNS" in d.cli_error("dns", "lookup", "c1", "--from", "b")
