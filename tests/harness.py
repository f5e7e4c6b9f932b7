"""Shared test harness: throwaway network namespaces, cnetd processes, probes, leak checks.

Everything here shells out to `ip`, `nsenter`, `ping`, `nc`, `nft` on purpose: tests must
observe the kernel independently of the daemon's own netlink code.

Naming: every namespace, temp dir and interface the harness makes carries
`cnet-t-<session><random>` (8 hex), where <session> is 4 hex digits fixed for one pytest
run. The leak checker uses that to ignore what *another* concurrent test session on the
same machine creates, and to clean up only what this session owns.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- basics

#: 4 hex digits identifying this test session (one per interpreter that imports us).
SESSION_ID = secrets.token_hex(2)
#: Exported so that every process a test spawns can be attributed to this session.
SESSION_ENV = "CNET_TEST_SESSION"
os.environ[SESSION_ENV] = SESSION_ID

PREFIX = "cnet-t-"
NETNS_DIR = Path("/run/netns")
#: Prefixes of things that other sessions/tools own and the leak check must ignore.
FOREIGN_MARKS = ("cnet-demo-", "cnet-b-")  # demo and bench namespaces

#: Where `cnet`/`cnetd` live: the bin dir of the interpreter running pytest (the venv's).
BIN_DIR = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    cand = BIN_DIR / name
    if cand.exists():
        return str(cand)
    cand = REPO_ROOT / ".venv" / "bin" / name
    if cand.exists():
        return str(cand)
    return shutil.which(name) or str(BIN_DIR / name)


CNET = _tool("cnet")
CNETD = _tool("cnetd")

# Make sure sbin tools are found even from a minimal PATH.
_path = os.environ.get("PATH", "")
for _d in ("/usr/sbin", "/sbin"):
    if _d not in _path.split(":"):
        _path = f"{_path}:{_d}" if _path else _d
os.environ["PATH"] = _path


def unique_name(prefix: str = PREFIX) -> str:
    """`cnet-t-<8hex>`: 4 hex of session id + 4 random hex."""
    return f"{prefix}{SESSION_ID}{secrets.token_hex(2)}"


def short_ifname(tag: str = "t") -> str:
    """A random interface name that fits IFNAMSIZ (15)."""
    return f"ct{tag}{secrets.token_hex(4)}"[:15]


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture text output; on failure raise with stdout/stderr shown."""
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        raise CommandError(proc)
    return proc


class CommandError(subprocess.CalledProcessError):
    def __init__(self, proc: subprocess.CompletedProcess):
        super().__init__(proc.returncode, proc.args, proc.stdout, proc.stderr)

    def __str__(self) -> str:
        args = " ".join(str(a) for a in self.cmd)
        return (
            f"command failed (rc={self.returncode}): {args}\n"
            f"--- stdout ---\n{self.stdout or ''}--- stderr ---\n{self.stderr or ''}"
        )


