"""Overlay networks across two hosts: TCP throughput, connect-to-reach time, attach latency.

Setup (not timed): two host namespaces `cnet-b-<hex>-hA`/`-hB` joined by a veth pair (the
underlay, MTU 1500, 10.97.0.1 and 10.97.0.2), a single etcd member in host A (data dir
under /dev/shm), one cnetd per host (`nsenter --net=/run/netns/<host> cnetd
--cluster-store etcd://10.97.0.1:2379 --advertise-addr <ip> --node-name hA|hB`, its own
data-root, exec-root and socket under a temp dir), an attachable overlay network made with
`cnet network create -d overlay --attachable`, and one sandbox per host on it.

1. Throughput: iperf3 (`-J`, single TCP stream, ROUNDS rounds of SECONDS s after a 1 s
   omitted warm-up) from host B's sandbox to host A's sandbox over the overlay. Anchors,
   same run, same two host namespaces, rounds alternating with the overlay's:
   - hand-made VXLAN host to host: `ip link add vxbench type vxlan id 999 dstport 4790
     local <ip> nolearning`, MTU 1450 like the overlay, a static all-zeros FDB entry to the
     peer, 192.168.250.1-2/24 on it; iperf3 between the host namespaces;
   - hand-made VXLAN in the overlay's shape (info): VXLAN (VNI 998, port 4791) and a veth
     on a bridge in each host namespace, the veth's peer in a namespace of its own
     (192.168.251.1-2/24): the same hops as cnet's (container veth, bridge, vxlan).
   Medians in Gbit/s, TCP retransmits, iperf3's CPU figures; target overlay/hand-made
   (host to host) >= 0.9. (Retransmits on the 2-core VM were spurious: reordering between
   the CPUs' backlogs, DSACKed by the receiver, with no drop on any link or backlog.)
2. Connect-to-reach: a prober in host A's sandbox sends an ICMP echo every 5 ms to an
   address nobody holds yet; then `cnet network connect --ip <that address>` of a new
   sandbox on host B. Measured from just before the CLI starts until the prober's first
   echo reply (one monotonic clock); the CLI's own wall time too. The prober's sandbox
   keeps the kernel's ARP retransmit time (1 s): its ARP for the new address fails until
   the peer lands, and a neighbour in INCOMPLETE state is re-asked only every
   retrans_time; cnet announces each new remote peer with a gratuitous ARP, which
   completes the waiting entry at once (before that announcement the p50 here was
   ~970 ms; with a 10 ms retrans_time ~33 ms). Target p50 and max <= 1 s.
3. Attach latency, API level like bench/attach.py (POST /endpoints/create + join on a
   keep-alive connection, one after another) on host A: N sandboxes on a local bridge
   network, N fresh sandboxes on a second (fresh) overlay network, and, as info, the
   bridge's sandboxes joined to that overlay too (no gateway endpoint then). Reported
   p50/p99 and overlay/bridge. The overlay attach includes etcd round trips (the
   address-reservation txn, the peer record put), for the first sandbox on the node the
   overlay namespace (br0 + vxlan0), and for a sandbox on overlays only a second endpoint
   on the node's gateway bridge (cnet_gwbridge). Checks: pings inside host A on both
   networks, and host B's sandbox, once joined to the second overlay, pings the last one.

Everything made here is removed at the end, even on failure or Ctrl-C: iperf3 and prober
processes, both cnetd (SIGTERM, then `cnetd --cleanup` in its host namespace), etcd and its
data dir, the namespaces; then a leak check. Nothing touches the root namespace's
interfaces or firewall: traffic stays between the namespaces made here.

    python bench/overlay.py [--rounds 3] [--seconds 4] [--reach 10] [-n 100]
                            [--probe-retrans-ms 1000]   (other values: no results file)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import (
    IPERF3,
    Api,
    Daemon,
    Netns,
    Stats,
    Summary,
    fmt,
    header,
    in_ns,
    iperf3_client,
    main_wrapper,
    no_interrupts,
    now_ms,
    print_stats,
    print_table,
    ratio,
    sh,
    stop_process,
    wait_api,
)

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
UNDERLAY = ("10.97.0.1", "10.97.0.2")
ETCD_PORT = 2379
OVERLAY = "cnbov"
OVERLAY_SUBNET = "10.96.0.0/24"
SB_IPS = ("10.96.0.10", "10.96.0.20")
REACH_BASE = 100  # reach round k connects 10.96.0.(100 + k)
ATTACH_BRIDGE, ATTACH_BRIDGE_SUBNET = "cnbbr", "10.95.0.0/16"
ATTACH_OVERLAY, ATTACH_OVERLAY_SUBNET = "cnbov2", "10.94.0.0/16"
VX_MTU = 1450  # 1500 - 50 bytes of VXLAN over IPv4, what the overlay picks
HAND = "hand-made VXLAN, host to host"
HAND_BR = "hand-made VXLAN + bridge + veth"
CNET = "cnet overlay, sandbox to sandbox"
TARGET_THROUGHPUT = 0.9  # overlay / hand-made, at least
TARGET_REACH_MS = 1000.0
PROBE_INTERVAL = 0.005
PROBE_RETRANS_MS = 1000  # the kernel's default

# Runs inside a sandbox (nsenter --net): ICMP echo to argv[1] every argv[2] s until the
# first reply, whose CLOCK_MONOTONIC time it prints; gives up after argv[3] s.
PROBER = r"""
import glob, os, select, socket, struct, sys, time
target, interval, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
retrans = sys.argv[4]
for p in glob.glob("/proc/sys/net/ipv4/neigh/*/retrans_time_ms"):
    if "/lo/" not in p:
        with open(p, "w") as f:
            f.write(retrans)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF

