"""Shared pieces of the bench/ scripts.

- `Netns`: a throwaway network namespace (`cnet-b-<8hex>`), deleted on exit.
- `Daemon`: one cnetd inside its own throwaway namespace, with its own data-root,
  exec-root and socket; stopped (SIGTERM), `cnetd --cleanup`, namespace and temp
  dir removed on exit, even on Ctrl-C.
- `Api`: a small keep-alive HTTP/1.1 + JSON client over a unix socket (cnetd, dockerd).
- `Stats`, `Summary`: percentiles and the final table of figures, ratios and targets.
- `main_wrapper`: runs a bench's body with SIGTERM turned into KeyboardInterrupt so
  every `finally` runs; returns the process exit code.

Nothing here touches the root namespace's interfaces or firewall: daemons, bridges and
veths live in namespaces made here, and traffic stays inside them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NS_PREFIX = "cnet-b-"
#: Temp dirs carry no "cnet" in their name: the test harness's leak check looks for
#: mount points containing "cnet" and would count a concurrent bench's mounts as its own.
TMP_PREFIX = "cnb-"
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

for _d in ("/usr/sbin", "/sbin"):
    if _d not in os.environ.get("PATH", "").split(":"):
        os.environ["PATH"] = os.environ.get("PATH", "") + ":" + _d


# --------------------------------------------------------------------------- tools
def tool(name: str) -> str:
    """`cnet`/`cnetd` of the interpreter running the bench (its venv), else the repo's."""
    for cand in (Path(sys.executable).parent / name, REPO_ROOT / ".venv" / "bin" / name):
        if cand.exists():
            return str(cand)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: {name} not found (run `make setup`)")
    return found


def sh(*cmd: object, check: bool = True, timeout: float = 120,
       **kw: Any) -> subprocess.CompletedProcess:
    """Run a command and capture its text output; raise with stderr shown on failure."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"command failed (rc={proc.returncode}): "
                           f"{' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}")
    return proc


def in_ns(ns_path: str, *cmd: object, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command inside a network namespace (nsenter --net: shares our mount ns)."""
    return sh("nsenter", f"--net={ns_path}", *cmd, **kw)


IPERF3 = shutil.which("iperf3") or "/usr/bin/iperf3"


def iperf3_client(client_ns: str, server_ip: str, seconds: int, *extra: str) -> dict:
    """One `iperf3 -c -J` run inside `client_ns` (retried while the server is not
    listening yet): Gbit/s received, retransmits, sender/receiver CPU %."""
    for attempt in range(20):
        proc = in_ns(client_ns, IPERF3, "-c", server_ip, "-t", str(seconds), "-O", "1", "-J",
                     *extra, check=False, timeout=seconds + 30)
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            doc = {"error": proc.stdout + proc.stderr}
        if proc.returncode == 0 and "error" not in doc:
            end = doc["end"]
            return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                    "retr": end["sum_sent"].get("retransmits"),
                    "cpu_snd": end["cpu_utilization_percent"]["host_total"],
                    "cpu_rcv": end["cpu_utilization_percent"]["remote_total"]}
        if "connect" not in str(doc.get("error")) or attempt == 19:
            raise RuntimeError(f"iperf3 -c {server_ip} failed: {doc.get('error')}")
        time.sleep(0.1)
    raise AssertionError("unreachable")


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (network namespaces, netlink, nftables)")
    for t in ("ip", "nsenter"):
        if shutil.which(t) is None:
            raise SystemExit(f"bench: needs `{t}`")


def now_ms() -> float:
    return time.perf_counter() * 1000.0


def timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[float, Any]:
    """(milliseconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return (time.perf_counter() - t0) * 1000.0, out


def wall_ms(cmd: Sequence[object], env: dict | None = None, check: bool = True) -> float:
    """Wall time of one subprocess run in ms (output captured and discarded)."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, env=env, timeout=120)
    ms = (time.perf_counter() - t0) * 1000.0
    if check and proc.returncode != 0:
        raise RuntimeError(f"command failed (rc={proc.returncode}): "
                           f"{' '.join(map(str, cmd))}\n"
                           f"{proc.stdout.decode(errors='replace')}"
                           f"{proc.stderr.decode(errors='replace')}")
    return ms


