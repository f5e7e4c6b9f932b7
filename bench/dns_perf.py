"""dnsperf against cnet's embedded DNS (127.0.0.11), dnsmasq, Docker's and aardvark-dns.

Issue 4's benchmark (`bench/dns.sh` runs this): every anchor is measured in the same run.

dnsperf (Debian `dnsperf`) is a host binary run with `nsenter --net=` inside the asking
namespace; if it is missing this script runs `apt-get install -y dnsperf` (and says so),
and if that fails it prints "anchor not installed" and measures nothing.

cnet: one cnetd in a throwaway namespace (bench/common.py `Daemon`) started with `--dns
198.51.100.53`, an address put on the lo of that namespace where a dnsmasq *upstream*
answers `fN.fwd.test`; the busybox image of scripts/build-busybox-image.sh; a bridge
network `benchnet`; containers c1..cN (`cnet run -d --name cK --network benchnet
--network-alias svcK busybox sleep 3600`) and a target `tgt`. dnsperf runs inside the
target's namespace (NetworkSettings.SandboxKey of `cnet inspect`) against 127.0.0.11 with
a query file of the local names (cK, svcK, cK.benchnet, tgt: A queries, cycling), then a
second file of forwarded names (fK.fwd.test) through cnet's forwarder, and the upstream
asked directly from the same namespace (what the forwarder could reach at most).

Anchors, same run:
- dnsmasq serving the same names and addresses (`--host-record`, TTL 600 like cnet's
  answers, `--cache-size=10000`), alone in its own throwaway namespace, listening on
  127.0.0.11 of its lo: dnsperf from inside that namespace, over loopback as for cnet.
  cnet and dnsmasq runs alternate (--rounds); the medians are compared.
- Docker's embedded DNS (bench/anchors.py `Docker`, when dockerd is installed): the same
  image, network, names and aliases, containers run with `--dns 198.51.100.53` (an
  upstream dnsmasq on the lo of dockerd's namespace, so that nothing leaves it); dnsperf in
  the target's SandboxKey against 127.0.0.11:53 (Docker DNATs it to its resolver's port).
- aardvark-dns (podman's, when installed): its config dir describes `benchnet` with the
  same names; it listens on the gateway address put on the lo of its own namespace, and
  dnsperf asks from the target's address (aardvark answers by the asker's network).

Every answer is checked before any figure (dig, each name against its address) and every
dnsperf run must get NOERROR for all its answers. Figures per target: qps (no -v, the
headline), dnsperf's average and stddev latency, the server process's CPU time during
the run (% of one core, and microseconds per answer: on 2 cores dnsperf itself needs the
rest, so a server that costs more per answer leaves the client less), then p50/p99 from
dnsperf -v per-query lines in two shorter runs: saturated (same parameters; its qps is
shown) and at a fixed rate every server sustains (`--rate`), where latency is service
time rather than queueing. `--sweep` first tries several dnsperf loads on cnet and dnsmasq
(how -c/-q/-T were chosen: -T 2 loses on 2 cores, -c/-q change little).

Targets (issue 4): cnet local names >= 100k qps and >= 0.9x dnsmasq in the same run.

    bench/dns.sh [--seconds 10] [--rounds 3] [-c 4] [-q 200] [-T 1] [--rate 20000]
                 [--containers 10] [--no-docker] [--no-aardvark] [--sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anchors import Docker, docker_missing
from common import (
    Daemon,
    Netns,
    Summary,
    header,
    in_ns,
    main_wrapper,
    mktemp,
    no_interrupts,
    percentile,
    print_table,
    sh,
)
from run import IMAGE, build_image, loadavg

NETWORK = "benchnet"
CNET_SUBNET = "10.74.0.0/24"
DOCKER_SUBNET = "10.75.0.0/24"
AARDVARK_SUBNET = "10.76.0.0/24"
UPSTREAM_IP = "198.51.100.53"  # TEST-NET-2: on the lo of the daemon's own namespace
ANCHOR_IP = "127.0.0.11"       # dnsmasq's listen address, on the lo of its namespace
FWD_DOMAIN = "fwd.test"
FWD_NAMES = 20
TTL = 600
TARGET_QPS = 100_000
TARGET_VS_DNSMASQ = 0.9
TARGET = "tgt"


# --------------------------------------------------------------------------- dnsperf
def ensure_dnsperf() -> str | None:
    """dnsperf's path; installed with apt-get when missing (said so); None if impossible."""
    found = shutil.which("dnsperf")
    if found:
        return found
    if shutil.which("apt-get") is None:
        return None
    print("dnsperf: not installed; running `apt-get install -y dnsperf`", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (0, 1):
        proc = sh("apt-get", "install", "-y", "dnsperf", check=False, timeout=900, env=env)
        if proc.returncode == 0:
            break
        if attempt == 0:  # a stale package list: update once and try again
            print("dnsperf: install failed; running `apt-get update` and retrying", flush=True)
            sh("apt-get", "update", check=False, timeout=900, env=env)
        else:
            print(f"dnsperf: apt-get failed: {(proc.stdout + proc.stderr).strip()[-400:]}")
    return shutil.which("dnsperf")


def dnsperf_version(path: str) -> str:
    proc = sh(path, "-h", check=False)
    m = re.search(r"Version (\S+)", proc.stdout + proc.stderr)
    return m.group(1) if m else "?"


def cpu_by_thread(pid: int | None) -> dict[int, float]:
    """CPU seconds (user+system) of each thread of a process; {} if it is gone."""
    out: dict[int, float] = {}
    if pid is None:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/task/{t}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                out[int(t)] = (int(fields[11]) + int(fields[12])) / tick
    return out


@dataclass(frozen=True)
class Load:
    """dnsperf parameters shared by every target."""

    clients: int
    outstanding: int
    threads: int

    def argv(self) -> list[str]:
        return ["-c", str(self.clients), "-q", str(self.outstanding), "-T", str(self.threads)]


@dataclass
class Perf:
    """One dnsperf run."""

    qps: float
    sent: int
    completed: int
    lost: int
    rcodes: str
    avg_ms: float
    sd_ms: float
    run_s: float = 0.0
    latencies: list[float] = field(default_factory=list)  # ms, from -v
    cpu_s: float | None = None      # the server process's CPU during the run
    cpu_top_s: float | None = None  # its busiest thread's

    @property
    def cpu_pct(self) -> float | None:
        return None if self.cpu_s is None else 100.0 * self.cpu_s / self.run_s

    @property
    def us_per_answer(self) -> float | None:
        return None if self.cpu_s is None else 1e6 * self.cpu_s / self.completed

    def p(self, q: float) -> float | None:
        return percentile(self.latencies, q) if self.latencies else None


def _num(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"dnsperf output without {pattern!r}:\n{text[-1500:]}")
    return float(m.group(1))


def dnsperf(ns_path: str, server: str, qfile: Path, seconds: float, load: Load,
            rate: int | None = None, verbose: bool = False, source: str | None = None,
            out_dir: Path | None = None) -> Perf:
    """Run dnsperf inside `ns_path`; every answer must be NOERROR."""
    argv = ["nsenter", f"--net={ns_path}", "dnsperf", "-s", server, "-d", str(qfile),
            "-l", f"{seconds:g}", "-t", "2", *load.argv()]
    if rate:
        argv += ["-Q", str(rate)]
    if source:
        argv += ["-a", source]
    if verbose:
        argv.append("-v")
    assert out_dir is not None or not verbose
    out_path = (out_dir or Path("/tmp")) / "dnsperf.out"
    with open(out_path, "w") if verbose else contextlib.nullcontext() as f:
        proc = subprocess.run(argv, stdout=f if verbose else subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=seconds + 60)
    lat: list[float] = []
    if verbose:
        summary_lines = []
        with open(out_path) as f:
            for line in f:
                if line.startswith("> "):
                    parts = line.split()
                    if parts[1] == "NOERROR":
                        lat.append(float(parts[-1]) * 1000.0)
                else:
                    summary_lines.append(line)
        out_path.unlink()
        text = "".join(summary_lines)
    else:
        text = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf rc={proc.returncode}: {' '.join(argv)}\n"
                           f"{text[-1500:]}{proc.stderr[-1500:]}")
    completed = int(_num(r"Queries completed:\s+(\d+)", text))
    m = re.search(r"Response codes:\s+(.*)", text)
    rcodes = m.group(1).strip() if m else ""
    noerror = re.search(r"NOERROR (\d+)", rcodes)
    if completed == 0 or noerror is None or int(noerror.group(1)) != completed:
        raise RuntimeError(f"dnsperf against {server}: {completed} answers, not all NOERROR: "
                           f"{rcodes or text[-800:]}")
    return Perf(qps=_num(r"Queries per second:\s+([\d.]+)", text),
                sent=int(_num(r"Queries sent:\s+(\d+)", text)), completed=completed,
                lost=int(_num(r"Queries lost:\s+(\d+)", text)), rcodes=rcodes,
                avg_ms=_num(r"Average Latency \(s\):\s+([\d.]+)", text) * 1000.0,
                sd_ms=_num(r"Latency StdDev \(s\):\s+([\d.]+)", text) * 1000.0,
                run_s=_num(r"Run time \(s\):\s+([\d.]+)", text), latencies=lat)


