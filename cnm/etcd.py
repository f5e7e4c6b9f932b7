"""A small etcd v3 client over etcd's JSON gRPC gateway (HTTP/1.1 POST to /v3/...).

Stdlib only. Unlike etcd3gw/python-etcd3 it takes several endpoints and fails over
between them: a request that cannot connect, times out or gets a 5xx moves on to the
next member (each member is tried once per call); when every member failed the call
raises EtcdUnavailable with one line naming each member's reason. The member that
answered last is tried first next time, so a dead member costs one failed try, not one
per call.

Keys given by callers are relative ("network/abc"); the client adds and strips its
prefix ("/cnet/"). Values are JSON objects (stored as compact JSON with sorted keys, so
that equal dicts are equal bytes for Compare.value_equals).

Gateway facts this relies on (etcd 3.4): keys and values are base64; int64 fields come
back as JSON strings; fields at their zero value are omitted (no "kvs" for an empty
range, no "succeeded" for a failed txn, no "TTL" for a dead lease); errors are
{"error", "message", "code": <gRPC code>} with an HTTP status (5 NotFound -> 404,
14 Unavailable -> 503); streaming RPCs (watch, lease keepalive) answer with
newline-separated {"result": ...} objects in a chunked body. gRPC metadata is passed as
`Grpc-Metadata-<key>` headers: `hasleader: true` makes a member that lost its leader end
our watch streams instead of leaving them silently stalled.

A follower keeps forwarding proposals to a leader that just died until its election
timeout passes: such a request times out (`timeout`, 2 s) and then succeeds on the next
member, so killing the leader stalls writes for about `timeout` rather than failing them.
Mutations retried on another member after a timeout or a 5xx may have been applied by
the first one (etcd's own clients share that ambiguity); a txn guarded by
Compare.absent then reports failure although our first try succeeded.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cnet.cnm.errors import CnetError

log = logging.getLogger(__name__)

Value = dict[str, Any]

#: gRPC status code NotFound (e.g. "etcdserver: requested lease not found")
GRPC_NOT_FOUND = 5
_HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-hasleader": "true"}
_MAX_IDLE = 8  # idle keep-alive connections kept per endpoint
_PAGE = 1000  # keys per range request (a large prefix is read in pages at one revision)


class EtcdError(CnetError):
    """etcd refused a request (not an availability problem): bad request, lease gone..."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


class LeaseNotFound(EtcdError):
    """A put or keepalive named a lease that expired or was revoked."""


class EtcdUnavailable(EtcdError):
    """No member of the cluster answered; the message names each one's reason."""

    status = 503


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class KV:
    key: str  # relative to the client's prefix
    value: Value
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # "put" | "delete"
    key: str  # relative
    value: Value | None  # None for a delete
    revision: int  # the event's mod_revision


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn guard on one key; build with the class methods."""

    key: str
    target: str  # CREATE | MOD | VALUE | VERSION
    result: str  # EQUAL | NOT_EQUAL | GREATER | LESS
    operand: Any

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "CREATE", "EQUAL", 0)

    @classmethod
    def exists(cls, key: str) -> Compare:
        return cls(key, "CREATE", "GREATER", 0)

    @classmethod
    def mod_revision(cls, key: str, revision: int) -> Compare:
        """The key was last written at `revision` (0: the key is absent)."""
        return cls(key, "MOD", "EQUAL", revision)

    @classmethod
    def value_equals(cls, key: str, value: Value) -> Compare:
        return cls(key, "VALUE", "EQUAL", value)


@dataclass(frozen=True, slots=True)
class Op:
    """A txn operation; build with the class methods."""

    kind: str  # put | delete | delete_prefix | get | range
    key: str
    value: Value | None = None
    lease: int = 0

    @classmethod
    def put(cls, key: str, value: Value, lease: int = 0) -> Op:
        return cls("put", key, value, lease)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls("delete", key)

    @classmethod
    def delete_prefix(cls, prefix: str) -> Op:
        return cls("delete_prefix", prefix)

    @classmethod
    def get(cls, key: str) -> Op:
        """A read inside a txn (its KVs are in TxnResult.reads)."""
        return cls("get", key)

    @classmethod
    def range(cls, prefix: str) -> Op:
        return cls("range", prefix)


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    #: KVs of the executed branch's get/range ops, in order
    reads: list[list[KV]]


# --------------------------------------------------------------------------- helpers


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _encode_value(value: Value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix": last byte + 1."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\x00"  # empty prefix (or all 0xff): the whole key space


def _int(obj: dict, name: str) -> int:
    return int(obj.get(name) or 0)


def _parse_endpoint(ep: str) -> tuple[str, int]:
    ep = ep.strip()
    for scheme in ("http://", "https://"):
        if ep.startswith(scheme):
            ep = ep[len(scheme):]
    ep = ep.rstrip("/")
    if ep.startswith("["):  # [v6]:port
        host, _, rest = ep[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 2379
    host, sep, port = ep.rpartition(":")
    if not sep or ":" in host:  # no port, or a bare IPv6 address
        return ep, 2379
    return host, int(port)


def _message(payload: dict, status: int) -> str:
    """The error text of a gateway answer: unary RPCs put it in "message", streaming ones
    in {"error": {"message", "grpc_code", "http_code"}}."""
    err = payload.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or f"HTTP {err.get('http_code', status)}")
    return str(payload.get("message") or err or f"HTTP {status}")


def _reason(exc: BaseException) -> str:
    """A short lower-case reason for a transport failure."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed by the server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class _Retry(Exception):
    """A failure that moves the call on to the next endpoint."""


