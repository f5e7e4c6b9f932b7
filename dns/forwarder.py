"""Forwarding of names that are not ours to upstream resolvers (asyncio, one loop).

Per query: the upstreams are tried in order (at most `max_servers`, 3 like Docker and
glibc). Each gets `timeout` seconds (default 2 s), and the whole forward at most
`budget` seconds (default 4.5 s: a SERVFAIL reaches a glibc stub, whose own timeout is
5 s, before it gives up on us). Over UDP first; a truncated (TC) answer is asked again
over TCP. SERVFAIL or REFUSED from a server, a timeout, or an ICMP port unreachable
(each query has its own connected socket, so a resolver that is down fails over at once
instead of after the timeout) moves to the next server; when all fail the client gets
SERVFAIL. Any other answer (NXDOMAIN included) is passed through with the client's id.

The query is forwarded as the client sent it (its EDNS OPT included) under a new random
id and from a new random source port; a reply is accepted only from the server's
address and port, with the forwarded id, as a response, and with the same question.
When the TCP retry returns more than the UDP client accepts (512 bytes, or its EDNS
size), the client gets the truncated answer and retries over TCP itself.

Where queries leave from (`Upstream.via_host`): like Docker, upstreams on the host's
loopback (127.0.0.53 of systemd-resolved, ...) are reached from cnetd's own namespace,
every other upstream from the asking sandbox's namespace (so the container's routes and
firewall apply, and an on-net resolver given with `--dns` is reachable). Sockets for a
sandbox are made by the loop thread itself between two setns(2) calls (into the
sandbox's namespace, held open as an fd, and back); they stay in that namespace.
`upstreams_from_resolv_conf()` marks upstreams as Docker does.

In-flight bound: at most `max_inflight` forwards per sandbox (default 1024, Docker's
current cap; its former cap of 100 was a top complaint) and `max_inflight_total` over
all sandboxes (default 4096, each in-flight forward holds a socket); beyond either the
client gets REFUSED at once and `refused` is counted.

Internal networks never forward: the server answers SERVFAIL itself for names that are
not ours (what a Docker container on an `--internal` network gets), see server.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from cnet.cnm.osl.nsenter import setns_fd
from cnet.dns import wire

DEFAULT_TIMEOUT = 2.0
DEFAULT_BUDGET = 4.5
MAX_SERVERS = 3
MAX_INFLIGHT = 1024
MAX_INFLIGHT_TOTAL = 4096
#: idle pre-made UDP sockets kept per sandbox namespace (each forward uses a fresh one)
POOL = 4

log = logging.getLogger("cnet.dns")
#: the resolver's own address: never an upstream
OWN_ADDRESS = "127.0.0.11"


@dataclass(frozen=True)
class Upstream:
    """An upstream resolver. `via_host`: query it from cnetd's namespace, not the sandbox's."""

    ip: str
    port: int = 53
    via_host: bool = False

    def __post_init__(self) -> None:
        try:
            addr = ipaddress.ip_address(self.ip)
        except ValueError as exc:
            raise ValueError(f"invalid DNS server address {self.ip!r}") from exc
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"invalid DNS server port {self.port!r}")
        object.__setattr__(self, "ip", addr.compressed)
        object.__setattr__(self, "port", int(self.port))

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.ip else socket.AF_INET

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}" + (" (host)" if self.via_host else "")


def upstreams_from_resolv_conf(text: str, own: str = OWN_ADDRESS) -> list[Upstream]:
    """`nameserver` lines of a resolv.conf, Docker's way: loopback ones via the host
    namespace, the others from the sandbox; our own address and scoped IPv6 (fe80::1%eth0)
    skipped."""
    out: list[Upstream] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver" or "%" in parts[1]:
            continue
        try:
            addr = ipaddress.ip_address(parts[1])
        except ValueError:
            continue
        if addr.compressed == own:
            continue
        up = Upstream(addr.compressed, via_host=addr.is_loopback)
        if up not in out:
            out.append(up)
    return out


@dataclass
class ForwardResult:
    response: bytes | None  # None: nothing to send (the query could not be answered)
    outcome: str            # "answered" | "failed" | "refused"
    source: str             # the upstream that answered, or why not


@dataclass
class Origin:
    """Where one sandbox's forwards leave from (its namespace), with its in-flight count.

    Holds an fd of the namespace (opened by `Forwarder.origin`, closed by `close`) and a
    few idle UDP sockets made in it."""

    netns: str | None
    ns_fd: int | None = None
    inflight: int = 0
    closed: bool = False
    pools: dict[int, list[socket.socket]] = field(default_factory=dict)

    def close(self) -> None:
        self.closed = True
        for pool in self.pools.values():
            for s in pool:
                s.close()
        self.pools.clear()
        if self.ns_fd is not None:
            os.close(self.ns_fd)
            self.ns_fd = None


def _new_socket(family: int, type_: int) -> socket.socket:
    return socket.socket(family, type_ | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


class _Reply:
    """Reader for one forwarded UDP query on its own connected socket."""

    __slots__ = ("fut", "fid", "question")

    def __init__(self, fut: asyncio.Future, fid: bytes, question: bytes):
        self.fut = fut
        self.fid = fid
        self.question = question

    def ready(self, sock: socket.socket) -> None:
        while not self.fut.done():
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ECONNREFUSED: ICMP port unreachable
                self.fut.set_exception(exc)
                return
            if _valid_reply(data, self.fid, self.question):
                self.fut.set_result(data)


def _valid_reply(data: bytes, fid: bytes, question: bytes) -> bool:
    return (
        len(data) >= wire.HEADER_LEN + len(question)
        and data[:2] == fid
        and data[2] & wire.QR
        and data[4:6] == b"\x00\x01"
        and data[wire.HEADER_LEN:wire.HEADER_LEN + len(question)].lower() == question
    )


class Forwarder:
    """Forwards raw queries for every sandbox from one asyncio loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        budget: float = DEFAULT_BUDGET,
        max_servers: int = MAX_SERVERS,
        max_inflight: int = MAX_INFLIGHT,
        max_inflight_total: int = MAX_INFLIGHT_TOTAL,
    ) -> None:
        self.loop = loop
        self.timeout = timeout
        self.budget = budget
        self.max_servers = max_servers
        self.max_inflight = max_inflight
        self.max_inflight_total = max_inflight_total
        self.inflight = 0
        #: counters over all sandboxes
        self.refused = 0
        self.tcp_retries = 0
        self.upstream_failures = 0
        self.host = Origin(None)
        # the loop thread's own namespace, to come back to after making sandbox sockets
        self._home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def origin(self, netns: str | None) -> Origin:
        """The origin of a sandbox (any thread): opens the namespace at `netns`."""
        if netns is None:
            return Origin(None)
        return Origin(netns, os.open(netns, os.O_RDONLY | os.O_CLOEXEC))

    def close(self) -> None:
        self.host.close()
        if self._home_fd is not None:
            os.close(self._home_fd)
            self._home_fd = None

    # ------------------------------------------------------------------ sockets
    def _make(self, origin: Origin, family: int, type_: int, n: int) -> list[socket.socket]:
        """n new sockets in the origin's namespace, made on the loop thread itself.

        setns(2) moves only this thread, and nothing else runs on it until it is back
        home: two syscalls, where a helper thread would wait for the GIL (up to 5 ms)."""
        if origin.closed:
            raise OSError("sandbox removed")
        if origin.ns_fd is None:
            return [_new_socket(family, type_) for _ in range(n)]
        out: list[socket.socket] = []
        setns_fd(origin.ns_fd)
        try:
            for _ in range(n):
                out.append(_new_socket(family, type_))
        except OSError:
            for s in out:
                s.close()
            raise
        finally:
            try:
                setns_fd(self._home_fd)
            except OSError as exc:  # cannot happen with an fd we hold; never go on silently
                log.critical("dns: the loop thread cannot return to its namespace: %s", exc)
                raise RuntimeError("DNS loop thread stuck in a sandbox namespace") from exc
        return out

    def _udp_socket(self, origin: Origin, family: int) -> socket.socket:
        pool = origin.pools.setdefault(family, [])
        if not pool:
            pool.extend(self._make(origin, family, socket.SOCK_DGRAM,
                                   1 if origin.ns_fd is None else POOL))
        return pool.pop()

    # ------------------------------------------------------------------ exchanges
    async def _udp(self, origin: Origin, up: Upstream, fwd: bytes, question: bytes,
                   timeout: float) -> bytes:
        sock = self._udp_socket(origin, up.family)
        fd = sock.fileno()
        try:
            sock.connect(up.addr)
            sock.send(fwd)
            reply = _Reply(self.loop.create_future(), fwd[:2], question)
            self.loop.add_reader(fd, reply.ready, sock)
            try:
                async with asyncio.timeout(timeout):
                    return await reply.fut
            finally:
                self.loop.remove_reader(fd)
        finally:
            sock.close()

    async def _tcp(self, origin: Origin, up: Upstream, fwd: bytes, question: bytes,
                   timeout: float) -> bytes:
        sock = self._make(origin, up.family, socket.SOCK_STREAM, 1)[0]
        async with asyncio.timeout(timeout):
            try:
                await self.loop.sock_connect(sock, up.addr)
                await self.loop.sock_sendall(sock, len(fwd).to_bytes(2, "big") + fwd)
                n = int.from_bytes(await self._recv_exactly(sock, 2), "big")
                data = await self._recv_exactly(sock, n)
            finally:
                sock.close()
        if not _valid_reply(data, fwd[:2], question):
            raise OSError("invalid TCP reply")
        return data

    async def _recv_exactly(self, sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = await self.loop.sock_recv(sock, n - len(buf))
            if not chunk:
                raise OSError("connection closed by the server")
            buf += chunk
        return bytes(buf)

    # ------------------------------------------------------------------ forward
    async def forward(self, query: bytes, upstreams: Sequence[Upstream], origin: Origin,
                      udp_limit: int | None = wire.UDP_PLAIN_MAX) -> ForwardResult:
        """Forward `query` (raw bytes, the client's id) for the sandbox of `origin`.

        `udp_limit`: the size the UDP client accepts (None: the client is on TCP).
        """
        qend = wire.question_end(query)
        if qend < 0 or query[2] & wire.QR:
            return ForwardResult(wire.error_response(query, wire.FORMERR), "failed",
                                 "malformed query")
        if origin.inflight >= self.max_inflight or self.inflight >= self.max_inflight_total:
            self.refused += 1
            return ForwardResult(wire.error_response(query, wire.REFUSED, qend), "refused",
                                 "too many forwards in flight")
        if not upstreams:
            return ForwardResult(wire.error_response(query, wire.SERVFAIL, qend), "failed",
                                 "no upstream servers")
        origin.inflight += 1
        self.inflight += 1
        try:
            return await self._forward(query, qend, upstreams, origin, udp_limit)
        finally:
            origin.inflight -= 1
            self.inflight -= 1

    async def _forward(self, query: bytes, qend: int, upstreams: Sequence[Upstream],
                       origin: Origin, udp_limit: int | None) -> ForwardResult:
        question = query[wire.HEADER_LEN:qend].lower()
        deadline = self.loop.time() + self.budget
        why = []
        for up in upstreams[:self.max_servers]:
            left = deadline - self.loop.time()
            if left <= 0:
                why.append(f"{up}: no time left")
                break
            t = min(self.timeout, left)
            src = self.host if up.via_host else origin
            fwd = os.urandom(2) + query[2:]  # a new unpredictable id
            try:
                resp = await self._udp(src, up, fwd, question, t)
            except TimeoutError:
                self.upstream_failures += 1
                why.append(f"{up}: timeout after {t:.1f}s")
                continue
            except OSError as exc:
                self.upstream_failures += 1
                why.append(f"{up}: {exc.strerror or exc}")
                continue
            proto = "udp"
            if resp[2] & wire.TC:
                self.tcp_retries += 1
                try:
                    resp = await self._tcp(src, up, fwd, question,
                                           max(0.05, deadline - self.loop.time()))
                    proto = "tcp"
                except (TimeoutError, OSError):
                    pass  # the client gets the truncated answer and retries over TCP
            rcode = resp[3] & wire.RCODE_MASK
            if rcode in (wire.SERVFAIL, wire.REFUSED):
                self.upstream_failures += 1
                why.append(f"{up}: {'SERVFAIL' if rcode == wire.SERVFAIL else 'REFUSED'}")
                continue
            resp = query[:2] + resp[2:]
            if udp_limit is not None and len(resp) > udp_limit:
                resp = wire.truncated(resp, qend)
            return ForwardResult(resp, "answered", f"{up}/{proto}")
        return ForwardResult(wire.error_response(query, wire.SERVFAIL, qend), "failed",
                             "; ".join(why) or "no upstream tried")