@dataclass
class Target:
    """Everything measured for one server and one query file."""

    label: str
    ns_path: str
    server: str
    qfile: Path
    source: str | None = None
    pid: int | None = None  # the server's process, for its CPU time
    runs: list[Perf] = field(default_factory=list)
    saturated: Perf | None = None  # -v, same load
    paced: Perf | None = None      # -v, fixed rate

    @property
    def qps(self) -> float:
        return statistics.median(r.qps for r in self.runs)

    def measure(self, seconds: float, load: Load, keep: bool = True) -> Perf:
        before = cpu_by_thread(self.pid)
        r = dnsperf(self.ns_path, self.server, self.qfile, seconds, load, source=self.source)
        after = cpu_by_thread(self.pid)
        if before and after:
            deltas = [after[t] - before.get(t, 0.0) for t in after]
            r.cpu_s, r.cpu_top_s = sum(deltas), max(deltas)
        cpu = (f", server CPU {r.cpu_pct:.0f}% of a core ({r.us_per_answer:.1f} us/answer)"
               if r.cpu_s is not None else "")
        if keep:
            self.runs.append(r)
            print(f"  {self.label}: {r.qps:,.0f} qps, avg {r.avg_ms:.3f} ms "
                  f"(sd {r.sd_ms:.3f}), lost {r.lost}/{r.sent}{cpu}", flush=True)
        return r

    def cpu(self) -> tuple[float | None, float | None]:
        """Median server CPU (% of a core) and us per answer over the throughput runs."""
        runs = [r for r in self.runs if r.cpu_s is not None]
        if not runs:
            return None, None
        return (statistics.median(r.cpu_pct for r in runs),  # type: ignore[misc]
                statistics.median(r.us_per_answer for r in runs))  # type: ignore[misc]

    def latency(self, seconds: float, load: Load, rate: int, tmp: Path) -> None:
        self.saturated = dnsperf(self.ns_path, self.server, self.qfile, seconds, load,
                                 verbose=True, source=self.source, out_dir=tmp)
        self.paced = dnsperf(self.ns_path, self.server, self.qfile, seconds, load, rate=rate,
                             verbose=True, source=self.source, out_dir=tmp)
        s, p = self.saturated, self.paced
        print(f"  {self.label}: -v saturated {s.qps:,.0f} qps p50 {s.p(50):.3f} ms "
              f"p99 {s.p(99):.3f} ms; at {rate:,} qps p50 {p.p(50):.3f} ms "
              f"p99 {p.p(99):.3f} ms", flush=True)

    def row(self) -> list[str]:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        r = self.runs
        s, p = self.saturated, self.paced
        pct, us = self.cpu()
        return [self.label, f"{self.qps:,.0f}",
                " ".join(f"{x.qps / 1000:.0f}k" for x in r) if len(r) > 1 else "",
                "-" if pct is None else f"{pct:.0f}%", "-" if us is None else f"{us:.1f}",
                ms(statistics.median(x.avg_ms for x in r)),
                ms(statistics.median(x.sd_ms for x in r)),
                ms(s.p(50) if s else None), ms(s.p(99) if s else None),
                ms(p.p(50) if p else None), ms(p.p(99) if p else None),
                str(sum(x.lost for x in r))]

    def to_dict(self) -> dict:
        s, p = self.saturated, self.paced
        pct, us = self.cpu()
        return {"qps": self.qps, "runs": [x.qps for x in self.runs],
                "server_cpu_pct": pct, "server_us_per_answer": us,
                "avg_ms": [x.avg_ms for x in self.runs],
                "sd_ms": [x.sd_ms for x in self.runs],
                "lost": [x.lost for x in self.runs],
                "saturated": {"qps": s.qps, "p50": s.p(50), "p99": s.p(99)} if s else None,
                "paced": {"qps": p.qps, "p50": p.p(50), "p99": p.p(99)} if p else None}


