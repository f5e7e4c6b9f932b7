"""Forwarder against fake upstreams on 127.0.0.1 (loopback only, cnetd's own namespace)."""

from __future__ import annotations

import asyncio
import socket
import time

import dnslib
import pytest
from cnet.dns import wire
from cnet.dns.forwarder import Forwarder, Upstream, upstreams_from_resolv_conf


def q(name: str = "example.test", qtype: str = "A", qid: int = 777,
      edns: int | None = None) -> bytes:
    rec = dnslib.DNSRecord.question(name, qtype)
    rec.header.id = qid
    if edns is not None:
        rec.add_ar(dnslib.EDNS0(udp_len=edns))
    return bytes(rec.pack())


def reply(query: bytes, n: int = 1, rcode: int = 0, tc: bool = False) -> bytes:
    req = dnslib.DNSRecord.parse(query)
    r = req.reply()
    r.header.rcode = rcode
    if tc:
        r.header.tc = 1
    elif rcode == 0:
        for i in range(n):
            r.add_answer(dnslib.RR(req.q.qname, rdata=dnslib.A(f"192.0.2.{i % 250 + 1}"),
                                   ttl=60))
    return bytes(r.pack())


class FakeUpstream:
    """UDP and TCP on the same 127.0.0.1 port; `mode` decides the UDP behaviour."""

    def __init__(self, mode: str = "answer", n: int = 1):
        self.mode = mode
        self.n = n
        self.udp_queries = 0
        self.tcp_queries = 0

    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                t.bind(("127.0.0.1", port))
                break
            except OSError:
                u.close()
                t.close()
        self.port = port
        up = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.t = transport

            def datagram_received(self, data, addr):
                up.udp_queries += 1
                if up.mode == "silent":
                    return
                if up.mode == "spoof":  # a wrong id first, then the answer
                    bad = bytes(((data[0] + 1) % 256,)) + reply(data)[1:]
                    self.t.sendto(bad, addr)
                if up.mode == "servfail":
                    self.t.sendto(reply(data, rcode=wire.SERVFAIL), addr)
                elif up.mode == "refused":
                    self.t.sendto(reply(data, rcode=wire.REFUSED), addr)
                elif up.mode == "nxdomain":
                    self.t.sendto(reply(data, rcode=wire.NXDOMAIN), addr)
                elif up.mode == "tc":
                    self.t.sendto(reply(data, tc=True), addr)
                else:
                    self.t.sendto(reply(data, n=up.n), addr)

        self.udp_t, _ = await loop.create_datagram_endpoint(Proto, sock=u)

        async def tcp(reader, writer):
            try:
                while True:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(n)
                    up.tcp_queries += 1
                    r = reply(data, n=up.n)
                    writer.write(len(r).to_bytes(2, "big") + r)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.tcp_s = await asyncio.start_server(tcp, sock=t)
        return self

    @property
    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port, via_host=True)

    def close(self) -> None:
        self.udp_t.close()
        self.tcp_s.close()


def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(coro_fn, **fwd_kw):
    async def main():
        fwd = Forwarder(asyncio.get_running_loop(), **fwd_kw)
        try:
            return await coro_fn(fwd)
        finally:
            fwd.close()

    return asyncio.run(main())


def rcode(resp: bytes) -> int:
    return resp[3] & 0x0F


def test_answer_comes_back_with_the_client_id():
    async def body(fwd):
        up = await FakeUpstream().start()
        try:
            res = await fwd.forward(q(qid=0x1234), [up.upstream], fwd.host)
        finally:
            up.close()
        assert res.outcome == "answered"
        assert res.source == f"127.0.0.1:{up.port} (host)/udp"
        r = dnslib.DNSRecord.parse(res.response)
        assert r.header.id == 0x1234 and [str(x.rdata) for x in r.rr] == ["192.0.2.1"]

    run(body)


def test_nxdomain_is_passed_through():
    async def body(fwd):
        up = await FakeUpstream("nxdomain").start()
        try:
            res = await fwd.forward(q(), [up.upstream], fwd.host)
        finally:
            up.close()
        assert res.outcome == "answered" and rcode(res.response) == wire.NXDOMAIN

    run(body)


@pytest.mark.parametrize("mode", ["servfail", "refused", "silent"])
def test_next_server_on_failure(mode):
    async def body(fwd):
        bad, good = await FakeUpstream(mode).start(), await FakeUpstream().start()
        try:
            t0 = time.monotonic()
            res = await fwd.forward(q(), [bad.upstream, good.upstream], fwd.host)
            took = time.monotonic() - t0
        finally:
            bad.close()
            good.close()
        assert res.outcome == "answered" and str(good.port) in res.source
        assert bad.udp_queries == 1 and good.udp_queries == 1
        assert took < (1.0 if mode == "silent" else 0.5)
        assert fwd.upstream_failures == 1

    run(body, timeout=0.3)


def test_port_unreachable_fails_over_at_once():
    async def body(fwd):
        good = await FakeUpstream().start()
        try:
            t0 = time.monotonic()
            res = await fwd.forward(
                q(), [Upstream("127.0.0.1", closed_port(), via_host=True), good.upstream],
                fwd.host)
            took = time.monotonic() - t0
        finally:
            good.close()
        assert res.outcome == "answered"
        assert took < 1.0  # not the 2 s timeout

    run(body, timeout=2.0)


