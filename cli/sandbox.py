"""`cnet sandbox ...`: network namespaces that endpoints join, and running commands in them."""

from __future__ import annotations

import click
from cnet.cli.common import (
    client,
    fail,
    format_option,
    human_since,
    inspect_each,
    no_trunc_option,
    print_json,
    print_table,
    quiet_option,
    remove_each,
    resource_path,
    short_id,
)


@click.group()
def sandbox() -> None:
    """Manage sandboxes (network namespaces)."""


_path = resource_path("sandboxes")


@sandbox.command()
@click.argument("name")
def create(name: str) -> None:
    """Create a sandbox and print its id."""
    click.echo(client().post("/sandboxes/create", {"Name": name})["Id"])


@sandbox.command("ls")
@quiet_option
@no_trunc_option
@format_option
def ls(quiet: bool, no_trunc: bool, fmt: str) -> None:
    """List sandboxes."""
    sandboxes = client().get("/sandboxes") or []
    if quiet:
        for sb in sandboxes:
            click.echo(short_id(sb["Id"], no_trunc))
    elif fmt == "json":
        print_json(sandboxes)
    else:
        print_table(
            ("SANDBOX ID", "NAME", "NETWORKS", "CREATED"),
            (
                (
                    short_id(sb["Id"], no_trunc),
                    sb.get("Name", ""),
                    ",".join(sorted(sb.get("Networks") or {})),
                    human_since(sb.get("Created", "")),
                )
                for sb in sandboxes
            ),
        )


@sandbox.command()
@click.argument("names", nargs=-1, required=True, metavar="SANDBOX...")
def inspect(names: tuple[str, ...]) -> None:
    """Display detailed information on one or more sandboxes."""
    inspect_each(names, _path, "sandbox")


@sandbox.command()
@click.option("-f", "--force", is_flag=True, help="Remove even if still connected to networks.")
@click.argument("names", nargs=-1, required=True, metavar="SANDBOX...")
def rm(force: bool, names: tuple[str, ...]) -> None:
    """Remove one or more sandboxes."""
    remove_each(names, _path, {"force": "1"} if force else None)


@sandbox.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("name", metavar="SANDBOX")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, command: tuple[str, ...]) -> None:
    """Run a command inside a sandbox's network namespace: exec SANDBOX -- CMD [ARG...].

    The command replaces this process, so its exit status is cnet's.
    """
    import errno
    import os
    import sys

    if command[0] == "--":  # kept literally: option parsing stops after SANDBOX
        command = command[1:]
    if not command:
        raise click.UsageError("missing command to run")
    key = client().get(_path(name)).get("Key")
    if not key:
        fail(f"sandbox {name} has no network namespace")
    from cnet.cnm.osl.nsenter import enter_netns

    try:
        enter_netns(key)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.EINVAL:  # an empty file: the bind mount lives in another mount ns
            reason = "not a network namespace here (is cnetd in another mount namespace?)"
        fail(f"cannot enter network namespace {key} of sandbox {name}: {reason}")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        fail(f'exec: "{command[0]}": executable file not found in $PATH', 127)
    except OSError as exc:
        fail(f'exec: "{command[0]}": {exc.strerror.lower() if exc.strerror else exc}', 126)
