"""cnetd's embedded DNS seen from inside containers, with real resolvers and real packets.

Every test runs its own cnetd (busybox imported) started with `--dns 192.0.2.2`: that is a
dnsmasq the test runs in the `outside` namespace, wired to the daemon's host namespace by
a veth (host 192.0.2.1, outside 192.0.2.2). The outside has no route back to the
container subnets, so a forwarded query only gets its answer through the bridge's
masquerade, as a real upstream would. dnsmasq answers `*.example.test` with 192.0.2.77 and
NXDOMAIN for everything else (it never asks anyone), and logs every query it gets, so a
test can tell whether a name was forwarded at all. A second dnsmasq on 192.0.2.3 answers
`*.example.test` with 192.0.2.88 (the per-container `--dns` override).

Queries are made two ways: `dig @127.0.0.11` run in the container's network namespace
(`nsenter --net=SandboxKey`, UDP and `+tcp`), and busybox's own `nslookup`/`ping` run in
the container through `cnet exec`, i.e. through its resolv.conf.

The bridge's MAC is pinned by the driver (it used not to be: removing the container
whose host veth lent the bridge its MAC broke the other containers' traffic through the
gateway, forwards included, for 15-45 s; test_forwarding_survives_the_removal_of_the_
bridges_mac guards it).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
import pytest

UPSTREAM = "192.0.2.2"     # dnsmasq: *.example.test -> 192.0.2.77
UPSTREAM2 = "192.0.2.3"    # dnsmasq: *.example.test -> 192.0.2.88
CLOSED = "192.0.2.4"       # an address of the outside namespace where nothing listens
FORWARDED_A = "192.0.2.77"
FORWARDED_A2 = "192.0.2.88"
SLEEP = ("sleep", "600")
PROTOS = ("+notcp", "+tcp")

pytestmark = pytest.mark.skipif(shutil.which("dig") is None or shutil.which("dnsmasq") is None,
                                reason="needs dig (bind9-dnsutils) and dnsmasq")


# --------------------------------------------------------------------------- helpers


class Answer:
    """The parts of dig's full output a test looks at."""

    def __init__(self, proc: subprocess.CompletedProcess, elapsed: float):
        self.out = proc.stdout + proc.stderr
        self.elapsed = elapsed
        m = re.search(r"status: (\w+)", self.out)
        self.status = m.group(1) if m else None  # None: no answer at all
        m = re.search(r"ANSWER: (\d+)", self.out)
        self.ancount = int(m.group(1)) if m else None
        sec = self.out.split(";; ANSWER SECTION:\n", 1)
        rows = sec[1].split("\n\n", 1)[0].splitlines() if len(sec) == 2 else []
        self.records = [r.split() for r in rows if r and not r.startswith(";")]
        self.values = [r[-1] for r in self.records]
        m = re.search(r";; SERVER: \S+ \((\w+)\)", self.out)
        self.transport = m.group(1) if m else None

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.values}, {self.elapsed:.2f}s)\n{self.out}"


def dig(key: str, *args: str, wait: int = 3) -> Answer:
    """`dig @127.0.0.11 ARGS` inside the network namespace `key` (one try, `wait` s)."""
    t = time.monotonic()
    proc = harness.nsexec(key, "dig", "@127.0.0.11", f"+time={wait}", "+tries=1", *args,
                          timeout=wait + 15)
    return Answer(proc, time.monotonic() - t)