# --------------------------------------------------------------------------- names
@dataclass
class Names:
    """name -> IPv4 address of the local names, and the forwarded ones (from the upstream)."""

    local: dict[str, str]
    forwarded: dict[str, str]

    @staticmethod
    def forwarded_names() -> dict[str, str]:
        return {f"f{i}.{FWD_DOMAIN}": f"192.0.2.{i}" for i in range(1, FWD_NAMES + 1)}

    @classmethod
    def of(cls, addrs: dict[str, str]) -> Names:
        """`addrs`: container name -> address; aliases svcK and cK.benchnet follow."""
        local: dict[str, str] = {}
        for name, ip in addrs.items():
            local[name] = ip
            if name != TARGET:
                local[f"svc{name[1:]}"] = ip
            local[f"{name}.{NETWORK}"] = ip
        return cls(local, cls.forwarded_names())

    def host_records(self) -> list[str]:
        """dnsmasq --host-record options: every name of one address in one record."""
        by_ip: dict[str, list[str]] = {}
        for name, ip in self.local.items():
            by_ip.setdefault(ip, []).append(name)
        return [f"--host-record={','.join(ns)},{ip},{TTL}" for ip, ns in by_ip.items()]

    @staticmethod
    def write(path: Path, names: Sequence[str]) -> Path:
        path.write_text("".join(f"{n} A\n" for n in names))
        return path


