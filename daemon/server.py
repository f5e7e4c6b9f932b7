"""HTTP/1.1 + JSON over a unix socket; each request's work runs on the kernel worker."""

from __future__ import annotations

import json
import logging
import os
import socketserver
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, unquote, urlsplit

from cnet.cnm.errors import CnetError
from cnet.cnm.osl.netlink import KernelError
from cnet.daemon import api, routes  # noqa: F401 - routes registers every API module
from cnet.daemon.app import App
from cnet.ingress.firewall import FirewallError

log = logging.getLogger(__name__)


def dispatch(app: App, method: str, target: str, body: bytes) -> tuple[int, object]:
    """Route one request; every failure becomes (status, {"message": ...})."""
    url = urlsplit(target)
    path = unquote(url.path).rstrip("/") or "/"
    found = api.match(method, path)
    if found is None:
        return 404, {"message": f"page not found: {method} {path}"}
    rt, params = found
    try:
        data = json.loads(body) if body else {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
    except ValueError as exc:
        return 400, {"message": f"invalid JSON body: {exc}"}
    req = api.Request(method, path, dict(parse_qsl(url.query)), data, params)
    try:
        if rt.on_worker:
            return app.worker.run(rt.handler, app, req)
        return rt.handler(app, req)
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
        status, payload = dispatch(self.server.app, self.command, self.path, body)
        if isinstance(payload, api.Stream):
            self._stream(status, payload)
            return
        data = b"" if status == 204 else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Api-Version", "1.0")
            self.end_headers()
            if data:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (Ctrl-C)
            self.close_connection = True

    def _stream(self, status: int, stream: api.Stream) -> None:
        """Chunked transfer: each chunk is sent (and flushed) as soon as it exists."""
        self.send_response(status)
        self.send_header("Content-Type", stream.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in stream.chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            close = getattr(stream.chunks, "close", None)
            if close:
                close()

    do_GET = do_POST = do_DELETE = do_PUT = _serve


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, app: App):
        self.app = app
        if os.path.exists(path):
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        old = os.umask(0o117)  # socket mode 0660, owner root
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
