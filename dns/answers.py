"""The hot path: pre-encoded answers keyed by (sandbox networks, question bytes).

`AnswerCache.answer(networks, query)` is what every packet goes through first:

- a few header byte checks (a query, opcode QUERY, one question), then the question
  bytes are sliced out (`query[12:end]`, end = first zero byte + 4) and looked up in
  the dict of the sandbox's network set;
- hit: the response is `query[:2] + stored[rd]`, the stored tail (flags onward,
  pre-encoded with RD clear and with RD set) chosen by the query's RD bit. No parsing
  library, no name decoding, no allocation beyond the response bytes;
- a name known to be someone else's is cached too: the value `FORWARD` tells the
  server to hand the raw query to the forwarder without parsing it either;
- miss: `answer()` returns None and the server calls `build()`, which validates the
  message with dnslib, resolves through the NameTable, encodes the answer (A, AAAA,
  PTR; TTL 600 like Docker; a known name with nothing of that type: NOERROR and no
  answer), stores it and returns it.

Slicing at the first zero byte is safe: only `build()` stores keys, and only after a
strict label walk found the same end, so a stored key always is a well-formed question;
a query whose first bytes equal a stored key therefore *has* that question.

Multi-address answers (an alias shared by several containers) rotate through up to
`ROTATIONS` pre-encoded orders: rotations of one random shuffle, so every address comes
first equally often, and a new shuffle every time the cache is rebuilt.

Responses larger than 512 bytes over UDP: sent whole when the client's EDNS size allows,
else a TC (truncated) response so that it retries over TCP.

Invalidation: the cache subscribes to its NameTable; every change swaps in an empty
dict at once (the swap is atomic; a `build()` racing with it stores into the dropped
dict, never into the new one, so a stale answer cannot survive a change).

The cache is used from the DNS loop thread only (`invalidate` from any thread).
"""

from __future__ import annotations

import itertools
import random

import dnslib
from cnet.dns import wire
from cnet.dns.names import NameTable

#: Docker's TTL for its own names
TTL = 600
#: pre-encoded orders kept per multi-address answer
ROTATIONS = 4
#: entries per network set before that set's dict is emptied (random names flood it)
MAX_ENTRIES = 20000


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: the name is not ours: forward the query (value stored in the cache, and returned)
FORWARD = _Sentinel("FORWARD")
#: nothing to send back (not a query at all: a response, or shorter than a header)
DROP = _Sentinel("DROP")


class _Multi:
    """Several pre-encoded variants (rotation of addresses) and/or a TC fallback."""

    __slots__ = ("variants", "cycle", "trunc", "big")

    def __init__(self, variants: list[tuple[bytes, bytes]], trunc: tuple[bytes, bytes]):
        self.variants = variants
        self.cycle = itertools.cycle(variants)
        self.trunc = trunc
        # a response over UDP_PLAIN_MAX needs a look at the client's EDNS size
        self.big = len(variants[0][0]) + 2 > wire.UDP_PLAIN_MAX

    def pick(self, query: bytes, udp: bool) -> bytes:
        tails = next(self.cycle)
        if udp and self.big:
            end = query.find(0, wire.HEADER_LEN) + 5
            if len(tails[0]) + 2 > wire.edns_udp_size(query, end):
                tails = self.trunc
        return query[:2] + tails[query[2] & wire.RD]


def _rd_pair(tail: bytes) -> tuple[bytes, bytes]:
    """The response tail (flags onward) with RD clear and with RD set."""
    return tail, bytes((tail[0] | wire.RD,)) + tail[1:]