def _dnsmasq(ns: harness.Netns, listen: str, answer: str, tmp: Path) -> subprocess.Popen:
    tag = listen.rsplit(".", 1)[1]
    return ns.popen(
        "dnsmasq", "-C", "/dev/null", "--no-resolv", "--no-hosts",
        f"--address=/example.test/{answer}", "--local=/#/",
        f"--listen-address={listen}", "--bind-interfaces", "--port", "53",
        "--keep-in-foreground", f"--pid-file={tmp}/dnsmasq{tag}.pid",
        "--log-queries", f"--log-facility={tmp}/dnsmasq{tag}.log",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@dataclass
class Env:
    d: harness.Daemon
    outside: harness.Outside
    tmp: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, name: str, *args: str, cmd: tuple[str, ...] = SLEEP) -> str:
        return self.d.cli("run", "-d", "--name", name, *args, "busybox", *cmd).stdout.strip()

    def inspect(self, name: str) -> dict:
        return self.d.cli_json("inspect", name)[0]

    def key(self, name: str) -> str:
        return self.inspect(name)["NetworkSettings"]["SandboxKey"]

    def ip(self, name: str, net: str, v6: bool = False) -> str:
        ep = self.inspect(name)["NetworkSettings"]["Networks"][net]
        return ep["GlobalIPv6Address" if v6 else "IPAddress"]

    def exec(self, name: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.d.cli("exec", name, *cmd, check=False, timeout=timeout)

    def upstream_log(self, listen: str = UPSTREAM) -> str:
        path = self.tmp / f"dnsmasq{listen.rsplit('.', 1)[1]}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_upstream(self, listen: str, answer: str) -> subprocess.Popen:
        proc = _dnsmasq(self.outside.ns, listen, answer, self.tmp)
        self.procs.append(proc)
        harness.wait_for(
            lambda: proc.poll() is None and answer in harness.nsexec(
                self.d.netns_path, "dig", f"@{listen}", "+short", "+time=1", "+tries=1",
                "up.example.test").stdout,
            timeout=10, what=f"dnsmasq answering at {listen}")
        return proc


@pytest.fixture
def env(host_ns, outside, daemon_factory, busybox_tar, tmp_path):
    """cnetd --dns 192.0.2.2 in host_ns, busybox imported, dnsmasq upstreams outside."""
    for extra in (UPSTREAM2, CLOSED):
        outside.ns.ip("addr", "add", f"{extra}/24", "dev", outside.outside_if)
    d = daemon_factory(host_ns, args=["--dns", UPSTREAM])
    e = Env(d, outside, tmp_path)
    try:
        e.start_upstream(UPSTREAM, FORWARDED_A)
        d.cli("image", "import", str(busybox_tar), "busybox")
        yield e
    finally:
        for proc in e.procs:
            _stop(proc)


def localnet(e: Env) -> None:
    e.d.cli("network", "create", "--subnet", "10.89.0.0/24", "localnet")


# --------------------------------------------------------------------------- names


def test_names_aliases_short_id_hostname_and_network_suffix(env):
    e = env
    localnet(e)
    cid = e.run("c1", "--network", "localnet", "--hostname", "h1", "--network-alias", "web",
                "--network-alias", "db")
    e.run("c2", "--network", "localnet", "--network-alias", "web")
    e.run("c3", "--network", "localnet")
    c1, c2 = e.ip("c1", "localnet"), e.ip("c2", "localnet")
    key = e.key("c3")
    for proto in PROTOS:
        for name in ("c1", "C1", "c1.", "h1", cid[:12], "db", "c1.localnet", "DB.localnet"):
            a = dig(key, name, proto)
            assert a.status == "NOERROR" and a.values == [c1], (name, a)
            assert a.records[0][1] == "600" and a.records[0][3] == "A", a  # TTL 600 (Docker)
            assert a.transport == ("TCP" if proto == "+tcp" else "UDP"), a
        assert dig(key, "c2", proto).values == [c2]
        # A shared alias returns every address; the order varies from answer to answer.
        orders = set()
        for _ in range(20):
            a = dig(key, "web", proto)
            assert a.status == "NOERROR" and sorted(a.values) == sorted([c1, c2]), a
            orders.add(tuple(a.values))
        assert len(orders) == 2, (proto, orders)
    # Nothing here was forwarded.
    assert "localnet" not in e.upstream_log() and " c1" not in e.upstream_log()


def test_ptr_and_aaaa(env):
    e = env
    localnet(e)
    e.d.cli("network", "create", "--ipv6", "--subnet", "10.89.6.0/24",
            "--subnet", "fd00:53::/64", "v6net")
    e.run("c1", "--network", "localnet")
    e.run("c6", "--network", "v6net", "--network-alias", "six")
    e.run("c7", "--network", "v6net")
    key1, key7 = e.key("c1"), e.key("c7")
    c1 = e.ip("c1", "localnet")
    c6, c6v6 = e.ip("c6", "v6net"), e.ip("c6", "v6net", v6=True)
    assert c6v6.startswith("fd00:53::"), c6v6

    for proto in PROTOS:
        a = dig(key1, "-x", c1, proto)
        assert a.status == "NOERROR" and a.values == ["c1.localnet."], a
        assert a.records[0][1] == "600" and a.records[0][3] == "PTR", a
        # A-only name asked for AAAA: NOERROR, empty answer (not NXDOMAIN, not forwarded).
        a = dig(key1, "c1", "AAAA", proto)
        assert a.status == "NOERROR" and a.ancount == 0 and a.values == [], a
        # Dual-stack network: A and AAAA, and PTR for both addresses.
        for name in ("c6", "six", "c6.v6net"):
            a = dig(key7, name, "AAAA", proto)
            assert a.status == "NOERROR" and a.values == [c6v6], (name, a)
            assert a.records[0][3] == "AAAA" and a.records[0][1] == "600", a
            assert dig(key7, name, "A", proto).values == [c6], name
        assert dig(key7, "-x", c6v6, proto).values == ["c6.v6net."]
        assert dig(key7, "-x", c6, proto).values == ["c6.v6net."]
    assert not re.search(r"\] c[16]\b", e.upstream_log()), e.upstream_log()
    # busybox nslookup in the container (through resolv.conf) sees the v6 address too.
    p = e.exec("c7", "nslookup", "-type=AAAA", "c6")
    assert p.returncode == 0 and c6v6 in p.stdout, p


def test_busybox_resolves_by_name_through_resolv_conf(env):
    e = env
    localnet(e)
    e.run("c1", "--network", "localnet")
    e.run("c2", "--network", "localnet")
    e.run("b1")  # default bridge: no embedded DNS, like Docker
    c1 = e.ip("c1", "localnet")

    conf = e.exec("c2", "cat", "/etc/resolv.conf").stdout
    lines = [ln.strip() for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    assert [ln for ln in lines if ln.startswith("nameserver")] == ["nameserver 127.0.0.11"], conf
    assert "options ndots:0" in lines, conf

    p = e.exec("c2", "nslookup", "c1")
    assert p.returncode == 0, p
    assert "127.0.0.11" in p.stdout and re.search(rf"Address: {re.escape(c1)}\b", p.stdout), p
    p = e.exec("c2", "ping", "-c", "1", "-W", "2", "c1")
    assert p.returncode == 0 and f"({c1})" in p.stdout and "1 packets received" in p.stdout, p
    # Forwarded through the same path: a name only the upstream knows.
    p = e.exec("c2", "nslookup", "-type=a", "www.example.test")
    assert p.returncode == 0 and FORWARDED_A in p.stdout, p
    # An unknown name fails cleanly (NXDOMAIN from upstream), quickly.
    t = time.monotonic()
    p = e.exec("c2", "nslookup", "nosuchname.invalid")
    assert p.returncode != 0 and time.monotonic() - t < 3, p

    # The default bridge network has no name service.
    assert "127.0.0.11" not in e.exec("b1", "cat", "/etc/resolv.conf").stdout
    a = dig(e.key("b1"), "c1", wait=1)
    assert a.status is None and c1 not in a.out, a


# --------------------------------------------------------------------------- scoping


def test_names_are_scoped_to_shared_networks(env):
    e = env
    localnet(e)
    e.d.cli("network", "create", "--subnet", "10.89.1.0/24", "othernet")
    cid = e.run("c1", "--network", "localnet", "--hostname", "h1", "--network-alias", "web")
    e.run("c4", "--network", "othernet", "--network-alias", "web")
    e.run("both", "--network", "localnet")
    e.d.cli("network", "connect", "othernet", "both")
    c1, c4 = e.ip("c1", "localnet"), e.ip("c4", "othernet")
    key4, keyb = e.key("c4"), e.key("both")

    # From othernet, nothing of c1 is visible: it is forwarded, and the upstream says
    # NXDOMAIN.
    for name in ("c1", "h1", cid[:12], "c1.localnet"):
        for proto in PROTOS:
            a = dig(key4, name, proto)
            assert a.status == "NXDOMAIN" and c1 not in a.out, (name, a)
    a = dig(key4, "-x", c1)
    assert "c1.localnet" not in a.out, a
    a = dig(key4, "web")  # the alias exists on both networks: only othernet's member
    assert a.values == [c4], a

    # A container on both networks resolves both, and the shared alias spans them.
    assert dig(keyb, "c1").values == [c1]
    assert dig(keyb, "c4").values == [c4]
    assert dig(keyb, "c4.othernet", "+tcp").values == [c4]
    assert sorted(dig(keyb, "web").values) == sorted([c1, c4])
    assert dig(keyb, "-x", c4).values == ["c4.othernet."]
    # Disconnected from othernet: c4 is gone for it at once (and still there for c4's
    # network mates).
    e.d.cli("network", "disconnect", "othernet", "both")
    a = dig(keyb, "c4")
    assert a.status == "NXDOMAIN" and c4 not in a.out, a
    assert dig(keyb, "c1").values == [c1]


# --------------------------------------------------------------------------- forwarding


def test_forwarded_to_the_daemons_upstream(env):
    e = env
    localnet(e)
    e.run("c1", "--network", "localnet")
    key = e.key("c1")
    for proto in PROTOS:
        name = f"fwd-{secrets.token_hex(3)}.example.test"
        a = dig(key, name, proto)
        assert a.status == "NOERROR" and a.values == [FORWARDED_A], a
        # really asked the upstream, from the host's address: forwards leave from the
        # container's own namespace and are masqueraded by the bridge on the way out
        assert re.search(rf"query\[A\] {re.escape(name)} from 192\.0\.2\.1\b",
                         e.upstream_log()), e.upstream_log()
        a = dig(key, f"nosuch-{secrets.token_hex(3)}.invalid", proto)
        assert a.status == "NXDOMAIN" and a.values == [], a
        a = dig(key, "-x", FORWARDED_A, proto)  # not a container address: forwarded too
        assert a.status == "NXDOMAIN", a


def test_per_container_dns_overrides_the_daemons(env):
    e = env
    e.start_upstream(UPSTREAM2, FORWARDED_A2)
    localnet(e)
    e.run("c1", "--network", "localnet")
    e.run("own", "--network", "localnet", "--dns", UPSTREAM2)
    name = f"o-{secrets.token_hex(3)}.example.test"
    assert dig(e.key("c1"), name).values == [FORWARDED_A]
    assert dig(e.key("own"), name).values == [FORWARDED_A2]
    assert dig(e.key("own"), name, "+tcp").values == [FORWARDED_A2]
    # Its resolv.conf still points at the embedded server, which still answers local names.
    assert "nameserver 127.0.0.11" in e.exec("own", "cat", "/etc/resolv.conf").stdout
    assert dig(e.key("own"), "c1").values == [e.ip("c1", "localnet")]
    p = e.exec("own", "nslookup", "-type=a", name)
    assert p.returncode == 0 and FORWARDED_A2 in p.stdout, p


def test_next_upstream_when_one_refuses(host_ns, outside, daemon_factory, busybox_tar,
                                        tmp_path):
    """cnetd --dns CLOSED --dns UPSTREAM: the first answers with ICMP port unreachable."""
    outside.ns.ip("addr", "add", f"{CLOSED}/24", "dev", outside.outside_if)
    d = daemon_factory(host_ns, args=["--dns", CLOSED, "--dns", UPSTREAM])
    e = Env(d, outside, tmp_path)
    try:
        e.start_upstream(UPSTREAM, FORWARDED_A)
        d.cli("image", "import", str(busybox_tar), "busybox")
        localnet(e)
        e.run("c1", "--network", "localnet")
        for proto in PROTOS:
            a = dig(e.key("c1"), "next.example.test", proto, wait=8)
            assert a.status == "NOERROR" and a.values == [FORWARDED_A], a
            assert a.elapsed < 3, a
    finally:
        for proc in e.procs:
            _stop(proc)


def _silent_udp(ns: harness.Netns, ip: str) -> subprocess.Popen:
    """A process bound to ip:53/udp that reads queries and never answers (a hung server)."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(({ip!r},53))\n"
        "print('ready',flush=True)\n"
        "while True: s.recvfrom(4096)\n"
    )
    proc = ns.popen(sys.executable, "-u", "-c", code, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_upstream_down_gives_servfail_in_time(env):
    e = env
    localnet(e)
    e.run("c1", "--network", "localnet")
    e.run("c2", "--network", "localnet")
    key = e.key("c1")
    assert dig(key, "before.example.test").values == [FORWARDED_A]
    _stop(e.procs[0])  # the upstream's process is gone: its port answers ICMP unreachable

    a = dig(key, "gone.example.test", wait=10)
    assert a.status == "SERVFAIL" and a.values == [], a
    assert a.elapsed < 6, a
    # Local names do not depend on the upstream.
    a = dig(key, "c2")
    assert a.values == [e.ip("c2", "localnet")] and a.elapsed < 1, a

    # A hung upstream (takes the query, never answers): SERVFAIL once the forwarder's
    # budget (~4.5 s) is spent, before a client's usual 5 s timeout.
    hung = _silent_udp(e.outside.ns, UPSTREAM)
    e.procs.append(hung)
    a = dig(key, "hung.example.test", wait=10)
    assert a.status == "SERVFAIL" and a.values == [], a
    assert 1.5 < a.elapsed < 6, a
    a = dig(key, "hung2.example.test", "+tcp", wait=10)
    assert a.status == "SERVFAIL" and a.elapsed < 6, a
    hung.stdout.close()


def test_internal_network_never_forwards(env):
    e = env
    e.d.cli("network", "create", "--internal", "--subnet", "10.89.2.0/24", "inside")
    e.run("i1", "--network", "inside", "--network-alias", "svc")
    e.run("i2", "--network", "inside")
    key = e.key("i2")
    for proto in PROTOS:
        name = f"int-{secrets.token_hex(3)}.example.test"
        a = dig(key, name, proto)
        assert a.status == "SERVFAIL" and a.values == [], a
        assert a.elapsed < 1, a  # at once, no upstream timeout
        assert name not in e.upstream_log()
        assert dig(key, "i1", proto).values == [e.ip("i1", "inside")]
        assert dig(key, "svc", proto).values == [e.ip("i1", "inside")]
    assert dig(key, "-x", e.ip("i1", "inside")).values == ["i1.inside."]
    p = e.exec("i2", "ping", "-c", "1", "-W", "2", "i1")
    assert p.returncode == 0, p


# --------------------------------------------------------------------------- changes


def test_removal_and_new_containers_take_effect_at_once(env):
    e = env
    localnet(e)
    cid = e.run("c1", "--network", "localnet", "--hostname", "h1", "--network-alias", "web")
    e.run("c2", "--network", "localnet", "--network-alias", "web")
    e.run("c3", "--network", "localnet")
    c1, c2 = e.ip("c1", "localnet"), e.ip("c2", "localnet")
    key = e.key("c3")
    # warm the answer cache first: removal must invalidate it
    for proto in PROTOS:
        assert dig(key, "c1", proto).values == [c1]
        assert dig(key, "-x", c1, proto).values == ["c1.localnet."]
    assert sorted(dig(key, "web").values) == sorted([c1, c2])

    e.d.cli("rm", "-f", "c1")
    for name in ("c1", "h1", cid[:12], "c1.localnet"):
        for proto in PROTOS:
            a = dig(key, name, proto)  # the very next query
            assert a.status == "NXDOMAIN" and c1 not in a.values, (name, a)
    assert "c1.localnet" not in dig(key, "-x", c1).out
    for _ in range(4):
        assert dig(key, "web").values == [c2]
    p = e.exec("c3", "nslookup", "c1")
    assert p.returncode != 0, p

    # A new container (even reusing the name) resolves on the very next query.
    e.run("c1", "--network", "localnet", "--network-alias", "web")
    new = e.ip("c1", "localnet")
    assert dig(key, "c1").values == [new]
    assert dig(key, "c1", "+tcp").values == [new]
    assert sorted(dig(key, "web").values) == sorted([new, c2])
    e.run("c9", "--network", "localnet")
    assert dig(key, "c9").values == [e.ip("c9", "localnet")]
    p = e.exec("c3", "ping", "-c", "1", "-W", "2", "c9")
    assert p.returncode == 0, p


def test_running_containers_resolve_after_a_daemon_restart(env):
    e = env
    localnet(e)
    e.run("c1", "--network", "localnet", "--network-alias", "web")
    e.run("c2", "--network", "localnet")
    c1, c2 = e.ip("c1", "localnet"), e.ip("c2", "localnet")
    assert dig(e.key("c2"), "c1").values == [c1]

    e.d.restart()
    assert e.inspect("c1")["State"]["Running"] and e.inspect("c2")["State"]["Running"]
    key1, key2 = e.key("c1"), e.key("c2")
    for proto in PROTOS:
        assert dig(key2, "c1", proto).values == [c1]
        assert dig(key2, "web", proto).values == [c1]
        assert dig(key1, "c2", proto).values == [c2]
        assert dig(key2, "-x", c1, proto).values == ["c1.localnet."]
    p = e.exec("c2", "ping", "-c", "1", "-W", "2", "c1")
    assert p.returncode == 0, p
    # ... and the restarted daemon keeps the tables up to date. (Nothing was forwarded
    # from c2 before c1 goes: see test_forwarding_survives_the_removal_of_the_bridges_mac.)
    e.run("c3", "--network", "localnet")
    assert dig(key2, "c3").values == [e.ip("c3", "localnet")]
    e.d.cli("rm", "-f", "c1")
    a = dig(key2, "c1")
    assert a.status == "NXDOMAIN" and c1 not in a.out, a
    assert dig(key2, "web").status == "NXDOMAIN"
    assert dig(key2, "after.example.test").values == [FORWARDED_A]
    assert dig(key2, "after.example.test", "+tcp").values == [FORWARDED_A]


def _host_veth(e: Env, name: str) -> dict:
    """The host side of container `name`'s eth0 (`ip -j link` of the daemon's namespace)."""
    eth0 = json.loads(harness.nsexec(e.key(name), "ip", "-j", "link", "show", "eth0",
                                     check=True).stdout)[0]
    links = json.loads(e.d.run_in_host("ip", "-j", "link").stdout)
    return next(ln for ln in links if ln["ifindex"] == eth0["link_index"])


def test_forwarding_survives_the_removal_of_the_bridges_mac(env):
    e = env
    localnet(e)
    names = ("c1", "c2", "c3")
    for n in names:
        e.run(n, "--network", "localnet")
    links = json.loads(e.d.run_in_host("ip", "-j", "link").stdout)
    veths = {n: _host_veth(e, n) for n in names}
    bridge = next(ln for ln in links if ln["ifname"] == veths["c1"]["master"])
    # the container whose veth lends the bridge its MAC (none once the MAC is pinned)
    gone = next((n for n in names if veths[n]["address"] == bridge["address"]), "c1")
    asker = next(n for n in names if n != gone)
    key = e.key(asker)
    assert dig(key, "before.example.test").values == [FORWARDED_A]  # gateway MAC learnt

    e.d.cli("rm", "-f", gone)
    links = json.loads(e.d.run_in_host("ip", "-j", "link").stdout)
    assert next(ln for ln in links if ln["ifname"] == bridge["ifname"])["address"] == \
        bridge["address"]  # the gateway's MAC did not move
    a = dig(key, "after.example.test", wait=6)
    assert a.status == "NOERROR" and a.values == [FORWARDED_A] and a.elapsed < 1, a
