"""API routes of containers (Docker's Engine API paths and shapes)."""

from __future__ import annotations

import json
from typing import Any

from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.daemon.api import Request, Stream, route
from cnet.daemon.app import App
from cnet.daemon.views import container_view
from cnet.runtime import logfile

TERM = 15
KILL = 9


def _mgr(app: App):
    if app.containers is None:
        raise InvalidParameter("the container runtime is not available in this daemon")
    return app.containers


def _stop(app: App, ref: str, timeout: float, signal: int = TERM) -> bool:
    """Manual stop: signal, wait `timeout`, then SIGKILL. False if it was not running."""
    mgr = _mgr(app)
    c = app.worker.run(mgr.mark_stopping, ref)
    if not c["State"]["Running"]:
        return False
    try:
        app.worker.run(mgr.kill, c["Id"], signal)
    except Conflict:
        return True
    if not mgr.wait_exit(c["Id"], timeout):
        try:
            app.worker.run(mgr.kill, c["Id"], KILL)
        except Conflict:
            pass
        mgr.wait_exit(c["Id"], 30)
    return True


def _timeout(req: Request, default: float = 10) -> float:
    try:
        return float(req.query.get("t", default))
    except ValueError:
        raise InvalidParameter(f'invalid timeout "{req.query.get("t")}"') from None


@route("POST", "/containers/create")
def container_create(app: App, req: Request) -> tuple[int, Any]:
    c = _mgr(app).create(req.body, req.query.get("name"))
    return 201, {"Id": c["Id"], "Warnings": []}


@route("POST", "/containers/([^/]+)/start")
def container_start(app: App, req: Request) -> tuple[int, Any]:
    mgr = _mgr(app)
    if mgr.get(req.params[0])["State"]["Running"]:
        return 304, None
    mgr.start(req.params[0], hold=req.query.get("hold") in ("1", "true"))
    return 204, None


@route("POST", "/containers/([^/]+)/release")
def container_release(app: App, req: Request) -> tuple[int, Any]:
    """The attached client is ready: the held process may run (see start?hold=1)."""
    _mgr(app).release(req.params[0])
    return 204, None


@route("POST", "/containers/([^/]+)/stop", worker=False)
def container_stop(app: App, req: Request) -> tuple[int, Any]:
    return (204 if _stop(app, req.params[0], _timeout(req)) else 304), None


@route("POST", "/containers/([^/]+)/restart", worker=False)
def container_restart(app: App, req: Request) -> tuple[int, Any]:
    _stop(app, req.params[0], _timeout(req))
    app.worker.run(_mgr(app).start, req.params[0])
    return 204, None


@route("POST", "/containers/([^/]+)/kill", worker=False)
def container_kill(app: App, req: Request) -> tuple[int, Any]:
    mgr = _mgr(app)
    c = app.worker.run(mgr.get, req.params[0])
    if not c["State"]["Running"]:
        raise Conflict(f"Container {c['Id'][:12]} is not running")
    app.worker.run(mgr.mark_stopping, c["Id"])
    app.worker.run(mgr.kill, c["Id"], req.query.get("signal") or "KILL")
    return 204, None


@route("DELETE", "/containers/([^/]+)", worker=False)
def container_delete(app: App, req: Request) -> tuple[int, Any]:
    mgr = _mgr(app)
    force = req.query.get("force") in ("1", "true")
    c = app.worker.run(mgr.get, req.params[0])
    if c["State"]["Running"] and force:
        _stop(app, c["Id"], 0, KILL)
    app.worker.run(mgr.remove, c["Id"], force, req.query.get("v") in ("1", "true"))
    return 204, None


@route("GET", "/containers/json")
def container_list(app: App, req: Request) -> tuple[int, Any]:
    mgr = _mgr(app)
    show_all = req.query.get("all") in ("1", "true")
    filters = json.loads(req.query.get("filters") or "{}")
    out = []
    for c in sorted(mgr.containers.values(), key=lambda c: c["Created"], reverse=True):
        if not show_all and not c["State"]["Running"]:
            continue
        if not _matches(c, filters):
            continue
        out.append(container_view(app.controller, c, summary=True))
    return 200, out


