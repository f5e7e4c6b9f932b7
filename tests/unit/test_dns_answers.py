"""AnswerCache: pre-encoded answers, id/RD patching, invalidation, rotation, bad input."""

from __future__ import annotations

import random
import struct

import dnslib
import pytest
from cnet.dns import answers, wire
from cnet.dns.answers import DROP, FORWARD, AnswerCache
from cnet.dns.names import NameTable

N1 = frozenset({"n1"})
N2 = frozenset({"n2"})


def q(name: str, qtype: str = "A", qid: int = 4242, rd: bool = True,
      edns: int | None = None) -> bytes:
    rec = dnslib.DNSRecord.question(name, qtype)
    rec.header.id = qid
    rec.header.rd = int(rd)
    if edns is not None:
        rec.add_ar(dnslib.EDNS0(udp_len=edns))
    return bytes(rec.pack())


def parse(resp: bytes) -> dnslib.DNSRecord:
    assert isinstance(resp, bytes), resp
    return dnslib.DNSRecord.parse(resp)


def rdata(resp: bytes) -> list[str]:
    return [str(rr.rdata) for rr in parse(resp).rr]


@pytest.fixture
def table() -> NameTable:
    t = NameTable()
    t.set_endpoint("n1", "front", "e1", ["c1", "web"], "10.0.0.2", "fd00::2")
    t.set_endpoint("n1", "front", "e2", ["c2", "web"], "10.0.0.3", None)
    t.set_endpoint("n1", "front", "e3", ["c3"], None, "fd00::3")
    t.set_endpoint("n2", "back", "e9", ["c9"], "10.1.0.9", None)
    return t


@pytest.fixture
def cache(table) -> AnswerCache:
    return AnswerCache(table)


def test_answers_a_aaaa_ptr_with_ttl_600(cache):
    r = parse(cache.lookup(N1, q("c1")))
    assert r.header.qr and r.header.ra and not r.header.aa
    assert dnslib.RCODE.get(r.header.rcode) == "NOERROR"
    assert [(str(x.rname), x.rtype, x.ttl, str(x.rdata)) for x in r.rr] == [
        ("c1.", 1, 600, "10.0.0.2")]
    assert rdata(cache.lookup(N1, q("c1", "AAAA"))) == ["fd00::2"]
    assert rdata(cache.lookup(N1, q("2.0.0.10.in-addr.arpa", "PTR"))) == ["c1.front."]
    assert rdata(cache.lookup(N1, q("c1.front"))) == ["10.0.0.2"]


def test_known_name_without_the_family_is_noerror_empty(cache):
    for name, qtype in (("c2", "AAAA"), ("c3", "A"), ("c1", "MX"), ("c1", "TXT")):
        r = parse(cache.lookup(N1, q(name, qtype)))
        assert dnslib.RCODE.get(r.header.rcode) == "NOERROR", name
        assert r.rr == [], name


def test_unknown_names_are_forwarded_and_that_is_cached_too(cache, monkeypatch):
    assert cache.lookup(N1, q("example.com")) is FORWARD
    assert cache.lookup(N1, q("c9")) is FORWARD  # on n2 only
    assert cache.lookup(N1, q("99.0.0.10.in-addr.arpa", "PTR")) is FORWARD
    assert cache.lookup(N1, q("version.bind", "TXT").replace(b"\x00\x10\x00\x01",
                                                             b"\x00\x10\x00\x03")) is FORWARD
    monkeypatch.setattr(cache, "build", None)  # a second time is a hit: no build
    assert cache.answer(N1, q("example.com", qid=7)) is FORWARD


def test_hit_patches_id_and_rd_and_never_parses(cache, monkeypatch):
    first = cache.lookup(N1, q("c1", qid=1))

    def no_parsing(*a, **k):
        raise AssertionError("dnslib used on a hit")

    monkeypatch.setattr(dnslib.DNSRecord, "parse", no_parsing)
    monkeypatch.setattr(cache.names, "resolve", no_parsing)
    for qid in (0, 2, 0xBEEF, 0xFFFF):
        for rd in (True, False):
            resp = cache.answer(N1, q("c1", qid=qid, rd=rd))
            assert resp[:2] == struct.pack("!H", qid)
            assert bool(resp[2] & wire.RD) == rd
            assert resp[3:] == first[3:]
            assert resp[2] & ~wire.RD == first[2] & ~wire.RD


def test_question_echoed_as_asked(cache):
    resp = cache.lookup(N1, q("WeB.FRONT"))
    assert parse(resp).q.qname.label == (b"WeB", b"FRONT")
    assert sorted(rdata(resp)) == ["10.0.0.2", "10.0.0.3"]


def test_scoped_by_network_set(cache):
    assert rdata(cache.lookup(N2, q("c9"))) == ["10.1.0.9"]
    assert cache.lookup(N1, q("c9")) is FORWARD
    assert rdata(cache.lookup(N1 | N2, q("c9"))) == ["10.1.0.9"]


