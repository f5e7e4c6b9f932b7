"""IP address management: pools (subnets) per network and addresses per endpoint.

Default pools follow Docker: 172.17.0.0/16 ... 172.31.0.0/16, then
192.168.0.0/16 cut into /20s; `--default-address-pool base=CIDR,size=N`
replaces them. IPv6 networks without a subnet get a /64 from a ULA /48 chosen
once per daemon (RFC 4193).

The in-memory allocators are a cache of the store: the controller persists each
address as `ipam/<network-id>/<ip>` in the same transaction as its endpoint,
with an "absent" guard, so an address is never handed out twice, and rebuilds
the allocators from those keys on start.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from cnet.cnm.errors import Conflict, InvalidParameter
from netaddr import AddrFormatError, IPAddress, IPNetwork

DEFAULT_POOLS: list[tuple[str, int]] = [(f"172.{n}.0.0/16", 16) for n in range(17, 32)] + [
    ("192.168.0.0/16", 20)
]
# Global-scope (overlay) networks without a subnet: Docker swarm's default 10.0.0.0/8 in /24s.
GLOBAL_POOLS: list[tuple[str, int]] = [("10.0.0.0/8", 24)]


@dataclass
class PoolConfig:
    """One subnet of a network, as Docker's IPAM.Config entry."""

    subnet: str
    gateway: str | None = None
    ip_range: str | None = None
    aux: dict[str, str] = field(default_factory=dict)

    @property
    def v6(self) -> bool:
        return ":" in self.subnet

    def to_docker(self) -> dict:
        out: dict = {"Subnet": self.subnet}
        if self.gateway:
            out["Gateway"] = self.gateway
        if self.ip_range:
            out["IPRange"] = self.ip_range
        if self.aux:
            out["AuxiliaryAddresses"] = dict(self.aux)
        return out

    @classmethod
    def from_docker(cls, d: dict) -> PoolConfig:
        return cls(d["Subnet"], d.get("Gateway"), d.get("IPRange"),
                   dict(d.get("AuxiliaryAddresses") or {}))


def parse_pool_option(text: str) -> tuple[str, int]:
    """Parse `base=CIDR,size=N` (cnetd --default-address-pool)."""
    parts = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
    try:
        base = IPNetwork(parts["base"])
        size = int(parts["size"])
    except (KeyError, ValueError, AddrFormatError):
        raise InvalidParameter(
            f'invalid default address pool "{text}": want base=CIDR,size=N'
        ) from None
    if not base.prefixlen <= size <= (32 if base.version == 4 else 128):
        raise InvalidParameter(f'invalid default address pool "{text}": size out of range')
    return str(base.cidr), size


def _net(text: str, what: str) -> IPNetwork:
    try:
        net = IPNetwork(text)
    except (AddrFormatError, ValueError, TypeError):
        raise InvalidParameter(f'invalid {what} "{text}": not a CIDR') from None
    if "/" not in text:
        raise InvalidParameter(f'invalid {what} "{text}": not a CIDR (no prefix length)')
    if net.ip != net.network:
        raise InvalidParameter(f'invalid {what} "{text}": it should be {net.cidr}')
    return net


def _ip(text: str, what: str) -> IPAddress:
    try:
        return IPAddress(text)
    except (AddrFormatError, ValueError, TypeError):
        raise InvalidParameter(f'invalid {what} "{text}": not an IP address') from None


class _UsedRanges:
    """Sorted, non-overlapping [first, last] integer ranges with O(log n) overlap test."""

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    def overlaps(self, first: int, last: int) -> bool:
        i = bisect.bisect_right(self._firsts, last)
        return i > 0 and self._lasts[i - 1] >= first

    def add(self, first: int, last: int) -> None:
        i = bisect.bisect_left(self._firsts, first)
        self._firsts.insert(i, first)
        self._lasts.insert(i, last)

    def remove(self, first: int, last: int) -> None:
        i = bisect.bisect_left(self._firsts, first)
        if i < len(self._firsts) and self._firsts[i] == first and self._lasts[i] == last:
            del self._firsts[i], self._lasts[i]


