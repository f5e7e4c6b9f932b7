"""Published ports: host port allocation and the container's DNAT entries.

Docker's semantics: `-p [HOSTIP:][HOSTPORT:]PORT[/proto]`, `-P` publishes every
exposed port on a free host port, a port taken on an address (or on all of
them) is "already allocated", and everything is released when the container
stops. The bindings are DNATed to one address of the container (see
ContainerManager._ports_follow: they move when that endpoint goes, keeping their host
ports). The packets are nftables' business (cnet.ingress.firewall).

`port_text` is the one place that writes a binding the way `docker ps` shows it; the CLI
imports this module for it (`cnet ps`), so the module stays cheap to import (`secrets` is
imported where a free port is picked).
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

from cnet.cnm.errors import Conflict, InvalidParameter

log = logging.getLogger(__name__)
Binding = tuple[str, str, int]  # (proto, host ip or "", host port)


def port_text(host_ip: str, host_port: int | str, port: int | str, proto: str = "tcp",
              target: str = "") -> str:
    """A binding as `docker ps` shows it: "0.0.0.0:8080->80/tcp" (no host address: all of
    them). `target`, when given, names the address the port is DNATed to:
    "0.0.0.0:8080->10.0.0.2:80/tcp"."""
    to = f"{target}:" if target else ""
    return f"{host_ip or '0.0.0.0'}:{host_port}->{to}{port}/{proto or 'tcp'}"


class Published(NamedTuple):
    """One binding as programmed: host (proto, address, port) -> target address and port."""
    proto: str
    host_ip: str  # "" for every address
    host_port: int
    target_ip: str  # the container address the kernel DNATs to
    port: int

    def text(self, with_target: bool = False) -> str:
        return port_text(self.host_ip, self.host_port, self.port, self.proto,
                         self.target_ip if with_target else "")


def _local_port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 49153, 60999


class PortPublisher:
    def __init__(self, ingress):
        self.ingress = ingress  # cnet.ingress.firewall.Firewall (publish/unpublish), or None
        self._lock = threading.Lock()
        self._taken: dict[Binding, str] = {}  # -> container id
        self._by_container: dict[str, list[tuple[Binding, str, int]]] = {}

    @staticmethod
    def validate(port_bindings: dict) -> None:
        for key, bindings in port_bindings.items():
            port, _, proto = key.partition("/")
            if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("tcp", "udp",
                                                                                   ""):
                raise InvalidParameter(f'invalid port "{key}"')
            for b in bindings or []:
                hp = b.get("HostPort") or ""
                if hp and (not hp.isdigit() or not 0 < int(hp) < 65536):
                    raise InvalidParameter(f'invalid host port "{hp}"')
                if b.get("HostIp") and ":" in b["HostIp"]:
                    raise InvalidParameter("publishing on IPv6 host addresses is not supported")

    def _conflicts(self, proto: str, ip: str, port: int) -> bool:
        if ip:
            return (proto, ip, port) in self._taken or (proto, "", port) in self._taken
        return any(p == proto and n == port for p, _, n in self._taken)

    def _free_port(self, proto: str, ip: str) -> int:
        import secrets

        lo, hi = _local_port_range()
        start = lo + secrets.randbelow(hi - lo + 1)
        for i in range(hi - lo + 1):
            port = lo + (start - lo + i) % (hi - lo + 1)
            if not self._conflicts(proto, ip, port):
                return port
        raise Conflict("no free host port left")

    def publish(self, cid: str, container_ip: str | None, host_config: dict,
                exposed: dict) -> dict:
        """Allocate and program every binding; returns Docker's NetworkSettings.Ports."""
        wanted: dict[str, list[dict]] = {k: list(v or []) for k, v in
                                         (host_config.get("PortBindings") or {}).items()}
        if host_config.get("PublishAllPorts"):
            for key in exposed:
                wanted.setdefault(key if "/" in key else key + "/tcp", [{"HostPort": ""}])
        if not wanted:
            return {}
        if container_ip is None:
            raise InvalidParameter("published ports need a bridge network with IPv4")
        result: dict[str, list[dict]] = {}
        with self._lock:
            self._release_locked(cid)  # what a failed unpublish of this owner left behind
            done: list[tuple[Binding, str, int]] = []
            try:
                for key, bindings in wanted.items():
                    port, _, proto = key.partition("/")
                    proto = proto or "tcp"
                    for b in bindings:
                        ip = b.get("HostIp") or ""
                        hp = int(b["HostPort"]) if b.get("HostPort") else \
                            self._free_port(proto, ip)
                        if self._conflicts(proto, ip, hp):
                            raise Conflict(f"Bind for {ip or '0.0.0.0'}:{hp} failed: port is "
                                           "already allocated")
                        binding = (proto, ip, hp)
                        self._taken[binding] = cid
                        done.append((binding, container_ip, int(port)))
                        result.setdefault(key, []).append(
                            {"HostIp": ip or "0.0.0.0", "HostPort": str(hp)})
                self._by_container[cid] = done
                if self.ingress is not None:
                    self.ingress.publish(done)
            except BaseException:
                for binding, _, _ in done:
                    self._taken.pop(binding, None)
                self._by_container.pop(cid, None)
                raise
        return result

    def published(self, owner: str) -> list[Published]:
        """What `owner` (a container id, or a bare sandbox's "<sandbox id>/<network id>")
        has published, as recorded when it was programmed: each binding with the address
        the kernel DNATs it to (read, never recomputed: a container's endpoints may have
        changed since). Sorted; empty when it published nothing."""
        with self._lock:
            done = list(self._by_container.get(owner, ()))
        return sorted(Published(proto, ip, hp, target, port)
                      for (proto, ip, hp), target, port in done)

    def target(self, owner: str) -> str | None:
        """The address `owner`'s bindings are DNATed to; None when it published nothing."""
        with self._lock:
            done = self._by_container.get(owner)
            return done[0][1] if done else None

    def retarget(self, owner: str, container_ip: str) -> None:
        """DNAT `owner`'s bindings to another of its addresses, keeping their host ports
        (Docker moves them when the endpoint holding them leaves). One nft batch: each
        binding's DNAT chain is flushed and refilled, its map element stays."""
        with self._lock:
            done = self._by_container.get(owner)
            if not done:
                return
            moved = [(binding, container_ip, port) for binding, _, port in done]
            if moved == done:
                return
            if self.ingress is not None:
                self.ingress.publish(moved)
            self._by_container[owner] = moved

    def release(self, cid: str) -> None:
        """Unpublish `cid`'s bindings, then forget them. If the firewall fails they stay
        recorded (still reserved, still shown): the kernel may still DNAT them, and a later
        release (or publish for the same owner) tries again."""
        with self._lock:
            self._release_locked(cid)

    def _release_locked(self, cid: str) -> None:
        done = self._by_container.get(cid)
        if not done:
            self._by_container.pop(cid, None)
            return
        if self.ingress is not None:
            self.ingress.unpublish(done)
        del self._by_container[cid]
        for binding, _, _ in done:
            if self._taken.get(binding) == cid:
                del self._taken[binding]

    def restore(self, cid: str, container_ip: str | None, ports: dict) -> bool:
        """After a daemon restart: take the running container's bindings back. A host
        port already held by another owner (two records claiming it, e.g. after a crash)
        is never given to both: this owner gets none of its bindings back, the clash is
        logged. True when they were taken back."""
        if not ports or container_ip is None:
            return False
        done = []
        with self._lock:
            for key, bindings in ports.items():
                port, _, proto = key.partition("/")
                for b in bindings or []:
                    ip = "" if b["HostIp"] in ("", "0.0.0.0") else b["HostIp"]
                    binding = (proto or "tcp", ip, int(b["HostPort"]))
                    holder = next((o for (p, i, n), o in self._taken.items()
                                   if p == binding[0] and n == binding[2] and o != cid
                                   and (not ip or not i or i == ip)), None)
                    if holder is not None or any(d[0] == binding for d in done):
                        log.error("published port %s of %s not restored: already held by "
                                  "%s", port_text(ip, binding[2], port, binding[0]),
                                  cid[:12], (holder or cid)[:12])
                        return False
                    done.append((binding, container_ip, int(port)))
            if not done:
                return False
            if self.ingress is not None:
                self.ingress.publish(done)
            for binding, _, _ in done:
                self._taken[binding] = cid
            self._by_container[cid] = done
        return True