def check_answers(ns_path: str, server: str, expected: dict[str, str], what: str,
                  source: str | None = None) -> None:
    """Every name answers exactly its address (one dig process for the whole list)."""
    batch = "\n".join(f"{n} A" for n in expected) + "\n"
    cmd = ["dig", f"@{server}", "+noall", "+answer", "+time=2", "+tries=2", "-f", "-"]
    if source:
        cmd[2:2] = ["-b", source]
    out = in_ns(ns_path, *cmd, input=batch, check=False, timeout=120).stdout
    got: dict[str, set[str]] = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and f[3] == "A":
            got.setdefault(f[0].rstrip(".").lower(), set()).add(f[4])
    wrong = {n: sorted(got.get(n.lower(), ())) for n, ip in expected.items()
             if got.get(n.lower()) != {ip}}
    if wrong:
        shown = ", ".join(f"{n}: {v or 'no answer'} (want {expected[n]})"
                          for n, v in list(wrong.items())[:6])
        raise RuntimeError(f"{what}: wrong answers for {len(wrong)} of {len(expected)} "
                           f"names: {shown}")
    print(f"check: {what}: all {len(expected)} names answer their address", flush=True)


def firewall_note(ns_path: str) -> str:
    """How many nftables rules the asking namespace has (each datagram crosses them)."""
    if shutil.which("nft") is None:
        return "nft not installed"
    out = in_ns(ns_path, "nft", "list", "ruleset", check=False).stdout
    rules = [x for x in out.splitlines()
             if x.strip() and not x.strip().startswith(("table", "chain", "type", "}", "policy"))]
    return f"{len(rules)} nftables rule(s)" if rules else "no nftables rules"


# --------------------------------------------------------------------------- dnsmasq
class Dnsmasq:
    """dnsmasq in the foreground inside a namespace (ours), stopped by pid on exit."""

    def __init__(self, ns_path: str, listen: str, records: Sequence[str], tmp: Path,
                 tag: str):
        self.ns_path = ns_path
        self.listen = listen
        self.records = list(records)
        self.tmp = tmp
        self.tag = tag
        self.proc: subprocess.Popen | None = None

    def start(self, probe: str, want: str) -> Dnsmasq:
        argv = ["nsenter", f"--net={self.ns_path}", "dnsmasq", "-C", "/dev/null",
                "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--listen-address={self.listen}", "--port=53", "--cache-size=10000",
                f"--pid-file={self.tmp / f'dnsmasq-{self.tag}.pid'}", "--user=root",
                "--log-facility=-", *self.records]
        log = open(self.tmp / f"dnsmasq-{self.tag}.log", "wb")
        with log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq ({self.tag}) exited: {self.log()}")
            out = in_ns(self.ns_path, "dig", f"@{self.listen}", "+short", "+time=1",
                        "+tries=1", probe, check=False).stdout
            if want in out.split():
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq ({self.tag}) not answering {probe}: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / f"dnsmasq-{self.tag}.log").read_text(errors="replace")[-800:]
        return ""

    def version(self) -> str:
        m = re.search(r"version (\S+)", sh("dnsmasq", "--version", check=False).stdout)
        return m.group(1) if m else "?"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        with no_interrupts():
            self.stop()

    def __enter__(self) -> Dnsmasq:
        return self


def upstream_records() -> list[str]:
    return [f"--host-record={n},{ip},{TTL}" for n, ip in Names.forwarded_names().items()]


