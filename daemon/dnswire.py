"""Keeps the embedded resolver (cnet.dns) in step with the controller.

A sandbox on at least one user-defined network is served at 127.0.0.11:53 inside its
namespace; it resolves the names of every endpoint on its user-defined networks
(Docker's default `bridge` network has no name service, as in Docker). Name records
change on join/leave, so a new container resolves at once and a removed one stops at
once (the answer cache is invalidated by the name table).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from cnet.cnm.controller import Controller
from cnet.cnm.model import Endpoint, Network, Sandbox
from cnet.dns.forwarder import Upstream, upstreams_from_resolv_conf
from cnet.dns.names import NameTable
from cnet.dns.server import DNSServer

log = logging.getLogger(__name__)


def _addr(cidr: str | None) -> str | None:
    return (cidr or "").split("/")[0] or None
# sandbox id -> (extra names: short id, hostname; per-container upstreams) for containers
ContainerInfo = Callable[[str], tuple[list[str], list[str]] | None]


def host_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    try:
        with open(path) as f:
            return upstreams_from_resolv_conf(f.read())
    except OSError:
        return []


class DNSWiring:
    def __init__(self, ctl: Controller, dns: DNSServer, names: NameTable,
                 upstreams: Callable[[], list[Upstream | str]],
                 container_info: ContainerInfo):
        self.ctl = ctl
        self.dns = dns
        self.names = names
        self.upstreams = upstreams
        self._default_upstreams = upstreams()  # re-read only when resolv.conf changes
        self.container_info = container_info

    def names_for(self, ep: Endpoint, sb: Sandbox) -> list[str]:
        """The names an endpoint answers to: sandbox name, aliases, container extras."""
        names = [sb.name, *ep.aliases]
        info = self.container_info(sb.id)
        if info:
            names += info[0]
        return names

    # -- controller listener --------------------------------------------------------
    def endpoint_joined(self, ep: Endpoint, sb: Sandbox) -> None:
        net = self.ctl.networks[ep.network_id]
        if net.user_defined:
            self.names.set_endpoint(net.id, net.name, ep.id, self.names_for(ep, sb),
                                    _addr(ep.ipv4), _addr(ep.ipv6))
        self._sync(sb)

    def peer_joined(self, net: Network, endpoint_id: str, rec: dict) -> None:
        """An endpoint on another node of a global network: its names resolve here too."""
        if not rec.get("names"):
            return  # e.g. an endpoint dockerd made: no name to serve
        try:
            self.names.set_endpoint(net.id, net.name, endpoint_id, rec.get("names") or [],
                                    _addr(rec.get("ipv4")), _addr(rec.get("ipv6")))
        except ValueError as exc:  # a name another node accepted but we cannot serve
            log.warning("DNS: peer %s of %s not served: %s", endpoint_id[:12], net.name, exc)

    def peer_left(self, net: Network, endpoint_id: str) -> None:
        self.names.remove_endpoint(endpoint_id)

    def network_removed(self, net: Network) -> None:
        self.names.remove_network(net.id)

    def endpoint_left(self, ep: Endpoint, sb: Sandbox) -> None:
        self.names.remove_endpoint(ep.id)
        self._sync(sb)

    def sandbox_removed(self, sb: Sandbox) -> None:
        """Before its namespace goes: our sockets would keep it alive."""
        self.dns.remove_sandbox(sb.id)

    # -- start ----------------------------------------------------------------------------
    def restore(self) -> None:
        for sb in self.ctl.sandboxes.values():
            for ep_id in sb.endpoints:
                try:
                    self.endpoint_joined(self.ctl.endpoints[ep_id], sb)
                except Exception:
                    log.exception("restoring DNS of sandbox %s", sb.name)

    def refresh_upstreams(self) -> None:
        """The host's resolv.conf changed: every served sandbox follows (run on the worker)."""
        self._default_upstreams = self.upstreams()
        for sb_id in self.dns.sandboxes():
            sb = self.ctl.sandboxes.get(sb_id)
            if sb is not None:
                self._sync(sb)

    def watch_resolv_conf(self, submit: Callable, path: str = "/etc/resolv.conf",
                          interval: float = 2.0) -> threading.Event:
        """Follow changes of the host's resolv.conf (its mtime, checked every `interval`
        seconds); returns the event that stops the watcher."""
        stop = threading.Event()

        def mtime() -> float:
            try:
                return os.stat(path).st_mtime
            except OSError:
                return 0.0

        def run() -> None:
            last = mtime()
            while not stop.wait(interval):
                now = mtime()
                if now != last:
                    last = now
                    log.info("%s changed: updating the embedded DNS upstreams", path)
                    submit(self.refresh_upstreams)

        threading.Thread(target=run, name="resolv-conf-watch", daemon=True).start()
        return stop

    # -- what a sandbox is served ------------------------------------------------------------
    def _sync(self, sb: Sandbox) -> None:
        nets = [self.ctl.networks[self.ctl.endpoints[e].network_id] for e in sb.endpoints]
        mine = [n for n in nets if n.user_defined]
        served = self.dns.serves(sb.id)
        if not mine:
            if served:
                self.dns.remove_sandbox(sb.id)
            return
        ids = frozenset(n.id for n in mine)
        internal = all(n.internal for n in nets)
        info = self.container_info(sb.id)
        ups = (info[1] if info and info[1] else None) or self._default_upstreams
        if served:
            self.dns.update_sandbox(sb.id, networks=ids, internal=internal, upstreams=ups)
        else:
            self.dns.add_sandbox(sb.id, sb.key, ids, internal=internal, upstreams=ups)
