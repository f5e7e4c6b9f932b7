"""Docker's remote IpamDriver API (libnetwork docs/ipam.md) backed by cnet's IPAM.

A pool dockerd asks for is a subnet cnet hands out (or the one asked for), reserved in
cnet's IPAM at once so that cnet's own networks never overlap it. When dockerd then
creates the network (NetworkDriver.CreateNetwork, daemon/plugin_docker.py), the
reservation becomes the cnet network's subnet; when the network goes, the reservation
comes back until dockerd releases the pool.

Addresses: dockerd asks for the gateway, then one address per endpoint, and gives it to
CreateEndpoint, where cnet's allocator takes it. The addresses handed out are recorded
here (they may be asked for before the network exists), and an address cnet itself
uses on the network (a `cnet network connect`) is never handed out.

Store keys (local store): `docker/pool/<pool>` and `docker/addr/<pool>/<ip>`, where
<pool> is the pool id (its CIDR) with "/" written as "_". Every method runs on the
kernel worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cnet.cnm.controller import Controller
from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.ipam import GLOBAL_POOLS, PoolConfig
from cnet.cnm.store import Txn
from netaddr import AddrFormatError, IPAddress, IPNetwork

log = logging.getLogger(__name__)

LOCAL_SPACE = "CnetLocal"
GLOBAL_SPACE = "CnetGlobal"
GATEWAY_TYPE = "com.docker.network.gateway"  # Options["RequestAddressType"] of the gateway


@dataclass
class Pool:
    id: str  # the subnet's CIDR
    space: str
    sub_pool: str = ""  # addresses without a preference come from here (docker --ip-range)
    addrs: set[str] = field(default_factory=set)

    @property
    def subnet(self) -> IPNetwork:
        return IPNetwork(self.id)

    def record(self) -> dict:
        return {"Pool": self.id, "AddressSpace": self.space, "SubPool": self.sub_pool}


def _key(pool_id: str) -> str:
    return pool_id.replace("/", "_")


def pool_key(pool_id: str) -> str:
    return f"docker/pool/{_key(pool_id)}"


def addr_key(pool_id: str, ip: str) -> str:
    return f"docker/addr/{_key(pool_id)}/{ip}"


def _reservation(pool_id: str) -> str:
    """The pseudo network id under which cnet's IPAM holds a pool no network uses yet."""
    return f"docker-pool:{pool_id}"


def text_field(body: dict, name: str, required: bool = True) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise InvalidParameter(f"missing {name}")
        return ""
    if not isinstance(value, str):
        raise InvalidParameter(f"{name} must be a string")
    return value


def _options(body: dict) -> dict[str, str]:
    opts = body.get("Options") or {}
    if not isinstance(opts, dict):
        raise InvalidParameter("Options must be an object")
    return {str(k): str(v) for k, v in opts.items()}