# --------------------------------------------------------------------------- cnet
def cnet_addresses(d: Daemon, names: Sequence[str]) -> dict[str, str]:
    out = {}
    for n in names:
        info = json.loads(sh(*d.cli("inspect", n)).stdout)
        info = info[0] if isinstance(info, list) else info
        out[n] = info["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    return out


def cnet_sandbox_key(d: Daemon, name: str) -> str:
    info = json.loads(sh(*d.cli("inspect", name)).stdout)
    info = info[0] if isinstance(info, list) else info
    key = info["NetworkSettings"]["SandboxKey"]
    if not key or not os.path.exists(key):
        raise RuntimeError(f"cnet inspect {name}: no usable SandboxKey ({key!r})")
    return key


@dataclass
class Config:
    seconds: float
    latency_seconds: float
    rounds: int
    containers: int
    load: Load
    rate: int
    docker: bool
    aardvark: bool
    sweep: bool


SWEEP = (Load(1, 100, 1), Load(2, 200, 1), Load(4, 200, 1), Load(4, 500, 1),
         Load(8, 1000, 1), Load(4, 200, 2), Load(8, 500, 2))
SWEEP_SECONDS = 3.0


def sweep(cnet: Target, anchor: Target) -> list[dict]:
    """Both servers under each dnsperf load of SWEEP, to choose -c/-q/-T (not kept)."""
    print(f"\nsweep: {SWEEP_SECONDS:g} s per load and server", flush=True)
    rows, out = [], []
    for load in SWEEP:
        a = cnet.measure(SWEEP_SECONDS, load, keep=False)
        b = anchor.measure(SWEEP_SECONDS, load, keep=False)
        rows.append([" ".join(load.argv()), f"{a.qps:,.0f}", f"{b.qps:,.0f}",
                     f"{a.qps / b.qps:.2f}x", f"{a.avg_ms:.3f}", f"{b.avg_ms:.3f}"])
        out.append({"load": load.argv(), "cnet": a.qps, "dnsmasq": b.qps})
    print_table(["dnsperf", "cnet qps", "dnsmasq qps", "ratio", "cnet avg ms",
                 "dnsmasq avg ms"], rows)
    return out


def bench_cnet(cfg: Config, tar: Path, tmp: Path
               ) -> tuple[dict[str, Target], dict, Names]:
    """cnet local and forwarded names, interleaved with the dnsmasq anchor."""
    targets: dict[str, Target] = {}
    extra: dict = {}
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(Daemon(args=["--bridge", "none", "--dns", UPSTREAM_IP]))
        assert d.proc is not None
        d.ns.run("ip", "addr", "add", f"{UPSTREAM_IP}/32", "dev", "lo")
        first_fwd = next(iter(Names.forwarded_names().items()))
        up = stack.enter_context(Dnsmasq(d.ns.path, UPSTREAM_IP, upstream_records(), tmp,
                                         "cnet-upstream"))
        up.start(*first_fwd)
        print(f"cnet: cnetd in {d.ns.name} (--dns {UPSTREAM_IP}: dnsmasq {up.version()} on "
              f"its lo), load {loadavg()}", flush=True)
        sh(*d.cli("image", "import", tar, IMAGE))
        sh(*d.cli("network", "create", "--subnet", CNET_SUBNET, NETWORK))
        cnames = [f"c{i}" for i in range(1, cfg.containers + 1)]
        for n in cnames:
            sh(*d.cli("run", "-d", "--name", n, "--network", NETWORK, "--network-alias",
                      f"svc{n[1:]}", IMAGE, "sleep", "3600"))
        sh(*d.cli("run", "-d", "--name", TARGET, "--network", NETWORK, IMAGE, "sleep", "3600"))
        names = Names.of(cnet_addresses(d, [*cnames, TARGET]))
        key = cnet_sandbox_key(d, TARGET)
        print(f"cnet: {len(cnames)} containers + {TARGET} on {NETWORK} ({CNET_SUBNET}); "
              f"dnsperf runs in {TARGET}'s namespace {key} ({firewall_note(key)})",
              flush=True)
        local_q = Names.write(tmp / "local.txt", list(names.local))
        fwd_q = Names.write(tmp / "forwarded.txt", list(names.forwarded))
        extra["names"] = {"local": len(names.local), "forwarded": len(names.forwarded)}

        anchor_ns = stack.enter_context(Netns("dnsmasq"))
        anchor = stack.enter_context(Dnsmasq(anchor_ns.path, ANCHOR_IP, names.host_records(),
                                             tmp, "anchor"))
        anchor.start(TARGET, names.local[TARGET])
        check_answers(key, "127.0.0.11", names.local, "cnet local names")
        check_answers(key, "127.0.0.11", names.forwarded, "cnet forwarded names")
        check_answers(anchor_ns.path, ANCHOR_IP, names.local, "dnsmasq anchor, same names")

        assert anchor.proc is not None and up.proc is not None
        t_cnet = Target("cnet, local names", key, "127.0.0.11", local_q, pid=d.proc.pid)
        t_mask = Target(f"dnsmasq {anchor.version()}, same names", anchor_ns.path, ANCHOR_IP,
                        local_q, pid=anchor.proc.pid)
        t_fwd = Target("cnet, forwarded names", key, "127.0.0.11", fwd_q, pid=d.proc.pid)
        t_up = Target("upstream dnsmasq, asked directly", key, UPSTREAM_IP, fwd_q,
                      pid=up.proc.pid)
        targets.update(cnet=t_cnet, dnsmasq=t_mask, cnet_fwd=t_fwd, upstream=t_up)

        if cfg.sweep:
            extra["sweep"] = sweep(t_cnet, t_mask)
        print(f"\nthroughput: {cfg.rounds} alternating rounds of {cfg.seconds:g} s, "
              f"dnsperf {' '.join(cfg.load.argv())}", flush=True)
        for _ in range(cfg.rounds):
            t_cnet.measure(cfg.seconds, cfg.load)
            t_mask.measure(cfg.seconds, cfg.load)
        t_fwd.measure(cfg.seconds, cfg.load)
        t_up.measure(cfg.seconds, cfg.load)
        print(f"\nlatency: -v runs of {cfg.latency_seconds:g} s, saturated and at "
              f"{cfg.rate:,} qps", flush=True)
        for t in (t_cnet, t_mask, t_fwd, t_up):
            t.latency(cfg.latency_seconds, cfg.load, cfg.rate, tmp)
        # cnet's own counters (local, forwarded, failed...), when the CLI has them
        proc = sh(*d.cli("dns", "stats"), check=False)
        if proc.returncode == 0:
            extra["cnet_dns_stats"] = proc.stdout.strip()
    return targets, extra, names


# --------------------------------------------------------------------------- docker
def docker_inspect(dk: Docker, name: str) -> dict:
    return json.loads(dk.run("inspect", name))[0]


def bench_docker(cfg: Config, tar: Path, tmp: Path, local_q: Path, fwd_q: Path
                 ) -> dict[str, Target] | str:
    reason = docker_missing()
    if reason:
        return reason
    with contextlib.ExitStack() as stack:
        dk = stack.enter_context(Docker())
        dk.ns.run("ip", "addr", "add", f"{UPSTREAM_IP}/32", "dev", "lo")
        up = stack.enter_context(Dnsmasq(dk.ns.path, UPSTREAM_IP, upstream_records(), tmp,
                                         "docker-upstream"))
        up.start(*next(iter(Names.forwarded_names().items())))
        print(f"\ndocker: dockerd {dk.version} in {dk.ns.name} (upstream dnsmasq on its lo, "
              f"containers run with --dns {UPSTREAM_IP}), load {loadavg()}", flush=True)
        dk.import_tar(tar)
        dk.network_create(NETWORK, DOCKER_SUBNET)
        cnames = [f"c{i}" for i in range(1, cfg.containers + 1)]
        for n in [*cnames, TARGET]:
            alias = ["--network-alias", f"svc{n[1:]}"] if n != TARGET else []
            dk.containers.append(n)
            dk.run("run", "-d", "--name", n, "--network", NETWORK, *alias, "--dns",
                   UPSTREAM_IP, dk.IMAGE, "sleep", "3600")
        addrs = {n: docker_inspect(dk, n)["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
                 for n in [*cnames, TARGET]}
        names = Names.of(addrs)
        key = docker_inspect(dk, TARGET)["NetworkSettings"]["SandboxKey"]
        print(f"docker: dnsperf runs in {TARGET}'s namespace {key} ({firewall_note(key)}: "
              "Docker's DNAT of 127.0.0.11:53 to its resolver)", flush=True)
        check_answers(key, "127.0.0.11", names.local, "docker local names")
        check_answers(key, "127.0.0.11", names.forwarded, "docker forwarded names")
        assert dk.proc is not None
        t_loc = Target(f"docker {dk.version}, local names", key, "127.0.0.11", local_q,
                       pid=dk.proc.pid)
        t_fwd = Target(f"docker {dk.version}, forwarded names", key, "127.0.0.11", fwd_q,
                       pid=dk.proc.pid)
        # the same names in the same order: only the addresses differ
        if list(names.local) != [line.split()[0] for line in local_q.read_text().splitlines()]:
            raise RuntimeError("docker: the name list differs from cnet's")
        t_loc.measure(cfg.seconds, cfg.load)
        t_fwd.measure(cfg.seconds, cfg.load)
        for t in (t_loc, t_fwd):
            t.latency(cfg.latency_seconds, cfg.load, cfg.rate, tmp)
    return {"docker": t_loc, "docker_fwd": t_fwd}


# --------------------------------------------------------------------------- aardvark
def aardvark_path() -> str | None:
    for cand in (shutil.which("aardvark-dns"), "/usr/lib/podman/aardvark-dns",
                 "/usr/libexec/podman/aardvark-dns"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


class Aardvark:
    """aardvark-dns in its own namespace: it daemonizes, so it is stopped by its pid file
    (and anything left in the namespace is killed when the namespace goes)."""

    def __init__(self, binary: str, ns: Netns, tmp: Path):
        self.binary = binary
        self.ns = ns
        self.dir = tmp / "aardvark"
        self.proc: subprocess.Popen | None = None

    def start(self, gateway: str, entries: dict[str, tuple[str, list[str]]]) -> None:
        """entries: container name -> (address, names)."""
        self.dir.mkdir()
        lines = [gateway]
        for i, (ip, names) in enumerate(entries.values()):
            lines.append(f"{i + 1:064x} {ip}  {','.join(names)}")
        (self.dir / NETWORK).write_text("\n".join(lines) + "\n")
        log = open(self.dir.parent / "aardvark.log", "wb")
        with log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.ns.path}", self.binary, "--config", str(self.dir),
                 "-p", "53", "run"], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dir / "aardvark.pid").read_text().strip())
        return None

    def version(self) -> str:
        out = sh(self.binary, "--version", check=False).stdout.split()
        return out[-1] if out else "?"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir.parent / "aardvark.log").read_text(errors="replace")[-800:]
        return ""

    def stop(self) -> None:
        pidfile = self.dir / "aardvark.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        deadline = time.monotonic() + 5
        while self.ns.pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Aardvark:
        return self

    def __exit__(self, *exc: object) -> None:
        with no_interrupts():
            self.stop()