def mktemp(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{tag}-", dir="/tmp"))


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Defer Ctrl-C/SIGTERM while tearing down, so cleanup is not cut in half."""
    pending: list[int] = []
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, lambda s, _f: pending.append(s))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            raise KeyboardInterrupt


# --------------------------------------------------------------------------- namespaces
class Netns:
    """A throwaway named network namespace, `cnet-b-<8hex>[-tag]`, with lo up."""

    def __init__(self, tag: str = ""):
        self.name = NS_PREFIX + secrets.token_hex(4) + (f"-{tag}" if tag else "")
        self.path = f"/run/netns/{self.name}"
        self.created = False

    def create(self) -> Netns:
        sh("ip", "netns", "add", self.name)
        self.created = True
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        return self

    def run(self, *cmd: object, **kw: Any) -> subprocess.CompletedProcess:
        return in_ns(self.path, *cmd, **kw)

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one (all of them ours)."""
        try:
            want = os.stat(self.path)
        except FileNotFoundError:
            return []
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                st = os.stat(f"/proc/{d}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                out.append(int(d))
        return out

    def delete(self) -> list[str]:
        errors: list[str] = []
        if not self.created:
            return errors
        for pid in self.pids():  # only processes we started can be in here
            errors.append(f"process {pid} still in {self.name}: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc = sh("ip", "netns", "del", self.name, check=False)
        if proc.returncode != 0:
            errors.append(f"ip netns del {self.name}: {proc.stderr.strip()}")
        self.created = False
        return errors

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        with no_interrupts():
            for e in self.delete():
                print(f"bench: cleanup: {e}", file=sys.stderr)


def count_links(ns_path: str, kind: str) -> int:
    out = in_ns(ns_path, "ip", "-o", "link", "show", "type", kind).stdout
    return sum(1 for line in out.splitlines() if line.strip())


# --------------------------------------------------------------------------- HTTP client
class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes):
        super().__init__(f"{method} {path}: {status} {body[:300].decode(errors='replace')}")
        self.status = status


class Api:
    """HTTP/1.1 + JSON over a unix socket, one keep-alive connection."""

    def __init__(self, sock_path: str, timeout: float = 120.0, prefix: str = ""):
        self.sock_path = sock_path
        self.timeout = timeout
        self.prefix = prefix  # e.g. "/v1.41" for dockerd
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            s.connect(self.sock_path)
            self._sock = s
            self._buf = b""
        return self._sock

    def _recv(self) -> bytes:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        return chunk

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            self._buf += self._recv()
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._recv()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self._read_until(b"\r\n")  # no trailers expected
                    break
                body += self._read_exact(size)
                self._read_exact(2)
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # read until close
            body = self._buf
            with contextlib.suppress(ConnectionResetError):
                while True:
                    body += self._recv()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        req = (f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: localhost\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
               ).encode() + payload
        for attempt in (0, 1):
            reused = self._sock is not None
            try:
                self._connect().sendall(req)
                status, _, data = self._response()
                return status, data
            except (ConnectionResetError, BrokenPipeError):
                self.close()
                if not reused or attempt:  # a fresh connection failing is a real failure
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send a request; the decoded JSON body on 2xx, else ApiError."""
        status, data = self.request(method, path, body)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, data)
        return json.loads(data) if data.strip() else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, {} if body is None else body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_api(sock_path: str, ping: str, alive: Callable[[], bool], what: str,
             timeout: float = 30.0) -> None:
    """Poll GET `ping` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"{what} exited during startup")
        if os.path.exists(sock_path):
            api = Api(sock_path, timeout=2)
            try:
                if api.request("GET", ping)[0] == 200:
                    return
            except OSError:
                pass
            finally:
                api.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> str | None:
    """SIGTERM, wait, SIGKILL; returns a problem description or None."""
    if proc.poll() is not None:
        return f"exited early (rc={proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return f"did not exit within {timeout:.0f}s of SIGTERM: killed"
    return None


# --------------------------------------------------------------------------- cnetd
class Daemon:
    """cnetd in a throwaway namespace; use as a context manager."""

    def __init__(self, args: Sequence[str] = ("--bridge", "none"), log_level: str = "warning",
                 launcher: Sequence[str] = (), env: dict[str, str] | None = None):
        """`launcher` replaces the cnetd executable at start (cleanup uses cnetd itself)."""
        self.ns = Netns()
        self.root = mktemp("cnetd")
        self.sock = str(self.root / "cnet.sock")
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.log_path = self.root / "cnetd.log"
        self.args = list(args)
        self.log_level = log_level
        self.cnetd = tool("cnetd")
        self.cnet = tool("cnet")
        self.launcher = list(launcher) or [self.cnetd]
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._api: Api | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.sock)
        return self._api

    def start(self) -> Daemon:
        self.ns.create()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.ns.path}", *self.launcher, "-H", self.host,
                 "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                 "--log-level", self.log_level, *self.args,
                 # never the shared default Docker plugin socket, unless asked for
                 *([] if any(a.startswith("--docker-plugin-socket") for a in self.args)
                   else ["--docker-plugin-socket", "none"])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=None if self.env is None else {**os.environ, **self.env},
                start_new_session=True,  # Ctrl-C reaches us, we stop it in order
            )
        proc = self.proc
        try:
            wait_api(self.sock, "/_ping", lambda: proc.poll() is None, "cnetd")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.logs()}") from None
        return self

    def cli(self, *args: str) -> list[str]:
        """argv of a `cnet -H <sock> ...` command."""
        return [self.cnet, "-H", self.host, *args]

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> list[str]:
        errors: list[str] = []
        if self._api is not None:
            self._api.close()
        if self.proc is not None:
            problem = stop_process(self.proc)
            if problem:
                errors.append(f"cnetd {problem}")
            self.proc = None
        if self.ns.created:
            proc = in_ns(self.ns.path, self.cnetd, "--cleanup", "--data-root", self.data_root,
                         "--exec-root", self.exec_root, check=False)
            if proc.returncode != 0:
                errors.append(f"cnetd --cleanup rc={proc.returncode}: "
                              f"{(proc.stdout + proc.stderr).strip()}")
        errors += self.ns.delete()
        if errors:
            tail = "\n".join(self.logs().splitlines()[-20:])
            if tail:
                errors.append(f"cnetd log tail:\n{tail}")
        shutil.rmtree(self.root, ignore_errors=True)
        return errors

    def __enter__(self) -> Daemon:
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        with no_interrupts():
            for e in self.close():
                print(f"bench: cleanup: {e}", file=sys.stderr)


