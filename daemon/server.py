"""HTTP/1.1 + JSON over a unix socket; each request's work runs on the kernel worker."""

from __future__ import annotations

import json
import logging
import os
import socketserver
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, unquote, urlsplit

from cnet.cnm.controller import Controller
from cnet.cnm.errors import CnetError
from cnet.cnm.osl.netlink import KernelError
from cnet.daemon import api
from cnet.daemon.worker import KernelWorker
from cnet.ingress.firewall import FirewallError

log = logging.getLogger(__name__)


def dispatch(ctl: Controller, worker: KernelWorker, method: str, target: str,
             body: bytes) -> tuple[int, object]:
    """Route one request; every failure becomes (status, {"message": ...})."""
    url = urlsplit(target)
    path = unquote(url.path).rstrip("/") or "/"
    found = api.match(method, path)
    if found is None:
        return 404, {"message": f"page not found: {method} {path}"}
    handler, params = found
    try:
        data = json.loads(body) if body else {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
    except ValueError as exc:
        return 400, {"message": f"invalid JSON body: {exc}"}
    req = api.Request(method, path, dict(parse_qsl(url.query)), data, params)
    try:
        return worker.run(handler, ctl, req)
    except CnetError as exc:
        return exc.status, {"message": str(exc)}
    except (KernelError, FirewallError) as exc:
        log.warning("%s %s: %s", method, path, exc)
        return 500, {"message": str(exc)}
    except Exception as exc:  # the API never dies of one bad request
        log.exception("%s %s failed", method, path)
        return 500, {"message": f"internal error: {exc}"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: UnixHTTPServer

    def address_string(self) -> str:  # unix peers have no host/port
        return "unix"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s", fmt % args)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = dispatch(self.server.controller, self.server.worker,
                                   self.command, self.path, body)
        data = b"" if status == 204 else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", "1.0")
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = _serve


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, controller: Controller, worker: KernelWorker):
        self.controller = controller
        self.worker = worker
        if os.path.exists(path):
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        old = os.umask(0o117)  # socket mode 0660, owner root
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
