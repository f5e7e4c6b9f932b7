"""The null driver (network "none"): a sandbox with only its loopback."""

from __future__ import annotations

from cnet.cnm.driverapi import Driver, JoinInfo
from cnet.cnm.model import Endpoint, Network


class NullDriver(Driver):
    name = "null"
    multi_instance = False

    def create_network(self, network: Network) -> None:
        pass

    def delete_network(self, network: Network) -> None:
        pass

    def join(self, network: Network, endpoint: Endpoint, sandbox_key: str,
             ifname: str) -> JoinInfo:
        return JoinInfo(ifname=None)

    def leave(self, network: Network, endpoint: Endpoint) -> None:
        pass