class SubnetAllocator:
    """Addresses of one subnet: lowest free first, skipping reserved ones."""

    def __init__(self, pool: PoolConfig):
        self.pool = pool
        self.subnet = IPNetwork(pool.subnet)
        rng = IPNetwork(pool.ip_range) if pool.ip_range else self.subnet
        self.first = int(rng.first)
        self.last = int(rng.last)
        self.reserved: set[int] = {int(self.subnet.network)}
        if self.subnet.version == 4:
            self.reserved.add(int(self.subnet.broadcast or self.subnet.last))
        if pool.gateway:
            self.reserved.add(int(IPAddress(pool.gateway)))
        self.reserved.update(int(IPAddress(a)) for a in pool.aux.values())
        self.used: set[int] = set()
        self._hint = self.first

    def allocate(self, ip: str | None = None) -> IPAddress:
        if ip is not None:
            addr = IPAddress(ip)
            if addr not in self.subnet:
                raise InvalidParameter(f"address {ip} is not in subnet {self.pool.subnet}")
            n = int(addr)
            if n in self.reserved or n in self.used:
                raise Conflict(f"Address already in use: {ip}")
            self.used.add(n)
            return addr
        n = self._hint
        while n <= self.last and (n in self.used or n in self.reserved):
            n += 1
        if n > self.last:
            raise Conflict(f"no available IPv{self.subnet.version} addresses on network "
                           f"subnet {self.pool.ip_range or self.pool.subnet}")
        self.used.add(n)
        self._hint = n + 1
        return IPAddress(n, self.subnet.version)

    def release(self, ip: str) -> None:
        n = int(IPAddress(ip))
        self.used.discard(n)
        if self.first <= n < self._hint:
            self._hint = n


