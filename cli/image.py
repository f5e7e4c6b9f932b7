"""`cnet image ...`: import, load, ls, inspect, tag, rm.

Files are read by cnetd (same host), so the CLI sends absolute paths.
"""

from __future__ import annotations

import os
from typing import Any

import click
from cnet.cli.common import (
    client,
    exit_on_errors,
    format_option,
    human_duration,
    human_size,
    no_trunc_option,
    print_json,
    print_table,
    quiet_option,
    resource_path,
    run_each,
    short_id,
)


@click.group()
def image() -> None:
    """Manage images."""


_path = resource_path("images")


def _bare(image_id: str) -> str:
    return image_id.split(":", 1)[-1]


@image.command("import")
@click.argument("tarball")
@click.argument("reference", required=False, metavar="[REPOSITORY[:TAG]]")
def import_(tarball: str, reference: str | None) -> None:
    """Import a root filesystem tarball (plain or gzip) as a one-layer image."""
    body: dict[str, Any] = {"Path": os.path.abspath(tarball)}
    if reference:
        body["Name"] = reference
    click.echo(client().post("/images/import", body)["Id"])


@image.command()
@click.option("-i", "--input", "path", required=True, metavar="FILE",
              help="Read from a tar archive file (docker save or OCI image layout).")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output.")
def load(path: str, quiet: bool) -> None:
    """Load images from a `docker save` or OCI image-layout archive."""
    loaded = client().post("/images/load", {"Path": os.path.abspath(path)})["Loaded"]
    if quiet:
        return
    for ref in loaded:
        if ref.startswith("sha256:"):
            click.echo(f"Loaded image ID: {ref}")
        else:
            click.echo(f"Loaded image: {ref}")


@image.command("ls")
@quiet_option
@no_trunc_option
@format_option
def ls(quiet: bool, no_trunc: bool, fmt: str) -> None:
    """List images."""
    import time

    images = client().get("/images/json") or []
    if fmt == "json":
        print_json(images)
        return
    if quiet:
        for img in images:
            click.echo(img["Id"] if no_trunc else short_id(_bare(img["Id"])))
        return
    now = time.time()
    rows = []
    for img in images:
        ident = img["Id"] if no_trunc else short_id(_bare(img["Id"]))
        created = human_duration(now - img.get("Created", 0)) + " ago"
        size = human_size(img.get("Size", 0))
        for ref in img.get("RepoTags") or ["<none>:<none>"]:
            repo, _, tag = ref.rpartition(":")
            rows.append((repo, tag, ident, created, size))
    print_table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"), rows)


@image.command()
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
def inspect(names: tuple[str, ...]) -> None:
    """Display detailed information on one or more images."""
    api = client()
    found, errors = run_each(names, lambda n: api.get(_path(n, "json")))
    print_json(found)
    exit_on_errors(errors)


@image.command()
@click.argument("source", metavar="SOURCE_IMAGE[:TAG]")
@click.argument("target", metavar="TARGET_IMAGE[:TAG]")
def tag(source: str, target: str) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    client().post(_path(source, "tag"), query={"repo": target})


@image.command()
@click.option("-f", "--force", is_flag=True,
              help="Remove an image referenced by several tags (by id).")
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
def rm(force: bool, names: tuple[str, ...]) -> None:
    """Remove one or more images (untag; delete with the last tag)."""
    api = client()

    def remove(name: str) -> None:
        query = {"force": "1"} if force else None
        for entry in api.delete(_path(name), query=query) or []:
            for key, value in entry.items():
                click.echo(f"{key}: {value}")

    _, errors = run_each(names, remove)
    exit_on_errors(errors)
