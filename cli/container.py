"""Container commands: run, create, start, stop, restart, kill, rm, ps, logs, exec,
inspect, wait, port, prune (top level like `docker run`, and under `cnet container`)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from cnet.cli.common import (
    client,
    exit_on_errors,
    fail,
    filter_option,
    filters_query,
    inspect_each,
    kv_option,
    print_table,
    resource_path,
    run_each,
    short_id,
)

_path = resource_path("containers")


def _invalid(exc: Exception) -> None:
    fail(str(exc), 125)


# --- create / run -------------------------------------------------------------------


def create_options(fn):
    opts = [
        click.option("--name", help="Assign a name to the container."),
        click.option("--network", "networks", multiple=True, help="Connect to a network."),
        click.option("--network-alias", multiple=True, help="Network-scoped alias."),
        click.option("--ip", help="IPv4 address on the (first) network."),
        click.option("-p", "--publish", multiple=True,
                     help="Publish a port: [HOSTIP:][HOSTPORT:]PORT[/tcp|udp]."),
        click.option("-P", "--publish-all", is_flag=True, help="Publish all exposed ports."),
        click.option("-e", "--env", multiple=True, help="Set an environment variable."),
        click.option("--env-file", multiple=True, help="Read environment variables."),
        click.option("-w", "--workdir", help="Working directory inside the container."),
        click.option("--hostname", help="Container host name."),
        click.option("--dns", multiple=True, help="Custom DNS servers."),
        click.option("--restart", default="no", show_default=True, help="Restart policy."),
        click.option("--memory", "-m", help="Memory limit (e.g. 64m)."),
        click.option("--cpus", help="Number of CPUs."),
        click.option("--pids-limit", type=int, help="Tune container pids limit."),
        click.option("-v", "--volume", multiple=True, help="Bind mount a volume."),
        click.option("--mount", multiple=True, help="Attach a filesystem mount."),
        click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
        click.option("--cap-add", multiple=True, help="Add Linux capabilities."),
        click.option("--cap-drop", multiple=True, help="Drop Linux capabilities."),
        click.option("--entrypoint", help="Overwrite the default entrypoint."),
        click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open."),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY."),
        click.option("--rm", "auto_remove", is_flag=True,
                     help="Remove the container when it exits."),
        kv_option("-l", "--label", metavar="KEY=VALUE", help="Set metadata."),
        click.argument("image"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def create_body(o: dict[str, Any]) -> dict[str, Any]:
    """Docker's /containers/create body from the flags (one place for run and create)."""
    from cnet.cnm.errors import CnetError as ModelError
    from cnet.runtime import options as parse

    try:
        bindings: dict[str, list[dict]] = {}
        for spec in o["publish"]:
            for key, _, binding in parse.parse_publish(spec):
                bindings.setdefault(key, []).append(binding)
        mounts = [parse.parse_volume(v) for v in o["volume"]]
        mounts += [parse.parse_mount(m) for m in o["mount"]]
        host: dict[str, Any] = {
            "RestartPolicy": parse.parse_restart(o["restart"]),
            "AutoRemove": o["auto_remove"],
            "PortBindings": bindings,
            "PublishAllPorts": o["publish_all"],
            "Mounts": mounts,
            "ReadonlyRootfs": o["read_only"],
            "CapAdd": list(o["cap_add"]),
            "CapDrop": list(o["cap_drop"]),
            "Dns": list(o["dns"]),
        }
        if o["memory"]:
            host["Memory"] = parse.parse_memory(o["memory"])
        if o["cpus"]:
            host["NanoCpus"] = int(parse.parse_cpus(o["cpus"]) * 1e9)
        if o["pids_limit"]:
            host["PidsLimit"] = o["pids_limit"]
        env = parse.parse_env(list(o["env"]), list(o["env_file"]))
    except ModelError as exc:
        _invalid(exc)
    networks = list(o["networks"]) or ["bridge"]
    endpoints: dict[str, Any] = {n: {} for n in networks}
    first = endpoints[networks[0]]
    if o["network_alias"]:
        first["Aliases"] = list(o["network_alias"])
    if o["ip"]:
        first["IPAMConfig"] = {"IPv4Address": o["ip"]}
    host["NetworkMode"] = networks[0]
    body: dict[str, Any] = {
        "Image": o["image"],
        "Env": env,
        "Tty": o["tty"],
        "OpenStdin": o["interactive"],
        "AttachStdin": o["interactive"],
        "Labels": o["label"],
        "HostConfig": host,
        "NetworkingConfig": {"EndpointsConfig": endpoints},
    }
    if o["command"]:
        body["Cmd"] = list(o["command"])
    if o["entrypoint"] is not None:
        body["Entrypoint"] = [o["entrypoint"]] if o["entrypoint"] else []
    if o["workdir"]:
        body["WorkingDir"] = o["workdir"]
    if o["hostname"]:
        body["Hostname"] = o["hostname"]
    return body


