"""`cnet`: the click command-line client of cnetd (run by cli/main.py).

Each command group lives in its own module and is imported only when invoked
(see LazyGroup), so `cnet --help` costs little more than importing click.
"""

from __future__ import annotations

import click
from click.core import ParameterSource
from cnet.cli.common import Settings, error_boundary
from cnet.cli.lazy import LazyGroup
from cnet.cli.shared import DEFAULT_HOST, resolve_host

from cnet import __version__

COMMANDS = {
    "info": ("cnet.cli.system:info", "Display system-wide information."),
    "network": ("cnet.cli.network:network", "Manage networks."),
    "sandbox": ("cnet.cli.sandbox:sandbox", "Manage sandboxes (network namespaces)."),
    "image": ("cnet.cli.image:image", "Manage images."),
    "volume": ("cnet.cli.volume:volume", "Manage volumes."),
    "container": ("cnet.cli.container:container", "Manage containers."),
    "dns": ("cnet.cli.dns:dns", "Inspect the embedded DNS."),
    "node": ("cnet.cli.node:node", "Manage the cluster's nodes."),
    "capture": ("cnet.cli.capture:capture", "Capture packets on a container, network or node."),
    "trace": ("cnet.cli.trace:trace", "Trace a probe's path between containers."),
    "topology": ("cnet.cli.topology:topology", "Show nodes, networks, containers and addresses."),
    "run": ("cnet.cli.container:run", "Create and run a new container from an image."),
    "create": ("cnet.cli.container:create", "Create a new container."),
    "start": ("cnet.cli.container:start", "Start one or more stopped containers."),
    "stop": ("cnet.cli.container:stop", "Stop one or more running containers."),
    "restart": ("cnet.cli.container:restart", "Restart one or more containers."),
    "kill": ("cnet.cli.container:kill", "Kill one or more running containers."),
    "rm": ("cnet.cli.container:rm", "Remove one or more containers."),
    "ps": ("cnet.cli.container:ps", "List containers."),
    "logs": ("cnet.cli.container:logs", "Fetch the logs of a container."),
    "exec": ("cnet.cli.container:exec_", "Run a command in a running container."),
    "inspect": ("cnet.cli.container:inspect", "Display detailed information on containers."),
    "wait": ("cnet.cli.container:wait", "Block until containers stop, print exit codes."),
    "port": ("cnet.cli.container:port", "List port mappings of a container."),
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
    default=DEFAULT_HOST,  # shown in --help; the value comes from resolve_host()
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
    given = ctx.get_parameter_source("host") is ParameterSource.COMMANDLINE
    ctx.obj = Settings(resolve_host(host if given else None), debug)
