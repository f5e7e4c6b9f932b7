"""DNS wire format at the byte level: just what the resolver needs, no parsing library.

The hot path (answers.py) and the forwarder (forwarder.py) work on raw message bytes:
they look at a few header bytes, find where the question section ends, build error
responses by copying the question, and encode A/AAAA/PTR answers by hand (so that the
question is echoed byte for byte, 0x20 case randomisation included). dnslib is used only
on the slow path, to validate a message we have not seen before.

Header (RFC 1035 4.1.1), offsets into the message:
  0-1 id · 2 QR|OPCODE(4)|AA|TC|RD · 3 RA|Z|AD|CD|RCODE(4) · 4-5 QDCOUNT · 6-7 ANCOUNT
  8-9 NSCOUNT · 10-11 ARCOUNT · 12.. question (QNAME, QTYPE, QCLASS)
"""

from __future__ import annotations

import socket

HEADER_LEN = 12
#: the largest UDP response a client that sent no EDNS OPT record accepts
UDP_PLAIN_MAX = 512
MAX_NAME = 255
MAX_LABEL = 63

QTYPE_A = 1
QTYPE_PTR = 12
QTYPE_AAAA = 28
QTYPE_OPT = 41
QCLASS_IN = 1
QCLASS_ANY = 255

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5

# byte 2
QR = 0x80
OPCODE_MASK = 0x78
AA = 0x04
TC = 0x02
RD = 0x01
# byte 3
RA = 0x80
RCODE_MASK = 0x0F


def question_end(data: bytes) -> int:
    """Offset just past the first question (QNAME QTYPE QCLASS), or -1 if malformed.

    Strict: no compression pointers (the first name of a message has nothing to point
    back to), labels of at most 63 bytes, names of at most 255 bytes on the wire.
    """
    n = len(data)
    i = HEADER_LEN
    while True:
        if i >= n:
            return -1
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln > MAX_LABEL:  # 0xC0 pointers and the reserved 0x40/0x80 label types
            return -1
        i += ln + 1
        if i - HEADER_LEN > MAX_NAME - 1:
            return -1
    if i + 4 > n:
        return -1
    return i + 4


def qname_text(data: bytes, qend: int) -> str:
    """The question's name, lowercase ASCII, no trailing dot ('' for the root)."""
    labels = []
    i = HEADER_LEN
    end = qend - 4
    while i < end - 1:
        ln = data[i]
        labels.append(data[i + 1:i + 1 + ln])
        i += ln + 1
    return b".".join(labels).decode("latin-1").lower()


def qtype_qclass(data: bytes, qend: int) -> tuple[int, int]:
    return (data[qend - 4] << 8) | data[qend - 3], (data[qend - 2] << 8) | data[qend - 1]


def edns_udp_size(data: bytes, qend: int) -> int:
    """The UDP payload size the client accepts: its EDNS OPT size (at least 512) or 512.

    Looks only at an OPT record placed right after the question with no answer or
    authority records before it, which is where every stub resolver puts it.
    """
    if (
        data[10:12] != b"\x00\x00"
        and data[6:10] == b"\x00\x00\x00\x00"
        and len(data) >= qend + 11
        and data[qend] == 0
        and data[qend + 1] == 0
        and data[qend + 2] == QTYPE_OPT
    ):
        return max(UDP_PLAIN_MAX, (data[qend + 3] << 8) | data[qend + 4])
    return UDP_PLAIN_MAX


def error_response(data: bytes, rcode: int, qend: int | None = None) -> bytes | None:
    """A response to `data` carrying `rcode`, echoing its question (if well-formed).

    None when `data` cannot be answered at all (shorter than a header, or a response).
    """
    if len(data) < HEADER_LEN or data[2] & QR:
        return None
    if qend is None:
        qend = question_end(data) if data[4:6] == b"\x00\x01" else -1
    b2 = QR | (data[2] & (OPCODE_MASK | RD))
    b3 = RA | rcode
    if qend > 0:
        return (data[:2] + bytes((b2, b3)) + b"\x00\x01\x00\x00\x00\x00\x00\x00"
                + data[HEADER_LEN:qend])
    return data[:2] + bytes((b2, b3)) + b"\x00" * 8


def truncated(response: bytes, qend: int) -> bytes:
    """`response` cut to its header and question, with TC set (the client retries on TCP)."""
    return (response[:2] + bytes((response[2] | TC, response[3]))
            + b"\x00\x01\x00\x00\x00\x00\x00\x00" + response[HEADER_LEN:qend])


def encode_name(name: str) -> bytes:
    """`name` (dotted, trailing dot optional) as uncompressed wire labels."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if not label:
            continue
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if len(raw) > MAX_LABEL:
            raise ValueError(f"DNS label too long: {label!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"DNS name too long: {name!r}")
    return bytes(out)


def rdata(qtype: int, value: str) -> bytes:
    if qtype == QTYPE_A:
        return socket.inet_pton(socket.AF_INET, value)
    if qtype == QTYPE_AAAA:
        return socket.inet_pton(socket.AF_INET6, value)
    if qtype == QTYPE_PTR:
        return encode_name(value)
    raise ValueError(f"no encoder for type {qtype}")


def encode_answer(question: bytes, qtype: int, values: list[str], ttl: int,
                  rcode: int = NOERROR) -> bytes:
    """A full response without its 2-byte id: flags (QR, RA; RD left clear), counts,
    the question bytes as asked, then one record per value whose owner is a pointer to
    the question name (offset 12)."""
    rr_head = b"\xc0\x0c" + qtype.to_bytes(2, "big") + b"\x00\x01" + ttl.to_bytes(4, "big")
    records = b"".join(
        rr_head + len(rd).to_bytes(2, "big") + rd
        for rd in (rdata(qtype, v) for v in values)
    )
    return (bytes((QR, RA | rcode)) + b"\x00\x01" + len(values).to_bytes(2, "big")
            + b"\x00\x00\x00\x00" + question + records)