def test_every_change_invalidates_at_once(cache, table):
    assert rdata(cache.lookup(N1, q("c1"))) == ["10.0.0.2"]
    assert cache.lookup(N1, q("c7")) is FORWARD
    table.set_endpoint("n1", "front", "e7", ["c7"], "10.0.0.7", None)
    assert cache.answer(N1, q("c1")) is None  # everything dropped
    assert rdata(cache.lookup(N1, q("c7"))) == ["10.0.0.7"]
    table.set_endpoint("n1", "front", "e1", ["c1"], "10.0.0.22", None)
    assert rdata(cache.lookup(N1, q("c1"))) == ["10.0.0.22"]
    table.remove_endpoint("e1")
    assert cache.lookup(N1, q("c1")) is FORWARD


def test_a_racing_build_cannot_store_a_stale_answer(cache, table):
    real = table.resolve

    def resolve_then_change(*a):
        out = real(*a)
        table.remove_endpoint("e1")  # lands while the miss is being built
        return out

    table.resolve = resolve_then_change
    assert rdata(cache.build(N1, q("c1"))) == ["10.0.0.2"]
    table.resolve = real
    assert cache.answer(N1, q("c1")) is None
    assert cache.lookup(N1, q("c1")) is FORWARD


def test_shared_alias_rotates_every_address_first(table):
    addrs = [f"10.0.5.{i}" for i in range(1, 5)]
    for i, a in enumerate(addrs):
        table.set_endpoint("n1", "front", f"w{i}", [f"w{i}", "pool"], a, None)
    cache = AnswerCache(table)
    seen = [rdata(cache.lookup(N1, q("pool", qid=i))) for i in range(answers.ROTATIONS * 2)]
    assert all(sorted(s) == addrs for s in seen)
    assert {s[0] for s in seen} == set(addrs)  # each address comes first
    assert len({tuple(s) for s in seen}) == answers.ROTATIONS


def test_two_addresses_rotate(cache):
    seen = {tuple(rdata(cache.lookup(N1, q("web", qid=i)))) for i in range(4)}
    assert seen == {("10.0.0.2", "10.0.0.3"), ("10.0.0.3", "10.0.0.2")}


def test_large_answers_respect_the_client_udp_size(table):
    for i in range(60):
        table.set_endpoint("n1", "front", f"b{i}", [f"b{i}", "big"], f"10.0.9.{i + 1}", None)
    cache = AnswerCache(table)
    plain = cache.lookup(N1, q("big"))
    r = parse(plain)
    assert r.header.tc and r.rr == [] and len(plain) <= 512
    full = parse(cache.lookup(N1, q("big", edns=4096)))
    assert not full.header.tc and len(full.rr) == 60
    assert parse(cache.lookup(N1, q("big", edns=600))).header.tc
    tcp = parse(cache.lookup(N1, q("big"), udp=False))
    assert not tcp.header.tc and len(tcp.rr) == 60


def test_malformed_queries(cache):
    good = q("c1")
    assert cache.lookup(N1, b"") is DROP
    assert cache.lookup(N1, good[:11]) is DROP
    response = good[:2] + bytes((good[2] | 0x80,)) + good[3:]
    assert cache.lookup(N1, response) is DROP
    # question cut short
    r = cache.lookup(N1, good[:-3])
    assert r[3] & 0x0F == wire.FORMERR and r[:2] == good[:2]
    # QDCOUNT 2
    r = cache.lookup(N1, good[:4] + b"\x00\x02" + good[6:])
    assert r[3] & 0x0F == wire.FORMERR
    # a compression pointer (loop) as the question name
    r = cache.lookup(N1, good[:12] + b"\xc0\x0c\x00\x01\x00\x01")
    assert r[3] & 0x0F == wire.FORMERR
    # label longer than 63, name longer than 255
    assert cache.lookup(N1, good[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"
                        )[3] & 0x0F == wire.FORMERR
    long = (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01"
    assert cache.lookup(N1, good[:12] + long)[3] & 0x0F == wire.FORMERR
    # NOTIFY opcode
    r = cache.lookup(N1, good[:2] + bytes((good[2] | (4 << 3),)) + good[3:])
    assert r[3] & 0x0F == wire.NOTIMP
    assert len(cache) == 0  # nothing malformed is cached


def test_random_garbage_never_raises(cache):
    rnd = random.Random(4)
    good = q("c1")
    for _ in range(20000):
        kind = rnd.randrange(3)
        if kind == 0:
            data = rnd.randbytes(rnd.randrange(0, 80))
        elif kind == 1:
            data = good[:rnd.randrange(len(good))]
        else:
            b = bytearray(good)
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            data = bytes(b)
        r = cache.lookup(N1, data)
        assert r is DROP or r is FORWARD or isinstance(r, bytes)
    assert rdata(cache.lookup(N1, q("c1"))) == ["10.0.0.2"]


def test_flood_of_random_names_is_bounded(table):
    cache = AnswerCache(table, max_entries=100)
    for i in range(1000):
        assert cache.lookup(N1, q(f"r{i}.example")) is FORWARD
    assert len(cache) <= 100
