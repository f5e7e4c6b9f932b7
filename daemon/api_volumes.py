"""API routes of volumes (Docker's paths and bodies).

Off the kernel worker: removing a volume deletes its data, which may take a while.
VolumeStore serialises changes with its own lock.
"""

from __future__ import annotations

from typing import Any

from cnet.cnm.errors import InvalidParameter
from cnet.daemon.api import Request, route
from cnet.daemon.api_network import _filters, _label_match
from cnet.daemon.app import App

VOLUME_FILTERS = {
    "name": lambda app, v, want: want in v["Name"],
    "driver": lambda app, v, want: v["Driver"] == want,
    "label": lambda app, v, want: _label_match(v.get("Labels") or {}, want),
    "dangling": lambda app, v, want: (want.lower() in ("1", "true"))
    == (not app.volumes.users(v["Name"])),
}


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


@route("POST", r"/volumes/create", worker=False)
def volume_create(app: App, req: Request) -> tuple[int, Any]:
    body = req.body
    name = body.get("Name") or None
    if name is not None and not isinstance(name, str):
        raise InvalidParameter("Name must be a string")
    vol = app.volumes.create(name, driver=body.get("Driver") or "local",
                             labels=body.get("Labels") or None,
                             opts=body.get("DriverOpts") or None)
    return 201, vol


@route("GET", r"/volumes", worker=False)
def volume_list(app: App, req: Request) -> tuple[int, Any]:
    filters = _filters(req)
    for key in filters:
        if key not in VOLUME_FILTERS:
            raise InvalidParameter(f'invalid filter "{key}"')
    vols = [
        v for v in app.volumes.list()
        if all(any(VOLUME_FILTERS[k](app, v, x) for x in xs) for k, xs in filters.items() if xs)
    ]
    return 200, {"Volumes": vols, "Warnings": []}


@route("POST", r"/volumes/prune", worker=False)
def volume_prune(app: App, req: Request) -> tuple[int, Any]:
    names, reclaimed = app.volumes.prune()
    return 200, {"VolumesDeleted": names, "SpaceReclaimed": reclaimed}


@route("GET", r"/volumes/([^/]+)", worker=False)
def volume_inspect(app: App, req: Request) -> tuple[int, Any]:
    return 200, app.volumes.get(req.params[0])


@route("DELETE", r"/volumes/([^/]+)", worker=False)
def volume_delete(app: App, req: Request) -> tuple[int, Any]:
    app.volumes.remove(req.params[0], force=_truthy(req.query.get("force")))
    return 204, None