def _keepalive(sock: socket.socket) -> None:
    """Notice a vanished peer on an idle watch stream within ~11 s."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


# --------------------------------------------------------------------------- client


class EtcdClient:
    """Thread-safe: connections come from a per-endpoint pool of idle keep-alive ones."""

    def __init__(self, endpoints: Iterable[str], prefix: str = "/cnet/", timeout: float = 2.0):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        self.endpoints = [e.strip() for e in endpoints]
        if not self.endpoints:
            raise ValueError("etcd: no endpoints given")
        self._addrs = [_parse_endpoint(e) for e in self.endpoints]
        self.prefix = prefix
        self._pfx = prefix.encode()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[list[http.client.HTTPConnection]] = [[] for _ in self.endpoints]
        self._preferred = 0  # index of the endpoint that answered last
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()
        self._closed = False

    # -- keys --------------------------------------------------------------
    def _key(self, key: str) -> str:
        return _b64(self._pfx + key.encode())

    def _range_end(self, prefix: str) -> str:
        return _b64(_prefix_end(self._pfx + prefix.encode()))

    def _rel(self, raw_b64: str) -> str:
        return _unb64(raw_b64)[len(self._pfx):].decode()

    def _kv(self, obj: dict) -> KV:
        key = self._rel(obj["key"])
        raw = _unb64(obj.get("value"))
        try:
            value = json.loads(raw) if raw else {}
        except ValueError as e:
            raise EtcdError(f"etcd key {self.prefix}{key} does not hold JSON: {e}") from None
        return KV(key, value, _int(obj, "create_revision"), _int(obj, "mod_revision"),
                  _int(obj, "version"), _int(obj, "lease"))

    # -- transport ---------------------------------------------------------
    def _conn(self, i: int) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle[i]:
                return self._idle[i].pop(), True
        host, port = self._addrs[i]
        return http.client.HTTPConnection(host, port, timeout=self.timeout), False

    def _release(self, i: int, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle[i]) < _MAX_IDLE:
                self._idle[i].append(conn)
                return
        conn.close()

    def _post_once(self, i: int, path: str, body: bytes) -> tuple[int, dict]:
        conn, reused = self._conn(i)
        while True:
            try:
                conn.request("POST", path, body=body, headers=_HEADERS)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                conn.close()
                if reused:  # an idle connection the server had closed: one fresh try
                    host, port = self._addrs[i]
                    conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
                    reused = False
                    continue
                raise _Retry(_reason(e)) from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise _Retry(_reason(e)) from None
            break
        if resp.will_close:
            conn.close()
        else:
            self._release(i, conn)
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            raise _Retry(f"HTTP {resp.status}: not JSON: {data[:80]!r}") from None
        return resp.status, payload

    def _call(self, path: str, body: dict) -> dict:
        """POST to the preferred member, failing over; raise EtcdError/EtcdUnavailable."""
        if self._closed:
            raise EtcdUnavailable("cluster store unavailable: client closed")
        data = json.dumps(body, separators=(",", ":")).encode()
        n = len(self.endpoints)
        start = self._preferred
        errors = []
        for k in range(n):
            i = (start + k) % n
            try:
                status, payload = self._post_once(i, path, data)
            except _Retry as e:
                errors.append(f"{self.endpoints[i]}: {e}")
                continue
            if status >= 500:
                errors.append(f"{self.endpoints[i]}: {_message(payload, status)}")
                continue
            self._preferred = i
            if status != 200:
                self._raise(payload, status)
            return payload
        raise EtcdUnavailable("cluster store unavailable: " + "; ".join(errors))

    @staticmethod
    def _raise(payload: dict, status: int) -> None:
        msg = _message(payload, status)
        code = int(payload.get("code") or 0)
        if code == GRPC_NOT_FOUND and "lease" in msg:
            raise LeaseNotFound(msg, code)
        raise EtcdError(f"etcd: {msg}", code)

    # -- kv ----------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        r = self._call("/v3/kv/range", {"key": self._key(key)})
        kvs = r.get("kvs")
        return self._kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under `prefix` (sorted), and the store revision they were read at."""
        end = self._range_end(prefix)
        body: dict[str, Any] = {"key": self._key(prefix), "range_end": end, "limit": _PAGE}
        out: list[KV] = []
        revision = 0
        while True:
            r = self._call("/v3/kv/range", body)
            if not revision:
                revision = _int(r["header"], "revision")
                body["revision"] = revision  # later pages: same snapshot
            kvs = r.get("kvs") or []
            out += [self._kv(kv) for kv in kvs]
            if not r.get("more") or not kvs:
                return out, revision
            body["key"] = _b64(_unb64(kvs[-1]["key"]) + b"\x00")

    def revision(self) -> int:
        """The store's current revision."""
        r = self._call("/v3/kv/range", {"key": self._key(""), "count_only": True})
        return _int(r["header"], "revision")

    def compact(self, revision: int) -> None:
        """Discard history before `revision` (older watches get on_reset)."""
        self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def put(self, key: str, value: Value, lease: int = 0) -> int:
        body = {"key": self._key(key), "value": _b64(_encode_value(value))}
        if lease:
            body["lease"] = str(lease)
        return _int(self._call("/v3/kv/put", body)["header"], "revision")

    def delete(self, key: str) -> bool:
        return _int(self._call("/v3/kv/deleterange", {"key": self._key(key)}), "deleted") > 0

    def delete_prefix(self, prefix: str) -> int:
        body = {"key": self._key(prefix), "range_end": self._range_end(prefix)}
        return _int(self._call("/v3/kv/deleterange", body), "deleted")

    # -- txn ---------------------------------------------------------------
    def _compare(self, c: Compare) -> dict:
        d: dict[str, Any] = {"key": self._key(c.key), "target": c.target, "result": c.result}
        if c.target == "CREATE":
            d["create_revision"] = str(c.operand)
        elif c.target == "MOD":
            d["mod_revision"] = str(c.operand)
        elif c.target == "VERSION":
            d["version"] = str(c.operand)
        else:
            d["value"] = _b64(_encode_value(c.operand))
        return d

    def _op(self, op: Op) -> dict:
        if op.kind == "put":
            d = {"key": self._key(op.key), "value": _b64(_encode_value(op.value or {}))}
            if op.lease:
                d["lease"] = str(op.lease)
            return {"request_put": d}
        if op.kind == "delete":
            return {"request_delete_range": {"key": self._key(op.key)}}
        if op.kind == "delete_prefix":
            return {"request_delete_range": {"key": self._key(op.key),
                                             "range_end": self._range_end(op.key)}}
        if op.kind == "get":
            return {"request_range": {"key": self._key(op.key)}}
        if op.kind == "range":
            return {"request_range": {"key": self._key(op.key),
                                      "range_end": self._range_end(op.key)}}
        raise ValueError(f"unknown txn op {op.kind!r}")

    def txn_ex(self, compares: list[Compare], success: list[Op],
               failure: list[Op] | None = None) -> TxnResult:
        body = {
            "compare": [self._compare(c) for c in compares],
            "success": [self._op(o) for o in success],
            "failure": [self._op(o) for o in failure or []],
        }
        r = self._call("/v3/kv/txn", body)
        reads = [
            [self._kv(kv) for kv in resp["response_range"].get("kvs") or []]
            for resp in r.get("responses") or [] if "response_range" in resp
        ]
        return TxnResult(bool(r.get("succeeded")), _int(r["header"], "revision"), reads)

    def txn(self, compares: list[Compare], success: list[Op],
            failure: list[Op] | None = None) -> tuple[bool, int]:
        """Apply `success` if every compare holds, else `failure`: (succeeded, revision)."""
        res = self.txn_ex(compares, success, failure)
        return res.succeeded, res.revision

    # -- leases ------------------------------------------------------------
    def lease_grant(self, ttl: int) -> int:
        r = self._call("/v3/lease/grant", {"TTL": int(ttl), "ID": 0})
        if r.get("error"):
            raise EtcdError(f"etcd: lease grant: {r['error']}")
        return _int(r, "ID")

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; its TTL in seconds, 0 if it no longer exists."""
        r = self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return _int(r.get("result") or {}, "TTL")

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke (deleting its keys); a lease already gone is not an error."""
        with contextlib.suppress(LeaseNotFound):
            self._call("/v3/lease/revoke", {"ID": str(lease_id)})

    # -- health ------------------------------------------------------------
    def status(self) -> dict[str, dict]:
        """Ask every member at once: {endpoint: {"ok", "version", "leader", "has_leader",
        "db_size", "revision"} or {"ok": False, "error": reason}}."""
        out: dict[str, dict] = {}

        def ask(i: int) -> None:
            ep = self.endpoints[i]
            try:
                code, r = self._post_once(i, "/v3/maintenance/status", b"{}")
            except _Retry as e:
                out[ep] = {"ok": False, "error": str(e)}
                return
            if code != 200:
                out[ep] = {"ok": False, "error": _message(r, code)}
                return
            header = r.get("header") or {}
            leader = r.get("leader") or "0"
            out[ep] = {
                "ok": True,
                "version": r.get("version", ""),
                "member_id": header.get("member_id", ""),
                "leader": leader != "0" and leader == header.get("member_id"),
                "has_leader": leader != "0",
                "db_size": _int(r, "dbSize"),
                "revision": _int(header, "revision"),
            }

        threads = [threading.Thread(target=ask, args=(i,), daemon=True)
                   for i in range(len(self.endpoints))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout * 2 + 1)
        return {ep: out.get(ep, {"ok": False, "error": "timed out"}) for ep in self.endpoints}

    def healthy_endpoints(self) -> list[str]:
        """Members that answer and have a leader."""
        return [ep for ep, s in self.status().items() if s["ok"] and s["has_leader"]]

    def wait_until_reachable(self, on_error: Callable[[str], None],
                             stop: threading.Event | None = None) -> bool:
        """Retry (0.5 s doubling to 5 s) until a member answers; False if `stop` was set."""
        delay = 0.5
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self._call("/v3/maintenance/status", {})
                return True
            except EtcdUnavailable as e:
                on_error(str(e))
            if stop.wait(delay):
                break
            delay = min(delay * 2, 5.0)
        return False

    # -- watch -------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int,
              on_events: Callable[[list[Event]], None],
              on_reset: Callable[[], int | None] | None = None,
              on_error: Callable[[str], None] | None = None) -> Watch:
        """Deliver every change under `prefix` from `start_revision` on (0: from now).

        on_events runs in the watch's own thread. on_reset is called when the history the
        watch needs was compacted: the caller re-lists (and may return the revision of its
        list; otherwise the watch goes on from the revision current just before the call).
        on_error gets one line per broken stream (the watch reconnects by itself).
        """
        w = Watch(self, prefix, start_revision, on_events, on_reset, on_error)
        self._watches.add(w)
        w._start()
        return w

    def close(self) -> None:
        """Cancel every watch and close the idle connections."""
        for w in list(self._watches):
            w.cancel()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, [[] for _ in self.endpoints]
        for conns in idle:
            for c in conns:
                c.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- watch


