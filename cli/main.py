"""`cnet`: the command-line client of cnetd.

Each command group lives in its own module and is imported only when invoked
(see LazyGroup), so `cnet --help` costs little more than importing click.
"""

from __future__ import annotations

import click
from cnet.cli.common import DEFAULT_HOST, Settings, error_boundary
from cnet.cli.lazy import LazyGroup

from cnet import __version__

COMMANDS = {
    "info": ("cnet.cli.system:info", "Display system-wide information."),
    "network": ("cnet.cli.network:network", "Manage networks."),
    "sandbox": ("cnet.cli.sandbox:sandbox", "Manage sandboxes (network namespaces)."),
}


class RootGroup(LazyGroup):
    """The error boundary: everything below runs inside it."""

    def invoke(self, ctx: click.Context) -> object:
        # ctx.obj is set by the callback inside super().invoke(); params are parsed already.
        with error_boundary(bool(ctx.params.get("debug"))):
            return super().invoke(ctx)


@click.group(
    cls=RootGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "-H",
    "--host",
    envvar="CNET_HOST",
    default=DEFAULT_HOST,
    show_default=True,
    metavar="unix:///PATH",
    help="Daemon socket to connect to (env CNET_HOST).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(
    __version__, "-v", "--version", prog_name="cnet", message="%(prog)s version %(version)s"
)
@click.pass_context
def cli(ctx: click.Context, host: str, debug: bool) -> None:
    """A network-first container platform (Docker's Container Network Model)."""
    ctx.obj = Settings(host, debug)


def main() -> None:
    cli(prog_name="cnet")
