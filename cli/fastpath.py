"""The no-click fast path of `cnet`, for the commands scripts run in loops.

Importing click costs ~20 ms, more than the interpreter and the daemon's work together,
so these two argv shapes are handled with only os, sys, socket and json:

    cnet [-H URL] network connect [--ip IP] [--ip6 IP] [--alias A]... NETWORK SANDBOX
    cnet [-H URL] network disconnect [-f] NETWORK SANDBOX

(--host URL and --opt=VALUE spellings too; options may come between the arguments.)
parse() accepts nothing else: help, --debug, unknown or combined flags, a value that
looks like a flag, a wrong number of arguments... all return None and main() runs the
click CLI, which then parses the same argv as it always did. The request, the host and
the error report come from cli/shared.py, the same code the click commands use.

CNET_NO_FASTPATH=1 disables the fast path.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_HOST_FLAGS = ("-H", "--host")
_CONNECT_OPTIONS = {"--ip": "ip", "--ip6": "ip6", "--alias": "aliases"}
_FORCE_FLAGS = ("-f", "--force")
# click answers shell completion requests instead of running the command
_COMPLETE_VAR = "_CNET_COMPLETE"


def parse(argv: list[str]) -> tuple[str | None, str, dict[str, Any]] | None:
    """(the -H value or None, "connect" or "disconnect", its keyword arguments), or None.

    The keyword arguments are those of shared.connect_request / disconnect_request.
    """
    host: str | None = None
    args = list(argv)
    while args and args[0] != "network":
        flag = args.pop(0)
        if flag in _HOST_FLAGS and args and not args[0].startswith("-"):
            host = args.pop(0)
        elif flag.startswith("--host="):
            host = flag[len("--host=") :]
        else:
            return None
    if len(args) < 2 or args[1] not in ("connect", "disconnect"):
        return None
    command = args[1]
    args = args[2:]
    kwargs: dict[str, Any] = {}
    aliases: list[str] = []
    positionals: list[str] = []
    while args:
        token = args.pop(0)
        if not token.startswith("-"):
            positionals.append(token)
            continue
        if command == "disconnect":
            if token not in _FORCE_FLAGS:
                return None
            kwargs["force"] = True
            continue
        name, eq, value = token.partition("=")
        if name not in _CONNECT_OPTIONS:
            return None
        if not eq:
            if not args or args[0].startswith("-"):
                return None
            value = args.pop(0)
        if name == "--alias":
            aliases.append(value)
        else:
            kwargs[_CONNECT_OPTIONS[name]] = value  # repeated: the last one wins, as in click
    if len(positionals) != 2:
        return None
    if aliases:
        kwargs["aliases"] = aliases
    return host, command, {"net": positionals[0], "target": positionals[1], **kwargs}


def run(argv: list[str]) -> int | None:
    """Run argv when it is a fast-path shape and return the exit status; else None."""
    if os.environ.get("CNET_NO_FASTPATH") or os.environ.get(_COMPLETE_VAR):
        return None
    parsed = parse(argv)
    if parsed is None:
        return None
    host, command, kwargs = parsed
    from cnet.cli import shared

    try:
        build = shared.connect_request if command == "connect" else shared.disconnect_request
        path, body = build(**kwargs)
        from cnet.cli.client import Client

        Client(shared.resolve_host(host)).post(path, body)
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")  # what click prints on ^C
        return 1
    except Exception as exc:
        message, status = shared.describe_error(exc)
        shared.print_error(message)
        return status
    return 0
