"""`cnet network ...`: create, list, inspect, remove, prune, connect, disconnect."""

from __future__ import annotations

from typing import Any

import click
from cnet.cli.common import (
    client,
    filter_option,
    filters_query,
    format_option,
    inspect_each,
    kv_option,
    no_trunc_option,
    print_json,
    print_table,
    quiet_option,
    remove_each,
    resource_path,
    short_id,
)
from cnet.cli.shared import connect_request, disconnect_request


@click.group()
def network() -> None:
    """Manage networks."""


_path = resource_path("networks")


@network.command()
@click.option("-d", "--driver", default="bridge", show_default=True, help="Network driver.")
@click.option("--subnet", multiple=True, metavar="CIDR", help="Subnet (one IPv4, one IPv6).")
@click.option("--gateway", multiple=True, metavar="IP", help="Gateway of a subnet.")
@click.option("--ip-range", multiple=True, metavar="CIDR", help="Allocate from a sub-range.")
@kv_option(
    "--aux-address",
    require_value=True,
    metavar="NAME=IP",
    help="Address the IPAM must not hand out.",
)
@click.option("--ipv6", is_flag=True, help="Enable IPv6 networking.")
@click.option("--internal", is_flag=True, help="Restrict external access to the network.")
@click.option("--attachable", is_flag=True, help="Enable manual attachment.")
@kv_option("-o", "--opt", metavar="KEY=VALUE", help="Driver specific option.")
@kv_option("--label", metavar="KEY=VALUE", help="Metadata label.")
@click.argument("name")
def create(
    driver: str,
    subnet: tuple[str, ...],
    gateway: tuple[str, ...],
    ip_range: tuple[str, ...],
    aux_address: dict[str, str],
    ipv6: bool,
    internal: bool,
    attachable: bool,
    opt: dict[str, str],
    label: dict[str, str],
    name: str,
) -> None:
    """Create a network and print its id."""
    body: dict[str, Any] = {
        "Name": name,
        "Driver": driver,
        "EnableIPv6": ipv6,
        "Internal": internal,
        "Attachable": attachable,
    }
    if subnet or gateway or ip_range or aux_address:
        from cnet.cli.ipamopts import ipam_configs

        configs = ipam_configs(subnet, gateway, ip_range, aux_address)
        body["IPAM"] = {"Driver": "default", "Config": configs}
    if opt:
        body["Options"] = opt
    if label:
        body["Labels"] = label
    created = client().post("/networks/create", body)
    if created.get("Warning"):
        click.echo(f"WARNING: {created['Warning']}", err=True)
    click.echo(created["Id"])


@network.command("ls")
@quiet_option
@no_trunc_option
@filter_option("Filter output (driver=X, name=X, label=K[=V]).")
@format_option
def ls(quiet: bool, no_trunc: bool, filters: dict[str, list[str]], fmt: str) -> None:
    """List networks."""
    networks = client().get("/networks", query=filters_query(filters)) or []
    networks.sort(key=lambda n: n.get("Name", ""))
    if quiet:
        for net in networks:
            click.echo(short_id(net["Id"], no_trunc))
    elif fmt == "json":
        print_json(networks)
    else:
        print_table(
            ("NETWORK ID", "NAME", "DRIVER", "SCOPE"),
            (
                (
                    short_id(n["Id"], no_trunc),
                    n.get("Name", ""),
                    n.get("Driver", ""),
                    n.get("Scope", ""),
                )
                for n in networks
            ),
        )


@network.command()
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the kernel state (bridge or VTEP, ports, FDB and neighbour "
                   "entries), the nftables sets, rules and published ports of the network, "
                   "DNS counters, and an overlay's peers.")
@click.argument("names", nargs=-1, required=True, metavar="NETWORK...")
def inspect(verbose: bool, names: tuple[str, ...]) -> None:
    """Display detailed information on one or more networks."""
    path = (lambda n: _path(n) + "?verbose=true") if verbose else _path
    inspect_each(names, path, "network")


@network.command()
@click.argument("names", nargs=-1, required=True, metavar="NETWORK...")
def rm(names: tuple[str, ...]) -> None:
    """Remove one or more networks."""
    remove_each(names, _path)


@network.command()
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@filter_option("Provide filter values (e.g. label=K[=V]).", short=False)
def prune(force: bool, filters: dict[str, list[str]]) -> None:
    """Remove all unused networks."""
    if not force and not click.confirm(
        "WARNING! This will remove all custom networks not used by at least one container.\n"
        "Are you sure you want to continue?",
        default=False,
    ):
        return
    report = client().post("/networks/prune", query=filters_query(filters)) or {}
    deleted = report.get("NetworksDeleted") or []
    if deleted:
        click.echo("Deleted Networks:")
        for name in deleted:
            click.echo(name)


@network.command()
@click.option("--ip", metavar="IPV4", help="IPv4 address for the endpoint.")
@click.option("--ip6", metavar="IPV6", help="IPv6 address for the endpoint.")
@click.option("--alias", multiple=True, help="Network-scoped alias.")
@click.argument("net", metavar="NETWORK")
@click.argument("target", metavar="SANDBOX")
def connect(ip: str | None, ip6: str | None, alias: tuple[str, ...], net: str, target: str) -> None:
    """Connect a sandbox to a network."""
    # also run without click by cli/fastpath.py: keep both on connect_request()
    path, body = connect_request(net, target, ip, ip6, alias)
    client().post(path, body)


@network.command()
@click.option("-f", "--force", is_flag=True, help="Force the sandbox to disconnect.")
@click.argument("net", metavar="NETWORK")
@click.argument("target", metavar="SANDBOX")
def disconnect(force: bool, net: str, target: str) -> None:
    """Disconnect a sandbox from a network."""
    # also run without click by cli/fastpath.py: keep both on disconnect_request()
    path, body = disconnect_request(net, target, force)
    client().post(path, body)