# --------------------------------------------------------------------------- statistics
def percentile(samples: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty sample."""
    xs = sorted(samples)
    if not xs:
        raise ValueError("no samples")
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Stats:
    name: str
    samples: list[float] = field(default_factory=list)

    def add(self, ms: float) -> None:
        self.samples.append(ms)

    @property
    def n(self) -> int:
        return len(self.samples)

    def p(self, q: float) -> float:
        return percentile(self.samples, q)

    @property
    def p50(self) -> float:
        return self.p(50)

    def row(self) -> list[str]:
        s = self.samples
        return [self.name, str(len(s)), fmt(self.p(50)), fmt(self.p(90)), fmt(self.p(99)),
                fmt(max(s)), fmt(statistics.fmean(s))]

    def to_dict(self) -> dict:
        s = self.samples
        return {"n": len(s), "p50": self.p(50), "p90": self.p(90), "p99": self.p(99),
                "max": max(s), "mean": statistics.fmean(s)}


def fmt(ms: float) -> str:
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    print(line.format(*headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


def print_stats(title: str, stats: Sequence[Stats]) -> None:
    print(f"\n{title} (ms)")
    print_table(["operation", "n", "p50", "p90", "p99", "max", "mean"],
                [s.row() for s in stats if s.samples])


@dataclass
class Summary:
    """The closing table: each figure with its target and whether it is met."""

    bench: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def figure(self, name: str, value: float, unit: str = "ms",
               target: float | None = None, note: str = "") -> None:
        """A measured figure; with a target (upper bound) it is marked ok/MISSED."""
        shown = f"{value:.2f}x" if unit == "x" else f"{fmt(value)} {unit}".strip()
        if target is None:
            verdict, tgt = (note or "info"), ""
        else:
            verdict = "ok" if value <= target else "MISSED"
            tgt = f"<= {target:g}{'x' if unit == 'x' else ' ' + unit}"
        self.rows.append((name, shown, tgt, verdict))
        self.data[name] = {"value": value, "unit": unit, "target": target}

    def text(self, name: str, value: str, note: str = "") -> None:
        self.rows.append((name, value, "", note or "info"))
        self.data[name] = {"value": value}

    @property
    def missed(self) -> list[str]:
        return [r[0] for r in self.rows if r[3] == "MISSED"]

    def print(self) -> None:
        print(f"\n=== summary: {self.bench}")
        print_table(["figure", "measured", "target", "status"], self.rows)

    def save(self, extra: dict | None = None) -> Path | None:
        """Write bench/results/<bench>.json (git-ignored) for later comparison."""
        try:
            RESULTS_DIR.mkdir(exist_ok=True)
            path = RESULTS_DIR / f"{self.bench}.json"
            doc = {"bench": self.bench, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "host": os.uname().nodename, "kernel": os.uname().release,
                   "cpus": os.cpu_count(), "figures": self.data, **(extra or {})}
            path.write_text(json.dumps(doc, indent=2) + "\n")
            return path
        except OSError:
            return None


def phases_daemon(count: str, window: int, late_from: int,
                  match: str = "") -> tuple[dict[str, Any], Path]:
    """Daemon(**kw) arguments running cnetd under bench/_cnetd_phases.py, and its output."""
    print("--phases: cnetd runs with phase timers (slightly slower figures)")
    out = mktemp("phases") / "phases.json"
    atexit.register(shutil.rmtree, out.parent, True)
    kw = {"launcher": [sys.executable, str(BENCH_DIR / "_cnetd_phases.py"), str(out)],
          "env": {"CNB_COUNT": count, "CNB_WINDOW": str(window),
                  "CNB_LATE_FROM": str(late_from), "CNB_MATCH": match}}
    return kw, out


def print_phases(path: Path, handlers: Sequence[str], early: str, late: str) -> None:
    """Daemon-side ms per request, early vs late bucket, largest growth first."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"\nphases: no data ({exc})")
        return
    for handler in handlers:
        e_data, l_data = data.get(f"{handler} early", {}), data.get(f"{handler} late", {})
        calls_e = e_data.get(f"api {handler}", [0, 0])[1]
        calls_l = l_data.get(f"api {handler}", [0, 0])[1]
        if not calls_e or not calls_l:
            continue
        print(f"\ndaemon-side {handler}: ms per request with {early} ({calls_e} requests) "
              f"vs {late} ({calls_l} requests)")
        rows = []
        for name in sorted(set(e_data) | set(l_data)):
            e = e_data.get(name, [0.0, 0])
            lt = l_data.get(name, [0.0, 0])
            me, ml = e[0] / calls_e, lt[0] / calls_l
            if max(me, ml) < 0.02:
                continue
            rows.append((ml - me, [name, f"{lt[1] / calls_l:.1f}", f"{me:.3f}", f"{ml:.3f}",
                                   f"{ml - me:+.3f}"]))
        rows.sort(key=lambda r: -r[0])
        print_table(["phase (nested timers overlap)", "calls/req", "early", "late", "growth"],
                    [r[1] for r in rows])


def header(title: str, lines: Sequence[str] = ()) -> None:
    print(f"=== {title}")
    u = os.uname()
    print(f"host: {u.nodename}  kernel {u.release}  cpus {os.cpu_count()}  "
          f"python {sys.version.split()[0]}")
    for line in lines:
        print(line)
    sys.stdout.flush()


def main_wrapper(body: Callable[[], int]) -> int:
    """Run a bench body: SIGTERM behaves like Ctrl-C (cleanup runs), exit code 130."""
    def on_term(_s: int, _f: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    require_root()
    try:
        return body()
    except KeyboardInterrupt:
        print("\nbench: interrupted (cleaned up)", file=sys.stderr)
        return 130


def main() -> int:
    """`python bench/common.py` (and `make bench`): say what the benches will run."""
    print("bench/common.py: shared helpers, nothing to measure")
    for name in ("cnetd", "cnet"):
        try:
            print(f"  {name}: {tool(name)}")
        except SystemExit as exc:
            print(f"  {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
