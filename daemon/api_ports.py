"""Published ports and labels of bare sandboxes: what cnet-cni needs (CNI's
`portMappings` capability, and the CNI network each attachment was made under).

Containers publish their ports with `run -p` (runtime/containers.py); a sandbox that
cnet-cni attached for another runtime has no container record, so its bindings are
made here, per (sandbox, network): DNAT from the host port to the sandbox's address on
that network. The allocator is the container runtime's PortPublisher, so a host port is
never given twice whoever asks, and the packets are ingress/firewall.py's as for
containers. Bindings go when the endpoint leaves (disconnect, sandbox removal) or on
DELETE. They are kept in the store (`sandboxports/<sandbox id>/<network id>`, Docker's
Ports) and taken back at daemon start (restore_sandbox_ports) for the sandboxes that are
still there after load and reconcile, so a host port stays published, and reserved,
across a cnetd restart.

    POST   /sandboxes/{id}/ports  {"Network": NET, "PortBindings": {"80/tcp": [{"HostIp":
           "", "HostPort": "8080"}]}}  ->  {"Ports": {...}} (Docker's NetworkSettings.Ports)
    GET    /sandboxes/{id}/ports  ->  {NETWORK NAME: Ports}
    DELETE /sandboxes/{id}/ports[?network=NET]
    POST   /sandboxes/{id}/labels {"Labels": {KEY: VALUE or null}}  ->  {"Labels": {...}}
           (merged into the sandbox's labels; null removes a key)
"""

from __future__ import annotations

from typing import Any

from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.model import Endpoint, Sandbox
from cnet.cnm.store import Txn
from cnet.daemon.api import Request, route
from cnet.daemon.app import App
from cnet.runtime.ports import PortPublisher


class SandboxPorts:
    """The bindings made through this API, and the controller listener that drops them
    when their endpoint leaves."""

    def __init__(self, app: App) -> None:
        containers = app.containers
        self.publisher: PortPublisher = (containers.ports if containers is not None
                                         and containers.ports is not None
                                         else PortPublisher(app.controller.firewall))
        self.ports: dict[str, dict] = {}  # "<sandbox id>/<network id>" -> Docker's Ports
        app.controller.listeners.append(self)

        self.store = app.controller.store

    @staticmethod
    def key(sandbox_id: str, network_id: str) -> str:
        return f"{sandbox_id}/{network_id}"

    def publish(self, key: str, ip: str, bindings: dict) -> dict:
        """Allocate, program and record the bindings of one (sandbox, network)."""
        ports = self.publisher.publish(key, ip, {"PortBindings": bindings}, {})
        try:
            self.store.put(STORE_PREFIX + key, {"Ports": ports})
        except BaseException:
            self.publisher.release(key)
            raise
        self.ports[key] = ports
        return ports

    def release(self, key: str) -> bool:
        """Unpublish and forget one (sandbox, network)'s bindings. The record goes only
        once the kernel let go (a failed unpublish raises and keeps it, for a retry)."""
        if key not in self.ports:
            return False
        self.publisher.release(key)
        self.ports.pop(key, None)
        self.store.delete(STORE_PREFIX + key)
        return True

    def restore(self, ctl) -> None:
        """Daemon start, after load/reconcile: take the recorded bindings back (host ports
        reserved, DNAT programmed) for the endpoints that are still joined; forget the
        others."""
        stale = []
        for skey, rec in self.store.list(STORE_PREFIX).items():
            key = skey[len(STORE_PREFIX):]
            sid, _, net_id = key.partition("/")
            sb = ctl.sandboxes.get(sid)
            ep = next((ctl.endpoints[e] for e in (sb.endpoints if sb else ())
                       if e in ctl.endpoints and ctl.endpoints[e].network_id == net_id),
                      None)
            if ep is None or not ep.ipv4 or not rec.get("Ports"):
                stale.append(skey)
                continue
            if not self.publisher.restore(key, ep.ipv4.split("/")[0], rec["Ports"]):
                stale.append(skey)  # another owner holds a host port (logged): not ours
                continue
            self.ports[key] = rec["Ports"]
        if stale:
            self.store.commit(Txn(deletes=stale))

    # -- controller listener (every event is told to every listener) --------------------
    def endpoint_left(self, ep: Endpoint, sb: Sandbox) -> None:
        self.release(self.key(sb.id, ep.network_id))

    def __getattr__(self, event: str):
        if event.startswith("_"):
            raise AttributeError(event)
        return _ignore