class Ipam:
    """The default IPAM driver: pools per network, addresses per endpoint."""

    def __init__(
        self,
        pools: Iterable[tuple[str, int]] = DEFAULT_POOLS,
        ula_prefix: str = "fd00::/48",
        host_prefixes: Callable[[], list[str]] = list,
    ):
        self.pools = [(IPNetwork(b), s) for b, s in pools]
        self.ula = IPNetwork(ula_prefix)
        self.host_prefixes = host_prefixes
        self._used = {4: _UsedRanges(), 6: _UsedRanges()}
        self._networks: dict[str, list[SubnetAllocator]] = {}

    # -- pools --------------------------------------------------------------
    def plan(self, configs: list[dict], enable_ipv6: bool,
             pools: list[tuple[str, int]] | None = None) -> list[PoolConfig]:
        """Validate requested IPAM configs and pick missing subnets (from `pools` if given,
        else the daemon's default pools); registers nothing."""
        planned = [self._validate(c) for c in configs]
        for version in (4, 6):
            mine = [p for p in planned if IPNetwork(p.subnet).version == version]
            if len(mine) > 1:
                raise InvalidParameter(f"only one IPv{version} subnet per network is supported")
        if any(p.v6 for p in planned) and not enable_ipv6:
            raise InvalidParameter("an IPv6 subnet needs --ipv6")
        seen: list[IPNetwork] = []
        for p in planned:
            net = IPNetwork(p.subnet)
            if any(net in o or o in net for o in seen) or self._used[net.version].overlaps(
                int(net.first), int(net.last)
            ):
                raise Conflict(f"Pool overlaps with other one on this address space: {net}")
            seen.append(net)
        candidates = [(IPNetwork(b), s) for b, s in pools] if pools else self.pools
        if not any(not p.v6 for p in planned):
            planned.insert(0, PoolConfig(str(self._pick(4, candidates))))
        if enable_ipv6 and not any(p.v6 for p in planned):
            planned.append(PoolConfig(str(self._pick(6, candidates))))
        for p in planned:
            if not p.gateway:
                net = IPNetwork(p.subnet)
                p.gateway = str(IPAddress(net.first + 1, net.version))
        return planned

    def _validate(self, c: dict) -> PoolConfig:
        if not c.get("Subnet"):
            if c.get("Gateway") or c.get("IPRange") or c.get("AuxiliaryAddresses"):
                raise InvalidParameter("--gateway, --ip-range and --aux-address need a --subnet")
            raise InvalidParameter("an IPAM config needs a subnet")
        subnet = _net(c["Subnet"], "subnet")
        limit = 30 if subnet.version == 4 else 126
        if subnet.prefixlen > limit:
            raise InvalidParameter(f"subnet {subnet} is too small (/{limit} at most)")
        pool = PoolConfig(str(subnet.cidr))
        if c.get("IPRange"):
            rng = _net(c["IPRange"], "ip-range")
            if rng.version != subnet.version or rng not in subnet:
                raise InvalidParameter(f"ip-range {rng} is not inside subnet {subnet}")
            pool.ip_range = str(rng.cidr)
        if c.get("Gateway"):
            gw = _ip(c["Gateway"], "gateway")
            if gw.version != subnet.version or gw not in subnet:
                raise InvalidParameter(f"gateway {gw} is not in subnet {subnet}")
            if gw == subnet.network or (subnet.version == 4 and gw == subnet.broadcast):
                raise InvalidParameter(f"gateway {gw} is not a usable address of {subnet}")
            pool.gateway = str(gw)
        for name, value in (c.get("AuxiliaryAddresses") or {}).items():
            aux = _ip(value, f"aux-address {name}")
            if aux.version != subnet.version or aux not in subnet:
                raise InvalidParameter(f"aux-address {name}={aux} is not in subnet {subnet}")
            pool.aux[name] = str(aux)
        return pool

    def _candidates(self, version: int, pools: list[tuple[IPNetwork, int]]
                    ) -> Iterator[IPNetwork]:
        if version == 6:
            yield from self.ula.subnet(64)
            return
        for base, size in pools:
            if base.version == 4:
                yield from base.subnet(size)

    def _pick(self, version: int, pools: list[tuple[IPNetwork, int]]) -> IPNetwork:
        host = [IPNetwork(p) for p in self.host_prefixes()]
        host = [h for h in host if h.version == version and h.prefixlen > 0]
        used = self._used[version]
        for cand in self._candidates(version, pools):
            first, last = int(cand.first), int(cand.last)
            if used.overlaps(first, last):
                continue
            if any(h.first <= last and first <= h.last for h in host):
                continue
            return cand
        raise Conflict(f"all predefined address pools have been fully subnetted (IPv{version})")

    def register(self, network_id: str, pools: list[PoolConfig]) -> None:
        for p in pools:
            net = IPNetwork(p.subnet)
            self._used[net.version].add(int(net.first), int(net.last))
        self._networks[network_id] = [SubnetAllocator(p) for p in pools]

    def unregister(self, network_id: str) -> None:
        for alloc in self._networks.pop(network_id, []):
            self._used[alloc.subnet.version].remove(int(alloc.subnet.first),
                                                    int(alloc.subnet.last))

    # -- addresses ------------------------------------------------------------
    def _allocator(self, network_id: str, version: int) -> SubnetAllocator | None:
        for alloc in self._networks.get(network_id, []):
            if alloc.subnet.version == version:
                return alloc
        return None

    def has_family(self, network_id: str, version: int) -> bool:
        return self._allocator(network_id, version) is not None

    def allocate(self, network_id: str, version: int, ip: str | None = None) -> str:
        """Reserve an address and return it as CIDR (address/prefix of its subnet)."""
        alloc = self._allocator(network_id, version)
        if alloc is None:
            raise InvalidParameter(f"network has no IPv{version} subnet")
        addr = alloc.allocate(ip)
        return f"{addr}/{alloc.subnet.prefixlen}"

    def in_use(self, network_id: str, ip: str) -> bool:
        """Is `ip` taken (or reserved: gateway, aux) on the network's subnet?"""
        alloc = self._allocator(network_id, IPAddress(ip).version)
        n = int(IPAddress(ip))
        return alloc is not None and (n in alloc.used or n in alloc.reserved)

    def mark(self, network_id: str, ip: str, used: bool) -> None:
        """Another node took (or gave back) `ip` on a global network: keep the cache in step."""
        alloc = self._allocator(network_id, IPAddress(ip).version)
        if alloc is None:
            return
        if used:
            alloc.used.add(int(IPAddress(ip)))
        else:
            alloc.release(ip)

    def release(self, network_id: str, cidr: str) -> None:
        ip = cidr.split("/")[0]
        alloc = self._allocator(network_id, IPAddress(ip).version)
        if alloc is not None:
            alloc.release(ip)
