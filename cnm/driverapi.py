"""The network driver interface, after libnetwork's driverapi.

Drivers never see the controller: they get small data objects and answer with
return values. Kernel work goes through `cnet.cnm.osl` and `cnet.ingress`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from cnet.cnm.model import Endpoint, Network


@dataclass
class JoinInfo:
    """What a driver tells the sandbox after creating the interface inside it."""

    ifname: str | None  # None: the driver added no interface (null, host)
    gateway4: str | None = None
    gateway6: str | None = None
    mtu: int | None = None
    static_routes: list[tuple[str, str]] = field(default_factory=list)  # (dst, via)


@dataclass(frozen=True)
class Peer:
    """A remote endpoint of a global network, from the cluster's peer table."""

    endpoint_id: str
    ipv4: str | None  # CIDR
    ipv6: str | None
    mac: str
    vtep: str  # the underlay address of the node that holds the endpoint
    node: str  # that node's id


@dataclass(frozen=True)
class ClusterInfo:
    """This node's identity in the cluster (None in DriverContext: single host)."""

    node_id: str
    node_name: str
    advertise_addr: str


@dataclass(frozen=True)
class DriverContext:
    """What the daemon hands every driver when it is loaded."""

    daemon_id: str
    netlink: object  # cnet.cnm.osl.kernel.Kernel
    firewall: object  # cnet.ingress.firewall.Firewall
    cluster: ClusterInfo | None = None

    def alias(self, object_id: str) -> str:
        return f"cnet:{self.daemon_id}:{object_id}"


class Driver(ABC):
    name: str = ""
    scope: str = "local"  # "local": embedded store; "global": cluster store
    options: frozenset[str] = frozenset()  # driver options (-o) it understands
    multi_instance: bool = True  # False: only the predefined network may use it
    # True: the driver gives no gateway; a sandbox joined only to such networks gets an
    # extra endpoint on the node's gateway bridge for egress (Docker's docker_gwbridge).
    needs_gateway_bridge: bool = False

    def __init__(self, ctx: DriverContext):
        self.ctx = ctx

    def validate(self, network: Network) -> None:  # noqa: B027 - optional hook
        """Refuse bad options before anything is created (raise InvalidParameter)."""

    @abstractmethod
    def create_network(self, network: Network) -> None:
        """Create the network's kernel objects; may fill network.driver_state."""

    @abstractmethod
    def delete_network(self, network: Network) -> None: ...

    def create_endpoint(self, network: Network, endpoint: Endpoint) -> None:  # noqa: B027
        """Prepare an endpoint (may fill endpoint.driver_state); kernel work waits for join."""

    def delete_endpoint(self, network: Network, endpoint: Endpoint) -> None:  # noqa: B027
        pass

    @abstractmethod
    def join(self, network: Network, endpoint: Endpoint, sandbox_key: str,
             ifname: str) -> JoinInfo:
        """Create the endpoint's interface inside the sandbox, named `ifname`."""

    @abstractmethod
    def leave(self, network: Network, endpoint: Endpoint) -> None: ...

    def program_external_connectivity(self, network: Network,  # noqa: B027
                                      endpoint: Endpoint) -> None:
        """Published ports and the like (a later issue)."""

    def revoke_external_connectivity(self, network: Network,  # noqa: B027
                                     endpoint: Endpoint) -> None:
        pass

    def restore(self, network: Network, joined: list[tuple[Endpoint, str]]) -> list[str]:
        """After a daemon restart: make the kernel match the store for this network.

        `joined` lists the network's endpoints that sit in a sandbox, with the
        sandbox's namespace path (None for an endpoint joined for dockerd through
        `join_external`: keep its interface, never recreate it). Recreate what is
        missing, keep what exists, and
        return the ids of endpoints whose interface was recreated (the sandbox
        then configures their addresses again).
        """
        return []

    def owned_netns(self, network: Network) -> set[str]:
        """Paths of the namespaces the driver keeps for this network (reconcile keeps them)."""
        return set()

    def peer_add(self, network: Network, peer: Peer) -> None:  # noqa: B027 - global drivers
        """A remote endpoint joined (global scope): program the way to it."""

    def peer_delete(self, network: Network, peer: Peer) -> None:  # noqa: B027
        pass

    def owned_links(self, network: Network, endpoints: list[Endpoint]) -> set[str]:
        """Names of the host-namespace links this network legitimately owns."""
        return set()

    def firewall_rules(self, network: Network) -> object | None:
        """The network's firewall description, for one atomic reset at start."""
        return None

    def status(self, network: Network) -> dict[str, str]:
        """Live state worth showing with the network (inspect's "Status"), read from the
        kernel, e.g. a macvlan parent's {"Parent": "eth1", "ParentState": "missing"}; a
        "Warning" entry is also listed by `cnet info`. Empty: nothing to report."""
        return {}
