"""The `cnet` CLI against a fake cnetd: a thread serving canned HTTP answers on a unix socket.

Checks what the CLI sends (bodies, query strings), what it prints (tables, JSON, one-line
errors) and how it exits. `sandbox exec`, the no-click fast path of `network connect` /
`disconnect` and start-up cost are checked in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from click.testing import CliRunner, Result
from cnet.cli import client as client_module
from cnet.cli import fastpath
from cnet.cli.app import cli
from cnet.cli.client import APIError, Client, DaemonUnreachable
from cnet.cli.common import human_duration
from cnet.cli.main import main
from cnet.cli.shared import DEFAULT_HOST, resolve_host

NET_ID = "3f1c2a9b8e7d6c5b4a3928170615f4e3d2c1b0a99887766554433221100ffee"
NET_ID2 = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1"
SB_ID = "5b4a3928170615f4e3d2c1b0a99887766554433221100ffee3f1c2a9b8e7d6c"


class FakeDaemon:
    """Records every request; answers from `routes[(method, path)] = (status, body)`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.host = f"unix://{path}"
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                daemon.requests.append(
                    {
                        "method": self.command,
                        "path": unquote(url.path),
                        "raw_path": url.path,
                        "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                        "body": json.loads(raw) if raw else None,
                        "headers": dict(self.headers),
                    }
                )
                status, body = daemon.routes.get(
                    (self.command, unquote(url.path)), (404, {"message": "page not found"})
                )
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, status: int = 200, body: Any = None) -> None:
        self.routes[(method, path)] = (status, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sockdir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 108-byte sun_path limit; keep socket paths short.
    path = tempfile.mkdtemp(prefix="cnet-cli-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(sockdir: str) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(os.path.join(sockdir, "d.sock"))
    yield fake
    fake.close()


def run(daemon: FakeDaemon, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["-H", daemon.host, *args], input=input)


def run_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from cnet.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def network(name: str, net_id: str, driver: str = "bridge") -> dict[str, Any]:
    return {"Name": name, "Id": net_id, "Driver": driver, "Scope": "local", "Containers": {}}


# --- network create -----------------------------------------------------------------


def test_network_create_sends_flags_and_prints_id(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/networks/create", 201, {"Id": NET_ID, "Warning": ""})
    result = run(
        daemon,
        *("network", "create", "-d", "bridge", "--subnet", "10.5.0.0/16"),
        *("--gateway", "10.5.0.1", "--ip-range", "10.5.1.0/24"),
        *("--subnet", "fd00:5::/64", "--gateway", "fd00:5::1"),
        *("--aux-address", "router=10.5.0.2", "--aux-address", "r6=fd00:5::2"),
        *("--ipv6", "--internal", "-o", "com.docker.network.bridge.name=br5"),
        *("--label", "team=net", "--label", "flag", "--attachable", "net5"),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == NET_ID + "\n"
    (req,) = daemon.requests
    assert req["method"] == "POST" and req["path"] == "/networks/create"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["body"] == {
        "Name": "net5",
        "Driver": "bridge",
        "EnableIPv6": True,
        "Internal": True,
        "Attachable": True,
        "IPAM": {
            "Driver": "default",
            "Config": [
                {
                    "Subnet": "10.5.0.0/16",
                    "Gateway": "10.5.0.1",
                    "IPRange": "10.5.1.0/24",
                    "AuxiliaryAddresses": {"router": "10.5.0.2"},
                },
                {
                    "Subnet": "fd00:5::/64",
                    "Gateway": "fd00:5::1",
                    "AuxiliaryAddresses": {"r6": "fd00:5::2"},
                },
            ],
        },
        "Options": {"com.docker.network.bridge.name": "br5"},
        "Labels": {"team": "net", "flag": ""},
    }


def test_network_create_minimal_omits_unset_keys(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/networks/create", 201, {"Id": NET_ID, "Warning": "heads up"})
    result = run(daemon, "network", "create", "plain")
    assert result.exit_code == 0, result.output
    assert result.stdout == NET_ID + "\n"
    assert "heads up" in result.stderr
    body = daemon.requests[0]["body"]
    assert body == {
        "Name": "plain",
        "Driver": "bridge",
        "EnableIPv6": False,
        "Internal": False,
        "Attachable": False,
    }


def test_network_create_gateway_pairs_with_its_subnet_not_its_position(
    daemon: FakeDaemon,
) -> None:
    daemon.route("POST", "/networks/create", 201, {"Id": NET_ID})
    result = run(
        daemon,
        *("network", "create", "--subnet", "10.1.0.0/24", "--subnet", "10.2.0.0/24"),
        *("--gateway", "10.2.0.254", "--gateway", "10.1.0.254", "n"),
    )
    assert result.exit_code == 0, result.output
    configs = daemon.requests[0]["body"]["IPAM"]["Config"]
    assert configs == [
        {"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.254"},
        {"Subnet": "10.2.0.0/24", "Gateway": "10.2.0.254"},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--gateway", "10.0.0.1"],
            "every ip-range or gateway must have a corresponding subnet",
        ),
        (
            ["--subnet", "10.0.0.0/24", "--gateway", "10.0.0.1", "--gateway", "10.0.0.2"],
            "every ip-range or gateway must have a corresponding subnet",
        ),
        (
            ["--subnet", "10.0.0.0/24", "--gateway", "10.9.0.1"],
            "no matching subnet for gateway 10.9.0.1",
        ),
        (
            ["--subnet", "10.0.0.0/24", "--aux-address", "a=192.168.0.1"],
            "no matching subnet for aux-address 192.168.0.1",
        ),
        (
            ["--subnet", "10.0.0.0/16", "--subnet", "10.0.1.0/24"],
            "multiple overlapping subnet configuration is not supported",
        ),
        (["--subnet", "10.0.0.0/33"], "invalid CIDR address: 10.0.0.0/33"),
    ],
)
def test_network_create_rejects_bad_ipam_without_calling_daemon(
    daemon: FakeDaemon, args: list[str], message: str
) -> None:
    result = run(daemon, "network", "create", *args, "bad")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"
    assert daemon.requests == []


def test_bad_key_value_is_a_usage_error(daemon: FakeDaemon) -> None:
    result = run(daemon, "network", "create", "--aux-address", "noequals", "n")
    assert result.exit_code == 2
    assert "expected key=value" in result.stderr
    assert daemon.requests == []


# --- network ls ---------------------------------------------------------------------


def test_network_ls_table_uses_short_ids_sorted_by_name(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/networks", 200, [network("zeta", NET_ID2), network("alpha", NET_ID)])
    result = run(daemon, "network", "ls")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "NETWORK ID     NAME      DRIVER    SCOPE",
        f"{NET_ID[:12]}   alpha     bridge    local",
        f"{NET_ID2[:12]}   zeta      bridge    local",
    ]
    assert daemon.requests[0]["query"] == {}


def test_network_ls_quiet_and_no_trunc(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/networks", 200, [network("a", NET_ID)])
    assert run(daemon, "network", "ls", "-q").stdout == NET_ID[:12] + "\n"
    assert run(daemon, "network", "ls", "-q", "--no-trunc").stdout == NET_ID + "\n"
    assert NET_ID in run(daemon, "network", "ls", "--no-trunc").stdout


def test_network_ls_sends_filters_as_json(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/networks", 200, [])
    result = run(
        daemon, "network", "ls", "-f", "driver=bridge", "--filter", "label=team=net",
        "-f", "label=flag", "-f", "name=web",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent = json.loads(daemon.requests[0]["query"]["filters"])
    assert sent == {"driver": ["bridge"], "label": ["team=net", "flag"], "name": ["web"]}


def test_network_ls_bad_filter_is_a_usage_error(daemon: FakeDaemon) -> None:
    result = run(daemon, "network", "ls", "-f", "driver")
    assert result.exit_code == 2
    assert "bad format of filter (expected name=value)" in result.stderr


def test_network_ls_json(daemon: FakeDaemon) -> None:
    nets = [network("a", NET_ID)]
    daemon.route("GET", "/networks", 200, nets)
    result = run(daemon, "network", "ls", "--format", "json")
    assert json.loads(result.stdout) == nets


# --- inspect / rm / prune / connect / disconnect ------------------------------------


def test_network_inspect_prints_found_then_errors(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/networks/a", 200, network("a", NET_ID))
    daemon.route("GET", "/networks/nope", 404, {"message": "network nope not found"})
    result = run(daemon, "network", "inspect", "a", "nope")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == [network("a", NET_ID)]
    assert result.stdout.startswith("[\n    {\n        ")  # docker's 4-space indent
    assert result.stderr == "Error: No such network: nope\n"


def test_network_rm_reports_conflict_verbatim(daemon: FakeDaemon) -> None:
    daemon.route("DELETE", "/networks/a", 204)
    daemon.route(
        "DELETE", "/networks/busy", 409, {"message": 'network "busy" has active endpoints'}
    )
    result = run(daemon, "network", "rm", "busy", "a")
    assert result.exit_code == 1
    assert result.stdout == "a\n"
    assert result.stderr == 'Error: network "busy" has active endpoints\n'
    assert [r["path"] for r in daemon.requests] == ["/networks/busy", "/networks/a"]


def test_names_are_percent_encoded_in_paths(daemon: FakeDaemon) -> None:
    result = run(daemon, "network", "rm", "a/b")
    assert result.exit_code == 1
    assert daemon.requests[0]["raw_path"] == "/networks/a%2Fb"


def test_network_prune_asks_first(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/networks/prune", 200, {"NetworksDeleted": ["n1", "n2"]})
    declined = run(daemon, "network", "prune", input="n\n")
    assert declined.exit_code == 0
    assert "Are you sure you want to continue? [y/N]" in declined.stdout
    assert daemon.requests == []
    accepted = run(daemon, "network", "prune", input="y\n")
    assert accepted.exit_code == 0
    assert accepted.stdout.endswith("Deleted Networks:\nn1\nn2\n")
    forced = run(daemon, "network", "prune", "-f")
    assert forced.stdout == "Deleted Networks:\nn1\nn2\n"
    assert len(daemon.requests) == 2


def test_network_connect_and_disconnect_bodies(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/networks/n/connect", 200)
    daemon.route("POST", "/networks/n/disconnect", 200)
    r1 = run(daemon, "network", "connect", "--ip", "10.0.0.9", "--alias", "web", "--alias", "w",
             "n", "sb1")  # fmt: skip
    r2 = run(daemon, "network", "connect", "n", "sb2")
    r3 = run(daemon, "network", "disconnect", "-f", "n", "sb1")
    assert (r1.exit_code, r2.exit_code, r3.exit_code) == (0, 0, 0)
    assert [r["body"] for r in daemon.requests] == [
        {
            "Container": "sb1",
            "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.0.0.9"}, "Aliases": ["web", "w"]},
        },
        {"Container": "sb2"},
        {"Container": "sb1", "Force": True},
    ]


def test_not_found_is_one_line_exit_1(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/networks/ghost/connect", 404, {"message": "network ghost not found"})
    result = run(daemon, "network", "connect", "ghost", "sb")
    assert result.exit_code == 1
    assert result.stderr == "Error: network ghost not found\n"
    assert result.stdout == ""


def test_server_error_without_json_body(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/info", 500, "boom")  # a JSON string, not {"message"}
    result = run(daemon, "info")
    assert result.exit_code == 1
    assert result.stderr == 'Error: "boom"\n'


# --- sandboxes ----------------------------------------------------------------------


def test_sandbox_create_ls_rm(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/sandboxes/create", 201, {"Id": SB_ID})
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 300))
    sandboxes = [
        {"Id": SB_ID, "Name": "sb1", "Created": created, "Networks": {"b": {}, "a": {}}},
        {"Id": NET_ID, "Name": "sb2", "Created": "not a date", "Networks": {}},
    ]
    daemon.route("GET", "/sandboxes", 200, sandboxes)
    daemon.route("DELETE", "/sandboxes/sb1", 204)

    assert run(daemon, "sandbox", "create", "sb1").stdout == SB_ID + "\n"
    assert daemon.requests[-1]["body"] == {"Name": "sb1"}
    lines = run(daemon, "sandbox", "ls").stdout.splitlines()
    assert lines[0].split() == ["SANDBOX", "ID", "NAME", "NETWORKS", "CREATED"]
    assert lines[1].split() == [SB_ID[:12], "sb1", "a,b", "5", "minutes", "ago"]
    assert lines[2].split() == [NET_ID[:12], "sb2", "not", "a", "date"]
    assert run(daemon, "sandbox", "ls", "-q").stdout == f"{SB_ID[:12]}\n{NET_ID[:12]}\n"

    assert run(daemon, "sandbox", "rm", "sb1").stdout == "sb1\n"
    assert daemon.requests[-1]["query"] == {}
    run(daemon, "sandbox", "rm", "-f", "sb1")
    assert daemon.requests[-1]["query"] == {"force": "1"}


def test_sandbox_rm_conflict(daemon: FakeDaemon) -> None:
    daemon.route("DELETE", "/sandboxes/sb1", 409, {"message": "sandbox sb1 has active endpoints"})
    result = run(daemon, "sandbox", "rm", "sb1")
    assert (result.exit_code, result.stderr) == (1, "Error: sandbox sb1 has active endpoints\n")


def test_sandbox_inspect_missing(daemon: FakeDaemon) -> None:
    result = run(daemon, "sandbox", "inspect", "ghost")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == []
    assert result.stderr == "Error: No such sandbox: ghost\n"


@pytest.fixture
def other_netns() -> Iterator[str]:
    """A process in a fresh network namespace; yields its /proc/<pid>/ns/net path."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to create a network namespace")
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if os.readlink(path) != os.readlink("/proc/self/ns/net"):
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        else:
            pytest.skip("unshare --net did not create a namespace")
        yield path
    finally:
        proc.kill()
        proc.wait()


def test_sandbox_exec_runs_in_the_namespace_with_its_exit_code(
    daemon: FakeDaemon, other_netns: str
) -> None:
    daemon.route("GET", "/sandboxes/sb1", 200, {"Id": SB_ID, "Name": "sb1", "Key": other_netns})
    host = ["-H", daemon.host]
    inside = run_subprocess(*host, "sandbox", "exec", "sb1", "--", "readlink", "/proc/self/ns/net")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() == os.readlink(other_netns)

    status = run_subprocess(*host, "sandbox", "exec", "sb1", "--", "sh", "-c", "exit 7")
    assert status.returncode == 7

    flags = run_subprocess(*host, "sandbox", "exec", "sb1", "sh", "-c", 'echo "$@"', "sh", "--help")
    assert (flags.returncode, flags.stdout) == (0, "--help\n")  # not eaten by cnet

    missing = run_subprocess(*host, "sandbox", "exec", "sb1", "no-such-command-xyz", "-x")
    assert missing.returncode == 127
    assert missing.stderr == (
        'Error: exec: "no-such-command-xyz": executable file not found in $PATH\n'
    )


# --- info ---------------------------------------------------------------------------

INFO = {
    "Version": "0.1.0",
    "DaemonID": "d1",
    "Drivers": ["bridge", "null"],
    "Store": {"Type": "sqlite", "Path": "/var/lib/cnet/cnet.db"},
    "DataRoot": "/var/lib/cnet",
    "ExecRoot": "/run/cnet",
    "Networks": 3,
    "Sandboxes": 1,
    "KernelFeatures": [
        {"Name": "bridge", "Present": True, "Disables": "bridge networks"},
        {"Name": "ipvlan", "Present": False, "Disables": "ipvlan networks"},
    ],
}


def test_info_human_and_json(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/info", 200, INFO)
    result = run(daemon, "info")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "Store: sqlite (/var/lib/cnet/cnet.db)" in lines
    assert "Networks: 3" in lines
    assert [line.split() for line in lines[lines.index("Kernel Features:") + 1 :]] == [
        ["FEATURE", "STATUS", "DISABLES"],
        ["bridge", "present"],
        ["ipvlan", "missing", "ipvlan", "networks"],
    ]
    assert json.loads(run(daemon, "info", "--format", "json").stdout) == INFO


# --- host selection, errors, debug --------------------------------------------------


def test_unreachable_daemon_hint(sockdir: str) -> None:
    host = f"unix://{sockdir}/missing.sock"
    expected = (
        f"Error: cannot reach cnetd at {host} (is it running? start it with: cnetd -H {host})\n"
    )
    result = CliRunner().invoke(cli, ["-H", host, "network", "ls"])
    assert (result.exit_code, result.stderr) == (1, expected)
    via_env = run_subprocess("info", env={"CNET_HOST": host})
    assert (via_env.returncode, via_env.stderr) == (1, expected)


def test_refused_connection_is_unreachable(sockdir: str) -> None:
    import socket

    path = os.path.join(sockdir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound, never listening: connect() is refused
    try:
        with pytest.raises(DaemonUnreachable):
            Client(f"unix://{path}").get("/info")
    finally:
        stale.close()


def test_unsupported_host_scheme() -> None:
    result = CliRunner().invoke(cli, ["-H", "tcp://1.2.3.4:2375", "info"])
    assert result.exit_code == 1
    assert (
        result.stderr
        == 'Error: unsupported host "tcp://1.2.3.4:2375": expected unix:///path/to/cnet.sock\n'
    )


def test_debug_keeps_the_traceback(sockdir: str) -> None:
    host = f"unix://{sockdir}/missing.sock"
    result = run_subprocess("--debug", "-H", host, "info")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "DaemonUnreachable" in result.stderr


def test_usage_errors_keep_exit_2(daemon: FakeDaemon) -> None:
    assert run(daemon, "network", "create").exit_code == 2
    assert run(daemon, "nosuchcommand").exit_code == 2
    assert daemon.requests == []


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.stdout == "cnet version 0.1.0\n"


# --- client details -----------------------------------------------------------------


def test_client_reads_chunked_and_close_delimited_bodies(sockdir: str) -> None:
    path = os.path.join(sockdir, "raw.sock")
    replies = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b'\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n',
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"b": 2}',
        b"HTTP/1.1 409 Conflict\r\nContent-Length: 9\r\n\r\nnot json!",
    ]

    class Raw(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.wfile.write(replies.pop(0))

    server = socketserver.UnixStreamServer(path, Raw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = Client(f"unix://{path}")
        assert client.get("/x") == {"a": 1}
        assert client.get("/x") == {"b": 2}
        with pytest.raises(APIError) as err:
            client.get("/x")
        assert (err.value.status, err.value.message) == (409, "not json!")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (90, "About a minute"),
        (300, "5 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# --- the no-click fast path of network connect / disconnect -------------------------


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`cnet ARGS` through main() in a fresh process (so the fast path can be taken)."""
    base = {k: v for k, v in os.environ.items() if k not in ("CNET_HOST", "CNET_NO_FASTPATH")}
    return subprocess.run(
        [sys.executable, "-c", "from cnet.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
    )


def fast_and_click(
    daemon: FakeDaemon | None, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The same argv via the fast path, then via click: both results; the requests of
    each half are checked to be the same."""
    sent = daemon.requests if daemon else []
    fast = run_main(*args, env=env)
    half = len(sent)
    slow = run_main(*args, env={**(env or {}), "CNET_NO_FASTPATH": "1"})
    assert sent[:half] == sent[half:]
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        slow.returncode,
        slow.stdout,
        slow.stderr,
    )
    return fast, slow


FAST_CASES = [
    ("network", "connect", "n", "sb1"),
    ("network", "connect", "--ip", "10.0.0.9", "--ip6", "fd00::9", "--alias", "web",
     "--alias", "w", "n", "sb1"),
    ("network", "connect", "n", "--alias=web", "sb1", "--ip=10.0.0.9"),
    ("network", "connect", "--ip", "10.0.0.1", "--ip", "10.0.0.2", "n", "sb1"),
    ("network", "connect", "--ip=", "--alias=", "n", "sb1"),
    ("network", "connect", "a/b c", "sb é"),
    ("network", "disconnect", "n", "sb1"),
    ("network", "disconnect", "-f", "n", "sb1"),
    ("network", "disconnect", "n", "--force", "sb1"),
]  # fmt: skip


@pytest.mark.parametrize("args", FAST_CASES, ids=lambda a: " ".join(a))
def test_fast_path_sends_what_click_sends(daemon: FakeDaemon, args: tuple[str, ...]) -> None:
    for path in ("/networks/n/connect", "/networks/n/disconnect", "/networks/a/b c/connect"):
        daemon.route("POST", path, 200)
    argv = ["-H", daemon.host, *args]
    assert fastpath.parse(argv) is not None  # the fast path takes it
    fast, _ = fast_and_click(daemon, *argv)
    assert (fast.returncode, fast.stdout, fast.stderr) == (0, "", "")  # silent, like docker
    assert len(daemon.requests) == 2


def test_fast_path_bodies(daemon: FakeDaemon) -> None:
    for path in ("/networks/n/connect", "/networks/n/disconnect", "/networks/a/b c/connect"):
        daemon.route("POST", path, 200)
    for args in FAST_CASES:
        assert run_main("-H", daemon.host, *args).returncode == 0
    assert [(r["raw_path"], r["body"]) for r in daemon.requests] == [
        ("/networks/n/connect", {"Container": "sb1"}),
        (
            "/networks/n/connect",
            {
                "Container": "sb1",
                "EndpointConfig": {
                    "IPAMConfig": {"IPv4Address": "10.0.0.9", "IPv6Address": "fd00::9"},
                    "Aliases": ["web", "w"],
                },
            },
        ),
        (
            "/networks/n/connect",
            {
                "Container": "sb1",
                "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.0.0.9"}, "Aliases": ["web"]},
            },
        ),
        (
            "/networks/n/connect",
            {"Container": "sb1", "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.0.0.2"}}},
        ),
        ("/networks/n/connect", {"Container": "sb1", "EndpointConfig": {"Aliases": [""]}}),
        ("/networks/a%2Fb%20c/connect", {"Container": "sb é"}),
        ("/networks/n/disconnect", {"Container": "sb1", "Force": False}),
        ("/networks/n/disconnect", {"Container": "sb1", "Force": True}),
        ("/networks/n/disconnect", {"Container": "sb1", "Force": True}),
    ]


@pytest.mark.parametrize(
    ("net", "status", "body", "stderr"),
    [
        ("ghost", 404, {"message": "network ghost not found"}, "network ghost not found"),
        ("busy", 409, {"message": "endpoint sb already exists"}, "endpoint sb already exists"),
        ("boom", 500, "boom", '"boom"'),
        ("unrouted", None, None, "page not found"),  # the fake's default 404
    ],
)
@pytest.mark.parametrize("command", ["connect", "disconnect"])
def test_fast_path_daemon_errors_like_click(
    daemon: FakeDaemon, command: str, net: str, status: int | None, body: Any, stderr: str
) -> None:
    if status is not None:
        daemon.route("POST", f"/networks/{net}/{command}", status, body)
    fast, _ = fast_and_click(daemon, "-H", daemon.host, "network", command, net, "sb")
    assert (fast.returncode, fast.stdout, fast.stderr) == (1, "", f"Error: {stderr}\n")


@pytest.mark.parametrize("form", ["-H", "--host", "--host=", "env"])
def test_fast_path_host_selection_like_click(daemon: FakeDaemon, form: str) -> None:
    daemon.route("POST", "/networks/n/connect", 200)
    if form == "env":
        flags, env = [], {"CNET_HOST": daemon.host}
    elif form == "--host=":
        flags, env = [f"--host={daemon.host}"], {"CNET_HOST": "unix:///nonexistent.sock"}
    else:
        flags, env = [form, daemon.host], {"CNET_HOST": "unix:///nonexistent.sock"}
    argv = [*flags, "network", "connect", "n", "sb"]
    assert fastpath.parse(argv) is not None
    fast, _ = fast_and_click(daemon, *argv, env=env)
    assert fast.returncode == 0, fast.stderr
    assert len(daemon.requests) == 2


@pytest.mark.parametrize("kind", ["missing", "tcp", "empty"])
def test_fast_path_unreachable_and_bad_host_like_click(sockdir: str, kind: str) -> None:
    host = {"missing": f"unix://{sockdir}/missing.sock", "tcp": "tcp://1.2.3.4:2375", "empty": ""}
    expected = {
        "missing": f"cannot reach cnetd at {host['missing']} (is it running? start it with: "
        f"cnetd -H {host['missing']})",
        "tcp": 'unsupported host "tcp://1.2.3.4:2375": expected unix:///path/to/cnet.sock',
        "empty": 'unsupported host "": expected unix:///path/to/cnet.sock',
    }
    for command in ("connect", "disconnect"):
        fast, _ = fast_and_click(None, "-H", host[kind], "network", command, "n", "sb")
        assert (fast.returncode, fast.stdout, fast.stderr) == (1, "", f"Error: {expected[kind]}\n")


def test_resolve_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNET_HOST", raising=False)
    assert resolve_host(None) == DEFAULT_HOST
    monkeypatch.setenv("CNET_HOST", "")
    assert resolve_host(None) == DEFAULT_HOST  # empty counts as unset, as for click
    monkeypatch.setenv("CNET_HOST", "unix:///env.sock")
    assert resolve_host(None) == "unix:///env.sock"
    assert resolve_host("unix:///flag.sock") == "unix:///flag.sock"
    assert resolve_host("") == ""  # an explicit -H "" is an error later, not the default


@pytest.mark.parametrize("forced", [False, True])
def test_interrupt_reports_like_click(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], forced: bool
) -> None:
    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(client_module.Client, "post", interrupted)
    monkeypatch.setattr(
        sys, "argv", ["cnet", "-H", "unix:///x.sock", "network", "connect", "n", "s"]
    )
    if forced:
        monkeypatch.setenv("CNET_NO_FASTPATH", "1")
    else:
        monkeypatch.delenv("CNET_NO_FASTPATH", raising=False)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert capsys.readouterr() == ("", "\nAborted!\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["network", "connect", "--help"],
        ["network", "connect", "-h", "n", "sb"],
        ["network", "connect", "n", "sb", "extra"],
        ["network", "connect", "n"],
        ["network", "connect", "--bogus", "n", "sb"],
        ["network", "connect", "--ip", "n", "sb"],  # --ip eats "n": 1 positional left
        ["network", "connect", "--ip", "--alias", "n", "sb"],  # a value that looks like a flag
        ["network", "connect", "--", "n", "sb"],
        ["network", "connect", "-", "sb"],
        ["network", "disconnect", "-ff", "n", "sb"],  # combined short flags
        ["network", "disconnect", "--force=yes", "n", "sb"],
        ["network", "disconnect", "--ip", "1.2.3.4", "n", "sb"],
        ["--debug", "network", "connect", "n", "sb"],
        ["-Hunix:///x.sock", "network", "connect", "n", "sb"],
        ["-H", "unix:///x.sock", "--debug", "network", "connect", "n", "sb"],
        ["network", "-H", "unix:///x.sock", "connect", "n", "sb"],
        ["network", "ls"],
        ["network", "rm", "n", "sb"],
        ["sandbox", "connect", "n", "sb"],
        ["--version"],
        ["-H"],
        [],
    ],
    ids=lambda a: " ".join(a) or "(none)",
)
def test_fast_path_declines_other_shapes(argv: list[str]) -> None:
    assert fastpath.parse(argv) is None


def test_declined_shapes_still_work_via_click(daemon: FakeDaemon, sockdir: str) -> None:
    daemon.route("POST", "/networks/n/connect", 200)
    helped = run_main("network", "connect", "--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("Usage: cnet network connect [OPTIONS] NETWORK SANDBOX\n")
    assert "--alias TEXT" in helped.stdout

    extra = run_main("-H", daemon.host, "network", "connect", "n", "sb", "extra")
    assert extra.returncode == 2
    assert "Got unexpected extra argument (extra)" in extra.stderr

    bogus = run_main("-H", daemon.host, "network", "connect", "--bogus", "n", "sb")
    assert bogus.returncode == 2
    assert "No such option '--bogus'" in bogus.stderr

    assert daemon.requests == []
    daemon.route("POST", "/networks/n/disconnect", 200)
    combined = run_main("-H", daemon.host, "network", "disconnect", "-ff", "n", "sb")
    assert (combined.returncode, combined.stderr) == (0, "")  # click reads -ff as -f -f
    assert daemon.requests[-1]["body"] == {"Container": "sb", "Force": True}

    attached = run_main(f"-H{daemon.host}", "network", "connect", "n", "sb")
    assert (attached.returncode, attached.stderr) == (0, "")
    assert daemon.requests[-1]["body"] == {"Container": "sb"}

    host = f"unix://{sockdir}/missing.sock"
    debug = run_main("--debug", "-H", host, "network", "connect", "n", "sb")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "DaemonUnreachable" in debug.stderr


def test_fast_path_skips_shell_completion() -> None:
    result = run_main("network", "connect", "n", "sb", env={"_CNET_COMPLETE": "bash_source"})
    assert result.returncode == 0
    assert "_cnet_completion" in result.stdout  # click's completion script, no request


def test_fast_path_imports_no_click(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/networks/n/connect", 200)
    code = (
        "import sys\n"
        "preloaded = set(sys.modules)  # by site: an editable install's finder loads urllib\n"
        "from cnet.cli.main import main\n"
        "try:\n    main()\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = {'click', 'socket', 'urllib.parse', 'http.client', 'email', 'inspect', 'typing'}\n"
        "print(sorted(heavy & (set(sys.modules) - preloaded)))\n"
        "print(sorted(m for m in sys.modules if m.startswith('cnet.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "-H", daemon.host, "network", "connect", "n", "sb"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    assert out[-2] == "[]"
    modules = [
        "cnet.cli",
        "cnet.cli.client",
        "cnet.cli.fastpath",
        "cnet.cli.main",
        "cnet.cli.shared",
    ]
    assert out[-1] == str(modules)
    assert daemon.requests[0]["body"] == {"Container": "sb"}


@pytest.mark.parametrize(
    "text",
    ["", "plain", "a/b", "a b", "é€😀", "~._-", "%41", "?#&=+;,:@!$'()*[]", "\x00\x7f"],
)
@pytest.mark.parametrize("safe", ["", "/", "/:"])
def test_quote_is_urllib_quote(text: str, safe: str) -> None:
    assert client_module.quote(text, safe) == quote(text, safe)
    assert client_module.quote(text) == quote(text)


# --- start-up cost ------------------------------------------------------------------


def _imported_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stderr
    return {line.split("|")[-1].strip() for line in out.splitlines() if "|" in line}


def test_main_import_stays_lean() -> None:
    entry = _imported_by("import cnet.cli.main")
    assert "cnet.cli.main" in entry  # the measurement itself works
    assert not {"click", "json", "socket", "_socket", "cnet.cli.fastpath"} & entry
    modules = _imported_by("import cnet.cli.app")
    assert "cnet.cli.app" in modules
    heavy = {"http.client", "email", "json", "requests", "httpx", "urllib.request", "socket"}
    assert not heavy & modules
    # command modules load only when their command runs
    assert not {"cnet.cli.network", "cnet.cli.sandbox", "cnet.cli.system"} & modules


def test_help_lists_commands_without_importing_them() -> None:
    code = (
        "import sys\n"
        "from cnet.cli.main import main\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('cnet.cli.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    import re

    assert re.search(r"^\s+network\s+Manage networks\.", out, re.M)
    assert re.search(r"^\s+sandbox\s+Manage sandboxes", out, re.M)
    assert re.search(r"^\s+run\s+Create and run a new container", out, re.M)
    assert out.splitlines()[-1] == str(
        [f"cnet.cli.{m}" for m in ("app", "common", "fastpath", "lazy", "main", "shared")]
    )


def test_a_request_imports_no_http_client(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/networks", 200, [])
    code = (
        "import sys\n"
        "from cnet.cli.app import cli\n"
        f"try:\n    cli(['-H', {daemon.host!r}, 'network', 'ls'], prog_name='cnet')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('http.client' in sys.modules, 'email' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert out.splitlines()[-1] == "False False"
    assert daemon.requests[0]["path"] == "/networks"


def test_sandbox_exec_into_a_non_namespace_file(daemon: FakeDaemon, sockdir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("setns needs CAP_SYS_ADMIN")
    key = os.path.join(sockdir, "not-a-netns")
    Path(key).touch()
    daemon.route("GET", "/sandboxes/sb1", 200, {"Id": SB_ID, "Name": "sb1", "Key": key})
    result = run_subprocess("-H", daemon.host, "sandbox", "exec", "sb1", "--", "true")
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot enter network namespace {key} of sandbox sb1")
    assert "not a network namespace here" in result.stderr
    assert result.stderr.count("\n") == 1