def requirements_missing() -> str | None:
    """Why integration tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, netlink, nftables)"
    for tool in ("ip", "nft", "nsenter", "ping"):
        if shutil.which(tool) is None:
            return f"integration tests need `{tool}` (run scripts/setup.sh)"
    return None


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll `pred()` until truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- netns


def netns_path(target) -> str:
    """Resolve a Netns, a /run/netns name, a netns file path, or anything with `.path`."""
    if isinstance(target, Netns | Outside):
        return target.path
    if hasattr(target, "path"):
        return str(target.path)
    s = str(target)
    return s if s.startswith("/") else str(NETNS_DIR / s)


class Netns:
    """A named network namespace (`ip netns add`), loopback up.

    Use as a context manager, or call delete(). `run()` goes through `ip netns exec`
    (fine for test commands; it unshares the mount namespace, so never start cnetd with it).
    """

    def __init__(self, name: str | None = None, create: bool = True):
        self.name = name or unique_name()
        self.path = str(NETNS_DIR / self.name)
        if create:
            self.create()

    def create(self) -> Netns:
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
        except Exception:
            self.delete()
            raise
        return self

    def exists(self) -> bool:
        return Path(self.path).exists()

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw):
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout, **kw)

    def ip(self, *args: str, check: bool = True):
        """`ip -n NS ...`"""
        return sh("ip", "-n", self.name, *args, check=check)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        """Start a long-running process inside (nsenter --net; shares our mount ns)."""
        return subprocess.Popen(["nsenter", f"--net={self.path}", *map(str, cmd)], **kw)

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def delete(self) -> None:
        netns_delete(self.name)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


def netns_create(name: str | None = None) -> Netns:
    return Netns(name)


def run(ns, *cmd: str, check: bool = True, timeout: float = 60, **kw):
    """Run a command inside namespace `ns` (Netns or name) via `ip netns exec`."""
    name = ns.name if isinstance(ns, Netns) else str(ns)
    return sh("ip", "netns", "exec", name, *cmd, check=check, timeout=timeout, **kw)


def kill_pids(pids: Iterable[int], timeout: float = 5.0) -> None:
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        # A zombie counts as gone (_alive); never reap here: a child of ours belongs to its
        # Popen, whose wait() would otherwise find nothing and report exit status 0.
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def netns_delete(ns) -> None:
    """Kill whatever still runs in the namespace, then `ip netns del` it (idempotent)."""
    name = ns.name if isinstance(ns, Netns) else str(ns)
    if not (NETNS_DIR / name).exists():
        return
    out = sh("ip", "netns", "pids", name, check=False).stdout
    kill_pids(int(p) for p in out.split() if p.isdigit())
    sh("ip", "netns", "del", name, check=False)
    if (NETNS_DIR / name).exists():  # still mounted? be blunt
        sh("umount", "-l", str(NETNS_DIR / name), check=False)
        with contextlib.suppress(OSError):
            (NETNS_DIR / name).unlink()


# --------------------------------------------------------------------------- probes


def nsexec(target, *cmd: str, check: bool = False, timeout: float = 30, **kw):
    """Run a command in the network namespace `target` (Netns, name, path) via nsenter."""
    return sh("nsenter", f"--net={netns_path(target)}", *cmd, check=check, timeout=timeout, **kw)


def ping(target, ip: str, count: int = 1, timeout: float = 1) -> bool:
    """True if `ip` answers ICMP echo from inside `target` (a netns path, Netns, or name)."""
    deadline = max(1, int(round(timeout)))
    proc = nsexec(
        target, "ping", "-n", "-q", "-c", str(count), "-W", str(deadline), ip,
        timeout=count * deadline + 10,
    )
    return proc.returncode == 0


def wait_ping(target, ip: str, timeout: float = 10) -> bool:
    """Ping until one echo succeeds (e.g. while DAD/ARP settles); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(target, ip, count=1, timeout=1):
            return True
    return False


def tcp_connect(target, ip: str, port: int, timeout: float = 2) -> bool:
    """True if a TCP connection to ip:port succeeds from inside `target`."""
    proc = nsexec(
        target, "nc", "-z", "-n", "-w", str(max(1, int(round(timeout)))), ip, str(port),
        timeout=timeout + 10,
    )
    return proc.returncode == 0


def tcp_request(target, ip: str, port: int, data: bytes = b"", timeout: float = 3) -> bytes:
    """Connect from inside `target`, send `data`, return whatever the peer sends back."""
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(({ip!r},{int(port)}),timeout={float(timeout)})\n"
        "s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)\n"
        "out=b''\n"
        "while True:\n"
        "    b=s.recv(65536)\n"
        "    if not b: break\n"
        "    out+=b\n"
        "sys.stdout.buffer.write(out)\n"
    )
    proc = subprocess.run(
        ["nsenter", f"--net={netns_path(target)}", sys.executable, "-c", code],
        input=data, capture_output=True, timeout=timeout + 10,
    )
    if proc.returncode != 0:
        raise ConnectionError(proc.stderr.decode(errors="replace").strip().splitlines()[-1:])
    return proc.stdout


