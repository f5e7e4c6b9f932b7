"""DNSServer: the embedded resolver at 127.0.0.11:53 (UDP and TCP) of every sandbox.

One asyncio loop on its own thread serves every sandbox; no process per container.

    names = NameTable()                        # the controller keeps it up to date
    dns = DNSServer(names).start()
    dns.add_sandbox(sb.id, sb.netns_path, frozenset(net ids), internal=False,
                    upstreams=[Upstream("192.0.2.1")])
    dns.update_sandbox(sb.id, networks=...)    # on connect/disconnect
    dns.remove_sandbox(sb.id)
    dns.close()

`add_sandbox` opens the two listening sockets on the *calling* thread, inside the
sandbox's namespace (`in_netns`: setns switches only that thread, and a socket stays in
the namespace it was created in), with IP_FREEBIND so that binding works even before
the sandbox's lo is up. The loop then serves them.

Per UDP packet: the answer cache is tried first (see answers.py: a hit is a dict lookup
and a bytes concatenation); up to `UDP_BATCH` datagrams are read per readiness event with
one recvmmsg and the cache hits among them answered with one sendmmsg (mmsg.py; plain
recvfrom/sendto where those calls are missing).
Misses go through `AnswerCache.build`; names that are not ours are forwarded
(forwarder.py) unless the sandbox is on an internal network: then the client gets
SERVFAIL at once, without any upstream traffic (Docker's answer on `--internal`
networks; REFUSED would be as valid, but clients see the same failure, and SERVFAIL is
what Docker users and their tooling know).

TCP: 2-byte length framing, any number of queries per connection, answered as they
come (forwarded ones possibly out of order, RFC 7766); a connection idle for
`tcp_idle` seconds is closed; at most `max_tcp_conns` per sandbox (more are closed at
once). A client that connects and sends nothing blocks no one.

Thread safety: every public method may be called from any thread except the loop's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import dnslib
from cnet.cnm.osl.nsenter import in_netns
from cnet.dns import mmsg, wire
from cnet.dns.answers import DROP, FORWARD, AnswerCache
from cnet.dns.forwarder import (
    DEFAULT_BUDGET,
    DEFAULT_TIMEOUT,
    MAX_INFLIGHT,
    MAX_INFLIGHT_TOTAL,
    Forwarder,
    Origin,
    Upstream,
)
from cnet.dns.names import NameTable

log = logging.getLogger("cnet.dns")

ADDRESS = "127.0.0.11"
PORT = 53
UDP_BATCH = 64
TCP_IDLE = 10.0
MAX_TCP_CONNS = 128
#: the largest query we read over UDP (a query is a question and an OPT record)
MAX_QUERY = 4096
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)

STAT_FIELDS = ("queries", "local", "forwarded", "failed", "refused", "malformed", "dropped")


@dataclass
class Stats:
    """Counters of one sandbox. queries = local + forwarded + failed + refused +
    malformed + dropped (+ forwards still in flight)."""

    queries: int = 0    # every message received
    local: int = 0      # answered from the name table (cache hits included)
    forwarded: int = 0  # answered by an upstream (NXDOMAIN included)
    failed: int = 0     # SERVFAIL: every upstream failed, none configured, internal network
    refused: int = 0    # REFUSED: too many forwards in flight
    malformed: int = 0  # FORMERR / NOTIMP sent back
    dropped: int = 0    # nothing sent: responses, runts, a send that failed

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in STAT_FIELDS}


@dataclass(frozen=True)
class QueryResult:
    response: bytes | None  # None: the query gets no answer (dropped)
    source: str             # "local", "upstream 192.0.2.1:53/udp", "internal network", ...


@dataclass(eq=False)
class _Sandbox:
    id: str
    netns: str
    networks: frozenset[str]
    internal: bool
    upstreams: tuple[Upstream, ...]
    udp: socket.socket
    tcp: socket.socket
    origin: Origin
    stats: Stats = field(default_factory=Stats)
    tcp_server: asyncio.AbstractServer | None = None
    conns: set = field(default_factory=set)
    tasks: set = field(default_factory=set)
    closed: bool = False


def _upstreams(values: Iterable[Upstream | str]) -> tuple[Upstream, ...]:
    return tuple(v if isinstance(v, Upstream) else Upstream(str(v)) for v in values)


def open_listeners(netns_path: str, address: str = ADDRESS, port: int = PORT
                   ) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets bound to address:port inside `netns_path` (this thread enters
    it for the duration). Raises OSError naming the namespace on failure."""
    made: list[socket.socket] = []
    try:
        with in_netns(netns_path):
            flags = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | flags)
            made.append(udp)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | flags)
            made.append(tcp)
            for s in made:
                s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            udp.bind((address, port))
            tcp.bind((address, port))
            tcp.listen(128)
    except OSError as exc:
        for s in made:
            s.close()
        raise OSError(exc.errno, f"DNS listener {address}:{port} in {netns_path}: "
                                 f"{exc.strerror or exc}") from exc
    return udp, tcp


