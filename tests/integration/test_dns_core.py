"""The embedded resolver's core (cnet.dns) against real resolvers, without cnetd.

A DNSServer runs in the test process and serves a throwaway sandbox namespace at
127.0.0.11:53; `dig` asks it from inside that namespace over UDP and TCP. Names that are
not ours go to a dnsmasq the test runs in a second throwaway namespace, linked to the
sandbox by a veth (sandbox 198.51.100.1/24, upstream 198.51.100.2/24), so forwarded
queries leave from the sandbox's namespace as in Docker.

dnsmasq answers example.test with 192.0.2.53, big.example.test with 60 addresses
(--edns-packet-max=512: it truncates that over UDP, so the forwarder must retry over
TCP), and NXDOMAIN for everything else.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import harness
import pytest
from cnet.cnm.osl.nsenter import in_netns
from cnet.dns.forwarder import Upstream
from cnet.dns.names import NameTable
from cnet.dns.server import DNSServer

UP_IP = "198.51.100.2"
SB_IP = "198.51.100.1"
DEAD_IP = "198.51.100.3"  # on the link, nobody there
BIG = 60

pytestmark = pytest.mark.skipif(shutil.which("dig") is None or shutil.which("dnsmasq") is None,
                                reason="needs dig (bind9-dnsutils) and dnsmasq")


def _dnsmasq_args(pidfile: str) -> list[str]:
    args = ["dnsmasq", "-C", "/dev/null", "--no-resolv", "--no-hosts",
            "--address=/example.test/192.0.2.53", "--local=/#/",
            "--port", "53", "--listen-address", UP_IP, "--bind-interfaces",
            "--keep-in-foreground", f"--pid-file={pidfile}", "--edns-packet-max=512"]
    args += [f"--host-record=big.example.test,10.9.0.{i}" for i in range(1, BIG + 1)]
    return args


class Env:
    def __init__(self) -> None:
        self.sb = harness.Netns()
        self.up = harness.Netns()
        self.tmp = tempfile.mkdtemp(prefix="cnt-dns-")
        self.dnsmasq: subprocess.Popen | None = None
        self.names = NameTable()
        self.server = DNSServer(self.names, timeout=1.0, budget=2.5)

    def setup(self) -> None:
        tag = secrets.token_hex(3)
        a, b = f"cds{tag}", f"cdu{tag}"
        harness.sh("ip", "-n", self.sb.name, "link", "add", a, "type", "veth",
                   "peer", "name", b, "netns", self.up.name)
        self.sb.ip("addr", "add", f"{SB_IP}/24", "dev", a)
        self.sb.ip("link", "set", a, "up")
        self.up.ip("addr", "add", f"{UP_IP}/24", "dev", b)
        self.up.ip("link", "set", b, "up")
        self.dnsmasq = self.up.popen(*_dnsmasq_args(os.path.join(self.tmp, "dnsmasq.pid")),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        harness.wait_for(
            lambda: "192.0.2.53" in dig(self.sb, "example.test", "+short", server=UP_IP).stdout,
            timeout=10, what="dnsmasq answering in the upstream namespace")
        t = self.names
        t.set_endpoint("n1", "front", "e1", ["c1", "web", "0123456789ab", "host1"],
                       "10.0.0.2/24", "fd00::2/64")
        t.set_endpoint("n1", "front", "e2", ["c2", "web"], "10.0.0.3/24", None)
        t.set_endpoint("n1", "front", "e3", ["c3", "web"], "10.0.0.4/24", None)
        t.set_endpoint("n2", "back", "e9", ["c9"], "10.1.0.9/24", None)
        self.server.start()

    def teardown(self) -> list[str]:
        errors = []
        try:
            self.server.close()
        except Exception as exc:
            errors.append(f"server close: {exc}")
        if self.dnsmasq is not None:
            self.dnsmasq.kill()
            self.dnsmasq.wait(10)
            self.dnsmasq.stderr.close()
        for ns in (self.sb, self.up):
            ns.delete()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if any(t.name == "cnet-dns" for t in threading.enumerate()):
            errors.append("the DNS loop thread is still running")
        return errors


@pytest.fixture(scope="module")
def env():
    reason = harness.requirements_missing()
    if reason:
        pytest.skip(reason)
    e = Env()
    try:
        e.setup()
        yield e
    finally:
        errors = e.teardown()
    assert not errors, errors


@pytest.fixture
def sandbox(env):
    sid = "sb-" + secrets.token_hex(4)
    env.server.add_sandbox(sid, env.sb.path, frozenset({"n1"}), internal=False,
                           upstreams=[Upstream(UP_IP)])
    try:
        yield sid
    finally:
        env.server.remove_sandbox(sid)


def dig(ns, *args: str, server: str = "127.0.0.11", timeout: float = 15):
    return harness.nsexec(ns, "dig", f"@{server}", "+time=4", "+tries=1", *args,
                          timeout=timeout)


class Answer:
    def __init__(self, out: str):
        self.out = out
        m = re.search(r"status: (\w+)", out)
        self.status = m.group(1) if m else None
        m = re.search(r";; flags: ([a-z ]*);", out)
        self.flags = set(m.group(1).split()) if m else set()
        sec = out.split(";; ANSWER SECTION:\n", 1)
        rows = sec[1].split("\n\n", 1)[0].splitlines() if len(sec) == 2 else []
        self.records = [r.split() for r in rows if r and not r.startswith(";")]
        self.values = [r[-1] for r in self.records]


def ask(env, name: str, *args: str) -> Answer:
    p = dig(env.sb, name, *args)
    return Answer(p.stdout)


PROTOS = ["+notcp", "+tcp"]


@pytest.mark.parametrize("proto", PROTOS)
def test_local_names(env, sandbox, proto):
    for name in ("c1", "C1.", "host1", "0123456789ab", "c1.front", "WEB.front"):
        a = ask(env, name, proto)
        assert a.status == "NOERROR", a.out
        assert "10.0.0.2" in a.values, (name, a.out)
    a = ask(env, "c1", "AAAA", proto)
    assert a.values == ["fd00::2"], a.out
    assert a.records[0][1] == "600"  # TTL like Docker
    a = ask(env, "c2", "AAAA", proto)  # known, IPv4 only: NOERROR, no answer
    assert a.status == "NOERROR" and a.values == [] and "ANSWER: 0" in a.out, a.out
    a = ask(env, "c9", proto)  # on another network: not ours, dnsmasq says NXDOMAIN
    assert a.status == "NXDOMAIN" and a.values == [], a.out
    st = env.server.stats(sandbox)
    assert st["local"] == 8 and st["forwarded"] == 1 and st["queries"] == 9


def test_shared_alias_is_shuffled(env, sandbox):
    firsts = set()
    for _ in range(12):
        a = ask(env, "web", "+notcp")
        assert sorted(a.values) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"], a.out
        firsts.add(a.values[0])
    assert len(firsts) >= 2
    a = ask(env, "web", "+tcp")
    assert sorted(a.values) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]


@pytest.mark.parametrize("proto", PROTOS)
def test_ptr(env, sandbox, proto):
    assert ask(env, "-x", "10.0.0.2", proto).values == ["c1.front."]
    assert ask(env, "-x", "fd00::2", proto).values == ["c1.front."]
    assert ask(env, "-x", "10.0.0.3", proto).values == ["c2.front."]
    a = ask(env, "-x", "10.1.0.9", proto)  # another network's address: forwarded
    assert a.status == "NXDOMAIN", a.out


@pytest.mark.parametrize("proto", PROTOS)
def test_forwarded_to_upstream(env, sandbox, proto):
    a = ask(env, "example.test", proto)
    assert a.status == "NOERROR" and a.values == ["192.0.2.53"], a.out
    a = ask(env, "nothing.example", proto)
    assert a.status == "NXDOMAIN", a.out
    assert env.server.stats(sandbox)["forwarded"] == 2
    res = env.server.lookup(sandbox, "example.test")
    assert res["answers"] == ["192.0.2.53"]
    assert res["source"] == f"upstream {UP_IP}:53/udp"
    res = env.server.lookup(sandbox, "c1")
    assert res["answers"] == ["10.0.0.2"] and res["source"].startswith("local")


def test_truncated_upstream_answer_is_retried_over_tcp(env, sandbox):
    retries = env.server.stats()["tcp_retries"]
    a = ask(env, "big.example.test", "+notcp", "+ignore", "+bufsize=4096")
    assert "tc" not in a.flags and len(a.values) == BIG, a.out
    assert env.server.stats()["tcp_retries"] == retries + 1
    # a client that accepts 512 bytes gets TC ...
    a = ask(env, "big.example.test", "+notcp", "+ignore", "+noedns")
    assert "tc" in a.flags, a.out
    # ... and dig's own retry over TCP gets it all
    a = ask(env, "big.example.test", "+noedns")
    assert len(a.values) == BIG, a.out
    a = ask(env, "big.example.test", "+tcp")
    assert len(a.values) == BIG, a.out


def _timed(env, *args):
    t0 = time.monotonic()
    a = ask(env, *args)
    return a, time.monotonic() - t0


def test_upstream_down(env, sandbox):
    srv = env.server
    # nobody at that address: the per-server timeout (1 s here), then SERVFAIL
    srv.update_sandbox(sandbox, upstreams=[Upstream(DEAD_IP)])
    a, took = _timed(env, "example.test")
    assert a.status == "SERVFAIL", a.out
    assert 0.9 < took < 2.0
    # the next server answers after the first one timed out
    srv.update_sandbox(sandbox, upstreams=[Upstream(DEAD_IP), Upstream(UP_IP)])
    a, took = _timed(env, "example.test", "+tcp")
    assert a.values == ["192.0.2.53"] and 0.9 < took < 2.0, a.out
    # the resolver process is down (port unreachable): SERVFAIL at once
    srv.update_sandbox(sandbox, upstreams=[Upstream(UP_IP, 5353), Upstream(UP_IP, 5354)])
    a, took = _timed(env, "example.test")
    assert a.status == "SERVFAIL" and took < 0.8, a.out
    # local names do not care
    assert ask(env, "c1").values == ["10.0.0.2"]
    st = srv.stats(sandbox)
    assert st["failed"] == 2 and st["forwarded"] == 1


def test_changes_are_immediate(env, sandbox):
    t = env.names
    assert ask(env, "c5").status == "NXDOMAIN"
    t.set_endpoint("n1", "front", "e5", ["c5", "web"], "10.0.0.5", None)
    try:
        assert ask(env, "c5").values == ["10.0.0.5"]
        assert sorted(ask(env, "web").values) == ["10.0.0.2", "10.0.0.3", "10.0.0.4",
                                                  "10.0.0.5"]
    finally:
        t.remove_endpoint("e5")
    assert ask(env, "c5").status == "NXDOMAIN"
    assert ask(env, "-x", "10.0.0.5").status == "NXDOMAIN"
    assert len(ask(env, "web").values) == 3
    # the sandbox joins n2: c9 becomes visible
    env.server.update_sandbox(sandbox, networks=frozenset({"n1", "n2"}))
    assert ask(env, "c9").values == ["10.1.0.9"]


def test_internal_network_never_forwards(env, sandbox):
    env.server.update_sandbox(sandbox, internal=True)
    a, took = _timed(env, "example.test")
    assert a.status == "SERVFAIL" and took < 0.8, a.out
    assert ask(env, "c1", "+tcp").values == ["10.0.0.2"]
    st = env.server.stats(sandbox)
    assert st["forwarded"] == 0 and st["failed"] == 1 and st["local"] == 1


def _ns_socket(env, kind: int) -> socket.socket:
    with in_netns(env.sb.path):
        return socket.socket(socket.AF_INET, kind)


def _query(name: str, qid: int, qtype: int = 1) -> bytes:
    qname = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH",
                                                                                  qtype, 1)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_tcp_idle_clients_do_not_block_and_pipelining(env, sandbox):
    idle = []
    try:
        for i in range(40):
            s = _ns_socket(env, socket.SOCK_STREAM)
            idle.append(s)
            s.connect(("127.0.0.11", 53))
            if i % 2:
                s.send(b"\x00")  # half a length prefix, then nothing
        a, took = _timed(env, "c1", "+tcp")
        assert a.values == ["10.0.0.2"] and took < 1.0, a.out
        a, took = _timed(env, "c1")
        assert a.values == ["10.0.0.2"] and took < 1.0, a.out
        # several queries on one connection, a forwarded one among them
        s = _ns_socket(env, socket.SOCK_STREAM)
        idle.append(s)
        s.settimeout(5)
        s.connect(("127.0.0.11", 53))
        msgs = [_query("example.test", 1), _query("c1", 2), _query("c2", 3)]
        s.sendall(b"".join(len(m).to_bytes(2, "big") + m for m in msgs))
        got = {}
        for _ in msgs:
            n = int.from_bytes(_recv_exactly(s, 2), "big")
            r = _recv_exactly(s, n)
            got[struct.unpack("!H", r[:2])[0]] = r
        assert sorted(got) == [1, 2, 3]
        assert got[1][-4:] == socket.inet_aton("192.0.2.53")
        assert got[2][-4:] == socket.inet_aton("10.0.0.2")
    finally:
        for s in idle:
            s.close()


def _malformed(rnd: random.Random, good: bytes) -> bytes:
    kind = rnd.randrange(8)
    if kind == 0:
        return rnd.randbytes(rnd.randrange(0, 600))
    if kind == 1:
        return good[:rnd.randrange(12)]  # truncated header
    if kind == 2:  # compression pointer loop as the name
        return good[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    if kind == 3:  # qdcount != 1
        return good[:4] + struct.pack("!H", rnd.choice((0, 2, 65535))) + good[6:]
    if kind == 4:  # over-long label
        return good[:12] + b"\x50" + b"a" * 80 + b"\x00\x00\x01\x00\x01"
    if kind == 5:  # over-long name
        return good[:12] + (b"\x3f" + b"b" * 63) * 6 + b"\x00\x00\x01\x00\x01"
    if kind == 6:  # a response instead of a query
        return good[:2] + bytes((good[2] | 0x80,)) + good[3:]
    b = bytearray(good)  # random bit flips
    for _ in range(rnd.randrange(1, 5)):
        b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
    return bytes(b)


def test_malformed_flood_then_valid_queries(env, sandbox):
    rnd = random.Random(1)
    good = _query("c1", 99)
    s = _ns_socket(env, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        sent = 0
        for i in range(100_000):
            try:
                s.sendto(_malformed(rnd, good), ("127.0.0.11", 53))
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
            if i % 256 == 0:  # drain whatever came back
                while True:
                    try:
                        s.recv(65535)
                    except BlockingIOError:
                        break
        assert sent > 90_000
    finally:
        s.close()
    for proto in PROTOS:
        a, took = _timed(env, "c1", proto)
        assert a.values == ["10.0.0.2"] and took < 1.0, a.out
    assert ask(env, "example.test").values == ["192.0.2.53"]
    st = env.server.stats(sandbox)
    assert st["queries"] > 10_000 and st["malformed"] > 1000


def _fds_on(ns) -> int:
    """Our fds that are the namespace itself or a socket made in it."""
    ns_link = f"net:[{os.stat(ns.path).st_ino}]"
    inodes = set()
    for opts in ("-Haute", "-Haue"):  # TCP, UDP sockets of that namespace
        inodes.update(re.findall(r"ino:(\d+)", harness.nsexec(ns, "ss", opts).stdout))
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link in (ns_link, ns.path) or (link.startswith("socket:[") and link[8:-1] in inodes):
            count += 1
    return count


def test_remove_sandbox_closes_its_sockets(env):
    srv = env.server
    srv.add_sandbox("sb-x", env.sb.path, {"n1"}, upstreams=[UP_IP])
    with pytest.raises(ValueError):
        srv.add_sandbox("sb-x", env.sb.path, {"n1"})
    with pytest.raises(OSError, match="in use"):  # the port is taken in that namespace
        srv.add_sandbox("sb-y", env.sb.path, {"n1"})
    assert ask(env, "c1").values == ["10.0.0.2"]
    assert ask(env, "example.test").values == ["192.0.2.53"]
    assert _fds_on(env.sb) >= 3  # the check sees them: listeners and the namespace fd
    assert srv.remove_sandbox("sb-x")
    assert not srv.remove_sandbox("sb-x")
    listening = harness.nsexec(env.sb, "ss", "-Hlnut").stdout
    assert "127.0.0.11:53" not in listening, listening
    assert _fds_on(env.sb) == 0  # no namespace fd or socket of it left in this process
    a = ask(env, "c1")
    assert a.status is None and a.values == []
    with pytest.raises(OSError):
        srv.add_sandbox("sb-z", "/run/netns/cnet-t-does-not-exist", {"n1"})
    assert srv.sandboxes() == []