def bench_aardvark(cfg: Config, tmp: Path, local_q: Path, names: Names) -> Target | str:
    binary = aardvark_path()
    if binary is None:
        return "not installed (podman's aardvark-dns: apt-get install aardvark-dns)"
    base = AARDVARK_SUBNET.rsplit(".", 1)[0]
    gateway = f"{base}.1"
    # the same names, renumbered into aardvark's subnet; the asker is TARGET's address
    order = list(dict.fromkeys(names.local.values()))
    remap = {ip: f"{base}.{i + 2}" for i, ip in enumerate(order)}
    local = {n: remap[ip] for n, ip in names.local.items()}
    entries: dict[str, tuple[str, list[str]]] = {}
    for n, ip in local.items():
        entries.setdefault(ip, (ip, []))[1].append(n)
    source = local[TARGET]
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(Netns("aardvark"))
        for ip in (gateway, source):
            ns.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        av = stack.enter_context(Aardvark(binary, ns, tmp))
        av.start(gateway, entries)
        deadline = time.monotonic() + 15
        while True:
            out = ns.run("dig", f"@{gateway}", "-b", source, "+short", "+time=1", "+tries=1",
                         TARGET, check=False).stdout
            if local[TARGET] in out.split():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"aardvark-dns not answering: {av.log()}")
            time.sleep(0.1)
        print(f"\naardvark-dns {av.version()} in {ns.name} on {gateway} (asked from {source})",
              flush=True)
        check_answers(ns.path, gateway, local, "aardvark-dns local names", source=source)
        t = Target(f"aardvark-dns {av.version()}, local names", ns.path, gateway, local_q,
                   source=source, pid=av.pid())
        t.measure(cfg.seconds, cfg.load)
        t.latency(cfg.latency_seconds, cfg.load, cfg.rate, tmp)
    return t


