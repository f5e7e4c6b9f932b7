"""API routes of the embedded DNS: what a container would get, and counters."""

from __future__ import annotations

from typing import Any

from cnet.cnm.errors import InvalidParameter
from cnet.daemon.api import Request, route
from cnet.daemon.app import App

QTYPES = ("A", "AAAA", "PTR", "CNAME", "MX", "TXT", "SRV", "NS", "SOA", "ANY")


def _served(app: App, ref: str):
    sb = app.controller.sandbox(ref)  # containers are sandboxes with the same name and id
    if app.dns is None or sb.id not in app.dns.sandboxes():
        raise InvalidParameter(f"{sb.name} is not on a user-defined network: it has no "
                               "embedded DNS (Docker's default bridge network has none)")
    return sb


@route("GET", "/dns/lookup", worker=False)
def dns_lookup(app: App, req: Request) -> tuple[int, Any]:
    name = req.query.get("name") or ""
    qtype = (req.query.get("type") or "A").upper()
    if not name:
        raise InvalidParameter("a name to look up is required")
    if qtype not in QTYPES:
        raise InvalidParameter(f'unknown query type "{qtype}"')
    sb = app.worker.run(_served, app, req.query.get("from") or "")
    return 200, {"Name": name, "Type": qtype, "From": sb.name, **{
        k.capitalize(): v for k, v in app.dns.lookup(sb.id, name, qtype).items()}}


@route("GET", "/dns/stats")
def dns_stats(app: App, req: Request) -> tuple[int, Any]:
    """Counters per user-defined network (summed over its sandboxes) and in total."""
    ctl = app.controller
    per_net: dict[str, dict[str, int]] = {}
    for sb_id in app.dns.sandboxes() if app.dns else []:
        sb = ctl.sandboxes.get(sb_id)
        if sb is None:
            continue
        counts = app.dns.stats(sb_id)
        for ep_id in sb.endpoints:
            net = ctl.networks[ctl.endpoints[ep_id].network_id]
            if not net.user_defined:
                continue
            row = per_net.setdefault(net.name, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                row[k] += v
    return 200, {"Networks": per_net, "Total": app.dns.stats() if app.dns else {}}
