"""Kernel access for one daemon: its own namespace plus the sandboxes' namespaces.

Everything here runs on the daemon's kernel worker thread (see netlink.py).
"""

from __future__ import annotations

import functools
import os

from cnet.cnm.osl import features, namespaces, sysctl
from cnet.cnm.osl.netlink import KernelError, Netlink

__all__ = ["Kernel", "KernelError"]


class Kernel:
    def __init__(self, netns_dir: str):
        self.netns_dir = netns_dir
        self._host: Netlink | None = None
        self._sandboxes: dict[str, Netlink] = {}
        self._features: dict[str, bool] = {}  # link feature probes, once per process

    @property
    def host_netns_path(self) -> str:
        """The daemon's own namespace as a path (a driver may create "into" it)."""
        return f"/proc/{os.getpid()}/ns/net"

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

    def remove_netns(self, key: str, vxlan_first: bool = False) -> None:
        """Unmount and forget a namespace. `vxlan_first`: delete its VXLAN devices before
        (their VNIs are held in the daemon's namespace until the kernel dismantles the
        unmounted one, later: a VXLAN made again at once would find its VNI taken)."""
        if vxlan_first and namespaces.is_netns(key):
            nl = self.sandbox(key)
            for link in nl.links():
                if link.kind == "vxlan":
                    nl.delete_link(link.ifname)
        nl = self._sandboxes.pop(key, None)
        if nl is not None:
            nl.close()
        namespaces.remove(key)

    def is_namespace_file(self, key: str) -> bool:
        return namespaces.is_nsfs(key)

    def runtime_netns_problem(self, key: object) -> str | None:
        return namespaces.runtime_netns_problem(key)

    def forget_netns(self, key: str) -> None:
        """Close our handle of a namespace we do not own (it stays)."""
        nl = self._sandboxes.pop(key, None)
        if nl is not None:
            nl.close()

    def is_netns(self, key: str) -> bool:
        """True when `key` is a mounted namespace file (it may outlive the daemon)."""
        return namespaces.is_netns(key)

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

    def create_vxlan(self, key: str, ifname: str, *, vni: int, port: int, local: str,
                     mtu: int | None, alias: str, master: int | None) -> int:
        """A VXLAN device inside namespace `key`, up, on bridge `master`, whose UDP socket
        stays in the daemon's namespace (see Netlink.create_vxlan_into). Returns its index."""
        self.host.create_vxlan_into(ifname, key, vni=vni, port=port, local=local, mtu=mtu)
        nl = self.sandbox(key)
        try:
            idx = nl.index(ifname)
            if idx is None:
                raise KernelError(f"create vxlan {ifname}",
                                  FileNotFoundError("not found after creation"))
            nl.set_link(idx, alias=alias, master=master, up=True)
        except BaseException:
            nl.delete_link(ifname)
            raise
        return idx

    def enable_ipv6(self, key: str, ifname: str) -> None:
        """Switch IPv6 back on for one interface of namespace `key` (off by default there)."""
        sysctl.write(f"net.ipv6.conf.{ifname}.disable_ipv6", "0", netns=key)

    # -- daemon namespace ---------------------------------------------------------------
    def allow_localnet(self, ifname: str) -> None:
        """Let DNAT'd 127.0.0.1 traffic (published ports) leave through `ifname`."""
        sysctl.write_conf("ipv4", ifname, "route_localnet", "1")

    def enable_forwarding(self, ipv6: bool) -> None:
        sysctl.ensure("net.ipv4.ip_forward", "1")
        if ipv6:
            sysctl.ensure("net.ipv6.conf.all.forwarding", "1")

    @staticmethod
    def has_esp() -> bool:
        """IPsec ESP in the kernel (encrypted overlays); probed once per process."""
        return _has_esp()

    def has_link_feature(self, name: str) -> bool:
        """A link kind of features._LINK_PROBES ("802.1q", "ipvlan", "macvlan", ...) works
        here; probed in a throwaway namespace the first time, then remembered."""
        if name not in self._features:
            self.prepare()
            self._features[name] = features.probe_link_feature(self.netns_dir, name)
        return self._features[name]

    def close(self) -> None:
        for nl in self._sandboxes.values():
            nl.close()
        self._sandboxes.clear()
        if self._host is not None:
            self._host.close()
            self._host = None


@functools.cache
def _has_esp() -> bool:
    # features.probe's check: ESP has no link kind to try, so look for its symbols
    return features._kernel_has_symbol("esp_input", "esp4_init")
