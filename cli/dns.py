"""`cnet dns ...`: what a container's resolver answers, and counters."""

from __future__ import annotations

import click
from cnet.cli.common import client, format_option, print_json, print_table


@click.group()
def dns() -> None:
    """Inspect the embedded DNS (127.0.0.11 in containers on user-defined networks)."""


@dns.command()
@click.option("--from", "source", required=True, metavar="CONTAINER",
              help="The container (or sandbox) whose resolver is asked.")
@click.option("-t", "--type", "qtype", default="A", show_default=True, help="Query type.")
@format_option
@click.argument("name")
def lookup(source: str, qtype: str, fmt: str, name: str) -> None:
    """What NAME resolves to for a container, and where the answer came from."""
    res = client().get("/dns/lookup", query={"name": name, "from": source, "type": qtype})
    if fmt == "json":
        print_json(res)
        return
    click.echo(f"{res['Name']} {res['Type']} from {res['From']}: {res['Rcode']} "
               f"({res['Source']})")
    for answer in res["Answers"]:
        click.echo(f"  {answer}")


@dns.command()
@format_option
def stats(fmt: str) -> None:
    """Per-network counters: queries, answered locally, forwarded, failed, refused."""
    res = client().get("/dns/stats")
    if fmt == "json":
        print_json(res)
        return
    cols = ("queries", "local", "forwarded", "failed", "refused", "malformed")
    print_table(("NETWORK", *(c.upper() for c in cols)),
                ((net, *(row.get(c, 0) for c in cols))
                 for net, row in sorted(res["Networks"].items())))
