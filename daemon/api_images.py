"""API routes of images (Docker's paths where Docker has the operation).

Every route runs off the kernel worker (`worker=False`): extracting a layer can take
seconds and must not hold up networking. ImageStore serialises changes with its own
lock; reads go straight to the store.
"""

from __future__ import annotations

from typing import Any

from cnet.cnm.errors import InvalidParameter
from cnet.daemon.api import Request, route
from cnet.daemon.app import App


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _path(req: Request) -> str:
    path = req.body.get("Path")
    if not isinstance(path, str) or not path:
        raise InvalidParameter("Path (an absolute path on the daemon's host) is required")
    return path


@route("GET", r"/images/json", worker=False)
def image_list(app: App, req: Request) -> tuple[int, Any]:
    return 200, [app.images.summary(r) for r in app.images.list()]


@route("POST", r"/images/import", worker=False)
def image_import(app: App, req: Request) -> tuple[int, Any]:
    name = req.body.get("Name") or None
    if name is not None and not isinstance(name, str):
        raise InvalidParameter("Name must be a string")
    rec = app.images.import_rootfs(_path(req), name)
    return 200, {"Id": rec["Id"], "RepoTags": rec["RepoTags"]}


@route("POST", r"/images/load", worker=False)
def image_load(app: App, req: Request) -> tuple[int, Any]:
    return 200, {"Loaded": app.images.load(_path(req))}


@route("GET", r"/images/(.+)/json", worker=False)
def image_inspect(app: App, req: Request) -> tuple[int, Any]:
    return 200, app.images.inspect(req.params[0])


@route("POST", r"/images/(.+)/tag", worker=False)
def image_tag(app: App, req: Request) -> tuple[int, Any]:
    repo, tag = req.query.get("repo", ""), req.query.get("tag", "")
    if not repo:
        raise InvalidParameter("repo is required")
    app.images.tag(req.params[0], f"{repo}:{tag}" if tag else repo)
    return 201, None


@route("DELETE", r"/images/(.+)", worker=False)
def image_delete(app: App, req: Request) -> tuple[int, Any]:
    return 200, app.images.remove(req.params[0], force=_truthy(req.query.get("force")))
