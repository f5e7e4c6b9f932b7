"""The probe `cnet trace` sends: one ICMP echo, TCP SYN or UDP datagram from inside a
namespace, with a known identity (ICMP identifier or the probe's own source port) so
that its packets can be told apart everywhere, and the answer it got.

The kernel does the work: the TCP probe is a real non-blocking connect (SYN, then
SYN-ACK or RST), the UDP probe a connected datagram socket (which reports an ICMP port
unreachable as ECONNREFUSED). Only the ICMP echo is built by hand (a raw socket).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from cnet.cnm.osl.nsenter import in_netns

PAYLOAD = b"cnet-trace"
ICMP_ECHO, ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_TIME_EXCEEDED = 8, 0, 3, 11
ICMP6_ECHO, ICMP6_ECHO_REPLY, ICMP6_UNREACH = 128, 129, 1
PROTOS = ("icmp", "tcp", "udp")


@dataclass
class Answer:
    """What came back. `kind`: `answer` (the destination answered: echo-reply, SYN-ACK,
    RST, a UDP reply or port unreachable), `error` (an ICMP error or a local one: the
    destination was not reached), `none`."""

    kind: str
    what: str  # "echo-reply", "SYN-ACK (port open)", "RST (port closed)", "no answer", ...
    rtt_ms: float | None = None

    @property
    def answered(self) -> bool:
        return self.kind == "answer"


def _source_for(family: int, dst: str) -> str | None:
    """The address the kernel would send from to `dst` (a connected UDP socket sends
    nothing); None when there is no route."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, 9))
        except OSError:
            return None
        return s.getsockname()[0]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class Probe:
    """Open it (socket made inside `netns`, identity known), then send() and wait()."""

    def __init__(self, netns: str, proto: str, dst: str, port: int | None = None):
        if proto not in PROTOS:
            raise ValueError(f"unknown protocol {proto!r}")
        self.netns, self.proto, self.dst, self.port = netns, proto, dst, port
        self.v6 = ":" in dst
        self.ident = 0
        self.src: str | None = None  # the source address the kernel picks (None: no route)
        self._sock: socket.socket | None = None
        self._sent = 0.0

    def open(self) -> Probe:
        """Make the probe's socket inside the namespace, bound to the source address
        the kernel would pick for DST (so that the probe's flow is known exactly
        before it is sent); raises OSError when the namespace cannot be entered."""
        family = socket.AF_INET6 if self.v6 else socket.AF_INET
        with in_netns(self.netns):
            self.src = _source_for(family, self.dst)
            if self.proto == "icmp":
                proto = socket.IPPROTO_ICMPV6 if self.v6 else socket.IPPROTO_ICMP
                sock = socket.socket(family, socket.SOCK_RAW, proto)
            else:
                kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
                sock = socket.socket(family, kind)
            try:
                sock.bind((self.src or ("::" if self.v6 else "0.0.0.0"), 0))
                if self.proto == "icmp":
                    self.ident = int.from_bytes(os.urandom(2), "big") or 1
                else:
                    self.ident = sock.getsockname()[1]
            except BaseException:
                sock.close()
                raise
        sock.setblocking(False)
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            if self.proto == "tcp":  # reset rather than linger in TIME_WAIT
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Probe:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self) -> str | None:
        """Send the probe; an error string when the kernel refuses at once (no route)."""
        assert self._sock is not None
        self._sent = time.monotonic()
        try:
            if self.proto == "icmp":
                kind = ICMP6_ECHO if self.v6 else ICMP_ECHO
                hdr = struct.pack("!BBHHH", kind, 0, 0, self.ident, 1) + PAYLOAD
                if not self.v6:  # the kernel sums ICMPv6 itself
                    hdr = hdr[:2] + struct.pack("!H", _checksum(hdr)) + hdr[4:]
                self._sock.sendto(hdr, (self.dst, 0))
            elif self.proto == "tcp":
                err = self._sock.connect_ex((self.dst, self.port))
                if err not in (0, errno.EINPROGRESS):
                    return os.strerror(err)
            else:
                self._sock.connect((self.dst, self.port))
                self._sock.send(PAYLOAD)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def wait(self, timeout: float) -> Answer:
        """The answer, or `no answer` after `timeout` seconds."""
        assert self._sock is not None
        deadline = self._sent + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Answer("none", "no answer")
            want_write = self.proto == "tcp"
            r, w, _ = select.select([] if want_write else [self._sock],
                                    [self._sock] if want_write else [], [], left)
            if not r and not w:
                continue
            rtt = (time.monotonic() - self._sent) * 1000
            answer = self._read()
            if answer is not None:
                answer.rtt_ms = round(rtt, 3)
                if self.proto == "tcp":
                    self.close()  # a reset now: the trace shows the handshake, no more
                return answer

    def _read(self) -> Answer | None:
        assert self._sock is not None
        if self.proto == "tcp":
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                return Answer("answer", "SYN-ACK (port open)")
            if err == errno.ECONNREFUSED:
                return Answer("answer", "RST (port closed)")
            return Answer("error", os.strerror(err))
        if self.proto == "udp":
            try:
                self._sock.recv(4096)
                return Answer("answer", "UDP reply")
            except ConnectionRefusedError:
                return Answer("answer", "ICMP port unreachable (nothing listening)")
            except BlockingIOError:
                return None
            except OSError as exc:
                return Answer("error", exc.strerror or str(exc))
        try:
            data, sender = self._sock.recvfrom(4096)
        except BlockingIOError:
            return None
        icmp = data if self.v6 else data[(data[0] & 0x0F) * 4:]  # v4 raw has the IP header
        if len(icmp) < 8:
            return None
        kind = icmp[0]
        ident = struct.unpack_from("!H", icmp, 4)[0]
        if kind == (ICMP6_ECHO_REPLY if self.v6 else ICMP_ECHO_REPLY) and ident == self.ident:
            return Answer("answer", "echo-reply")
        if kind in ((ICMP6_UNREACH,) if self.v6 else (ICMP_UNREACH, ICMP_TIME_EXCEEDED)):
            # the offending packet's header (IPv6: 40 bytes), then its ICMP header
            inner = icmp[48:] if self.v6 else icmp[8 + (icmp[8] & 0x0F) * 4:]
            if len(inner) >= 8 and struct.unpack_from("!H", inner, 4)[0] == self.ident:
                what = "ICMP destination unreachable" if kind in (
                    ICMP_UNREACH, ICMP6_UNREACH) else "ICMP time exceeded"
                return Answer("error", f"{what} from {sender[0]}")
        return None  # someone else's ICMP
