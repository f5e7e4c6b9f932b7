"""A simulated L2 underlay: n host namespaces on one switch (a bridge in its own namespace).

Host i is a harness.Netns whose `eth0` (MTU 1500) has 10.99.0.(i+1)/24 and is a veth
into the switch namespace, enslaved to bridge `br0` there; every host reaches every
other one. cnetd's multi-host tests run one daemon (and one etcd member) per host.
"""

from __future__ import annotations

import harness

SUBNET = "10.99.0"
PREFIXLEN = 24


class Underlay:
    def __init__(self, n_hosts: int, mtu: int = 1500):
        if not 1 <= n_hosts <= 250:
            raise ValueError(f"Underlay: 1..250 hosts, not {n_hosts}")
        self.mtu = mtu
        self.switch = harness.Netns()
        #: (namespace, underlay IP) per host, in order
        self.hosts: list[tuple[harness.Netns, str]] = []
        try:
            sw = self.switch.name
            harness.sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            harness.sh("ip", "-n", sw, "link", "set", "br0", "up")
            for i in range(n_hosts):
                ns = harness.Netns()
                ip = f"{SUBNET}.{i + 1}"
                self.hosts.append((ns, ip))
                port = f"h{i}"
                harness.sh("ip", "-n", sw, "link", "add", port, "mtu", str(mtu), "type",
                           "veth", "peer", "name", "eth0", "mtu", str(mtu), "netns", ns.name)
                harness.sh("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
                ns.ip("addr", "add", f"{ip}/{PREFIXLEN}", "dev", "eth0")
                ns.ip("link", "set", "eth0", "up")
        except Exception:
            self.delete()
            raise

    @property
    def namespaces(self) -> list[harness.Netns]:
        return [ns for ns, _ in self.hosts]

    @property
    def ips(self) -> list[str]:
        return [ip for _, ip in self.hosts]

    def delete(self) -> None:
        """Delete every host namespace and the switch (killing what still runs there)."""
        for ns, _ in self.hosts:
            ns.delete()
        self.switch.delete()

    def __enter__(self) -> Underlay:
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Underlay(switch={self.switch.name!r}, hosts={self.ips})"