class TcpServer:
    """A tiny TCP server inside a namespace: every connection gets `reply` then close.

    With reply=None it echoes what the client sent. Use as a context manager.
    """

    def __init__(self, target, port: int, reply: bytes | None = b"hello\n", host: str = "::"):
        self.target, self.port, self.reply, self.host = target, port, reply, host
        self.proc: subprocess.Popen | None = None

    def start(self) -> TcpServer:
        code = (
            "import socket,sys\n"
            f"reply={self.reply!r}\n"
            f"s=socket.socket(socket.AF_INET6 if ':' in {self.host!r} else socket.AF_INET)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "if s.family == socket.AF_INET6:\n"
            "    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
            f"s.bind(({self.host!r},{int(self.port)})); s.listen(64)\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    c,_=s.accept()\n"
            "    try:\n"
            "        c.settimeout(2)\n"
            "        if reply is None:\n"
            "            buf=b''\n"
            "            while True:\n"
            "                b=c.recv(65536)\n"
            "                if not b: break\n"
            "                buf+=b\n"
            "            c.sendall(buf)\n"
            "        else:\n"
            "            c.sendall(reply)\n"
            "    except OSError: pass\n"
            "    finally: c.close()\n"
        )
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns_path(self.target)}", sys.executable, "-u", "-c", code],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"TcpServer failed to start: {line!r} {err}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait(timeout=10)
            for f in (self.proc.stdout, self.proc.stderr):
                if f:
                    f.close()

    def __enter__(self) -> TcpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- outside


@dataclass
class Outside:
    """A namespace standing for "the outside world", wired to a host namespace by a veth.

    host side: `host_if` with `host_ip`/prefix in the host namespace;
    outside side: `outside_if` with `outside_ip`/prefix in `ns`.
    """

    ns: Netns
    host: str  # host netns name
    host_if: str
    outside_if: str
    host_ip: str = "192.0.2.1"
    outside_ip: str = "192.0.2.2"
    prefixlen: int = 24

    @property
    def path(self) -> str:
        return self.ns.path

    @property
    def name(self) -> str:
        return self.ns.name

    def run(self, *cmd: str, check: bool = True, **kw):
        return self.ns.run(*cmd, check=check, **kw)

    def delete(self) -> None:
        # Deleting the namespace destroys the veth pair (both ends).
        self.ns.delete()

    def __enter__(self) -> Outside:
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


def wire_outside(
    host_ns,
    host_ip: str = "192.0.2.1",
    outside_ip: str = "192.0.2.2",
    prefixlen: int = 24,
    default_route: bool = False,
) -> Outside:
    """Create an `outside` namespace linked to `host_ns` (Netns or name) by a veth pair.

    With default_route=True the outside namespace routes everything via host_ip
    (then un-NATed replies to sandbox subnets come back; leave it False to test masquerade).
    """
    host = host_ns.name if isinstance(host_ns, Netns) else str(host_ns)
    ns = Netns()
    tag = secrets.token_hex(4)
    host_if, outside_if = f"cth{tag}", f"cto{tag}"
    try:
        sh("ip", "-n", host, "link", "add", host_if, "type", "veth",
           "peer", "name", outside_if, "netns", ns.name)
        sh("ip", "-n", host, "addr", "add", f"{host_ip}/{prefixlen}", "dev", host_if)
        sh("ip", "-n", host, "link", "set", host_if, "up")
        sh("ip", "-n", ns.name, "addr", "add", f"{outside_ip}/{prefixlen}", "dev", outside_if)
        sh("ip", "-n", ns.name, "link", "set", outside_if, "up")
        if default_route:
            sh("ip", "-n", ns.name, "route", "add", "default", "via", host_ip)
    except Exception:
        ns.delete()
        raise
    return Outside(ns, host, host_if, outside_if, host_ip, outside_ip, prefixlen)


# --------------------------------------------------------------------------- daemon


class DaemonError(RuntimeError):
    pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


@dataclass
class ApiResponse:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)

    def json(self):
        return json.loads(self.body) if self.body else None