def test_servfail_when_every_server_fails_within_the_budget():
    async def body(fwd):
        a, b = await FakeUpstream("silent").start(), await FakeUpstream("servfail").start()
        c = await FakeUpstream("silent").start()
        d = await FakeUpstream().start()  # a fourth server is never asked (max 3)
        try:
            t0 = time.monotonic()
            res = await fwd.forward(q(qid=9), [a.upstream, b.upstream, c.upstream, d.upstream],
                                    fwd.host)
            took = time.monotonic() - t0
        finally:
            for u in (a, b, c, d):
                u.close()
        assert res.outcome == "failed"
        assert rcode(res.response) == wire.SERVFAIL and res.response[:2] == b"\x00\x09"
        assert dnslib.DNSRecord.parse(res.response).q.qname == "example.test."
        assert d.udp_queries == 0
        assert 0.35 < took < 1.0  # 0.2 + 0.2 timeouts, SERVFAIL is instant
        assert "timeout" in res.source and "SERVFAIL" in res.source

    run(body, timeout=0.2)


def test_budget_caps_the_whole_forward():
    async def body(fwd):
        ups = [await FakeUpstream("silent").start() for _ in range(3)]
        try:
            t0 = time.monotonic()
            res = await fwd.forward(q(), [u.upstream for u in ups], fwd.host)
            took = time.monotonic() - t0
        finally:
            for u in ups:
                u.close()
        assert res.outcome == "failed" and 0.45 < took < 0.9
        assert ups[2].udp_queries == 0

    run(body, timeout=0.3, budget=0.5)


def test_inflight_limit_answers_refused_and_counts():
    async def body(fwd):
        up = await FakeUpstream("silent").start()
        origin = fwd.origin(None)
        try:
            slow = [asyncio.ensure_future(fwd.forward(q(qid=i), [up.upstream], origin))
                    for i in range(2)]
            await asyncio.sleep(0.05)
            assert fwd.inflight == 2
            t0 = time.monotonic()
            res = await fwd.forward(q(qid=3), [up.upstream], origin)
            assert time.monotonic() - t0 < 0.05  # no network wait at all
            assert res.outcome == "refused" and rcode(res.response) == wire.REFUSED
            assert res.response[:2] == b"\x00\x03"
            assert fwd.refused == 1
            other = fwd.origin(None)  # another sandbox is not limited by this one
            ok = asyncio.ensure_future(fwd.forward(q(qid=4), [up.upstream], other))
            await asyncio.sleep(0.05)
            assert fwd.inflight == 3 and not ok.done()
            done = await asyncio.gather(*slow, ok)
            assert [r.outcome for r in done] == ["failed"] * 3
            assert fwd.inflight == 0 and fwd.refused == 1
        finally:
            up.close()

    run(body, timeout=0.3, max_inflight=2)


def test_total_inflight_limit():
    async def body(fwd):
        up = await FakeUpstream("silent").start()
        try:
            slow = [asyncio.ensure_future(fwd.forward(q(), [up.upstream], fwd.origin(None)))
                    for _ in range(3)]
            await asyncio.sleep(0.05)
            res = await fwd.forward(q(), [up.upstream], fwd.origin(None))
            assert res.outcome == "refused" and fwd.refused == 1
            await asyncio.gather(*slow)
        finally:
            up.close()

    run(body, timeout=0.2, max_inflight_total=3)


def test_truncated_answer_is_retried_over_tcp():
    async def body(fwd):
        up = await FakeUpstream("tc", n=60).start()
        try:
            res = await fwd.forward(q(edns=4096), [up.upstream], fwd.host, udp_limit=4096)
            assert res.outcome == "answered" and res.source.endswith("/tcp")
            r = dnslib.DNSRecord.parse(res.response)
            assert len(r.rr) == 60 and not r.header.tc and r.header.id == 777
            assert up.udp_queries == 1 and up.tcp_queries == 1 and fwd.tcp_retries == 1
            # a UDP client that takes 512 bytes gets TC (and retries over TCP itself)
            res = await fwd.forward(q(), [up.upstream], fwd.host, udp_limit=512)
            r = dnslib.DNSRecord.parse(res.response)
            assert r.header.tc and len(res.response) <= 512
            # a TCP client takes it all
            res = await fwd.forward(q(), [up.upstream], fwd.host, udp_limit=None)
            assert len(dnslib.DNSRecord.parse(res.response).rr) == 60
        finally:
            up.close()

    run(body)


def test_replies_with_a_wrong_id_are_ignored():
    async def body(fwd):
        up = await FakeUpstream("spoof").start()
        try:
            res = await fwd.forward(q(qid=5), [up.upstream], fwd.host)
        finally:
            up.close()
        assert res.outcome == "answered"
        assert dnslib.DNSRecord.parse(res.response).header.id == 5

    run(body)


def test_no_upstreams_and_bad_queries():
    async def body(fwd):
        res = await fwd.forward(q(), [], fwd.host)
        assert res.outcome == "failed" and rcode(res.response) == wire.SERVFAIL
        res = await fwd.forward(q()[:14], [Upstream("127.0.0.1")], fwd.host)
        assert rcode(res.response) == wire.FORMERR

    run(body)


def test_upstreams_from_resolv_conf():
    text = """# generated
search example.com
nameserver 127.0.0.53
nameserver 192.0.2.1
nameserver 127.0.0.11
nameserver fe80::1%eth0
nameserver 2001:db8::1
nameserver 192.0.2.1
nameserver bogus
options edns0
"""
    assert upstreams_from_resolv_conf(text) == [
        Upstream("127.0.0.53", via_host=True),
        Upstream("192.0.2.1"),
        Upstream("2001:db8::1"),
    ]
    assert str(Upstream("2001:db8::1")) == "[2001:db8::1]:53"
    with pytest.raises(ValueError):
        Upstream("nope")
    with pytest.raises(ValueError):
        Upstream("192.0.2.1", 0)