def _matches(c: dict, filters: dict) -> bool:
    for key, values in filters.items():
        values = values if isinstance(values, list) else [k for k, v in values.items() if v]
        if key == "name" and not any(v in c["Name"] for v in values):
            return False
        if key == "id" and not any(c["Id"].startswith(v) for v in values):
            return False
        if key == "status" and c["State"]["Status"] not in values:
            return False
        if key == "label":
            labels = c["Config"]["Labels"]
            for v in values:
                k, sep, val = v.partition("=")
                if k not in labels or (sep and labels[k] != val):
                    return False
        if key not in ("name", "id", "status", "label"):
            raise InvalidParameter(f'invalid filter "{key}"')
    return True


@route("GET", "/containers/([^/]+)/json")
def container_inspect(app: App, req: Request) -> tuple[int, Any]:
    return 200, container_view(app.controller, _mgr(app).get(req.params[0]))


@route("POST", "/containers/([^/]+)/wait", worker=False)
def container_wait(app: App, req: Request) -> tuple[int, Any]:
    mgr = _mgr(app)
    try:
        c = app.worker.run(mgr.get, req.params[0])
    except NotFound:
        if req.params[0] in mgr.last_exit:  # already exited and auto-removed (--rm)
            return 200, {"StatusCode": mgr.last_exit[req.params[0]], "Error": None}
        raise
    mgr.wait_exit(c["Id"], None)
    if c["HostConfig"]["AutoRemove"]:
        mgr.wait_removed_or_exited(c["Id"])
    code = mgr.last_exit.get(c["Id"], c["State"]["ExitCode"])
    return 200, {"StatusCode": code, "Error": None}


@route("GET", "/containers/([^/]+)/logs", worker=False)
def container_logs(app: App, req: Request) -> tuple[int, Any]:
    mgr = _mgr(app)
    c = app.worker.run(mgr.get, req.params[0])
    follow = req.query.get("follow") in ("1", "true")
    tail = req.query.get("tail", "all")
    try:
        tail_n = None if tail in ("", "all") else int(tail)
    except ValueError:
        raise InvalidParameter(f'invalid --tail value "{tail}"') from None
    cid = c["Id"]

    def stopped() -> bool:
        cur = mgr.containers.get(cid)
        return cur is None or cur["State"]["Status"] not in ("running", "restarting")

    lines = logfile.read_logs(mgr.paths(c).log, tail=tail_n, follow=follow, stop=stopped,
                              stop_interval=0.05)

    def chunks():
        for stream, text, ts in lines:
            yield json.dumps({"stream": stream, "log": text, "time": ts}).encode() + b"\n"

    return 200, Stream(chunks(), "application/x-ndjson")


@route("GET", "/containers/([^/]+)/attach-info")
def container_attach_info(app: App, req: Request) -> tuple[int, Any]:
    """Where the CLI attaches (the shim's socket) and how it runs exec (runc)."""
    mgr = _mgr(app)
    c = mgr.get(req.params[0])
    return 200, {"Id": c["Id"], "Running": c["State"]["Running"], "Tty": c["Config"]["Tty"],
                 "AttachSocket": f"{mgr.paths(c).state}/attach.sock",
                 "RuncRoot": mgr.runc_root}


@route("POST", "/containers/prune", worker=False)
def container_prune(app: App, req: Request) -> tuple[int, Any]:
    mgr = _mgr(app)
    deleted = []
    for c in list(mgr.containers.values()):
        if not c["State"]["Running"] and c["State"]["Status"] != "restarting":
            app.worker.run(mgr.remove, c["Id"])
            deleted.append(c["Id"])
    return 200, {"ContainersDeleted": deleted, "SpaceReclaimed": 0}
