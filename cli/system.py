"""`cnet info`: what the daemon runs with and which kernel features it found."""

from __future__ import annotations

from typing import Any

import click
from cnet.cli.common import client, format_option, print_json, print_table


@click.command()
@format_option
def info(fmt: str) -> None:
    """Display system-wide information."""
    data = client().get("/info") or {}
    if fmt == "json":
        print_json(data)
        return
    store = data.get("Store") or {}
    store_text = store.get("Type", "")
    if store.get("Path"):
        store_text += f" ({store['Path']})"
    for label, value in (
        ("Server Version", data.get("Version", "")),
        ("Daemon ID", data.get("DaemonID", "")),
        ("Data Root", data.get("DataRoot", "")),
        ("Exec Root", data.get("ExecRoot", "")),
        ("Store", store_text),
        ("Drivers", " ".join(data.get("Drivers") or [])),
        ("Networks", data.get("Networks", 0)),
        ("Sandboxes", data.get("Sandboxes", 0)),
        ("Cgroup Driver", data.get("CgroupDriver", "")),
        ("Cgroup Version", data.get("CgroupVersion", "")),
    ):
        click.echo(f"{label}: {value}")
    cluster = data.get("Cluster")
    click.echo("Cluster: " + ("inactive (single host)" if not cluster else
                              f"{cluster['Store']} as node {cluster['NodeName']} "
                              f"({cluster['NodeID']}, {cluster['AdvertiseAddr']})"))
    features: list[dict[str, Any]] = data.get("KernelFeatures") or []
    click.echo("Kernel Features:")
    print_table(
        ("FEATURE", "STATUS", "DISABLES"),
        (
            (
                f.get("Name", ""),
                "present" if f.get("Present") else "missing",
                "" if f.get("Present") else f.get("Disables", ""),
            )
            for f in features
        ),
        indent=" ",
    )
    for warning in data.get("Warnings") or []:
        click.echo(f"WARNING: {warning}")