def _ignore(*_args: Any) -> None:
    return None


STORE_PREFIX = "sandboxports/"


def sandbox_ports(app: App) -> SandboxPorts:
    """The app's SandboxPorts, made (and registered as a listener) on first use."""
    state = app.__dict__.get("_sandbox_ports")
    if state is None:
        state = app.__dict__["_sandbox_ports"] = SandboxPorts(app)
    return state


def restore_sandbox_ports(app: App) -> None:
    """At daemon start, once the containers are restored (the publisher is theirs)."""
    sandbox_ports(app).restore(app.controller)


def _bare_sandbox(app: App, ref: str, hint: str = "publish its ports with run -p"
                  ) -> Sandbox:
    sb = app.controller.sandbox(ref)
    if app.containers is not None:
        try:
            app.containers.get(sb.id)
        except NotFound:
            return sb
        raise InvalidParameter(f"{sb.name} is a container: {hint}")
    return sb


@route("POST", "/sandboxes/([^/]+)/ports")
def sandbox_ports_publish(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    sb = _bare_sandbox(app, req.params[0])
    bindings = req.body.get("PortBindings")
    if not isinstance(bindings, dict) or not all(
            isinstance(v, list) and all(isinstance(b, dict) for b in v)
            for v in bindings.values()):
        raise InvalidParameter('PortBindings must be {"PORT/PROTO": [{"HostIp": ..., '
                               '"HostPort": ...}]}')
    net = ctl.network(str(req.body.get("Network") or ""))
    ep = next((ctl.endpoints[e] for e in sb.endpoints
               if ctl.endpoints[e].network_id == net.id), None)
    if ep is None:
        raise NotFound(f"sandbox {sb.name} is not connected to network {net.name}")
    if not ep.ipv4 or net.driver != "bridge":
        raise InvalidParameter("published ports need a bridge network with IPv4")
    state = sandbox_ports(app)
    key = state.key(sb.id, net.id)
    if key in state.ports:
        raise Conflict(f"sandbox {sb.name} already publishes ports on {net.name}")
    state.publisher.validate(bindings)
    return 200, {"Ports": state.publish(key, ep.ipv4.split("/")[0], bindings)}


@route("GET", "/sandboxes/([^/]+)/ports")
def sandbox_ports_list(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    sb = ctl.sandbox(req.params[0])
    state = sandbox_ports(app)
    out = {}
    for key, ports in state.ports.items():
        sid, _, net_id = key.partition("/")
        if sid == sb.id and net_id in ctl.networks:
            out[ctl.networks[net_id].name] = ports
    return 200, out


@route("DELETE", "/sandboxes/([^/]+)/ports")
def sandbox_ports_delete(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    sb = ctl.sandbox(req.params[0])
    state = sandbox_ports(app)
    wanted = req.query.get("network")
    nets = [ctl.network(wanted).id] if wanted else list(ctl.networks)
    for net_id in nets:
        state.release(state.key(sb.id, net_id))
    return 204, None


@route("POST", "/sandboxes/([^/]+)/labels")
def sandbox_labels_update(app: App, req: Request) -> tuple[int, Any]:
    """Merge labels into a bare sandbox's (cnet-cni records there which CNI network each
    of its attachments was made under); a null value removes the key."""
    ctl = app.controller
    sb = _bare_sandbox(app, req.params[0], "its labels are the container's")
    labels = req.body.get("Labels")
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and k and (v is None or isinstance(v, str))
            for k, v in labels.items()):
        raise InvalidParameter('Labels must be {"KEY": "VALUE" or null}')
    merged = dict(sb.labels)
    for k, v in labels.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    if merged != sb.labels:
        old, sb.labels = sb.labels, merged
        try:
            ctl.store.put(f"sandbox/{sb.id}", sb.to_record())
        except BaseException:
            sb.labels = old
            raise
    return 200, {"Labels": dict(sb.labels)}