def _orders(values: list[str]) -> list[list[str]]:
    n = len(values)
    if n < 2:
        return [values]
    base = list(values)
    random.shuffle(base)
    k = min(n, ROTATIONS)
    return [base[s:] + base[:s] for s in (j * n // k for j in range(k))]


class AnswerCache:
    def __init__(self, names: NameTable, ttl: int = TTL, max_entries: int = MAX_ENTRIES):
        self.names = names
        self.ttl = ttl
        self.max_entries = max_entries
        # networks -> question bytes -> tuple (rd0, rd1) | _Multi | FORWARD
        self._tables: dict[frozenset[str], dict[bytes, object]] = {}
        names.subscribe(self.invalidate)

    def close(self) -> None:
        self.names.unsubscribe(self.invalidate)

    def invalidate(self) -> None:
        """Drop every pre-encoded answer (any thread; atomic)."""
        self._tables = {}

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    # ---------------------------------------------------------------- hot path
    def answer(self, networks: frozenset[str], query: bytes, udp: bool = True):
        """bytes (the response), FORWARD, or None (not cached: call build())."""
        try:
            if query[2] & 0xF8 or query[4:6] != b"\x00\x01":  # QR or opcode, QDCOUNT
                return None
            v = self._tables[networks][query[12:query.find(0, 12) + 5]]
        except (KeyError, IndexError, TypeError):  # TypeError: a bytearray query
            return None
        if v.__class__ is tuple:
            return query[:2] + v[query[2] & 1]
        if v is FORWARD:
            return FORWARD
        return v.pick(query, udp)

    def table(self, networks: frozenset[str]) -> dict[bytes, object] | None:
        """The question -> answer dict of a network set, for a caller that inlines
        `answer` over a batch (None: nothing cached for it yet)."""
        return self._tables.get(networks)

    def lookup(self, networks: frozenset[str], query: bytes, udp: bool = True):
        """answer(), falling back to build(): bytes, FORWARD or DROP."""
        query = bytes(query)
        r = self.answer(networks, query, udp)
        return self.build(networks, query, udp) if r is None else r

    # ---------------------------------------------------------------- slow path
    def build(self, networks: frozenset[str], query: bytes, udp: bool = True):
        """Answer a query the cache does not know: bytes, FORWARD or DROP.

        Malformed queries get FORMERR (not cached), other opcodes NOTIMP, responses and
        runts are dropped.
        """
        tables = self._tables  # captured first: see the module docstring
        query = bytes(query)
        if len(query) < wire.HEADER_LEN or query[2] & wire.QR:
            return DROP
        if query[2] & wire.OPCODE_MASK:
            return wire.error_response(query, wire.NOTIMP, -1)
        if query[4:6] != b"\x00\x01":
            return wire.error_response(query, wire.FORMERR, -1)
        qend = wire.question_end(query)
        if qend < 0:
            return wire.error_response(query, wire.FORMERR, -1)
        try:
            dnslib.DNSRecord.parse(query)
        except Exception:  # dnslib raises several kinds; all mean malformed
            return wire.error_response(query, wire.FORMERR, qend)
        question = query[wire.HEADER_LEN:qend]
        cacheable = query.find(0, wire.HEADER_LEN) + 5 == qend
        qtype, qclass = wire.qtype_qclass(query, qend)
        value: object
        if qclass not in (wire.QCLASS_IN, wire.QCLASS_ANY):
            value = FORWARD  # CHAOS (version.bind) and friends: not ours
        else:
            found = self.names.resolve(networks, wire.qname_text(query, qend), qtype)
            value = FORWARD if found is None else self._encode(question, qtype, found)
        if cacheable:
            t = tables.get(networks)
            if t is None:
                t = tables[networks] = {}
            elif len(t) >= self.max_entries:
                t.clear()
            t[question] = value
        if value is FORWARD:
            return FORWARD
        if value.__class__ is tuple:
            return query[:2] + value[query[2] & wire.RD]
        return value.pick(query, udp)

    def _encode(self, question: bytes, qtype: int, values: list[str]):
        if qtype not in (wire.QTYPE_A, wire.QTYPE_AAAA, wire.QTYPE_PTR):
            values = []
        elif qtype != wire.QTYPE_PTR:  # what fits in one TCP message (~4000 IPv4)
            per = 12 + (4 if qtype == wire.QTYPE_A else 16)
            values = values[:(0xFFFF - wire.HEADER_LEN - len(question)) // per]
        tails = [_rd_pair(wire.encode_answer(question, qtype, order, self.ttl))
                 for order in _orders(values)]
        if len(tails) == 1 and len(tails[0][0]) + 2 <= wire.UDP_PLAIN_MAX:
            return tails[0]
        full = tails[0][0]
        trunc = (bytes((full[0] | wire.TC, full[1])) + b"\x00\x01\x00\x00\x00\x00\x00\x00"
                 + question)
        return _Multi(tails, _rd_pair(trunc))
