"""A minimal HTTP/1.1 client for the cnetd API over a unix socket.

Only the socket extension is imported at module level: http.client pulls in the email
package (~28 ms), which would double the start-up time of every `cnet` command, and
the fast path (cli/fastpath.py) runs on this module too, so even typing (~3 ms),
urllib.parse (~2 ms) and socket.py's enums (~2 ms) are left out. One request per
connection (`Connection: close`); bodies are JSON.
"""

from __future__ import annotations

# The C module under socket.py: the same socket objects and OSError subclasses, without
# building socket.py's IntEnums at import. The Client only uses settimeout, connect,
# sendall, recv and close, all defined on _socket.socket.
import _socket

from cnet.cli.shared import DEFAULT_HOST

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_UNIX = "unix://"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


class ClientError(Exception):
    """An error the CLI reports as one line; `exit_code` is the process exit status."""

    exit_code = 1


class APIError(ClientError):
    """The daemon answered with a non-2xx status; `message` is its verbatim text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DaemonUnreachable(ClientError):
    def __init__(self, host: str) -> None:
        super().__init__(
            f"cannot reach cnetd at {host} (is it running? start it with: cnetd -H {host})"
        )


def socket_path(host: str) -> str:
    """Return the filesystem path of a `unix:///path` host."""
    if not host.startswith(_UNIX) or len(host) == len(_UNIX):
        raise ClientError(f'unsupported host "{host}": expected unix:///path/to/cnet.sock')
    return host[len(_UNIX) :]


def quote(text: str, safe: str = "/") -> str:
    """urllib.parse.quote(text, safe) for a str: UTF-8, %XX for all but unreserved/safe."""
    keep = _UNRESERVED.union(safe.encode("ascii", "ignore")) if safe else _UNRESERVED
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())


def url_path(*segments: str) -> str:
    """Join path segments, percent-encoding each, e.g. url_path("networks", name)."""
    return "/" + "/".join(quote(s, safe="") for s in segments)


class Client:
    def __init__(self, host: str = DEFAULT_HOST, timeout: float | None = None) -> None:
        self.host = host
        self.path = socket_path(host)
        self.timeout = timeout

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, body=body, query=query)

    def delete(self, path: str, query: dict[str, str] | None = None) -> Any:
        return self.request("DELETE", path, query=query)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None when empty).

        Raises APIError for a non-2xx status, DaemonUnreachable if the socket is
        missing or refuses connections.
        """
        import json

        if query:
            path += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query.items())
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\n"
            "Host: cnet\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        )
        status, reason, headers, data = self._roundtrip(head.encode() + payload)
        text = data.decode("utf-8", "replace")
        if not 200 <= status < 300 and status != 304:  # 304: nothing to change
            raise APIError(status, _error_message(text) or f"{status} {reason}".strip())
        if not data.strip():
            return None
        if "json" not in headers.get("content-type", "application/json"):
            return text
        return json.loads(text)

    def stream(self, method: str, path: str, query: dict[str, str] | None = None,
               on_open=None):
        """Send one request and yield each JSON line of a chunked (streamed) answer as it
        arrives (`logs -f`); `on_open()` runs once the answer's head is in."""
        import json

        if query:
            path += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query.items())
        head = (f"{method} {path} HTTP/1.1\r\nHost: cnet\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n")
        sock = self._connect()
        try:
            sock.sendall(head.encode())
            status, _, headers, buf = _read_head(sock)
            if not 200 <= status < 300:
                text = _read_body(sock, headers, buf).decode("utf-8", "replace")
                raise APIError(status, _error_message(text) or str(status))
            if on_open is not None:
                on_open()
            pending = b""
            while True:
                while b"\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                size_line, _, buf = buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                while len(buf) < size + 2:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                pending += buf[:size]
                buf = buf[size + 2:]
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            sock.close()

    def _connect(self) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonUnreachable(self.host) from None
        except PermissionError as exc:
            sock.close()
            raise ClientError(
                f"permission denied while trying to connect to cnetd at {self.host}: "
                f"{exc.strerror}"
            ) from None
        return sock

    def _roundtrip(self, request: bytes) -> tuple[int, str, dict[str, str], bytes]:
        sock = self._connect()
        try:
            try:
                sock.sendall(request)
                return _read_response(sock)
            except (ConnectionResetError, BrokenPipeError):
                raise ClientError(
                    f"connection to cnetd at {self.host} closed unexpectedly"
                ) from None
        finally:
            sock.close()


def _read_head(sock: _socket.socket) -> tuple[int, str, dict[str, str], bytes]:
    """Status, reason, headers (lower-case names) and what was read past the head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ClientError("cnetd closed the connection without a complete response")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ClientError(f"malformed response from cnetd: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers, body


def _read_response(sock: _socket.socket) -> tuple[int, str, dict[str, str], bytes]:
    status, reason, headers, body = _read_head(sock)
    return status, reason, headers, _read_body(sock, headers, body)


def _read_body(sock: _socket.socket, headers: dict[str, str], body: bytes) -> bytes:
    """The rest of a body: by Content-Length, else until close (chunked decoded)."""
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        want = int(length)
        while len(body) < want:
            chunk = sock.recv(max(65536, want - len(body)))
            if not chunk:
                break
            body += chunk
        body = body[:want]
    else:
        while chunk := sock.recv(65536):
            body += chunk
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _dechunk(body)
    return body


def _dechunk(data: bytes) -> bytes:
    """Decode a complete chunked body (read until close); trailers are ignored."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def _error_message(text: str) -> str:
    """Docker-style error bodies are {"message": "..."}; fall back to the raw text."""
    import json

    try:
        decoded = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return decoded["message"]
    return text.strip()
