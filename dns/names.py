"""The name table the controller maintains and the DNS server reads.

Per network id: name -> the endpoints that carry it, and reverse name -> `name.network`.
An endpoint registers, on its network, every name it is given (container name first,
then its aliases, short id, hostname) and each of them as `NAME.NETWORK`; its IPv4 and
IPv6 addresses get PTR entries pointing at `<first name>.<network name>`.

A lookup is scoped to the networks of the asking sandbox: it sees only names on those
networks. A name found on several of them answers with the union of its addresses.

Every change bumps `generation` and calls the subscribers (the answer cache drops every
pre-encoded answer) before the call returns: a removed container stops resolving at
once, a new one resolves at once.

Thread safety: the controller calls set/remove from its threads while the DNS loop
resolves; one lock guards the tables. Subscribers run on the caller's thread, after the
tables are updated.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cnet.dns import wire

#: suffixes of reverse names
_ARPA = (".in-addr.arpa", ".ip6.arpa")


def normalize(name: str) -> str:
    """Names are case-insensitive and the trailing dot is ignored."""
    return name.strip().rstrip(".").lower()


def _address(value: str | None, version: int, what: str) -> str | None:
    if value is None or value == "":
        return None
    try:
        addr = ipaddress.ip_interface(value).ip  # accepts 10.0.0.2 and 10.0.0.2/24
    except ValueError as exc:
        raise ValueError(f"invalid {what} address {value!r}") from exc
    if addr.version != version:
        raise ValueError(f"{what} address expected, got {value!r}")
    return addr.compressed


def _check_name(name: str) -> None:
    labels = name.split(".")
    if any(not lb for lb in labels):
        raise ValueError(f"invalid DNS name {name!r} (empty label)")
    if any(len(lb.encode()) > wire.MAX_LABEL for lb in labels):
        raise ValueError(f"invalid DNS name {name!r} (label longer than 63 bytes)")
    if len(name.encode()) > wire.MAX_NAME - 2:
        raise ValueError(f"invalid DNS name {name!r} (longer than 253 bytes)")


@dataclass(frozen=True)
class EndpointRecord:
    endpoint_id: str
    network_id: str
    network_name: str
    names: tuple[str, ...]  # as given, normalized, deduplicated (no NAME.NETWORK forms)
    ipv4: str | None
    ipv6: str | None

    @property
    def keys(self) -> tuple[str, ...]:
        """Every name this endpoint answers to on its network."""
        net = normalize(self.network_name)
        out = list(self.names)
        if net:
            out += [f"{n}.{net}" for n in self.names]
        return tuple(dict.fromkeys(out))

    @property
    def ptr_target(self) -> str:
        return f"{self.names[0]}.{normalize(self.network_name)}" if self.network_name \
            else self.names[0]

    @property
    def reverse_names(self) -> tuple[str, ...]:
        return tuple(ipaddress.ip_address(a).reverse_pointer
                     for a in (self.ipv4, self.ipv6) if a)


class NameTable:
    """Names and reverse entries per network; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, EndpointRecord] = {}
        # network id -> name -> endpoint ids (insertion order: registration order)
        self._names: dict[str, dict[str, list[str]]] = {}
        # network id -> reverse name ("2.0.17.172.in-addr.arpa") -> endpoint ids
        self._ptr: dict[str, dict[str, list[str]]] = {}
        self._subscribers: list[Callable[[], None]] = []
        #: bumped on every change
        self.generation = 0

    # ------------------------------------------------------------------ changes
    def subscribe(self, callback: Callable[[], None]) -> None:
        """`callback()` after every change (on the changing thread, lock released)."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        try:
            self._subscribers.remove(callback)
        except ValueError:
            pass

    def set_endpoint(self, network_id: str, network_name: str, endpoint_id: str,
                     names: Iterable[str], ipv4: str | None, ipv6: str | None) -> None:
        """Register (or replace) an endpoint's names on its network.

        `names`: container name first (it is the PTR target), then `--network-alias`es,
        short container id, hostname; empty entries are skipped, duplicates collapse.
        `ipv4`/`ipv6`: an address, optionally with a /prefix, or None.
        Raises ValueError on bad input and then changes nothing.
        """
        clean = tuple(dict.fromkeys(n for n in (normalize(x) for x in names) if n))
        if not clean:
            raise ValueError(f"endpoint {endpoint_id}: at least one name is needed")
        for n in clean:
            _check_name(n)
        if network_name:
            _check_name(normalize(network_name))
        rec = EndpointRecord(
            endpoint_id=endpoint_id, network_id=network_id, network_name=network_name,
            names=clean, ipv4=_address(ipv4, 4, "IPv4"), ipv6=_address(ipv6, 6, "IPv6"),
        )
        with self._lock:
            self._drop(endpoint_id)
            self._endpoints[endpoint_id] = rec
            names_t = self._names.setdefault(network_id, {})
            for key in rec.keys:
                names_t.setdefault(key, []).append(endpoint_id)
            ptr_t = self._ptr.setdefault(network_id, {})
            for rev in rec.reverse_names:
                ptr_t.setdefault(rev, []).append(endpoint_id)
            self.generation += 1
        self._notify()

    def remove_endpoint(self, endpoint_id: str) -> bool:
        """Forget an endpoint; False if it was not known (nothing changes then)."""
        with self._lock:
            if not self._drop(endpoint_id):
                return False
            self.generation += 1
        self._notify()
        return True

    def remove_network(self, network_id: str) -> int:
        """Forget every endpoint of a network; returns how many there were."""
        with self._lock:
            eids = [e.endpoint_id for e in self._endpoints.values()
                    if e.network_id == network_id]
            for eid in eids:
                self._drop(eid)
            self._names.pop(network_id, None)
            self._ptr.pop(network_id, None)
            if not eids:
                return 0
            self.generation += 1
        self._notify()
        return len(eids)

    def _drop(self, endpoint_id: str) -> bool:
        rec = self._endpoints.pop(endpoint_id, None)
        if rec is None:
            return False
        for table, keys in ((self._names, rec.keys), (self._ptr, rec.reverse_names)):
            t = table.get(rec.network_id, {})
            for key in keys:
                eids = t.get(key)
                if eids and endpoint_id in eids:
                    eids.remove(endpoint_id)
                    if not eids:
                        del t[key]
            if not t:
                table.pop(rec.network_id, None)
        return True

    def _notify(self) -> None:
        for cb in list(self._subscribers):
            cb()

    # ------------------------------------------------------------------ lookups
    def resolve(self, networks: frozenset[str], qname: str, qtype: int) -> list[str] | None:
        """What a sandbox on `networks` gets for (qname, qtype).

        - None: not ours (the name is on none of these networks): forward it.
        - []: the name is ours but has nothing of this type (NOERROR, no answer).
        - A / AAAA: the addresses (union over the networks, registration order, no
          duplicates); PTR (for x.in-addr.arpa / x.ip6.arpa): `[name.network]`.
        Any other type of a known name answers [] (NODATA) rather than being forwarded
        (Docker does that for MX only and forwards the rest, which leaks container
        names upstream and earns an NXDOMAIN that can poison a stub's cache of the name).
        """
        name = normalize(qname)
        with self._lock:
            if name.endswith(_ARPA):
                for nid in sorted(networks):
                    eids = self._ptr.get(nid, {}).get(name)
                    if eids:
                        if qtype == wire.QTYPE_PTR:
                            return [self._endpoints[eids[0]].ptr_target]
                        return []
                return None
            found = False
            out: list[str] = []
            for nid in networks:
                eids = self._names.get(nid, {}).get(name)
                if not eids:
                    continue
                found = True
                if qtype == wire.QTYPE_A:
                    addrs = (self._endpoints[e].ipv4 for e in eids)
                elif qtype == wire.QTYPE_AAAA:
                    addrs = (self._endpoints[e].ipv6 for e in eids)
                else:
                    continue
                for a in addrs:
                    if a and a not in out:
                        out.append(a)
            return out if found else None

    def endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        with self._lock:
            return self._endpoints.get(endpoint_id)

    def endpoints(self, network_id: str | None = None) -> list[EndpointRecord]:
        with self._lock:
            return [e for e in self._endpoints.values()
                    if network_id is None or e.network_id == network_id]

    def names(self, network_id: str) -> dict[str, list[str]]:
        """name -> endpoint ids on one network (a copy, for `cnet dns` views)."""
        with self._lock:
            return {k: list(v) for k, v in self._names.get(network_id, {}).items()}