class Daemon:
    """One cnetd process inside a host namespace, with its own data/exec roots and socket.

    cnetd is started with `nsenter --net=<host ns>` (never `ip netns exec`: that would put
    it in a private mount namespace, hiding the sandbox bind mounts from us).
    """

    def __init__(
        self,
        host_ns,
        *,
        log_level: str = "debug",
        args: Sequence[str] = (),
        root: str | Path | None = None,
        name: str | None = None,
        binary: str | Path | None = None,
    ):
        self.host_ns = host_ns
        self.netns_path = netns_path(host_ns)
        self.name = name or (host_ns.name if isinstance(host_ns, Netns) else "cnetd")
        base = Path(root) if root else Path(_tmpdir_base())
        self.root = Path(tempfile.mkdtemp(prefix=unique_name() + "-", dir=base))
        self.sock = self.root / "cnet.sock"
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.log_path = self.root / "cnetd.log"
        self.log_level = log_level
        self.binary = str(binary or CNETD)
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.expect_dead = False
        self.returncodes: list[int] = []
        self._final_log: str | None = None
        self._closed = False
        self.daemon_id: str | None = None

    # -- lifecycle --------------------------------------------------------
    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        args = list(self.args)
        # Many daemons run side by side: none may take the shared default Docker plugin
        # socket (/run/docker/plugins/cnet.sock) unless a test gives its own path.
        if not any(a.startswith("--docker-plugin-socket") for a in args):
            args += ["--docker-plugin-socket", "none"]
        return [
            "nsenter", f"--net={self.netns_path}", self.binary,
            "-H", self.host,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--log-level", self.log_level,
            *args,
        ]

    def start(self, timeout: float = 20) -> Daemon:
        if self.running:
            raise DaemonError("cnetd already running")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== start: {' '.join(self.command())}\n".encode())
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        self.expect_dead = False
        try:
            self.wait_ready(timeout)
        except Exception:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.daemon_id = read_daemon_id(self.data_root)
        if self.daemon_id:
            DAEMON_IDS.add(self.daemon_id)  # its cgroups (/cnet/<id>) are the session's
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise DaemonError(f"cnetd exited during startup (rc={rc})\n{self.logs()}")
            if self.sock.exists():
                try:
                    r = self.api("GET", "/_ping", timeout=2)
                except (OSError, http.client.HTTPException):
                    r = None
                if r is not None:
                    if r.status == 200:
                        return
                    # No /_ping route? then a working `cnet info` is good enough.
                    if self.cli("info", check=False, timeout=10).returncode == 0:
                        return
            if time.monotonic() >= deadline:
                raise DaemonError(f"cnetd not ready after {timeout}s\n{self.logs()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, wait `timeout`, then SIGKILL. Returns the exit code.

        Raises DaemonError if SIGKILL was needed, if the daemon had died unexpectedly, or
        if it answered SIGTERM with an exit code other than 0 (or death by SIGTERM).
        """
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        died_early = proc.poll() is not None
        killed = False
        if not died_early:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
        rc = proc.returncode
        self.returncodes.append(rc)
        self._log_note(f"=== stopped: rc={rc}{' (SIGKILL after timeout)' if killed else ''}")
        if killed:
            raise DaemonError(f"cnetd did not exit within {timeout}s of SIGTERM\n{self.logs()}")
        if died_early and not self.expect_dead:
            raise DaemonError(f"cnetd had exited unexpectedly (rc={rc})\n{self.logs()}")
        if not died_early and rc not in (0, -signal.SIGTERM):
            raise DaemonError(f"cnetd exited with rc={rc} on SIGTERM\n{self.logs()}")
        return rc

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Kill the daemon abruptly (crash tests); a later stop() will not complain."""
        assert self.proc is not None
        self.expect_dead = True
        self.proc.send_signal(sig)
        rc = self.proc.wait(10)
        self.returncodes.append(rc)
        self.proc = None
        self._log_note(f"=== killed with signal {sig}: rc={rc}")
        return rc

    def restart(self, timeout: float = 20) -> Daemon:
        self.stop()
        return self.start(timeout)

    def cleanup(self, check: bool = True) -> subprocess.CompletedProcess:
        """`cnetd --cleanup`: delete every bit of kernel state this daemon owns."""
        cmd = [
            "nsenter", f"--net={self.netns_path}", self.binary, "--cleanup",
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
        ]
        proc = sh(*cmd, check=False, timeout=120)
        self._log_note(
            f"=== cleanup rc={proc.returncode}\n{proc.stdout}{proc.stderr}".rstrip()
        )
        if check and proc.returncode != 0:
            raise CommandError(proc)
        return proc

    def close(self) -> None:
        """Remove the temp dir (after stop/cleanup). Keeps the log text for logs()."""
        if self._closed:
            return
        self._final_log = self.logs()
        self._closed = True
        shutil.rmtree(self.root, ignore_errors=True)

    # -- talking to it ------------------------------------------------------
    def api(self, method: str, path: str, body=None, timeout: float = 30) -> ApiResponse:
        conn = _UnixHTTPConnection(str(self.sock), timeout=timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return ApiResponse(resp.status, resp.read(), dict(resp.getheaders()))
        finally:
            conn.close()

    def cli(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run `cnet -H unix://<sock> ARGS...`; raise CommandError (with stderr) if check."""
        full_env = dict(os.environ)
        full_env.pop("CNET_HOST", None)
        if env:
            full_env.update(env)
        return sh(CNET, "-H", self.host, *map(str, args), check=check, timeout=timeout,
                  input=input, env=full_env)

    def cli_json(self, *args: str, **kw):
        return json.loads(self.cli(*args, **kw).stdout)

    def cli_error(self, *args: str, **kw) -> str:
        """Run a command that must fail; return its stderr (asserts a one-line `Error: `)."""
        proc = self.cli(*args, check=False, **kw)
        assert proc.returncode != 0, f"expected failure, got rc=0: {proc.stdout}"
        err = proc.stderr.strip()
        assert err.startswith("Error:"), f"stderr is not an `Error: ...` line: {err!r}"
        return err

    # -- sandbox shortcuts --------------------------------------------------
    def sandbox_inspect(self, name: str) -> dict:
        return self.cli_json("sandbox", "inspect", name)[0]

    def sandbox_key(self, name: str) -> str:
        """The sandbox's netns path (usable with ping()/tcp_connect()/nsexec())."""
        return self.sandbox_inspect(name)["Key"]

    def sandbox_ip(self, name: str, network: str, v6: bool = False) -> str:
        ep = self.sandbox_inspect(name)["Networks"][network]
        return ep["IPv6Address" if v6 else "IPAddress"].split("/")[0]

    def run_in_host(self, *cmd: str, check: bool = True, **kw):
        """Run a command in this daemon's host namespace."""
        return nsexec(self.netns_path, *cmd, check=check, **kw)

    # -- logs ---------------------------------------------------------------
    def logs(self) -> str:
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_note(self, text: str) -> None:
        with contextlib.suppress(OSError), open(self.log_path, "a") as f:
            f.write(text + "\n")

    def __repr__(self) -> str:
        return f"Daemon({self.name!r}, sock={str(self.sock)!r}, pid={self.pid})"


def read_daemon_id(data_root: str | Path) -> str | None:
    """The daemon id cnetd keeps in its store (it names the cgroup parent /cnet/<id>)."""
    import sqlite3

    db = Path(data_root) / "cnet.db"
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT value FROM kv WHERE key = 'daemon/identity'").fetchone()
        finally:
            con.close()
        return json.loads(row[0])["id"] if row else None
    except (sqlite3.Error, ValueError, KeyError, TypeError):
        return None


def _tmpdir_base() -> str:
    base = tempfile.gettempdir()
    # unix socket paths are limited to 108 bytes
    return base if len(base) < 50 else "/tmp"


#: item.stash key: daemons used by a test, so failure reports can include their logs.
DAEMONS_KEY = pytest.StashKey[list]()
#: item.stash key: set by the root conftest once any phase of the test failed.
FAILED_KEY = pytest.StashKey[bool]()


def has_failed(request) -> bool:
    """True if setup or call of the requesting test failed (for fixture teardowns)."""
    return request.node.stash.get(FAILED_KEY, False)


def register_daemon(request, daemon: Daemon) -> None:
    request.node.stash.setdefault(DAEMONS_KEY, []).append(daemon)


def shutdown_daemon(daemon: Daemon) -> list[str]:
    """Best-effort teardown: stop, cleanup, close. Returns error strings (empty = ok)."""
    errors: list[str] = []
    try:
        daemon.stop()
    except Exception as e:
        errors.append(f"{daemon.name}: stop: {e}")
    if Path(daemon.binary).exists():
        try:
            daemon.cleanup()
        except Exception as e:
            errors.append(f"{daemon.name}: cleanup: {e}")
    daemon.close()
    return errors


def fail_on_teardown_errors(errors: Sequence[str]) -> None:
    if errors:
        pytest.fail("daemon teardown failed:\n" + "\n".join(errors), pytrace=False)


@contextlib.contextmanager
def running_daemon(request, ns, **kw):
    """A started Daemon in `ns` (kwargs to Daemon), its log attached to a failing
    test's report; shut down afterwards, a failed teardown failing the test."""
    d = Daemon(ns, **kw)
    register_daemon(request, d)
    try:
        d.start()
    except Exception:
        shutdown_daemon(d)
        raise
    yield d
    fail_on_teardown_errors(shutdown_daemon(d))


# --------------------------------------------------------------------------- leak check
#
# Attribution. Several pytest sessions (and hand-run experiments) may share a machine.
# - cnetd processes are ours if they descend from this interpreter or carry our
#   CNET_TEST_SESSION in their environment: exact.
# - Namespaces and mounts are "marked" if their name/path contains cnet-t-<our session>.
#   Unmarked new ones (a test's own `cnet-foo-*` names) count as leaks only while nothing
#   else is active: no other test session (see register_session) and no cnetd that is not
#   ours (a demo, a bench, a hand-run daemon); otherwise they are only reported as ignored.
#   Cleanup removes marked ones only (and anything under a namespace it deletes).
# - A new `cnet` nft table or `cnet:` link alias in the root namespace is a leak and is
#   removed, unless a cnetd that is not ours runs in that namespace (then: a warning).
# - Container runtime: shim processes (`cnet.runtime.shim`) whose command line names one
#   of our exec roots (marked paths), and cgroups /sys/fs/cgroup/*/cnet/<daemon-id>[/<id>]
#   of daemons this session started (DAEMON_IDS): exact. Cleanup kills the shims and the
#   processes left in those cgroups, then removes the cgroups.

SESSIONS_DIR = Path("/run/cnet-test-sessions")
#: daemon ids of the cnetd processes this session started (Daemon.start records them)
DAEMON_IDS: set[str] = set()
CGROUP_ROOT = Path("/sys/fs/cgroup")


def register_session() -> None:
    """Announce this test session (so concurrent sessions stay lenient about unmarked state)."""
    with contextlib.suppress(OSError):
        SESSIONS_DIR.mkdir(parents=True, exist_ok=True)
        (SESSIONS_DIR / str(os.getpid())).write_text(SESSION_ID)


def unregister_session() -> None:
    with contextlib.suppress(OSError):
        (SESSIONS_DIR / str(os.getpid())).unlink()


def other_sessions_alive() -> bool:
    alive = False
    with contextlib.suppress(OSError):
        for f in SESSIONS_DIR.iterdir():
            if not f.name.isdigit() or int(f.name) == os.getpid():
                continue
            if _alive(int(f.name)):
                alive = True
            else:
                with contextlib.suppress(OSError):
                    f.unlink()  # a crashed session's
    return alive


@dataclass
class Snapshot:
    netns: set[str]
    mounts: collections.Counter
    cnetd: dict[int, str]  # pid -> cmdline (only processes attributable to this session)
    nft_tables: set[str]  # "family name"
    links: dict[str, str]  # "ifindex:name" -> alias
    foreign_cnetd: bool = False  # a cnetd not ours was running (concurrent activity)
    shims: dict[int, str] = field(default_factory=dict)  # pid -> cmdline (our exec roots)
    cgroups: set[str] = field(default_factory=set)  # our daemons' cgroup directories


def _ours(text: str) -> bool:
    """False for things that carry another session's / tool's mark."""
    if any(m in text for m in FOREIGN_MARKS):
        return False
    i = text.find(PREFIX)
    while i != -1:
        sess = text[i + len(PREFIX): i + len(PREFIX) + 4]
        if len(sess) == 4 and sess != SESSION_ID:
            return False
        i = text.find(PREFIX, i + 1)
    return True


def _marked(text: str) -> bool:
    return PREFIX + SESSION_ID in text and _ours(text)


def _list_netns() -> set[str]:
    try:
        return {p.name for p in NETNS_DIR.iterdir() if p.name.startswith("cnet-")}
    except FileNotFoundError:
        return set()


def _unescape_mount(s: str) -> str:
    return (s.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def _list_mounts() -> collections.Counter:
    c: collections.Counter = collections.Counter()
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                mp = _unescape_mount(parts[1])
                if "cnet" in mp:
                    c[mp] += 1
    return c


def _proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _is_cnetd(argv: list[str]) -> bool:
    if not argv:
        return False
    heads = [os.path.basename(a) for a in argv[:2]]
    if "cnetd" in heads:
        return True
    # python -m cnet.daemon[.main]
    return "-m" in argv[:3] and any(a.startswith("cnet.daemon") for a in argv[:4])


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _descends_from_us(pid: int) -> bool:
    me = os.getpid()
    for _ in range(64):
        pid = _ppid(pid)
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def _has_our_session(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return f"{SESSION_ENV}={SESSION_ID}".encode() in env


def _all_cnetd() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and _is_cnetd(_proc_cmdline(int(d)))]


def _scan_cnetd() -> tuple[dict[int, str], bool]:
    """({pid: cmdline} of our cnetd processes, whether any cnetd not ours runs)."""
    ours, foreign = {}, False
    for pid in _all_cnetd():
        if _descends_from_us(pid) or _has_our_session(pid):
            ours[pid] = " ".join(_proc_cmdline(pid))
        else:
            foreign = True
    return ours, foreign


def _list_cnetd() -> dict[int, str]:
    return _scan_cnetd()[0]


def _foreign_cnetd_here() -> list[int]:
    """cnetd processes that are not ours but run in our network namespace."""
    try:
        here = os.readlink("/proc/thread-self/ns/net")
    except OSError:
        return []
    out = []
    for pid in _all_cnetd():
        if _descends_from_us(pid) or _has_our_session(pid):
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/net") == here:
                out.append(pid)
    return out


def _list_shims() -> dict[int, str]:
    """Container shims (`python -m cnet.runtime.shim ...`) serving this session's daemons."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        argv = _proc_cmdline(int(d))
        if "cnet.runtime.shim" not in argv:
            continue
        cmd = " ".join(argv)
        if _marked(cmd) or _has_our_session(int(d)):
            out[int(d)] = cmd
    return out


def _list_cgroups() -> set[str]:
    """/sys/fs/cgroup/<controller>/cnet/<daemon-id> and the container cgroups below it."""
    out: set[str] = set()
    for did in DAEMON_IDS:
        for top in CGROUP_ROOT.glob(f"*/cnet/{did}"):
            out.add(str(top))
            for dirpath, _, _ in os.walk(top):
                out.add(dirpath)
    return out


def _remove_cgroup(path: str) -> None:
    """Kill what runs in `path` (and below), then rmdir it deepest first."""
    dirs = sorted((dp for dp, _, _ in os.walk(path)), key=len, reverse=True)
    for dp in dirs:
        with contextlib.suppress(OSError), open(os.path.join(dp, "cgroup.procs")) as f:
            kill_pids(int(p) for p in f.read().split())
    for dp in dirs:
        for _ in range(50):
            try:
                os.rmdir(dp)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
        else:
            os.rmdir(dp)  # raise the error


_nft_ctx = None


def _list_nft_tables() -> set[str]:
    """Tables named `cnet` (any family) in our network namespace."""
    global _nft_ctx
    text = None
    if os.geteuid() != 0:
        return set()
    try:
        if _nft_ctx is None:
            import nftables  # Debian's python3-nftables, via --system-site-packages

            _nft_ctx = nftables.Nftables()
        rc, text, _ = _nft_ctx.cmd("list tables")
        if rc != 0:
            text = None
    except Exception:  # binding missing: fall back to the CLI
        _nft_ctx = False
    if text is None and _nft_ctx is False and shutil.which("nft"):
        proc = sh("nft", "list", "tables", check=False)
        text = proc.stdout if proc.returncode == 0 else ""
    tables = set()
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2] == "cnet":
            tables.add(f"{parts[1]} {parts[2]}")
    return tables


def _list_cnet_links() -> dict[str, str]:
    """Links in our netns whose alias starts with `cnet:`, as {"idx:name": alias}."""
    proc = sh("ip", "-o", "link", "show", check=False)
    links = {}
    for line in proc.stdout.splitlines():
        if "alias cnet:" not in line:
            continue
        idx, name = line.split(":", 2)[:2]
        name = name.strip().split("@", 1)[0]
        alias = line.split("alias ", 1)[1].split("\\", 1)[0].strip()
        links[f"{idx.strip()}:{name}"] = alias
    return links


def snapshot() -> Snapshot:
    cnetd, foreign = _scan_cnetd()
    return Snapshot(
        netns=_list_netns(),
        mounts=_list_mounts(),
        cnetd=cnetd,
        nft_tables=_list_nft_tables(),
        links=_list_cnet_links(),
        foreign_cnetd=foreign,
        shims=_list_shims(),
        cgroups=_list_cgroups(),
    )


@dataclass
class Leaks:
    netns: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    cnetd: dict[int, str] = field(default_factory=dict)
    nft_tables: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    shims: dict[int, str] = field(default_factory=dict)
    cgroups: list[str] = field(default_factory=list)
    #: new state not attributable to this test (concurrent activity): warn, don't fail
    ignored: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.netns or self.mounts or self.cnetd or self.nft_tables or self.links
                    or self.shims or self.cgroups)

    def describe(self) -> str:
        def keep(x: str) -> str:
            return "" if _marked(x) else "  [left in place: not provably ours]"

        lines = []
        lines += [f"  netns /run/netns/{n}{keep(n)}" for n in self.netns]
        lines += [f"  mount {m}{keep(m)}" for m in self.mounts]
        lines += [f"  cnetd process pid={p}: {c}" for p, c in self.cnetd.items()]
        lines += [f"  nft table {t} (root netns)" for t in self.nft_tables]
        lines += [f"  link {k.split(':', 1)[1]} alias {a} (root netns)"
                  for k, a in self.links.items()]
        lines += [f"  shim process pid={p}: {c}" for p, c in self.shims.items()]
        lines += [f"  cgroup {c}" for c in self.cgroups]
        return "\n".join(lines)


def find_leaks(before: Snapshot, after: Snapshot | None = None,
               strict: bool | None = None) -> Leaks:
    """What exists in `after` (default: now) that did not in `before` and is ours.

    strict (default: no concurrent activity, see above) also counts unmarked namespaces and
    mounts.
    """
    after = after or snapshot()
    if strict is None:
        strict = not (before.foreign_cnetd or after.foreign_cnetd or other_sessions_alive())
    leaks = Leaks()

    def sort(items, what):
        for x in items:
            if not _ours(x):
                continue
            if strict or _marked(x):
                yield x
            else:
                leaks.ignored.append(f"{what} {x}")

    leaks.netns = sorted(sort(after.netns - before.netns, "netns"))
    new_mounts = after.mounts - before.mounts
    leaks.mounts = sorted(sort(new_mounts.elements(), "mount"))
    leaks.cnetd = {p: c for p, c in after.cnetd.items()
                   if p not in before.cnetd or before.cnetd[p] != c}
    leaks.shims = {p: c for p, c in after.shims.items()
                   if p not in before.shims or before.shims[p] != c}
    leaks.cgroups = sorted(after.cgroups - before.cgroups)
    nft = sorted(after.nft_tables - before.nft_tables)
    links = {k: a for k, a in after.links.items() if k not in before.links}
    if nft or links:
        foreign = _foreign_cnetd_here()
        if foreign:
            leaks.ignored += [f"nft table {t}" for t in nft] + [
                f"link {k.split(':', 1)[1]} alias {a}" for k, a in links.items()]
            leaks.ignored[-1] += f" (cnetd pid {foreign} not ours runs in this netns)"
        else:
            leaks.nft_tables, leaks.links = nft, links
    return leaks


def clean_leaks(leaks: Leaks) -> list[str]:
    """Remove what find_leaks() reported and is provably ours. Returns errors (never raises)."""
    errors: list[str] = []

    def attempt(what, fn, *a):
        try:
            fn(*a)
        except Exception as e:
            errors.append(f"{what}: {e}")

    # processes first: they may hold mounts and namespaces
    attempt("kill cnetd", kill_pids, list(leaks.cnetd))
    attempt("kill shims", kill_pids, list(leaks.shims))
    for cg in sorted(leaks.cgroups, key=len):  # a top first: it takes its children along
        if os.path.isdir(cg):
            attempt(f"cgroup {cg}", _remove_cgroup, cg)
    for n in leaks.netns:
        if _marked(n):
            attempt(f"netns {n}", netns_delete, n)
    current = _list_mounts()
    for m in sorted({m for m in leaks.mounts if _marked(m)}, key=len, reverse=True):
        for _ in range(current.get(m, 0)):  # deepest first, every stacked mount
            sh("umount", "-l", m, check=False)
    for t in leaks.nft_tables:
        attempt(f"nft {t}", sh, "nft", "delete", "table", *t.split())
    for k in leaks.links:
        attempt(f"link {k}", sh, "ip", "link", "del", k.split(":", 1)[1])
    # temp dirs of ours that held leaked mounts
    for m in leaks.mounts:
        top = _our_tmp_top(m)
        if top:
            shutil.rmtree(top, ignore_errors=True)
    return errors


def _our_tmp_top(path: str) -> str | None:
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent.name.startswith(PREFIX + SESSION_ID) and parent.parent != NETNS_DIR:
            return str(parent)
    return None
