"""`cnet node ls/inspect`: the nodes of the cluster this daemon joined."""

from __future__ import annotations

import click
from cnet.cli.common import (
    client,
    format_option,
    inspect_each,
    print_json,
    print_table,
    quiet_option,
    remove_each,
    resource_path,
)


@click.group()
def node() -> None:
    """Manage the cluster's nodes."""


_path = resource_path("nodes")


@node.command("ls")
@quiet_option
@format_option
def ls(quiet: bool, fmt: str) -> None:
    """List the nodes (Ready while their lease lives, else Down)."""
    nodes = client().get("/nodes")
    if quiet:
        for n in nodes:
            click.echo(n["ID"])
        return
    if fmt == "json":
        print_json(nodes)
        return
    print_table(["ID", "NAME", "ADDRESS", "STATUS", "AVAILABILITY"],
                ([n["ID"] + (" *" if n.get("Self") else ""), n["Name"], n["Addr"],
                  n["Status"], n["Availability"]] for n in nodes))


@node.command()
@click.argument("names", nargs=-1, required=True, metavar="NODE...")
def inspect(names: tuple[str, ...]) -> None:
    """Display detailed information on one or more nodes."""
    inspect_each(names, _path, "node")


@node.command()
@click.argument("names", nargs=-1, required=True, metavar="NODE...")
def rm(names: tuple[str, ...]) -> None:
    """Remove Down nodes and the addresses they held on overlay networks."""
    remove_each(names, _path)
