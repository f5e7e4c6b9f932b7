"""The CNM objects as persisted records (plain data; behaviour lives in the controller)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cnet.cnm.ipam import PoolConfig


@dataclass
class Network:
    id: str
    name: str
    driver: str
    scope: str
    created: str
    pools: list[PoolConfig]
    enable_ipv6: bool = False
    internal: bool = False
    attachable: bool = False
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    user_subnets: bool = False  # static --ip is allowed only on user-configured subnets
    predefined: bool = False  # bridge/host/none: cannot be removed
    driver_state: dict[str, Any] = field(default_factory=dict)  # e.g. the bridge name

    def to_record(self) -> dict:
        d = asdict(self)
        d["pools"] = [p.to_docker() for p in self.pools]
        return d

    @classmethod
    def from_record(cls, d: dict) -> Network:
        d = dict(d)
        d["pools"] = [PoolConfig.from_docker(p) for p in d["pools"]]
        return cls(**d)

    @property
    def user_defined(self) -> bool:
        """Created by a user (not bridge/host/none): these get the embedded DNS."""
        return not self.predefined and self.driver not in ("host", "null")

    def pool(self, v6: bool) -> PoolConfig | None:
        return next((p for p in self.pools if p.v6 == v6), None)


@dataclass
class Endpoint:
    id: str
    name: str
    network_id: str
    ipv4: str | None = None  # CIDR, e.g. 172.18.0.2/16
    ipv6: str | None = None
    mac: str | None = None
    aliases: list[str] = field(default_factory=list)
    sandbox_id: str | None = None
    ifname: str | None = None  # inside the sandbox (eth0, eth1, ...)
    gateway4: str | None = None  # what the driver answered at join
    gateway6: str | None = None
    driver_state: dict[str, Any] = field(default_factory=dict)  # e.g. the host veth name

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict) -> Endpoint:
        return cls(**d)


@dataclass
class Sandbox:
    id: str
    name: str
    created: str
    key: str  # path of the bind-mounted network namespace
    endpoints: list[str] = field(default_factory=list)  # join order: first with a gateway wins
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False  # a namespace someone else made (CNI): never created or removed

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict) -> Sandbox:
        return cls(**d)
