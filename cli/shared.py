"""Click-free pieces shared by the click CLI and its fast path (cli/fastpath.py).

Host selection, the one-line error report and the requests of the fast-path commands
are defined here once, so both paths behave the same by construction. Only os and sys
are imported at module level (`cnet --help` loads this module too).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO, Any

DEFAULT_HOST = "unix:///run/cnet/cnet.sock"
HOST_ENV = "CNET_HOST"


def resolve_host(option: str | None) -> str:
    """The daemon to talk to: -H/--host when given, else $CNET_HOST, else the default.

    An empty CNET_HOST counts as unset (as click treats empty environment variables).
    """
    if option is not None:
        return option
    return os.environ.get(HOST_ENV) or DEFAULT_HOST


# --- errors -------------------------------------------------------------------------


def describe_error(exc: Exception) -> tuple[str, int]:
    """The one-line message and exit status for an exception that ends a command."""
    from cnet.cli.client import ClientError

    if isinstance(exc, ClientError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}", 1
    return f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for a traceback)", 1


def print_error(message: str, file: IO[str] | None = None) -> None:
    """`Error: <message>` on stderr (or `file`), one line."""
    out = sys.stderr if file is None else file
    out.write(f"Error: {message}\n")
    out.flush()


# --- requests -----------------------------------------------------------------------


def connect_request(
    net: str,
    target: str,
    ip: str | None = None,
    ip6: str | None = None,
    aliases: Sequence[str] = (),
) -> tuple[str, dict[str, Any]]:
    """(path, body) of POST /networks/NET/connect; unset options are left out of the body."""
    from cnet.cli.client import url_path

    endpoint: dict[str, Any] = {}
    ipam = {k: v for k, v in (("IPv4Address", ip), ("IPv6Address", ip6)) if v}
    if ipam:
        endpoint["IPAMConfig"] = ipam
    if aliases:
        endpoint["Aliases"] = list(aliases)
    body: dict[str, Any] = {"Container": target}
    if endpoint:
        body["EndpointConfig"] = endpoint
    return url_path("networks", net, "connect"), body


def disconnect_request(net: str, target: str, force: bool = False) -> tuple[str, dict[str, Any]]:
    """(path, body) of POST /networks/NET/disconnect."""
    from cnet.cli.client import url_path

    return url_path("networks", net, "disconnect"), {"Container": target, "Force": force}
