"""API routes of the CNM objects: networks (Docker's paths), sandboxes and endpoints."""

from __future__ import annotations

import json
from typing import Any

from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.daemon import network_detail
from cnet.daemon.api import Request, route
from cnet.daemon.app import App
from cnet.daemon.views import endpoint_view, network_peers, network_view, sandbox_view


def _filters(req: Request) -> dict[str, list[str]]:
    raw = req.query.get("filters")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidParameter("invalid filters: not JSON") from None
    out: dict[str, list[str]] = {}
    for key, values in data.items():
        out[key] = list(values) if isinstance(values, list) else [k for k, v in values.items() if v]
    return out


def _label_match(labels: dict[str, str], wanted: str) -> bool:
    key, _, value = wanted.partition("=")
    return key in labels and (not _ or labels[key] == value)


NETWORK_FILTERS = {
    "driver": lambda n, v: n.driver == v,
    "name": lambda n, v: v in n.name,
    "id": lambda n, v: n.id.startswith(v),
    "label": lambda n, v: _label_match(n.labels, v),
    "scope": lambda n, v: n.scope == v,
    "type": lambda n, v: (v == "builtin") == n.predefined,
}


# -- networks -------------------------------------------------------------------
@route("POST", "/networks/create")
def network_create(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    net = ctl.create_network(req.body)
    return 201, {"Id": net.id, "Warning": ""}


@route("GET", "/networks")
def network_list(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    filters = _filters(req)
    for key in filters:
        if key not in NETWORK_FILTERS:
            raise InvalidParameter(f'invalid filter "{key}"')
    nets = [
        n for n in ctl.networks.values()
        if all(any(NETWORK_FILTERS[k](n, v) for v in vs) for k, vs in filters.items() if vs)
    ]
    nets.sort(key=lambda n: n.name)
    return 200, [network_view(ctl, n) for n in nets]


@route("GET", "/networks/([^/]+)")
def network_inspect(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    net = ctl.network(req.params[0])
    view = network_view(ctl, net)
    if req.query.get("verbose") in ("1", "true"):
        if net.scope == "global":
            view["Peers"] = network_peers(ctl, net)
        view.update(network_detail.verbose(app, net, view.get("Peers")))  # Kernel, Firewall, DNS
    return 200, view


@route("DELETE", "/networks/([^/]+)")
def network_delete(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    ctl.delete_network(req.params[0])
    return 204, None


@route("POST", "/networks/prune")
def network_prune(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    return 200, {"NetworksDeleted": ctl.prune_networks()}


@route("POST", "/networks/([^/]+)/connect")
def network_connect(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    target = req.body.get("Container") or ""
    cfg = req.body.get("EndpointConfig") or {}
    if _container(app, target):
        app.containers.connect_network(target, req.params[0], cfg)
        return 200, {}
    ipam = cfg.get("IPAMConfig") or {}
    ep = ctl.connect(req.params[0], target, ipv4=ipam.get("IPv4Address") or None,
                     ipv6=ipam.get("IPv6Address") or None, aliases=cfg.get("Aliases") or [],
                     ifname=cfg.get("InterfaceName") or None,
                     mac=cfg.get("MacAddress") or None)
    return 200, endpoint_view(ctl, ep)  # (Docker answers {}): what cnet-cni reports


def _container(app: App, target: str) -> bool:
    """Is `target` a container (rather than a bare sandbox)?"""
    if app.containers is None:
        return False
    try:
        app.containers.get(target)
        return True
    except NotFound:
        return False


@route("POST", "/networks/([^/]+)/disconnect")
def network_disconnect(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    target = req.body.get("Container") or ""
    if _container(app, target):
        app.containers.disconnect_network(target, req.params[0])
        return 200, {}
    ctl.disconnect(req.params[0], target, force=bool(req.body.get("Force")))
    return 200, {}


# -- sandboxes --------------------------------------------------------------------
@route("POST", "/sandboxes/create")
def sandbox_create(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    sb = ctl.create_sandbox(req.body.get("Name") or "", req.body.get("Labels"),
                            key=req.body.get("Key") or None)
    return 201, {"Id": sb.id}


@route("GET", "/sandboxes")
def sandbox_list(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    return 200, [sandbox_view(ctl, s) for s in sorted(ctl.sandboxes.values(),
                                                      key=lambda s: s.created)]


@route("GET", "/sandboxes/([^/]+)")
def sandbox_inspect(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    return 200, sandbox_view(ctl, ctl.sandbox(req.params[0]))


def _not_a_container(app: App, sandbox_id: str | None, hint: str) -> None:
    """The low-level sandbox and endpoint routes are for bare sandboxes (cnet sandbox,
    cnet-cni, external ones): a container's sandbox changes through the container runtime,
    which keeps its record and moves its published ports (these routes would give its
    addresses back and leave the host ports DNATed to them)."""
    if not sandbox_id or app.containers is None:
        return
    c = app.containers.containers.get(sandbox_id)
    if c is not None:
        raise Conflict(f"{c['Name']} is a container: {hint}")


@route("DELETE", "/sandboxes/([^/]+)")
def sandbox_delete(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    sb = ctl.sandbox(req.params[0])
    _not_a_container(app, sb.id, "use cnet rm")
    ctl.delete_sandbox(sb.id, force=req.query.get("force") in ("1", "true"))
    return 204, None


# -- endpoints (the CNM steps one by one) ---------------------------------------------
@route("POST", "/endpoints/create")
def endpoint_create(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    b = req.body
    ep = ctl.create_endpoint(b.get("Network") or "", b.get("Name") or "",
                             b.get("IPv4Address") or None, b.get("IPv6Address") or None,
                             b.get("Aliases") or [])
    return 201, endpoint_view(ctl, ep)


@route("GET", "/endpoints/([0-9a-f]+)")
def endpoint_inspect(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    return 200, endpoint_view(ctl, ctl.endpoint(req.params[0]))


@route("POST", "/endpoints/([0-9a-f]+)/join")
def endpoint_join(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    ep = ctl.endpoint(req.params[0])
    sb = ctl.sandbox(req.body.get("Sandbox") or "")
    _not_a_container(app, sb.id, "use cnet network connect")
    return 200, endpoint_view(ctl, ctl.join(ep.id, sb.id))


@route("POST", "/endpoints/([0-9a-f]+)/leave")
def endpoint_leave(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    ep = ctl.endpoint(req.params[0])
    _not_a_container(app, ep.sandbox_id, "use cnet network disconnect")
    return 200, endpoint_view(ctl, ctl.leave(ep.id))


@route("DELETE", "/endpoints/([0-9a-f]+)")
def endpoint_delete(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    ep = ctl.endpoint(req.params[0])
    _not_a_container(app, ep.sandbox_id, "use cnet network disconnect")
    ctl.delete_endpoint(ep.id)
    return 204, None
