"""Kernel access for one daemon: its own namespace plus the sandboxes' namespaces.

Everything here runs on the daemon's kernel worker thread (see netlink.py).
"""

from __future__ import annotations

import os

from cnet.cnm.osl import namespaces, sysctl
from cnet.cnm.osl.netlink import KernelError, Netlink

__all__ = ["Kernel", "KernelError"]


class Kernel:
    def __init__(self, netns_dir: str):
        self.netns_dir = netns_dir
        self._host: Netlink | None = None
        self._sandboxes: dict[str, Netlink] = {}

    @property
    def host(self) -> Netlink:
        """The daemon's own namespace (its bridges and the host side of veths)."""
        if self._host is None:
            self._host = Netlink()
        return self._host

    def sandbox(self, key: str) -> Netlink:
        """The long-lived handle of a sandbox namespace, opened on first use."""
        nl = self._sandboxes.get(key)
        if nl is None:
            nl = self._sandboxes[key] = Netlink(key)
        return nl

    # -- sandbox namespaces -----------------------------------------------------
    def prepare(self) -> None:
        namespaces.prepare_dir(self.netns_dir)

    def netns_path(self, sandbox_id: str) -> str:
        return os.path.join(self.netns_dir, sandbox_id)

    def create_netns(self, key: str) -> None:
        namespaces.create(key)
        try:
            self.sandbox(key).set_lo_up()
        except BaseException:
            self.remove_netns(key)
            raise

    def remove_netns(self, key: str) -> None:
        nl = self._sandboxes.pop(key, None)
        if nl is not None:
            nl.close()
        namespaces.remove(key)

    def list_netns(self) -> list[str]:
        return [os.path.join(self.netns_dir, n) for n in namespaces.listdir(self.netns_dir)]

    # -- inside a sandbox -----------------------------------------------------------
    def configure_interface(self, key: str, ifname: str, addresses: list[str]) -> None:
        nl = self.sandbox(key)
        idx = nl.index(ifname)
        if idx is None:
            raise KernelError(f"configure {ifname}", FileNotFoundError("no such interface"))
        if any(":" in cidr for cidr in addresses):
            sysctl.write(f"net.ipv6.conf.{ifname}.disable_ipv6", "0", netns=key)
        for cidr in addresses:
            nl.add_address(idx, cidr)
        nl.set_up(idx)

    # -- daemon namespace ---------------------------------------------------------------
    def allow_localnet(self, ifname: str) -> None:
        """Let DNAT'd 127.0.0.1 traffic (published ports) leave through `ifname`."""
        sysctl.write_conf("ipv4", ifname, "route_localnet", "1")

    def enable_forwarding(self, ipv6: bool) -> None:
        sysctl.ensure("net.ipv4.ip_forward", "1")
        if ipv6:
            sysctl.ensure("net.ipv6.conf.all.forwarding", "1")

    def close(self) -> None:
        for nl in self._sandboxes.values():
            nl.close()
        self._sandboxes.clear()
        if self._host is not None:
            self._host.close()
            self._host = None
