"""cnetd with wall-clock timers around its internal phases (bench/attach.py --phases).

    _cnetd_phases.py OUT.json <cnetd arguments...>

Runs the real cnetd main() after wrapping, by name, the API handlers, every public
method of the netlink layer (cnet.cnm.osl.netlink.Netlink) and of the firewall
(cnet.ingress.firewall.Firewall, plus its libnftables batches), id resolution, the store's
commit and the cycle collector (gc.callbacks). Time is accumulated per handler and bucket:
a request falls in "<handler> early" while the daemon holds <= CNB_WINDOW objects of kind
CNB_COUNT (endpoints or networks) and in "<handler> late" once it holds >= CNB_LATE_FROM;
other requests are not timed. With CNB_MATCH set, only requests whose path or body contains
that text are timed. On exit
the totals and call counts are written to OUT.json. Timers nest (a handler's total
includes its netlink calls).

Not a bench of its own (the leading underscore keeps `make bench` from running it). It
patches internals by name and skips whatever no longer exists, so a refactor costs
detail, never a crash.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import time
from collections import defaultdict

OUT = sys.argv[1]
WINDOW = int(os.environ.get("CNB_WINDOW", "20"))
LATE_FROM = int(os.environ.get("CNB_LATE_FROM", "481"))
COUNT = os.environ.get("CNB_COUNT", "endpoints")
MATCH = os.environ.get("CNB_MATCH", "")

totals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
current: list[str | None] = [None]  # bucket of the request being served (one worker thread)


def _add(name: str, seconds: float) -> None:
    bucket = current[0]
    if bucket is not None:
        slot = totals[bucket][name]
        slot[0] += seconds * 1000.0
        slot[1] += 1


def timer(name: str, fn):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - t0)

    return inner


def handler(name: str, fn):
    @functools.wraps(fn)
    def inner(app, req):
        n = len(getattr(app.controller, COUNT))
        bucket = "early" if n <= WINDOW else ("late" if n >= LATE_FROM else None)
        if MATCH and MATCH not in req.path and MATCH not in json.dumps(req.body):
            bucket = None
        current[0] = f"{name} {bucket}" if bucket else None
        t0 = time.perf_counter()
        try:
            return fn(app, req)
        finally:
            _add(f"api {name}", time.perf_counter() - t0)
            current[0] = None

    return inner


_gc_start = [0.0]


def on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        _add(f"gc gen{info.get('generation')}", time.perf_counter() - _gc_start[0])


def patch() -> None:
    import dataclasses

    from cnet.daemon import api, routes  # noqa: F401 - registers every API module

    api.ROUTES[:] = [dataclasses.replace(r, handler=handler(r.handler.__name__, r.handler))
                     for r in api.ROUTES]
    try:
        from cnet.cnm.osl.netlink import Netlink

        for attr, fn in list(vars(Netlink).items()):
            if callable(fn) and not attr.startswith("_"):
                setattr(Netlink, attr, timer(f"netlink {attr}", fn))
    except ImportError:
        pass
    try:
        from cnet.ingress.firewall import Firewall

        for attr, fn in list(vars(Firewall).items()):
            if callable(fn) and (not attr.startswith("_") or attr in ("_run", "_list")):
                setattr(Firewall, attr, timer(f"firewall {attr}", fn))
    except ImportError:
        pass
    try:
        from cnet.cnm import ids

        ids.resolve = timer("ids.resolve (lookup by id/name)", ids.resolve)
    except (ImportError, AttributeError):
        pass
    try:
        from cnet.cnm.store import Store

        Store.commit = timer("store commit", Store.commit)
    except (ImportError, AttributeError):
        pass
    gc.callbacks.append(on_gc)


def main() -> int:
    patch()
    from cnet.daemon.main import main as cnetd_main

    try:
        return cnetd_main(sys.argv[2:])
    finally:
        with open(OUT, "w") as f:
            json.dump({b: dict(v) for b, v in totals.items()}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
