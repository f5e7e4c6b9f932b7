"""cnetd's HTTP API: the route table, request objects and the system routes.

Paths and bodies follow Docker's Engine API where Docker has the operation;
each resource's routes live in their own `api_*` module (see routes.py).
A handler runs on the kernel worker thread unless it is registered with
`worker=False` (slow work that must not hold up networking, or streams).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnet.daemon.app import App
from cnet.daemon.views import network_warnings

from cnet import __version__


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    params: tuple[str, ...] = field(default_factory=tuple)


Handler = Callable[[App, Request], tuple[int, Any]]


@dataclass(frozen=True)
class Route:
    method: str
    rx: re.Pattern[str]
    handler: Handler
    on_worker: bool


ROUTES: list[Route] = []


def route(method: str, pattern: str, worker: bool = True) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        ROUTES.append(Route(method, re.compile(f"^{pattern}$"), fn, worker))
        return fn

    return deco


def match(method: str, path: str) -> tuple[Route, tuple[str, ...]] | None:
    """The route for a request and its path parameters, or None (404)."""
    for r in ROUTES:
        found = r.rx.match(path)
        if found and r.method == method:
            return r, found.groups()
    return None


class Stream:
    """A streamed (chunked) response body: an iterator of byte chunks."""

    def __init__(self, chunks, content_type: str = "application/octet-stream"):
        self.chunks = chunks
        self.content_type = content_type


# -- system -------------------------------------------------------------------
@route("GET", "/_ping")
def ping(app: App, req: Request) -> tuple[int, Any]:
    return 200, "OK"


@route("GET", "/info")
def info(app: App, req: Request) -> tuple[int, Any]:
    ctl = app.controller
    return 200, {
        "Version": __version__,
        "DaemonID": ctl.daemon_id,
        "Drivers": sorted(ctl.drivers),
        "Networks": len(ctl.networks),
        "Sandboxes": len(ctl.sandboxes),
        **app.info,
        "Warnings": network_warnings(ctl),
    }