def _create(o: dict[str, Any]) -> str:
    from cnet.cli.client import APIError

    body = create_body(o)
    try:
        return client().post("/containers/create", body,
                             query={"name": o["name"]} if o["name"] else None)["Id"]
    except APIError as exc:
        fail(str(exc), 125)


def _start(cid: str, remove_on_failure: bool = False, hold: bool = False) -> None:
    """Start; with `remove_on_failure` (run) a container that cannot start is not kept;
    with `hold` its process waits until we attached (POST .../release)."""
    from cnet.cli.client import APIError

    try:
        client().post(_path(cid, "start"), query={"hold": "1"} if hold else None)
    except APIError as exc:
        msg = str(exc)
        if remove_on_failure:
            try:
                client().delete(_path(cid), query={"force": "1"})
            except APIError:
                pass
        fail(msg, 127 if "not found" in msg else 126 if "permission" in msg else 125)


@click.command(context_settings={"allow_interspersed_args": False})
@create_options
@click.option("-d", "--detach", is_flag=True, help="Run in the background, print the id.")
def run(detach: bool, **o: Any) -> None:
    """Create and run a new container from an image."""
    cid = _create(o)
    _start(cid, remove_on_failure=True, hold=not detach)
    if detach:
        click.echo(cid)
        return
    # The process was held: it runs once we are attached / following its log, so no
    # output is lost and an auto-removed (--rm) container cannot vanish before we look.
    if o["tty"] or o["interactive"]:
        _attach(cid, o["tty"], release=True)
    else:
        _follow_logs(cid, follow=True, on_open=lambda: client().post(_path(cid, "release")))
    code = client().post(_path(cid, "wait"))["StatusCode"]
    sys.exit(code)


@click.command(context_settings={"allow_interspersed_args": False})
@create_options
def create(**o: Any) -> None:
    """Create a new container."""
    click.echo(_create(o))


def _follow_logs(cid: str, follow: bool, tail: str = "all", timestamps: bool = False,
                 on_open=None) -> None:
    query = {"follow": "1" if follow else "0", "tail": tail}
    for entry in client().stream("GET", _path(cid, "logs"), query=query, on_open=on_open):
        out = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
        text = entry.get("log", "")
        if timestamps:
            text = f"{entry.get('time', '')} {text}"
        out.write(text)
        out.flush()


def _attach(cid: str, tty: bool, release: bool = False) -> None:
    """Connect this terminal to the shim's attach socket until the container's output ends
    (`release`: then let the held process run, so none of its output is missed)."""
    import select
    import socket
    import termios
    import tty as ttymod

    from cnet.runtime.shimclient import connect_attach

    info = client().get(_path(cid, "attach-info"))
    try:
        sock = connect_attach(os.path.dirname(info["AttachSocket"]))
    except OSError:
        sock = None
    if release:
        client().post(_path(cid, "release"))
    if sock is None:
        return  # already exited: its output is in the logs
    restore = None
    if tty and os.isatty(0):
        restore = termios.tcgetattr(0)
        ttymod.setraw(0)
    try:
        stdin_open = True
        while True:
            fds = [sock] + ([0] if stdin_open else [])
            ready, _, _ = select.select(fds, [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    sock.sendall(data)
                else:
                    stdin_open = False
                    sock.shutdown(socket.SHUT_WR)
    finally:
        if restore is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, restore)
        sock.close()


# --- lifecycle ------------------------------------------------------------------------


def _each(names: tuple[str, ...], action) -> None:
    def one(name: str) -> None:
        action(name)
        click.echo(name)

    _, errors = run_each(names, one, not_found="No such container")
    exit_on_errors(errors)


@click.command()
@click.option("-a", "--attach", is_flag=True, help="Attach STDOUT/STDERR.")
@click.argument("names", nargs=-1, required=True)
def start(attach: bool, names: tuple[str, ...]) -> None:
    """Start one or more stopped containers."""
    if attach:
        _start(names[0])
        _follow_logs(names[0], follow=True, tail="0")
        sys.exit(client().post(_path(names[0], "wait"))["StatusCode"])
    _each(names, lambda n: client().post(_path(n, "start")))


@click.command()
@click.option("-t", "--time", "timeout", default=10, show_default=True,
              help="Seconds to wait before killing.")
@click.argument("names", nargs=-1, required=True)
def stop(timeout: int, names: tuple[str, ...]) -> None:
    """Stop one or more running containers (SIGTERM, then SIGKILL)."""
    _each(names, lambda n: client().post(_path(n, "stop"), query={"t": str(timeout)}))


@click.command()
@click.option("-t", "--time", "timeout", default=10, show_default=True)
@click.argument("names", nargs=-1, required=True)
def restart(timeout: int, names: tuple[str, ...]) -> None:
    """Restart one or more containers."""
    _each(names, lambda n: client().post(_path(n, "restart"), query={"t": str(timeout)}))


@click.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True)
@click.argument("names", nargs=-1, required=True)
def kill(sig: str, names: tuple[str, ...]) -> None:
    """Kill one or more running containers."""
    _each(names, lambda n: client().post(_path(n, "kill"), query={"signal": sig}))