def packet(seq):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF) + b"cnet-bench-probe"
    total = sum(struct.unpack("!%dH" % (len(body) // 2), body))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]

print("ready", flush=True)
seq, next_send, deadline = 0, 0.0, time.monotonic() + limit
while time.monotonic() < deadline:
    now = time.monotonic()
    if now >= next_send:
        try:
            s.sendto(packet(seq), (target, 0))
        except OSError:
            pass
        seq += 1
        next_send = now + interval
    ready, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
    if ready:
        data, addr = s.recvfrom(4096)
        at = time.monotonic()
        ihl = (data[0] & 15) * 4
        echo_id = struct.unpack("!H", data[ihl + 4:ihl + 6])[0]
        if addr[0] == target and data[ihl] == 0 and echo_id == ident:
            print(f"reply {at:.6f} {seq}", flush=True)
            sys.exit(0)
print(f"timeout {seq}", flush=True)
sys.exit(1)
"""

# Runs inside host A: wait until etcd answers /health.
ETCD_HEALTH = r"""
import json, sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if json.loads(r.read()).get("health") == "true":
                sys.exit(0)
    except Exception as exc:
        err = exc
    if time.monotonic() > deadline:
        sys.exit(f"etcd not healthy: {err}")
    time.sleep(0.05)
"""


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CNET_HOST", None)
    return env


# --------------------------------------------------------------------------- pieces
class HostDaemon(Daemon):
    """cnetd inside an existing host namespace; stop() and cleanup() are separate steps so
    that both daemons stop before etcd, and the namespaces go last."""

    def __init__(self, ns: Netns, name: str, args: list[str]):
        super().__init__(args=args)
        self.ns, self.name = ns, name

    def start(self) -> HostDaemon:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.ns.path}", self.cnetd, "-H", self.host,
                 "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                 "--log-level", self.log_level, "--docker-plugin-socket", "none", *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        proc = self.proc
        try:
            wait_api(self.sock, "/_ping", lambda: proc.poll() is None, f"cnetd {self.name}",
                     timeout=60)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.logs()}") from None
        return self

    def run_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(*self.cli(*args), env=cli_env(), timeout=timeout)

    def key(self, sandbox: str) -> str:
        return self.api.get(f"/sandboxes/{sandbox}")["Key"]

    def stop(self) -> list[str]:
        errors: list[str] = []
        if self._api is not None:
            self._api.close()
        if self.proc is not None:
            problem = stop_process(self.proc)
            if problem:
                errors.append(f"cnetd {self.name} {problem}")
            self.proc = None
        return errors

    def cleanup(self) -> list[str]:
        if not self.ns.created:
            return []
        proc = in_ns(self.ns.path, self.cnetd, "--cleanup", "--data-root", self.data_root,
                     "--exec-root", self.exec_root, check=False, timeout=120)
        if proc.returncode != 0:
            return [f"cnetd {self.name} --cleanup rc={proc.returncode}: "
                    f"{(proc.stdout + proc.stderr).strip()}"]
        return []


class Etcd:
    """A single etcd member in a host namespace, data dir under /dev/shm."""

    def __init__(self, ns: Netns, ip: str):
        self.ns, self.ip = ns, ip
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="cnb-etcd-", dir=base))
        self.log_path = self.root / "etcd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{ETCD_PORT}"

    def start(self) -> None:
        client, peer = f"http://{self.ip}:{ETCD_PORT}", f"http://{self.ip}:{ETCD_PORT + 1}"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net={self.ns.path}", ETCD,
                 "--name", "b0", "--data-dir", str(self.root / "data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"b0={peer}", "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"cnb-{secrets.token_hex(4)}",
                 "--heartbeat-interval", "100", "--election-timeout", "1000",
                 "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        proc = in_ns(self.ns.path, sys.executable, "-c", ETCD_HEALTH, f"{client}/health", "20",
                     check=False, timeout=40)
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.stderr.strip()}\n{self.logs()}")

    def logs(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return ""

    def close(self) -> list[str]:
        errors = []
        if self.proc is not None:
            problem = stop_process(self.proc, timeout=5)
            if problem and "exited early" not in problem:
                errors.append(f"etcd {problem}")
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
        return errors


class Cluster:
    """Both hosts, the underlay, etcd, both daemons and every process the bench starts."""

    def __init__(self) -> None:
        self.hosts = [Netns("hA"), Netns("hB")]
        self.anchor_ns = [Netns("aA"), Netns("aB")]  # behind the hand-made bridge
        self.etcd: Etcd | None = None
        self.daemons: list[HostDaemon] = []
        self.procs: list[subprocess.Popen] = []  # iperf3 servers, probers

    @property
    def a(self) -> HostDaemon:
        return self.daemons[0]

    @property
    def b(self) -> HostDaemon:
        return self.daemons[1]

    def start(self) -> None:
        ha, hb = self.hosts
        for ns in self.hosts:
            ns.create()
        sh("ip", "-n", ha.name, "link", "add", "eth0", "mtu", "1500", "type", "veth", "peer",
           "name", "eth0", "mtu", "1500", "netns", hb.name)
        for ns, ip in zip(self.hosts, UNDERLAY, strict=True):
            sh("ip", "-n", ns.name, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns.name, "link", "set", "eth0", "up")
        self.etcd = Etcd(ha, UNDERLAY[0])
        self.etcd.start()
        for i, (ns, ip) in enumerate(zip(self.hosts, UNDERLAY, strict=True)):
            name = "hA" if i == 0 else "hB"
            d = HostDaemon(ns, name, ["--bridge", "none",
                                      "--cluster-store", f"etcd://{self.etcd.endpoint}",
                                      "--advertise-addr", ip, "--node-name", name])
            self.daemons.append(d)
            d.start()

    def popen(self, ns_path: str, *cmd: str, **kw) -> subprocess.Popen:
        """A process inside a namespace, killed at the end (and if we die: pdeathsig)."""
        proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "nsenter",
                                 f"--net={ns_path}", *cmd], start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> list[str]:
        errors: list[str] = []
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for d in self.daemons:
            errors += d.stop()
        for d in self.daemons:
            errors += d.cleanup()
        if self.etcd is not None:
            errors += self.etcd.close()
        for ns in self.anchor_ns + self.hosts:
            errors += ns.delete()
        if errors:
            for d in self.daemons:
                tail = "\n".join(d.logs().splitlines()[-15:])
                if tail:
                    errors.append(f"cnetd {d.name} log tail:\n{tail}")
        for d in self.daemons:
            shutil.rmtree(d.root, ignore_errors=True)
        return errors

    def leaks(self) -> list[str]:
        """Anything of ours still there after close(): namespaces, mounts, processes."""
        mine = [ns.name for ns in self.hosts + self.anchor_ns]
        roots = [str(d.root) for d in self.daemons]
        if self.etcd is not None:
            roots.append(str(self.etcd.root))
        out = []
        listed = sh("ip", "netns", "list", check=False).stdout.split()
        out += [f"namespace {n} left" for n in mine if n in listed]
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mp = line.split()[1]
            if any(mp.startswith(r) for r in roots):
                out.append(f"mount {mp} left")
        out += [f"directory {r} left" for r in roots if os.path.exists(r)]
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if any(r in argv for r in roots + mine):
                    out.append(f"process {pid} left: {argv.replace(chr(0), ' ')[:120]}")
        return out


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until cond() holds; seconds it took. Raises on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def pings(ns_path: str, ip: str, count: int = 1, wait: int = 1) -> bool:
    return in_ns(ns_path, "ping", "-n", "-q", "-c", str(count), "-W", str(wait), ip,
                 check=False, timeout=30).returncode == 0


def link_of(ns_path: str, ip: str) -> tuple[str, int]:
    """(interface name, MTU) of the interface holding `ip` in a namespace."""
    for line in in_ns(ns_path, "ip", "-o", "-4", "addr", "show").stdout.splitlines():
        f = line.split()
        if f[3].split("/")[0] == ip:
            ifname = f[1]
            link = in_ns(ns_path, "ip", "-o", "link", "show", "dev", ifname).stdout.split()
            return ifname, int(link[link.index("mtu") + 1])
    raise RuntimeError(f"no interface with {ip} in {ns_path}")


# --------------------------------------------------------------------------- 1. throughput
def hand_made(c: Cluster) -> None:
    """vxbench host to host, and vxbench2 + bridge + veth into a namespace of its own."""
    for i, ns in enumerate(c.hosts):
        local, peer = UNDERLAY[i], UNDERLAY[1 - i]
        n = ns.name
        sh("ip", "-n", n, "link", "add", "vxbench", "mtu", str(VX_MTU), "type", "vxlan",
           "id", "999", "dstport", "4790", "local", local, "nolearning")
        sh("bridge", "-n", n, "fdb", "append", "00:00:00:00:00:00", "dev", "vxbench",
           "dst", peer)
        sh("ip", "-n", n, "addr", "add", f"192.168.250.{i + 1}/24", "dev", "vxbench")
        sh("ip", "-n", n, "link", "set", "vxbench", "up")
        # the overlay's shape: vxlan and a veth on a bridge, the veth's peer elsewhere
        anc = c.anchor_ns[i]
        anc.create()
        sh("ip", "-n", n, "link", "add", "vxbench2", "mtu", str(VX_MTU), "type", "vxlan",
           "id", "998", "dstport", "4791", "local", local, "nolearning")
        sh("bridge", "-n", n, "fdb", "append", "00:00:00:00:00:00", "dev", "vxbench2",
           "dst", peer)
        sh("ip", "-n", n, "link", "add", "brbench", "mtu", str(VX_MTU), "type", "bridge")
        sh("ip", "-n", n, "link", "add", "vbbench", "mtu", str(VX_MTU), "type", "veth",
           "peer", "name", "eth0", "mtu", str(VX_MTU), "netns", anc.name)
        for dev in ("vxbench2", "vbbench"):
            sh("ip", "-n", n, "link", "set", dev, "master", "brbench", "up")
        sh("ip", "-n", n, "link", "set", "brbench", "up")
        sh("ip", "-n", anc.name, "addr", "add", f"192.168.251.{i + 1}/24", "dev", "eth0")
        sh("ip", "-n", anc.name, "link", "set", "eth0", "up")


def iperf(client_ns: str, server_ip: str, seconds: int) -> dict:
    return iperf3_client(client_ns, server_ip, seconds)


def bench_throughput(c: Cluster, rounds: int, seconds: int) -> dict[str, list[dict]]:
    ka, kb = c.a.key("sbA"), c.b.key("sbB")
    variants = [  # (label, server namespace, client namespace, server address)
        (CNET, ka, kb, SB_IPS[0]),
        (HAND, c.hosts[0].path, c.hosts[1].path, "192.168.250.1"),
        (HAND_BR, c.anchor_ns[0].path, c.anchor_ns[1].path, "192.168.251.1"),
    ]
    for label, srv, cli, ip in variants:  # reachable first, MTU as intended
        wait_for(lambda cli=cli, ip=ip: pings(cli, ip), 10, f"{label}: ping {ip}")
        ifname, mtu = link_of(srv, ip)
        if mtu != VX_MTU:
            raise RuntimeError(f"{label}: {ifname} has MTU {mtu}, expected {VX_MTU}")
        c.popen(srv, IPERF3, "-s", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"verified: each pair pings, MTU {VX_MTU} on every inner interface")
    results: dict[str, list[dict]] = {v[0]: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for label, _srv, cli, ip in order:
            res = iperf(cli, ip, seconds)
            results[label].append(res)
            print(f"  round {r + 1}/{rounds}  {label:<36} {res['gbps']:6.2f} Gbit/s  "
                  f"retr {res['retr']}")
            sys.stdout.flush()
    rows = []
    for label, runs in results.items():
        g = [x["gbps"] for x in runs]
        retr = [x["retr"] for x in runs if x["retr"] is not None]
        rows.append([label, f"{statistics.median(g):.2f}", f"{min(g):.2f}", f"{max(g):.2f}",
                     str(int(statistics.median(retr))) if retr else "n/a",
                     f"{statistics.median(x['cpu_snd'] for x in runs):.0f}",
                     f"{statistics.median(x['cpu_rcv'] for x in runs):.0f}"])
    print(f"\nTCP throughput, one stream, {rounds} x {seconds} s (+1 s omitted), B -> A")
    print_table(["path", "median Gbit/s", "min", "max", "retransmits (median)",
                 "CPU% sender", "CPU% receiver"], rows)
    return results


# --------------------------------------------------------------------------- 2. reach
def bench_reach(c: Cluster, rounds: int, retrans_ms: int) -> tuple[Stats, Stats, int]:
    reach, cli = Stats("connect -> first reply from A"), Stats("cnet network connect (CLI)")
    key_a = c.a.key("sbA")
    failures = 0
    for k in range(1 + rounds):  # round 0 is a warm-up
        sb, ip = f"r{k}", f"10.96.0.{REACH_BASE + k}"
        c.b.api.post("/sandboxes/create", {"Name": sb})
        prober = c.popen(key_a, sys.executable, "-c", PROBER, ip, str(PROBE_INTERVAL), "10",
                         str(retrans_ms), stdout=subprocess.PIPE, text=True)
        assert prober.stdout is not None
        if prober.stdout.readline().strip() != "ready":
            raise RuntimeError("prober did not start")
        time.sleep(0.05)  # it is already asking (ARP for the address fails)
        t0 = time.monotonic()
        subprocess.run(c.b.cli("network", "connect", "--ip", ip, OVERLAY, sb), env=cli_env(),
                       check=True, capture_output=True, timeout=60)
        t_cli = time.monotonic()
        line = prober.stdout.readline().split()
        prober.wait(15)
        c.procs.remove(prober)
        if line and line[0] == "reply":
            ms = (float(line[1]) - t0) * 1000
        else:
            ms = float("nan")
        if k:
            cli.add((t_cli - t0) * 1000)
            if ms == ms:
                reach.add(ms)
            else:
                failures += 1
        c.b.api.delete(f"/sandboxes/{sb}?force=1")
    return reach, cli, failures


# --------------------------------------------------------------------------- 3. attach
def attach_series(api: Api, network: str, sandboxes: list[str], stats: Stats,
                  create: Stats | None = None, join: Stats | None = None) -> list[dict]:
    eps = []
    for sb in sandboxes:
        t0 = now_ms()
        ep = api.post("/endpoints/create", {"Network": network, "Name": f"e-{sb}"})
        t1 = now_ms()
        ep = api.post(f"/endpoints/{ep['Id']}/join", {"Sandbox": sb})
        t2 = now_ms()
        stats.add(t2 - t0)
        if create is not None and join is not None:
            create.add(t1 - t0)
            join.add(t2 - t1)
        eps.append(ep)
    return eps


def bench_attach(c: Cluster, n: int) -> dict:
    api = c.a.api
    api.post("/networks/create", {"Name": ATTACH_BRIDGE, "Driver": "bridge",
                                  "IPAM": {"Config": [{"Subnet": ATTACH_BRIDGE_SUBNET}]}})
    c.a.run_cli("network", "create", "-d", "overlay", "--attachable", "--subnet",
                ATTACH_OVERLAY_SUBNET, ATTACH_OVERLAY)
    bridge_sbs, ov_sbs = [f"ab{i}" for i in range(n)], [f"ao{i}" for i in range(n)]
    t0 = now_ms()
    for sb in bridge_sbs + ov_sbs:
        api.post("/sandboxes/create", {"Name": sb})
    print(f"setup: {2 * n} sandboxes on host A in {(now_ms() - t0) / 1000:.1f} s (not timed)")
    br = Stats(f"bridge ({ATTACH_BRIDGE})")
    br_c, br_j = Stats("  bridge endpoint create"), Stats("  bridge endpoint join")
    ov = Stats(f"overlay ({ATTACH_OVERLAY}), 2nd..{n}th")
    ov_c, ov_j = Stats("  overlay endpoint create"), Stats("  overlay endpoint join")
    ov_first = Stats("overlay, 1st on the node")
    ov_nogw = Stats("overlay, sandbox already on bridge")
    br_eps = attach_series(api, ATTACH_BRIDGE, bridge_sbs, br, br_c, br_j)
    ov_eps = attach_series(api, ATTACH_OVERLAY, ov_sbs[:1], ov_first)
    ov_eps += attach_series(api, ATTACH_OVERLAY, ov_sbs[1:], ov, ov_c, ov_j)
    attach_series(api, ATTACH_OVERLAY, bridge_sbs, ov_nogw)
    t_last = time.monotonic()

    # checks on real packets, not the daemon's word
    problems = []
    for sbs, eps, what in ((bridge_sbs, br_eps, "bridge"), (ov_sbs, ov_eps, "overlay")):
        last_ip = eps[-1]["IPAddress"]
        if not pings(c.a.key(sbs[0]), last_ip):
            problems.append(f"{what}: {sbs[0]} cannot ping {sbs[-1]} ({last_ip})")
    ifs = in_ns(c.a.key(ov_sbs[-1]), "ip", "-o", "-4", "addr", "show").stdout
    gw_ifs = [ln.split()[1] for ln in ifs.splitlines() if " lo " not in ln]
    # host B learns the peers through etcd; then a sandbox there reaches the last one
    peers_b = 0

    def b_knows_all() -> bool:
        nonlocal peers_b
        view = c.b.api.get(f"/networks/{ATTACH_OVERLAY}?verbose=1")
        peers_b = sum(len(p["Endpoints"]) for p in view.get("Peers", []) if p["Name"] == "hA")
        return peers_b >= 2 * n

    try:
        wait_for(b_knows_all, 20, "host B to list every peer")
        lag_ms = (time.monotonic() - t_last) * 1000
    except RuntimeError:
        problems.append(f"host B lists {peers_b} of host A's {2 * n} endpoints")
        lag_ms = float("nan")
    c.b.api.post(f"/networks/{ATTACH_OVERLAY}/connect", {"Container": "sbB"})
    if not pings(c.b.key("sbB"), ov_eps[-1]["IPAddress"], count=1, wait=2):
        problems.append(f"host B's sandbox cannot ping {ov_sbs[-1]} on {ATTACH_OVERLAY}")
    if problems:
        raise RuntimeError("attach run broken, figures discarded: " + "; ".join(problems))
    print(f"verified: pings on both networks inside host A, host B lists all {2 * n} peers "
          f"and reaches {ov_sbs[-1]}; an overlay-only sandbox has {', '.join(gw_ifs)} "
          f"(overlay + cnet_gwbridge)")
    return {"bridge": br, "overlay": ov, "first": ov_first, "nogw": ov_nogw,
            "parts": [br_c, br_j, ov_c, ov_j], "lag_ms": lag_ms}


# --------------------------------------------------------------------------- main
def figure_min(summary: Summary, name: str, value: float, target: float) -> None:
    """A ratio with a lower bound as target (Summary.figure checks upper bounds)."""
    summary.rows.append((name, f"{value:.2f}x", f">= {target:g}x",
                         "ok" if value >= target else "MISSED"))
    summary.data[name] = {"value": value, "unit": "x", "target_min": target}


def run(args: argparse.Namespace) -> int:
    header(f"overlay: two hosts, one etcd member, cnetd each; iperf3 {args.rounds} x "
           f"{args.seconds} s per path, {args.reach} connect-to-reach rounds, "
           f"{args.endpoints} attaches per network")
    for t in (ETCD, IPERF3, shutil.which("setpriv"), shutil.which("bridge")):
        if not t or not os.access(t, os.X_OK):
            raise SystemExit("overlay bench needs etcd, iperf3, setpriv, bridge (iproute2)")
    summary = Summary("overlay")
    t_start = time.monotonic()
    c = Cluster()
    try:
        c.start()
        print(f"setup: hosts {c.hosts[0].name}, {c.hosts[1].name} (veth underlay, MTU 1500), "
              f"etcd {ETCD_PORT} in hA, cnetd each, in {time.monotonic() - t_start:.1f} s")
        c.a.run_cli("network", "create", "-d", "overlay", "--attachable", "--subnet",
                    OVERLAY_SUBNET, OVERLAY)
        wait_for(lambda: c.b.api.request("GET", f"/networks/{OVERLAY}")[0] == 200, 10,
                 f"{OVERLAY} on hB")
        for d, sb, ip in ((c.a, "sbA", SB_IPS[0]), (c.b, "sbB", SB_IPS[1])):
            d.run_cli("sandbox", "create", sb)
            d.run_cli("network", "connect", "--ip", ip, OVERLAY, sb)
        hand_made(c)
        sys.stdout.flush()

        tput = bench_throughput(c, args.rounds, args.seconds)
        reach, cli, failures = bench_reach(c, args.reach, args.probe_retrans_ms)
        print_stats(f"connect-to-reach, {args.reach} rounds (a new sandbox on hB each, "
                    f"`--ip` known in advance; prober in hA: ICMP every "
                    f"{PROBE_INTERVAL * 1000:.0f} ms, ARP retransmit {args.probe_retrans_ms} ms)",
                    [reach, cli])
        if failures:
            print(f"  {failures} rounds got no reply within 10 s")
        att = bench_attach(c, args.endpoints)
        print_stats(f"attach (API create+join) on host A, {args.endpoints} sandboxes each",
                    [att["bridge"], *att["parts"][:2], att["first"], att["overlay"],
                     *att["parts"][2:], att["nogw"]])
        print("  overlay figures include etcd round trips (address reservation txn, peer "
              "record put);\n  the 1st on the node also builds the overlay namespace "
              "(br0 + vxlan0); an overlay-only\n  sandbox also gets a second endpoint, on "
              "cnet_gwbridge (the last row has none:\n  those sandboxes are on the bridge "
              "network already)")
        print(f"  host B listed all {2 * args.endpoints} peer records "
              f"{fmt(att['lag_ms'])} ms after the last attach returned")
    finally:
        with no_interrupts():
            errors = c.close()
            errors += c.leaks()
            for e in errors:
                print(f"bench: cleanup: {e}", file=sys.stderr)
    if errors:
        return 1

    med = {k: statistics.median(x["gbps"] for x in v) for k, v in tput.items()}
    retr = {k: [x["retr"] for x in v if x["retr"] is not None] for k, v in tput.items()}
    summary.figure("overlay throughput (median)", med[CNET], "Gbit/s")
    summary.figure("hand-made VXLAN throughput (median)", med[HAND], "Gbit/s")
    summary.figure("hand-made VXLAN + bridge + veth (median)", med[HAND_BR], "Gbit/s")
    figure_min(summary, "overlay / hand-made VXLAN", ratio(med[CNET], med[HAND]),
               TARGET_THROUGHPUT)
    summary.figure("overlay / hand-made + bridge + veth", ratio(med[CNET], med[HAND_BR]), "x")
    for k, label in ((CNET, "overlay"), (HAND, "hand-made")):
        if retr[k]:
            summary.text(f"{label} TCP retransmits per run",
                         " ".join(str(x) for x in retr[k]))
    if reach.samples:
        summary.figure("connect-to-reach p50", reach.p50, target=TARGET_REACH_MS)
        summary.figure("connect-to-reach max", max(reach.samples), target=TARGET_REACH_MS)
    if failures:
        summary.text("connect-to-reach failures", f"{failures}/{args.reach}", "MISSED")
    summary.figure("cnet network connect CLI p50", cli.p50)
    br, ov = att["bridge"], att["overlay"]
    summary.figure("attach p50 bridge", br.p50)
    summary.figure("attach p50 overlay", ov.p50)
    summary.figure("attach p99 bridge", br.p(99))
    summary.figure("attach p99 overlay", ov.p(99))
    summary.figure("attach overlay/bridge p50", ratio(ov.p50, br.p50), "x")
    summary.figure("attach overlay/bridge p99", ratio(ov.p(99), br.p(99)), "x")
    summary.figure("attach overlay, 1st on the node", att["first"].samples[0])
    summary.figure("attach overlay, no gateway ep, p50", att["nogw"].p50)
    summary.print()
    print(f"\nrun time {time.monotonic() - t_start:.0f} s; cleanup: nothing left")
    if args.probe_retrans_ms != PROBE_RETRANS_MS:  # an experiment, not the reference
        return 0
    summary.save({"rounds": args.rounds, "seconds": args.seconds,
                  "throughput": tput, "reach": reach.to_dict(), "cli": cli.to_dict(),
                  "attach": {k: att[k].to_dict() for k in ("bridge", "overlay", "nogw")}})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="iperf3 rounds per path")
    p.add_argument("--seconds", type=int, default=4, help="seconds per iperf3 run")
    p.add_argument("--reach", type=int, default=10, help="connect-to-reach rounds")
    p.add_argument("-n", "--endpoints", type=int, default=100,
                   help="attaches per network")
    p.add_argument("--probe-retrans-ms", type=int, default=PROBE_RETRANS_MS,
                   help="ARP retransmit time in the prober's sandbox (kernel default 1000)")
    args = p.parse_args(argv)
    if min(args.rounds, args.seconds, args.reach) < 1 or args.endpoints < 2 \
            or args.probe_retrans_ms < 10:
        p.error("rounds, seconds, reach >= 1; endpoints >= 2; probe-retrans-ms >= 10")
    return main_wrapper(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
