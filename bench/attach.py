"""API-level attach/detach over many endpoints on one bridge network.

Setup (not timed): one cnetd in a throwaway namespace, one bridge network on a /16,
N sandboxes. Timed, one request after another on a keep-alive connection:

  attach i = POST /endpoints/create + POST /endpoints/{id}/join      for i in 1..N
  detach i = POST /endpoints/{id}/leave + DELETE /endpoints/{id}     after all N attached

Prints p50/p90/p99/max of each (and of the four calls separately), and how the cost
grows with the number of endpoints: median of attaches 1-20 ("10th") vs 481-500
("500th"), plus the raw 10th/500th samples. Targets: attach p50 <= 10 ms, 500th <= 1.3x
10th. The run is checked before figures are trusted: N veths in the daemon's namespace
after attaching, addresses inside sampled sandboxes, a ping between the first and the
last sandbox, and no veth left after detaching.

    python bench/attach.py [-n 500] [--phases] [--sandbox-ipv6-off]

--phases runs cnetd under bench/_cnetd_phases.py and prints where the daemon spends an
attach/detach (netlink calls, lookups, store, gc) in the first and last window, to show
what grows with the endpoint count. Its timers add a little overhead to every figure.
--sandbox-ipv6-off is an experiment: IPv6 is disabled inside each sandbox (untimed) before
attaching, so new interfaces send no IPv6 multicast (MLD, router solicitation, DAD) that the
bridge floods to every port. Neither run writes bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import (
    Daemon,
    Stats,
    Summary,
    count_links,
    header,
    in_ns,
    main_wrapper,
    now_ms,
    phases_daemon,
    print_phases,
    print_stats,
    ratio,
)

NETWORK = "benchnet"
SUBNET = "10.50.0.0/16"
TARGET_P50_MS = 10.0
TARGET_GROWTH = 1.3
WINDOW = 20  # attaches 1..20 and N-19..N stand for "the 10th" and "the 500th"


def verify_attached(d: Daemon, n: int, endpoints: list[dict]) -> list[str]:
    """Independent checks (ip/ping, not the daemon's word); returns problems found."""
    problems = []
    veths = count_links(d.ns.path, "veth")
    if veths != n:
        problems.append(f"{veths} veths in the daemon's namespace, expected {n}")
    bridges = count_links(d.ns.path, "bridge")
    if bridges != 1:
        problems.append(f"{bridges} bridges in the daemon's namespace, expected 1")
    for i in sorted({0, n // 2, n - 1}):
        sb = d.api.get(f"/sandboxes/sb{i}")
        want = endpoints[i]["IPAddress"]
        out = in_ns(sb["Key"], "ip", "-o", "-4", "addr", "show", check=False).stdout
        if f" {want}/" not in out:
            problems.append(f"sandbox sb{i}: address {want} not found in `ip addr`: {out!r}")
    first = d.api.get("/sandboxes/sb0")["Key"]
    last_ip = endpoints[n - 1]["IPAddress"]
    ping = in_ns(first, "ping", "-c", "1", "-W", "2", last_ip, check=False)
    if ping.returncode != 0:
        problems.append(f"sb0 cannot ping sb{n - 1} ({last_ip}): {ping.stdout.strip()}")
    return problems


def run(n: int, phases: bool, ipv6_off: bool) -> int:
    header(f"attach: API attach/detach of {n} endpoints on one bridge network ({SUBNET})")
    summary = Summary("attach")
    attach, detach = Stats("attach (create+join)"), Stats("detach (leave+delete)")
    create, join = Stats("  endpoint create"), Stats("  endpoint join")
    leave, delete = Stats("  endpoint leave"), Stats("  endpoint delete")
    w = min(WINDOW, n // 2)
    daemon_kw: dict = {}
    phases_out = None
    if phases:
        daemon_kw, phases_out = phases_daemon("endpoints", w, n - w + 1)
    with Daemon(**daemon_kw) as d:
        api = d.api
        api.post("/networks/create", {"Name": NETWORK, "Driver": "bridge",
                                      "IPAM": {"Config": [{"Subnet": SUBNET}]}})
        t0 = now_ms()
        for i in range(n):
            api.post("/sandboxes/create", {"Name": f"sb{i}"})
        print(f"setup: {n} sandboxes in {(now_ms() - t0) / 1000:.1f} s (not timed)")
        if ipv6_off:
            for i in range(n):
                in_ns(api.get(f"/sandboxes/sb{i}")["Key"], "sysctl", "-qw",
                      "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            print("experiment: IPv6 disabled inside every sandbox before attaching")
        sys.stdout.flush()

        endpoints: list[dict] = []
        t_all = now_ms()
        for i in range(n):
            t0 = now_ms()
            ep = api.post("/endpoints/create", {"Network": NETWORK, "Name": f"ep{i}"})
            t1 = now_ms()
            ep = api.post(f"/endpoints/{ep['Id']}/join", {"Sandbox": f"sb{i}"})
            t2 = now_ms()
            create.add(t1 - t0)
            join.add(t2 - t1)
            attach.add(t2 - t0)
            endpoints.append(ep)
        attach_total = now_ms() - t_all

        problems = verify_attached(d, n, endpoints)
        if problems:
            print("\nbench: the run is broken, figures discarded:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 1
        print(f"verified: {n} veths in the daemon's namespace, addresses in sampled "
              f"sandboxes, sb0 pings sb{n - 1}")

        t_all = now_ms()
        for ep in endpoints:
            t0 = now_ms()
            api.post(f"/endpoints/{ep['Id']}/leave")
            t1 = now_ms()
            api.delete(f"/endpoints/{ep['Id']}")
            t2 = now_ms()
            leave.add(t1 - t0)
            delete.add(t2 - t1)
            detach.add(t2 - t0)
        detach_total = now_ms() - t_all
        left = count_links(d.ns.path, "veth")
        if left:
            print(f"\nbench: {left} veths left after detaching all endpoints: broken run",
                  file=sys.stderr)
            return 1
        print("verified: no veth left after detaching")
        for i in range(n):
            api.delete(f"/sandboxes/sb{i}?force=1")
        api.delete(f"/networks/{NETWORK}")

    print_stats(f"latency over {n} endpoints", [attach, create, join, detach, leave, delete])
    print(f"\ntotal: attach {attach_total / 1000:.2f} s ({n / attach_total * 1000:.0f}/s), "
          f"detach {detach_total / 1000:.2f} s ({n / detach_total * 1000:.0f}/s)")

    s = attach.samples
    early, late = statistics.median(s[:w]), statistics.median(s[-w:])
    early_d, late_d = statistics.median(detach.samples[:w]), statistics.median(detach.samples[-w:])
    raw10, rawn = s[min(9, n - 1)], s[n - 1]
    print(f"\ngrowth with endpoint count (median of a window of {w}):")
    print(f"  attach 1-{w}: {early:.2f} ms   attach {n - w + 1}-{n}: {late:.2f} ms   "
          f"ratio {ratio(late, early):.2f}x")
    print(f"  raw: attach #10 {raw10:.2f} ms, attach #{n} {rawn:.2f} ms, "
          f"ratio {ratio(rawn, raw10):.2f}x")
    print(f"  detach first {w}: {early_d:.2f} ms   detach last {w}: {late_d:.2f} ms   "
          f"(detach runs from {n} endpoints down to 1)")
    quarters = [statistics.median(s[k * n // 4:(k + 1) * n // 4]) for k in range(4)]
    print("  attach median per quarter: " + "  ".join(f"{q:.2f}" for q in quarters) + " ms")

    summary.figure("attach p50", attach.p50, target=TARGET_P50_MS)
    summary.figure("attach p99", attach.p(99))
    summary.figure("detach p50", detach.p50)
    summary.figure("detach p99", detach.p(99))
    summary.figure(f"attach #{n} / #10 (window medians)", ratio(late, early), "x",
                   target=TARGET_GROWTH)
    summary.figure(f"attach #{n} / #10 (raw samples)", ratio(rawn, raw10), "x",
                   note="info (noisy)")
    if phases_out is not None:
        print_phases(phases_out, ("endpoint_join", "endpoint_create", "endpoint_leave"),
                     f"<= {w} endpoints", f">= {n - w + 1} endpoints")
    summary.print()
    if phases or ipv6_off:  # instrumented or experimental figures are not the reference
        return 0
    summary.save({"endpoints": n, "attach": attach.to_dict(), "detach": detach.to_dict(),
                  "create": create.to_dict(), "join": join.to_dict(),
                  "leave": leave.to_dict(), "delete": delete.to_dict()})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--endpoints", type=int, default=500)
    p.add_argument("--sandbox-ipv6-off", action="store_true",
                   help="experiment: disable IPv6 inside the sandboxes first (no IPv6 "
                        "multicast from new interfaces flooded to every bridge port)")
    p.add_argument("--phases", action="store_true",
                   help="time the daemon's internal phases (first vs last window)")
    args = p.parse_args(argv)
    if args.endpoints < 2:
        p.error("need at least 2 endpoints")
    return main_wrapper(lambda: run(args.endpoints, args.phases, args.sandbox_ipv6_off))


if __name__ == "__main__":
    sys.exit(main())