@click.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.option("-v", "--volumes", is_flag=True, help="Remove anonymous volumes too.")
@click.argument("names", nargs=-1, required=True)
def rm(force: bool, volumes: bool, names: tuple[str, ...]) -> None:
    """Remove one or more containers."""
    query = {"force": "1" if force else "0", "v": "1" if volumes else "0"}
    _each(names, lambda n: client().delete(_path(n), query=query))


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers.")
@click.option("-q", "--quiet", is_flag=True, help="Only display ids.")
@click.option("--no-trunc", is_flag=True)
@filter_option("Filter (name=, id=, status=, label=).")
def ps(show_all: bool, quiet: bool, no_trunc: bool, filters: dict[str, list[str]]) -> None:
    """List containers."""
    query = {"all": "1" if show_all else "0", **(filters_query(filters) or {})}
    rows = client().get("/containers/json", query=query)
    if quiet:
        for c in rows:
            click.echo(short_id(c["Id"], no_trunc))
        return
    from cnet.cli.common import human_since

    print_table(
        ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"),
        ((short_id(c["Id"], no_trunc), c["Image"], f'"{c["Command"][:20]}"',
          human_since(c["Created"]), c["Status"], _ports_text(c["Ports"]),
          c["Names"][0].lstrip("/")) for c in rows),
    )


def _ports_text(ports: list[dict]) -> str:
    from cnet.runtime.ports import port_text

    return ", ".join(port_text(p["IP"], p["PublicPort"], p["PrivatePort"], p["Type"])
                     for p in ports)


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("-n", "--tail", default="all", help="Number of lines from the end.")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.argument("name")
def logs(follow: bool, tail: str, timestamps: bool, name: str) -> None:
    """Fetch the logs of a container."""
    _follow_logs(name, follow, tail, timestamps)


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True)
@click.option("-t", "--tty", is_flag=True)
@click.option("-e", "--env", multiple=True)
@click.option("-w", "--workdir")
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(interactive: bool, tty: bool, env: tuple[str, ...], workdir: str | None, name: str,
          command: tuple[str, ...]) -> None:
    """Run a command in a running container."""
    info = client().get(_path(name, "attach-info"))
    if not info["Running"]:
        fail(f"container {name} is not running", 1)
    args = ["runc", "--root", info["RuncRoot"], "exec"]
    if tty:
        args.append("-t")
    for e in env:
        args += ["--env", e]
    if workdir:
        args += ["--cwd", workdir]
    args += [info["Id"], *command]
    sys.stdout.flush()
    try:
        os.execvp("runc", args)
    except FileNotFoundError:
        fail("runc not found", 127)


@click.command()
@click.argument("names", nargs=-1, required=True)
def inspect(names: tuple[str, ...]) -> None:
    """Display detailed information on one or more containers."""
    inspect_each(names, lambda n: _path(n, "json"), "container")


@click.command()
@click.argument("names", nargs=-1, required=True)
def wait(names: tuple[str, ...]) -> None:
    """Block until containers stop, then print their exit codes."""
    _, errors = run_each(names, lambda n: click.echo(
        client().post(_path(n, "wait"))["StatusCode"]), not_found="No such container")
    exit_on_errors(errors)


@click.command()
@click.argument("name")
@click.argument("port", required=False)
def port(name: str, port: str | None) -> None:
    """List port mappings of a container."""
    ports = client().get(_path(name, "json"))["NetworkSettings"]["Ports"] or {}
    if port and "/" not in port:
        port += "/tcp"
    for key, bindings in sorted(ports.items()):
        if port and key != port:
            continue
        for b in bindings or []:
            text = f"{b['HostIp'] or '0.0.0.0'}:{b['HostPort']}"
            click.echo(text if port else f"{key} -> {text}")


@click.command()
@click.option("-f", "--force", is_flag=True)
def prune(force: bool) -> None:
    """Remove all stopped containers."""
    if not force and not click.confirm("WARNING! This will remove all stopped containers.\n"
                                       "Are you sure you want to continue?"):
        return
    res = client().post("/containers/prune")
    if res["ContainersDeleted"]:
        click.echo("Deleted Containers:")
        for cid in res["ContainersDeleted"]:
            click.echo(cid)


@click.group()
def container() -> None:
    """Manage containers."""


for _cmd in (run, create, start, stop, restart, kill, rm, ps, logs, inspect, wait, port,
             prune):
    container.add_command(_cmd)
container.add_command(exec_, "exec")
container.add_command(ps, "ls")
