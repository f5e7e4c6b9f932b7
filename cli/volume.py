"""`cnet volume ...`: create, ls, inspect, rm, prune (local driver)."""

from __future__ import annotations

from typing import Any

import click
from cnet.cli.common import (
    client,
    exit_on_errors,
    fail,
    filter_option,
    filters_query,
    format_option,
    human_size,
    kv_option,
    print_json,
    print_table,
    quiet_option,
    remove_each,
    resource_path,
    run_each,
)


@click.group()
def volume() -> None:
    """Manage volumes."""


_path = resource_path("volumes")


@volume.command()
@click.option("--name", "name_opt", metavar="NAME", help="Specify volume name.")
@click.option("-d", "--driver", default="local", show_default=True,
              help="Specify volume driver name.")
@kv_option("--label", metavar="KEY=VALUE", help="Set metadata for a volume.")
@kv_option("-o", "--opt", metavar="KEY=VALUE", help="Set driver specific options.")
@click.argument("name", required=False)
def create(name_opt: str | None, driver: str, label: dict[str, str], opt: dict[str, str],
           name: str | None) -> None:
    """Create a volume and print its name (a random one unless NAME is given)."""
    if name and name_opt and name != name_opt:
        fail("conflicting options: either specify --name or provide positional arg, not both")
    body: dict[str, Any] = {"Driver": driver}
    if name or name_opt:
        body["Name"] = name or name_opt
    if label:
        body["Labels"] = label
    if opt:
        body["DriverOpts"] = opt
    click.echo(client().post("/volumes/create", body)["Name"])


@volume.command("ls")
@quiet_option
@filter_option("Provide filter values (dangling=true, driver=X, label=K[=V], name=X).")
@format_option
def ls(quiet: bool, filters: dict[str, list[str]], fmt: str) -> None:
    """List volumes."""
    volumes = (client().get("/volumes", query=filters_query(filters)) or {}).get("Volumes") or []
    if fmt == "json":
        print_json(volumes)
    elif quiet:
        for vol in volumes:
            click.echo(vol["Name"])
    else:
        print_table(("DRIVER", "VOLUME NAME"), ((v["Driver"], v["Name"]) for v in volumes))


@volume.command()
@click.argument("names", nargs=-1, required=True, metavar="VOLUME...")
def inspect(names: tuple[str, ...]) -> None:
    """Display detailed information on one or more volumes."""
    api = client()
    found, errors = run_each(names, lambda n: api.get(_path(n)))
    print_json(found)
    exit_on_errors(errors)


@volume.command()
@click.option("-f", "--force", is_flag=True, help="Do not fail when a volume does not exist.")
@click.argument("names", nargs=-1, required=True, metavar="VOLUME...")
def rm(force: bool, names: tuple[str, ...]) -> None:
    """Remove one or more volumes (not while a container uses them)."""
    remove_each(names, _path, {"force": "1"} if force else None)


@volume.command()
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
def prune(force: bool) -> None:
    """Remove all local volumes no container uses."""
    if not force and not click.confirm(
        "WARNING! This will remove all local volumes not used by at least one container.\n"
        "Are you sure you want to continue?",
        default=False,
    ):
        return
    report = client().post("/volumes/prune") or {}
    deleted = report.get("VolumesDeleted") or []
    if deleted:
        click.echo("Deleted Volumes:")
        for name in deleted:
            click.echo(name)
        click.echo()
    click.echo(f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0)}")