# --------------------------------------------------------------------------- main
def at_least(summary: Summary, name: str, value: float, target: float, unit: str) -> None:
    """A figure with a lower bound (Summary.figure only knows upper bounds)."""
    shown = f"{value:.2f}x" if unit == "x" else f"{value:,.0f} {unit}"
    tgt = f">= {target:g}x" if unit == "x" else f">= {target:,.0f} {unit}"
    summary.rows.append((name, shown, tgt, "ok" if value >= target else "MISSED"))
    summary.data[name] = {"value": value, "unit": unit, "target": target, "bound": "min"}


def run(cfg: Config) -> int:
    header("dns: dnsperf against cnet's embedded resolver (127.0.0.11) and the anchors, "
           "same run", [f"load average at start: {loadavg()}"])
    summary = Summary("dns")
    perf = ensure_dnsperf()
    if perf is None:
        print("dnsperf: anchor not installed (apt-get install dnsperf): nothing measured")
        summary.text("dnsperf", "anchor not installed", "skipped")
        summary.print()
        return 0
    for tool in ("dnsmasq", "dig"):
        if shutil.which(tool) is None:
            print(f"{tool}: anchor not installed (apt-get install "
                  f"{'dnsmasq-base' if tool == 'dnsmasq' else 'bind9-dnsutils'}): "
                  "nothing measured")
            summary.text(tool, "anchor not installed", "skipped")
            summary.print()
            return 0
    print(f"dnsperf {dnsperf_version(perf)}: {' '.join(cfg.load.argv())}, "
          f"-l {cfg.seconds:g} s per throughput run, {cfg.rounds} rounds for cnet/dnsmasq; "
          f"cpus {os.cpu_count()}", flush=True)
    tmp = mktemp("dns")
    docker: dict[str, Target] | str = "skipped (--no-docker)"
    aardvark: Target | str = "skipped (--no-aardvark)"
    try:
        tar = build_image(tmp)
        targets, extra, names = bench_cnet(cfg, tar, tmp)
        local_q, fwd_q = targets["cnet"].qfile, targets["cnet_fwd"].qfile
        if cfg.docker:
            try:
                docker = bench_docker(cfg, tar, tmp, local_q, fwd_q)
            except Exception as exc:  # an anchor is optional: say why, keep the figures
                docker = f"anchor failed here: {exc}"
        if cfg.aardvark:
            try:
                aardvark = bench_aardvark(cfg, tmp, local_q, names)
            except Exception as exc:
                aardvark = f"anchor failed here: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [t.row() for t in targets.values()]
    if isinstance(docker, dict):
        rows += [t.row() for t in docker.values()]
    if isinstance(aardvark, Target):
        rows.append(aardvark.row())
    print(f"\ndnsperf {' '.join(cfg.load.argv())}: qps median of the runs (-l "
          f"{cfg.seconds:g}); p50/p99 from -v runs of {cfg.latency_seconds:g} s: saturated "
          f"(same load) and paced (-Q {cfg.rate}); latencies in ms")
    print_table(["target", "qps", "runs", "srv CPU", "us/ans", "avg", "sd", "sat p50",
                 "sat p99",
                 "paced p50", "paced p99", "lost"], rows)
    print("srv CPU: the server process's CPU time over dnsperf's run time (100% = one core); "
          "us/ans: that CPU time per answer")
    if isinstance(docker, str):
        print(f"docker: {docker}")
    if isinstance(aardvark, str):
        print(f"aardvark-dns: {aardvark}")
    top = [r.cpu_top_s / r.run_s for r in targets["cnet"].runs if r.cpu_top_s is not None]
    if top:
        print(f"cnetd's busiest thread (the DNS loop) during the local runs: "
              f"{100 * statistics.median(top):.0f}% of a core")
    if extra.get("cnet_dns_stats"):
        print(f"cnet dns stats:\n{extra['cnet_dns_stats']}")

    c, m = targets["cnet"], targets["dnsmasq"]
    at_least(summary, "cnet local names qps", c.qps, TARGET_QPS, "qps")
    at_least(summary, "cnet/dnsmasq local names", c.qps / m.qps, TARGET_VS_DNSMASQ, "x")
    summary.text("dnsmasq local names qps", f"{m.qps:,.0f}", "anchor")
    for t, label in ((c, "cnet"), (m, "dnsmasq")):
        if t.saturated and t.paced:
            summary.text(f"{label} p50/p99 saturated",
                         f"{t.saturated.p(50):.3f}/{t.saturated.p(99):.3f} ms")
            summary.text(f"{label} p50/p99 at {cfg.rate:,} qps",
                         f"{t.paced.p(50):.3f}/{t.paced.p(99):.3f} ms")
    f, u = targets["cnet_fwd"], targets["upstream"]
    summary.text("cnet forwarded names qps", f"{f.qps:,.0f}",
                 f"{f.qps / u.qps:.2f}x upstream asked directly")
    if isinstance(docker, dict):
        dl, df = docker["docker"], docker["docker_fwd"]
        summary.text("docker local names qps", f"{dl.qps:,.0f}",
                     f"cnet {c.qps / dl.qps:.2f}x docker")
        summary.text("docker forwarded names qps", f"{df.qps:,.0f}",
                     f"cnet {f.qps / df.qps:.2f}x docker")
    else:
        summary.text("docker embedded DNS", "not measured", docker)
    if isinstance(aardvark, Target):
        summary.text("aardvark-dns local names qps", f"{aardvark.qps:,.0f}",
                     f"cnet {c.qps / aardvark.qps:.2f}x aardvark")
    else:
        summary.text("aardvark-dns", "not measured", aardvark)
    summary.print()
    print(f"load average at the end: {loadavg()}")
    all_targets = dict(targets)
    if isinstance(docker, dict):
        all_targets.update(docker)
    if isinstance(aardvark, Target):
        all_targets["aardvark"] = aardvark
    summary.save({"dnsperf": {"args": cfg.load.argv(), "seconds": cfg.seconds,
                              "rounds": cfg.rounds, "rate": cfg.rate},
                  "targets": {k: t.to_dict() for k, t in all_targets.items()},
                  **{k: v for k, v in extra.items() if k != "cnet_dns_stats"}})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l of throughput runs")
    p.add_argument("--latency-seconds", type=float, default=5.0, help="-l of the -v runs")
    p.add_argument("--rounds", type=int, default=3, help="alternating cnet/dnsmasq rounds")
    p.add_argument("-c", "--clients", type=int, default=4, help="dnsperf -c")
    p.add_argument("-q", "--outstanding", type=int, default=200, help="dnsperf -q")
    p.add_argument("-T", "--threads", type=int, default=1, help="dnsperf -T")
    p.add_argument("--rate", type=int, default=20000, help="dnsperf -Q of the paced -v runs")
    p.add_argument("--containers", type=int, default=10)
    p.add_argument("--no-docker", action="store_true")
    p.add_argument("--no-aardvark", action="store_true")
    p.add_argument("--sweep", action="store_true",
                   help=f"first try each dnsperf load of {len(SWEEP)} on cnet and dnsmasq")
    a = p.parse_args(argv)
    cfg = Config(seconds=a.seconds, latency_seconds=a.latency_seconds,
                 rounds=max(1, a.rounds), containers=max(1, a.containers),
                 load=Load(a.clients, a.outstanding, a.threads), rate=a.rate,
                 docker=not a.no_docker, aardvark=not a.no_aardvark, sweep=a.sweep)
    return main_wrapper(lambda: run(cfg))


if __name__ == "__main__":
    sys.exit(main())
