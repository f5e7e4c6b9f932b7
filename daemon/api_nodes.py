"""API routes of the cluster's nodes (`cnet node ls/inspect`)."""

from __future__ import annotations

from typing import Any

from cnet.cnm import ids
from cnet.cnm.errors import InvalidParameter
from cnet.daemon.api import Request, route
from cnet.daemon.app import App


def _cluster(app: App):
    if app.cluster is None:
        raise InvalidParameter("this node is not part of a cluster: start cnetd with "
                               "--cluster-store etcd://HOST:PORT --advertise-addr IP")
    return app.cluster


@route("GET", "/nodes", worker=False)
def node_list(app: App, req: Request) -> tuple[int, Any]:
    return 200, _cluster(app).nodes()


def _node(app: App, ref: str) -> dict:
    return ids.resolve("node", ref, _cluster(app).nodes(), lambda n: (n["ID"], n["Name"]))


@route("GET", "/nodes/([^/]+)", worker=False)
def node_inspect(app: App, req: Request) -> tuple[int, Any]:
    return 200, _node(app, req.params[0])


@route("DELETE", "/nodes/([^/]+)", worker=False)
def node_remove(app: App, req: Request) -> tuple[int, Any]:
    _cluster(app).remove_node(_node(app, req.params[0]))
    return 204, None