class IpamPlugin:
    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.pools: dict[str, Pool] = {}
        self._reserved: set[str] = set()  # pools held in cnet's IPAM under _reservation()

    # -- start ------------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild the pools and addresses from the store (daemon start, after the
        controller loaded its networks)."""
        for rec in self.ctl.store.list("docker/pool/").values():
            pool = Pool(rec["Pool"], rec.get("AddressSpace") or LOCAL_SPACE,
                        rec.get("SubPool") or "")
            self.pools[pool.id] = pool
        stale = []
        for key, rec in self.ctl.store.list("docker/addr/").items():
            pool = self.pools.get(rec.get("Pool", ""))
            if pool is None:
                stale.append(key)
            else:
                pool.addrs.add(rec["Address"])
        if stale:
            self.ctl.store.commit(Txn(deletes=stale))
        for pool in self.pools.values():
            self.sync_reservation(pool.id)

    # -- the reservation in cnet's IPAM -----------------------------------------------------
    def network_of(self, pool_id: str) -> str | None:
        """The cnet network whose subnet this pool is, if any."""
        for net in self.ctl.networks.values():
            if any(p.subnet == pool_id for p in net.pools):
                return net.id
        return None

    def sync_reservation(self, pool_id: str) -> None:
        """Hold the pool in cnet's IPAM exactly while no network has it as its subnet."""
        want = pool_id in self.pools and self.network_of(pool_id) is None
        if want and pool_id not in self._reserved:
            self.ctl.ipam.register(_reservation(pool_id), [PoolConfig(pool_id)])
            self._reserved.add(pool_id)
        elif not want and pool_id in self._reserved:
            self.ctl.ipam.unregister(_reservation(pool_id))
            self._reserved.discard(pool_id)

    def release_reservation(self, pool_id: str) -> bool:
        """Give the reservation up (the network that takes the subnet is being created);
        True if there was one (call sync_reservation to take it back on failure)."""
        if pool_id not in self._reserved:
            return False
        self.ctl.ipam.unregister(_reservation(pool_id))
        self._reserved.discard(pool_id)
        return True

    # -- the API ----------------------------------------------------------------------
    def get_capabilities(self, body: dict) -> dict:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, body: dict) -> dict:
        return {"LocalDefaultAddressSpace": LOCAL_SPACE,
                "GlobalDefaultAddressSpace": GLOBAL_SPACE}

    def request_pool(self, body: dict) -> dict:
        space = text_field(body, "AddressSpace")
        if space not in (LOCAL_SPACE, GLOBAL_SPACE):
            raise InvalidParameter(f'unknown address space "{space}" (cnet has {LOCAL_SPACE} '
                                   f'and {GLOBAL_SPACE})')
        wanted = text_field(body, "Pool", required=False)
        sub_pool = text_field(body, "SubPool", required=False)
        v6 = body.get("V6", False)
        if not isinstance(v6, bool):
            raise InvalidParameter("V6 must be a boolean")
        _options(body)
        if sub_pool and not wanted:
            raise InvalidParameter("a SubPool needs a Pool")
        if wanted:
            try:
                v6 = IPNetwork(wanted).version == 6
            except (AddrFormatError, ValueError):
                raise InvalidParameter(f'invalid pool "{wanted}": not a CIDR') from None
            config: dict = {"Subnet": wanted}
            if sub_pool:
                config["IPRange"] = sub_pool
            planned = self.ctl.ipam.plan([config], v6)
        elif space == GLOBAL_SPACE:
            planned = self.ctl.ipam.plan([], v6, GLOBAL_POOLS)
        else:
            # cnet's default pools are Docker's. dockerd's own IPAM does not know cnet's
            # networks and hands out its pools from the first one up (172.17, 172.18...
            # e.g. for docker_gwbridge): take automatic pools from the last one down.
            pools = [(str(base), size) for base, size in reversed(self.ctl.ipam.pools)]
            planned = self.ctl.ipam.plan([], v6, pools)
        pool_cfg = next(p for p in planned if p.v6 == v6)
        if pool_cfg.subnet in self.pools:
            raise Conflict(f"Pool overlaps with other one on this address space: "
                           f"{pool_cfg.subnet}")
        pool = Pool(pool_cfg.subnet, space, pool_cfg.ip_range or "")
        self.ctl.store.commit(Txn(puts={pool_key(pool.id): pool.record()},
                                  absent=[pool_key(pool.id)]))
        self.pools[pool.id] = pool
        self.sync_reservation(pool.id)
        log.info("docker IPAM: pool %s", pool.id)
        return {"PoolID": pool.id, "Pool": pool.id, "Data": {}}

    def _pool(self, body: dict) -> Pool:
        pool_id = text_field(body, "PoolID")
        pool = self.pools.get(pool_id)
        if pool is None:
            raise NotFound(f"unknown pool {pool_id}")
        return pool

    def release_pool(self, body: dict) -> dict:
        """dockerd 20.10 releases the pool before it deletes the network: a network that
        still has the subnet keeps it in cnet's IPAM until it goes."""
        pool = self._pool(body)
        self.ctl.store.commit(Txn(deletes=[pool_key(pool.id)] +
                                  [addr_key(pool.id, a) for a in sorted(pool.addrs)]))
        del self.pools[pool.id]
        self.sync_reservation(pool.id)
        log.info("docker IPAM: released pool %s", pool.id)
        return {}

    def _taken(self, pool: Pool, ip: IPAddress) -> bool:
        text = str(ip)
        if text in pool.addrs:
            return True
        net_id = self.network_of(pool.id)
        return net_id is not None and self.ctl.ipam.in_use(net_id, text)

    def request_address(self, body: dict) -> dict:
        pool = self._pool(body)
        wanted = text_field(body, "Address", required=False)
        opts = _options(body)
        subnet = pool.subnet
        usable_first = subnet.first + 1
        usable_last = subnet.last - (1 if subnet.version == 4 else 0)
        if wanted:
            try:
                ip = IPAddress(wanted)
            except (AddrFormatError, ValueError):
                raise InvalidParameter(f'invalid address "{wanted}"') from None
            if ip not in subnet or not usable_first <= int(ip) <= usable_last:
                raise InvalidParameter(f"address {ip} is not a usable address of pool {pool.id}")
            if self._taken(pool, ip):
                raise Conflict(f"Address already in use: {ip}")
        else:
            first, last = usable_first, usable_last
            if pool.sub_pool and opts.get("RequestAddressType") != GATEWAY_TYPE:
                rng = IPNetwork(pool.sub_pool)
                first, last = max(first, rng.first), min(last, rng.last)
            ip = None
            for n in range(first, last + 1):
                cand = IPAddress(n, subnet.version)
                if not self._taken(pool, cand):
                    ip = cand
                    break
            if ip is None:
                raise Conflict(f"no available addresses in pool {pool.id}")
        key = addr_key(pool.id, str(ip))
        self.ctl.store.commit(Txn(puts={key: {"Pool": pool.id, "Address": str(ip)}},
                                  absent=[key]))
        pool.addrs.add(str(ip))
        return {"Address": f"{ip}/{subnet.prefixlen}", "Data": {}}

    def release_address(self, body: dict) -> dict:
        pool = self._pool(body)
        text = text_field(body, "Address")
        try:
            ip = str(IPAddress(text))
        except (AddrFormatError, ValueError):
            raise InvalidParameter(f'invalid address "{text}"') from None
        if ip not in pool.addrs:
            raise NotFound(f"address {ip} is not allocated in pool {pool.id}")
        self.ctl.store.delete(addr_key(pool.id, ip))
        pool.addrs.discard(ip)
        return {}

    METHODS = {
        "GetCapabilities": get_capabilities,
        "GetDefaultAddressSpaces": get_default_address_spaces,
        "RequestPool": request_pool,
        "ReleasePool": release_pool,
        "RequestAddress": request_address,
        "ReleaseAddress": release_address,
    }