class _Reset(Exception):
    """The needed history was compacted: re-list, then watch again."""


class Watch:
    """One prefix watch over a streaming POST /v3/watch, in its own daemon thread.

    `revision` is the last revision delivered (or known to be covered); a broken stream
    is re-created from revision + 1 on the next member, so nothing is lost or repeated
    (events at or below `revision` are dropped should a member replay them). Each member
    is tried once at once, then the retries back off from 0.1 s doubling to 1 s.
    A stream is "broken" when the member closes it (killed, restarted, lost its leader:
    the `hasleader` header), when TCP keepalive finds the peer gone (~11 s idle), or on an
    error object in the stream. A compacted start revision calls on_reset (see
    EtcdClient.watch). cancel() shuts the socket down, which wakes the blocked read.
    """

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int,
                 on_events: Callable[[list[Event]], None],
                 on_reset: Callable[[], int | None] | None,
                 on_error: Callable[[str], None] | None):
        self.client = client
        self.prefix = prefix
        self.revision = max(start_revision - 1, 0) if start_revision > 0 else 0
        self._from_now = start_revision <= 0
        self._on_events = on_events
        self._on_reset = on_reset
        self._on_error = on_error
        self._stop = threading.Event()
        self._created = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._was_created = False
        self._thread = threading.Thread(
            target=self._run, name=f"etcd-watch {prefix}", daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def wait_created(self, timeout: float = 5.0) -> bool:
        """True once a stream is established (every later write will be delivered)."""
        return self._created.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def cancel(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- thread --------------------------------------------------------------
    def _error(self, msg: str) -> None:
        log.debug("%s", msg)
        if self._on_error:
            try:
                self._on_error(msg)
            except Exception:
                log.exception("etcd watch on_error callback failed")

    def _run(self) -> None:
        c = self.client
        n = len(c.endpoints)
        i = c._preferred
        failures = 0  # attempts in a row that got no stream created
        while not self._stop.is_set():
            ep = c.endpoints[i % n]
            self._was_created = False
            try:
                self._stream(i % n)
                reason = "stream closed"
            except _Reset:
                continue
            except Exception as e:  # any failure: reconnect
                reason = _reason(e)
            if self._stop.is_set():
                break
            self._error(f"etcd watch {self.prefix!r}: {ep}: {reason}")
            failures = 0 if self._was_created else failures + 1
            i += 1  # the next member first: this one is likely down
            # Each member once at once; after a full round of failures, back off.
            delay = 0.01 if failures < n else min(0.1 * 2 ** (failures - n), 1.0)
            if self._stop.wait(delay):
                break

    def _stream(self, i: int) -> None:
        """Run one stream on endpoint i until it breaks (returns or raises)."""
        c = self.client
        host, port = c._addrs[i]
        conn = http.client.HTTPConnection(host, port, timeout=c.timeout)
        try:
            conn.connect()
            with self._lock:
                if self._stop.is_set():
                    return
                self._sock = conn.sock
            _keepalive(conn.sock)
            req: dict[str, Any] = {
                "key": c._key(self.prefix), "range_end": c._range_end(self.prefix),
            }
            if not self._from_now:
                req["start_revision"] = str(self.revision + 1)
            conn.request("POST", "/v3/watch", body=json.dumps({"create_request": req}),
                         headers=_HEADERS)
            resp = conn.getresponse()
            if resp.status != 200:
                body = resp.read(4096)
                try:
                    msg = _message(json.loads(body), resp.status)
                except (ValueError, AttributeError):
                    msg = f"HTTP {resp.status}"
                raise ConnectionError(msg)
            conn.sock.settimeout(None)  # an idle stream is normal; keepalive finds dead peers
            while True:
                line = resp.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "error" in msg:
                    raise ConnectionError(_message(msg, 200))
                r = msg.get("result") or {}
                if _int(r, "compact_revision"):
                    self._reset(_int(r, "compact_revision"))
                    raise _Reset()
                if r.get("canceled"):
                    raise ConnectionError(f"watch canceled: {r.get('cancel_reason', '')}")
                if r.get("created"):
                    self._was_created = True
                    if self._from_now:
                        self.revision = _int(r.get("header") or {}, "revision")
                        self._from_now = False
                    self._created.set()
                events = r.get("events")
                if events:
                    self._deliver(events)
        finally:
            with self._lock:
                self._sock = None
            conn.close()

    def _deliver(self, raw: list[dict]) -> None:
        c = self.client
        events = []
        for e in raw:
            kv = e.get("kv") or {}
            key = c._rel(kv["key"])
            rev = _int(kv, "mod_revision")
            if e.get("type") == "DELETE":
                events.append(Event("delete", key, None, rev))
            else:
                value = c._kv(kv).value
                events.append(Event("put", key, value, rev))
        events = [ev for ev in events if ev.revision > self.revision]  # never twice
        if not events:
            return
        self.revision = events[-1].revision
        if self._stop.is_set():
            return
        try:
            self._on_events(events)
        except Exception:
            log.exception("etcd watch %r: on_events callback failed", self.prefix)

    def _reset(self, compact_revision: int) -> None:
        self._error(f"etcd watch {self.prefix!r}: revision {self.revision + 1} was "
                    f"compacted (oldest kept: {compact_revision}): re-listing")
        current = self.client.revision()  # raises EtcdUnavailable: the stream retries
        got = None
        if self._on_reset is not None:
            try:
                got = self._on_reset()
            except Exception:
                log.exception("etcd watch %r: on_reset callback failed", self.prefix)
                raise
        self.revision = got if isinstance(got, int) and got > 0 else current