class DNSServer:
    def __init__(
        self,
        names: NameTable,
        *,
        address: str = ADDRESS,
        port: int = PORT,
        timeout: float = DEFAULT_TIMEOUT,
        budget: float = DEFAULT_BUDGET,
        max_inflight: int = MAX_INFLIGHT,
        max_inflight_total: int = MAX_INFLIGHT_TOTAL,
        tcp_idle: float = TCP_IDLE,
        max_tcp_conns: int = MAX_TCP_CONNS,
    ) -> None:
        self.names = names
        self.address = address
        self.port = port
        self.tcp_idle = tcp_idle
        self.max_tcp_conns = max_tcp_conns
        self.cache = AnswerCache(names)
        self._fwd_opts = dict(timeout=timeout, budget=budget, max_inflight=max_inflight,
                              max_inflight_total=max_inflight_total)
        self.forwarder: Forwarder | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sandboxes: dict[str, _Sandbox] = {}
        #: counters of removed sandboxes, so that totals never go backwards
        self._retired = Stats()
        self._lock = threading.Lock()  # add/remove from several threads
        self._closed = False
        #: recvmmsg/sendmmsg buffers, shared by every sandbox (one loop thread); None:
        #: recvfrom/sendto per datagram
        self._batch = mmsg.open_batch(UDP_BATCH)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DNSServer:
        """Start the loop thread (in the calling thread's network namespace: upstreams
        marked via_host are queried from there). Idempotent."""
        if self._closed:
            raise RuntimeError("a closed DNSServer cannot be started again")
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self.forwarder = Forwarder(loop, **self._fwd_opts)
            except BaseException as exc:
                failed.append(exc)
                loop.close()
                return
            finally:
                ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="cnet-dns", daemon=True)
        thread.start()
        ready.wait()
        if failed:
            thread.join()
            raise failed[0]
        self.loop = loop
        self._thread = thread
        return self

    def close(self) -> None:
        """Remove every sandbox, stop the loop and join its thread. Final."""
        self._closed = True
        if self._thread is None or self.loop is None:
            self.cache.close()
            return
        for sid in list(self._sandboxes):
            with contextlib.suppress(Exception):
                self.remove_sandbox(sid)

        async def stop() -> None:
            if self.forwarder is not None:
                self.forwarder.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(stop(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self.cache.close()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro, timeout: float | None = 30):
        if self.loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("DNS server not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("DNSServer methods cannot be called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # ------------------------------------------------------------------ sandboxes
    def add_sandbox(self, sandbox_id: str, netns_path: str, networks: Iterable[str],
                    internal: bool = False, upstreams: Iterable[Upstream | str] = ()
                    ) -> None:
        """Serve 127.0.0.11:53 (UDP, TCP) inside `netns_path` for this sandbox.

        `networks`: the ids of the networks it is attached to (what it can resolve);
        `internal`: True if any of them is internal (then nothing is forwarded);
        `upstreams`: where other names go, in order (Upstream or IP strings).
        Raises ValueError if the sandbox is already served, OSError if the sockets cannot
        be opened (then nothing is left behind).
        """
        ups = _upstreams(upstreams)
        nets = frozenset(networks)
        with self._lock:
            if sandbox_id in self._sandboxes:
                raise ValueError(f"sandbox {sandbox_id} already has a DNS resolver")
            if self.forwarder is None:
                raise RuntimeError("DNS server not started")
            udp, tcp = open_listeners(netns_path, self.address, self.port)
            origin = None
            try:
                origin = self.forwarder.origin(netns_path)
                sb = _Sandbox(sandbox_id, netns_path, nets, bool(internal), ups, udp, tcp,
                              origin)
                self._call(self._attach(sb))
            except BaseException:
                udp.close()
                tcp.close()
                if origin is not None:
                    origin.close()
                raise
            self._sandboxes[sandbox_id] = sb

    def update_sandbox(self, sandbox_id: str, networks: Iterable[str] | None = None,
                       internal: bool | None = None,
                       upstreams: Iterable[Upstream | str] | None = None) -> None:
        """Change what a served sandbox sees (None: unchanged). KeyError if not served."""
        sb = self._sandboxes[sandbox_id]
        nets = frozenset(networks) if networks is not None else None
        ups = _upstreams(upstreams) if upstreams is not None else None

        async def apply() -> None:
            if nets is not None:
                sb.networks = nets
            if internal is not None:
                sb.internal = bool(internal)
            if ups is not None:
                sb.upstreams = ups

        self._call(apply())

    def remove_sandbox(self, sandbox_id: str) -> bool:
        """Close the sandbox's sockets and connections, cancel its forwards.
        False if it was not served."""
        with self._lock:
            sb = self._sandboxes.pop(sandbox_id, None)
            if sb is None:
                return False
            try:
                self._call(self._detach(sb))
            finally:
                sb.udp.close()
                sb.tcp.close()
                for k in STAT_FIELDS:
                    setattr(self._retired, k, getattr(self._retired, k)
                            + getattr(sb.stats, k))
            return True

    def sandboxes(self) -> list[str]:
        return list(self._sandboxes)

    def serves(self, sandbox_id: str) -> bool:
        return sandbox_id in self._sandboxes

    def stats(self, sandbox_id: str | None = None) -> dict[str, int]:
        """Counters of one sandbox, or the totals since start (removed sandboxes included)
        with the forwarder's own: in_flight, tcp_retries, upstream_failures."""
        if sandbox_id is not None:
            return self._sandboxes[sandbox_id].stats.as_dict()
        total = self._retired.as_dict()
        for sb in list(self._sandboxes.values()):
            for k, v in sb.stats.as_dict().items():
                total[k] += v
        f = self.forwarder
        total.update(in_flight=f.inflight if f else 0, tcp_retries=f.tcp_retries if f else 0,
                     upstream_failures=f.upstream_failures if f else 0,
                     cached_answers=len(self.cache))
        return total

    async def _attach(self, sb: _Sandbox) -> None:
        self.loop.add_reader(sb.udp.fileno(), self._on_udp, sb)
        try:
            sb.tcp_server = await asyncio.start_server(
                functools.partial(self._tcp_client, sb), sock=sb.tcp)
        except BaseException:
            self.loop.remove_reader(sb.udp.fileno())
            raise

    async def _detach(self, sb: _Sandbox) -> None:
        sb.closed = True
        self.loop.remove_reader(sb.udp.fileno())
        if sb.tcp_server is not None:
            sb.tcp_server.close()
        for w in list(sb.conns):
            w.close()
        tasks = list(sb.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sb.origin.close()

    # ------------------------------------------------------------------ answering
    def _local(self, sb: _Sandbox, data: bytes, udp: bool):
        """(response | None, source) for what needs no upstream, or FORWARD."""
        r = self.cache.answer(sb.networks, data, udp)
        if r is None:
            r = self.cache.build(sb.networks, data, udp)
        st = sb.stats
        if r is FORWARD:
            if sb.internal:
                st.failed += 1
                return wire.error_response(data, wire.SERVFAIL), "internal network: not forwarded"
            if not sb.upstreams:
                st.failed += 1
                return wire.error_response(data, wire.SERVFAIL), "no upstream servers"
            return FORWARD
        if r is DROP:
            st.dropped += 1
            return None, "dropped: not a query"
        if (r[3] & wire.RCODE_MASK) in (wire.FORMERR, wire.NOTIMP):
            st.malformed += 1
            return r, "malformed query"
        st.local += 1
        return r, "local"

    async def _forward(self, sb: _Sandbox, data: bytes, udp: bool) -> QueryResult:
        limit = None
        if udp:
            qend = wire.question_end(data)
            limit = wire.edns_udp_size(data, qend) if qend > 0 else wire.UDP_PLAIN_MAX
        res = await self.forwarder.forward(data, sb.upstreams, sb.origin, limit)
        st = sb.stats
        if res.outcome == "answered":
            st.forwarded += 1
            return QueryResult(res.response, f"upstream {res.source}")
        if res.outcome == "refused":
            st.refused += 1
        else:
            st.failed += 1
        return QueryResult(res.response, f"{res.outcome}: {res.source}")

    def _spawn(self, sb: _Sandbox, coro) -> None:
        task = self.loop.create_task(coro)
        sb.tasks.add(task)
        task.add_done_callback(sb.tasks.discard)

    # UDP ----------------------------------------------------------------------
    def _on_udp(self, sb: _Sandbox) -> None:
        """Up to UDP_BATCH datagrams: one recvmmsg, cache hits answered with one sendmmsg
        (the inlined `AnswerCache.answer`, the sandbox's table looked up once per batch:
        after the datagrams arrived, so a name change before they did is seen); the rest
        through `_udp_slow`, answered at once with sendto."""
        b = self._batch
        if b is None:
            self._on_udp_single(sb)
            return
        fd = sb.udp.fileno()
        try:
            n = b.recv(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                log.info("dns: recvmmsg unavailable, falling back to recvfrom")
                self._batch = None
                self._on_udp_single(sb)
            return
        if not n:
            return
        st = sb.stats
        st.queries += n
        table = self.cache.table(sb.networks)
        r32, sptr, s32, siovp = b.r32, b.sptr, b.s32, b.siovp
        rbytes, sbytes, names, name_addr = b.rbytes, b.sbytes, b.nbytes, b.name_addr
        stride, stridep, length, namelen, nameptr = (
            mmsg.STRIDE32, mmsg.STRIDEP, mmsg.LEN, mmsg.NAMELEN, mmsg.NAMEPTR)
        slot = mmsg.SLOT
        m = 0
        for i in range(n):
            off = i * slot
            data = rbytes[off:off + r32[i * stride + length]].tobytes()
            try:  # AnswerCache.answer
                if data[2] & 0xF8 or data[4:6] != b"\x00\x01":
                    v = None
                else:
                    v = table[data[12:data.find(0, 12) + 5]]
            except (KeyError, IndexError, TypeError):  # TypeError: no table yet
                v = None
            if v.__class__ is tuple:
                r = data[:2] + v[data[2] & 1]
            elif v is None or v is FORWARD:
                self._udp_slow(sb, data, mmsg.addr_of(names[i * mmsg.NAME:]))
                continue
            else:
                r = v.pick(data, True)
            st.local += 1
            rl = len(r)
            if rl > slot:
                self._udp_send(sb, r, mmsg.addr_of(names[i * mmsg.NAME:]))
                continue
            so = m * slot
            sbytes[so:so + rl] = r
            siovp[m * 2 + 1] = rl
            sptr[m * stridep + nameptr] = name_addr[i]
            s32[m * stride + namelen] = r32[i * stride + namelen]
            m += 1
        if m:
            failed = b.send(fd, m)
            if failed:
                st.dropped += failed

    def _on_udp_single(self, sb: _Sandbox) -> None:
        recv = sb.udp.recvfrom
        send = sb.udp.sendto
        answer = self.cache.answer
        nets = sb.networks
        st = sb.stats
        for _ in range(UDP_BATCH):
            try:
                data, addr = recv(MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            st.queries += 1
            r = answer(nets, data)
            if r.__class__ is bytes:
                st.local += 1
                try:
                    send(r, addr)
                except OSError:
                    st.dropped += 1
                continue
            self._udp_slow(sb, data, addr)

    def _udp_slow(self, sb: _Sandbox, data: bytes, addr) -> None:
        try:
            r = self._local(sb, data, True)
        except Exception:  # never let one packet stop the loop
            log.exception("dns: answering a UDP query failed")
            r = wire.error_response(data, wire.SERVFAIL), "error"
        if r is FORWARD:
            self._spawn(sb, self._udp_forward(sb, data, addr))
            return
        if r[0] is not None:
            self._udp_send(sb, r[0], addr)

    async def _udp_forward(self, sb: _Sandbox, data: bytes, addr) -> None:
        res = await self._forward(sb, data, True)
        if res.response is not None and not sb.closed:
            self._udp_send(sb, res.response, addr)

    def _udp_send(self, sb: _Sandbox, resp: bytes, addr) -> None:
        try:
            sb.udp.sendto(resp, addr)
        except OSError:
            sb.stats.dropped += 1

    # TCP ----------------------------------------------------------------------
    async def _tcp_client(self, sb: _Sandbox, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if len(sb.conns) >= self.max_tcp_conns or sb.closed:
            writer.close()
            return
        sb.conns.add(writer)
        pending: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.tcp_idle):
                        n = int.from_bytes(await reader.readexactly(2), "big")
                        data = await reader.readexactly(n)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                sb.stats.queries += 1
                try:
                    r = self._local(sb, data, False)
                except Exception:
                    log.exception("dns: answering a TCP query failed")
                    r = wire.error_response(data, wire.SERVFAIL), "error"
                if r is FORWARD:
                    task = self.loop.create_task(self._tcp_forward(sb, data, writer))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif r[0] is not None:
                    writer.write(len(r[0]).to_bytes(2, "big") + r[0])
                    await writer.drain()
            if pending:  # answer what was asked before closing
                await asyncio.wait(pending, timeout=self.forwarder.budget + 1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for t in pending:
                t.cancel()
            sb.conns.discard(writer)
            writer.close()

    async def _tcp_forward(self, sb: _Sandbox, data: bytes,
                           writer: asyncio.StreamWriter) -> None:
        res = await self._forward(sb, data, False)
        if res.response is not None and not writer.is_closing():
            writer.write(len(res.response).to_bytes(2, "big") + res.response)

    # ------------------------------------------------------------------ introspection
    def query(self, sandbox_id: str, data: bytes, tcp: bool = False,
              timeout: float = 15) -> QueryResult:
        """Answer a raw query as if the sandbox had sent it (for `cnet dns lookup`)."""
        sb = self._sandboxes[sandbox_id]

        async def run() -> QueryResult:
            sb.stats.queries += 1
            hit = self.cache.answer(sb.networks, data, not tcp)
            r = self._local(sb, data, not tcp)
            if r is FORWARD:
                return await self._forward(sb, data, not tcp)
            source = "local (cached)" if hit.__class__ is bytes else r[1]
            return QueryResult(r[0], source)

        return self._call(run(), timeout)

    def lookup(self, sandbox_id: str, name: str, qtype: str = "A") -> dict:
        """What the sandbox gets for NAME: {"rcode", "answers": [...], "source"}."""
        q = dnslib.DNSRecord.question(name, qtype)
        res = self.query(sandbox_id, q.pack())
        if res.response is None:
            return {"rcode": None, "answers": [], "source": res.source}
        reply = dnslib.DNSRecord.parse(res.response)
        return {
            "rcode": dnslib.RCODE.get(reply.header.rcode),
            "answers": [str(rr.rdata) for rr in reply.rr],
            "source": res.source,
        }
