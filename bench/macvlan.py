"""macvlan: container-to-external-host TCP throughput vs the host itself over the parent.

Setup (not timed): a "physical" LAN of namespaces: a switch (`cnet-b-<hex>-sw`, a bridge
sw0), an external host (`cnet-b-<hex>-ext`, 10.77.0.200/24) plugged into it, and a cnetd
in its own namespace (`cnet-b-<hex>`) whose `lan0` (10.77.0.10/24) is a veth into the
switch. In cnetd: `cnet network create -d macvlan --subnet 10.77.0.0/24 --gateway
10.77.0.1 --ip-range 10.77.0.64/28 -o parent=lan0 cnbmv` and one sandbox connected to it.

Measured: iperf3 (`-J`, one TCP stream, ROUNDS rounds of SECONDS s after 1 s omitted)
from the sandbox to the external host over its macvlan, and, as the anchor in the same
run, from the cnet host itself over lan0 (the same wire: veth, switch bridge, veth);
rounds alternate between the two. Also the reverse direction (`-R`: the external host
sends) as info. Medians in Gbit/s; target macvlan/host (ratio of the medians) >= 0.95;
the median of the per-round ratios (each macvlan run next to a host run) is shown too, as
it is less sensitive to the machine's load drifting during the run.

Everything made here is removed at the end, even on failure or Ctrl-C: iperf3 servers,
cnetd (SIGTERM, then `cnetd --cleanup`), the namespaces; then a leak check. Nothing
touches the root namespace's interfaces or firewall.

    python bench/macvlan.py [--rounds 5] [--seconds 4] [--pin]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time

from common import (
    IPERF3,
    Daemon,
    Netns,
    Summary,
    header,
    in_ns,
    iperf3_client,
    main_wrapper,
    no_interrupts,
    print_table,
    ratio,
    sh,
)

SUBNET, GATEWAY, RANGE = "10.77.0.0/24", "10.77.0.1", "10.77.0.64/28"
HOST_IP, EXT_IP = "10.77.0.10", "10.77.0.200"
PARENT, NETWORK, SANDBOX = "lan0", "cnbmv", "cnbsb"
MACVLAN = "sandbox -> external host, macvlan"
HOST = "cnet host -> external host, parent"
MACVLAN_R = "external host -> sandbox (-R), macvlan"
HOST_R = "external host -> cnet host (-R), parent"
TARGET = 0.95  # macvlan / host, at least
# --pin: iperf3 client on CPU 0, server on CPU 1 (`-A`). On a quiet machine pinned and
# unpinned runs agree; under other load, unpinned figures of either path may jump between
# two levels from run to run (the interleaved rounds and the paired ratio absorb most of it).
AFFINITY = ["-A", "0,1"] if (os.cpu_count() or 1) >= 2 else []
PIN = False


def iperf(client_ns: str, server_ip: str, seconds: int, reverse: bool = False) -> dict:
    return iperf3_client(client_ns, server_ip, seconds, *(AFFINITY if PIN else []),
                         *(["-R"] if reverse else []))


def pings(ns_path: str, ip: str) -> bool:
    return in_ns(ns_path, "ping", "-n", "-q", "-c", "1", "-W", "1", ip, check=False,
                 timeout=30).returncode == 0


def wait_ping(ns_path: str, ip: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pings(ns_path, ip):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ip} does not answer from {ns_path}")


def build_lan(sw: Netns, ext: Netns, host: Netns) -> None:
    sh("ip", "-n", sw.name, "link", "add", "sw0", "type", "bridge")
    sh("ip", "-n", sw.name, "link", "set", "sw0", "up")
    for port, peer, ns in (("p-ext", "eth0", ext), ("p-host", PARENT, host)):
        sh("ip", "-n", sw.name, "link", "add", port, "type", "veth", "peer", "name", peer,
           "netns", ns.name)
        sh("ip", "-n", sw.name, "link", "set", port, "master", "sw0", "up")
    sh("ip", "-n", ext.name, "addr", "add", f"{EXT_IP}/24", "dev", "eth0")
    sh("ip", "-n", ext.name, "link", "set", "eth0", "up")
    sh("ip", "-n", host.name, "addr", "add", f"{HOST_IP}/24", "dev", PARENT)
    sh("ip", "-n", host.name, "link", "set", PARENT, "up")


def leaks(names: list[str]) -> list[str]:
    listed = sh("ip", "netns", "list", check=False).stdout.split()
    return [f"namespace {n} left" for n in names if n in listed]


def run(args: argparse.Namespace) -> int:
    header(f"macvlan: iperf3 {args.rounds} x {args.seconds} s per path, one TCP stream"
           + (", client on CPU 0, server on CPU 1" if PIN and AFFINITY else ""))
    if not shutil.which(IPERF3):
        raise SystemExit("macvlan bench needs iperf3 (apt-get install iperf3)")
    summary = Summary("macvlan")
    t_start = time.monotonic()
    sw, ext = Netns("sw"), Netns("ext")
    daemon = Daemon()
    servers: list[subprocess.Popen] = []
    results: dict[str, list[dict]] = {MACVLAN: [], HOST: [], MACVLAN_R: [], HOST_R: []}
    errors: list[str] = []
    try:
        sw.create()
        ext.create()
        daemon.start()
        build_lan(sw, ext, daemon.ns)
        cli = [*daemon.cli()]
        sh(*cli, "network", "create", "-d", "macvlan", "--subnet", SUBNET, "--gateway",
           GATEWAY, "--ip-range", RANGE, "-o", f"parent={PARENT}", NETWORK)
        sh(*cli, "sandbox", "create", SANDBOX)
        sh(*cli, "network", "connect", NETWORK, SANDBOX)
        key = daemon.api.get(f"/sandboxes/{SANDBOX}")["Key"]
        sb_ip = daemon.api.get(f"/sandboxes/{SANDBOX}")["Networks"][NETWORK]["IPAddress"]
        wait_ping(key, EXT_IP)
        wait_ping(daemon.ns.path, EXT_IP)
        servers.append(subprocess.Popen(["nsenter", f"--net={ext.path}", IPERF3, "-s"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        print(f"setup in {time.monotonic() - t_start:.1f} s: sandbox {sb_ip} on macvlan "
              f"(parent {PARENT}), cnet host {HOST_IP}, external host {EXT_IP}")
        variants = [(MACVLAN, key, False), (HOST, daemon.ns.path, False),
                    (MACVLAN_R, key, True), (HOST_R, daemon.ns.path, True)]
        for r in range(args.rounds):
            # alternate who goes first within each direction
            order = variants if r % 2 == 0 else [variants[1], variants[0], variants[3],
                                                 variants[2]]
            for label, ns_path, reverse in order:
                res = iperf(ns_path, EXT_IP, args.seconds, reverse)
                results[label].append(res)
                print(f"  round {r + 1}/{args.rounds}  {label:<42} {res['gbps']:6.2f} Gbit/s"
                      f"  retr {res['retr']}")
                sys.stdout.flush()
    finally:
        with no_interrupts():
            for p in servers:
                if p.poll() is None:
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
            errors += daemon.close()
            errors += ext.delete()
            errors += sw.delete()
            errors += leaks([sw.name, ext.name, daemon.ns.name])
            for e in errors:
                print(f"bench: cleanup: {e}", file=sys.stderr)
    if errors:
        return 1
    rows = []
    med = {}
    for label, runs in results.items():
        g = [x["gbps"] for x in runs]
        med[label] = statistics.median(g)
        retr = [x["retr"] for x in runs if x["retr"] is not None]
        rows.append([label, f"{med[label]:.2f}", f"{min(g):.2f}", f"{max(g):.2f}",
                     str(int(statistics.median(retr))) if retr else "n/a"])
    print(f"\nTCP throughput, one stream, {args.rounds} x {args.seconds} s (+1 s omitted)")
    print_table(["path", "median Gbit/s", "min", "max", "retransmits (median)"], rows)
    summary.figure("macvlan sandbox -> external (median)", med[MACVLAN], "Gbit/s")
    summary.figure("host over parent -> external (median)", med[HOST], "Gbit/s")
    value = ratio(med[MACVLAN], med[HOST])
    summary.rows.append(("macvlan / host", f"{value:.2f}x", f">= {TARGET:g}x",
                         "ok" if value >= TARGET else "MISSED"))
    summary.data["macvlan / host"] = {"value": value, "unit": "x", "target_min": TARGET}
    paired = statistics.median(ratio(m["gbps"], h["gbps"])
                               for m, h in zip(results[MACVLAN], results[HOST], strict=True))
    summary.figure("macvlan / host, median of per-round ratios", paired, "x")
    summary.figure("reverse: macvlan / host", ratio(med[MACVLAN_R], med[HOST_R]), "x")
    summary.print()
    print(f"\nrun time {time.monotonic() - t_start:.0f} s; cleanup: nothing left")
    summary.save({"rounds": args.rounds, "seconds": args.seconds, "pinned": PIN,
                  "throughput": results})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="iperf3 rounds per path")
    p.add_argument("--seconds", type=int, default=4, help="seconds per iperf3 run")
    p.add_argument("--pin", action="store_true",
                   help="iperf3 client on CPU 0, server on CPU 1")
    args = p.parse_args(argv)
    global PIN
    PIN = args.pin
    if min(args.rounds, args.seconds) < 1:
        p.error("rounds and seconds must be >= 1")
    return main_wrapper(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
