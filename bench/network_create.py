"""Network create + rm latency (API) with 0 and with 200 existing networks, cnet and docker.

For each daemon (cnetd; dockerd in its own throwaway namespace when installed): ROUNDS
rounds of `POST /networks/create` + `DELETE /networks/{name}` of one bridge network
(10.200.0.0/24) with no other user network (after 2 untimed warm-up rounds); then EXISTING
networks are created (10.100.0.0/24, 10.100.1.0/24, ...: each is timed too, which shows
the growth curve); then the same ROUNDS rounds of one more network; then the EXISTING
networks are removed. Subnets are explicit, as Docker's default pools hold only 31
networks. Checks: the kernel shows EXISTING bridges (+1 during a round, with its gateway
address), and none at the end.

Target: creating the 201st network <= 1.3x the 1st (p50 of the rounds).

    python bench/network_create.py [--existing 200] [--rounds 20] [--no-docker] [--phases]

--phases (implies --no-docker) runs cnetd under bench/_cnetd_phases.py and prints where the
daemon spends a create/rm of the probe network with 0 vs EXISTING other networks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

from anchors import Docker, docker_missing
from common import (
    Api,
    Daemon,
    Netns,
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
    timed,
)

WARMUP = 2
TARGET_GROWTH = 1.3
PROBE = ("cnbprobe", "10.200.0.0/24", "10.200.0.1")


def existing_subnet(i: int) -> str:
    return f"10.{100 + i // 256}.{i % 256}.0/24"


@dataclass
class Result:
    create0: Stats
    rm0: Stats
    createn: Stats
    rmn: Stats
    fill: Stats  # each of the EXISTING creations, in order
    drain_s: float


def measure(label: str, api: Api, ns: Netns, existing: int, rounds: int,
            body: Callable[[str, str], dict], bridges_before: int) -> Result:
    """The whole sequence against one daemon's API; ns is where its bridges appear."""

    def rounds_of(tag: str, expect_bridges: int) -> tuple[Stats, Stats]:
        create, rm = Stats(f"{label} create ({tag})"), Stats(f"{label} rm ({tag})")
        name, subnet, gateway = PROBE
        for r in range(WARMUP + rounds):
            ms_c, _ = timed(api.post, "/networks/create", body(name, subnet))
            if r == 0:
                n = count_links(ns.path, "bridge")
                addrs = in_ns(ns.path, "ip", "-o", "-4", "addr", "show").stdout
                if n != expect_bridges + 1 or f" {gateway}/" not in addrs:
                    raise RuntimeError(f"{label}: after create: {n} bridges (expected "
                                       f"{expect_bridges + 1}), gateway {gateway} "
                                       f"{'present' if f' {gateway}/' in addrs else 'missing'}")
            ms_r, _ = timed(api.delete, f"/networks/{name}")
            if r >= WARMUP:
                create.add(ms_c)
                rm.add(ms_r)
        return create, rm

    create0, rm0 = rounds_of("0 existing", bridges_before)
    fill = Stats(f"{label} create #1..#{existing}")
    for i in range(existing):
        ms, _ = timed(api.post, "/networks/create", body(f"cnbfill{i}", existing_subnet(i)))
        fill.add(ms)
    n = count_links(ns.path, "bridge")
    if n != bridges_before + existing:
        raise RuntimeError(f"{label}: {n} bridges after creating {existing} networks")
    createn, rmn = rounds_of(f"{existing} existing", bridges_before + existing)
    t0 = now_ms()
    for i in range(existing):
        api.delete(f"/networks/cnbfill{i}")
    drain_s = (now_ms() - t0) / 1000
    n = count_links(ns.path, "bridge")
    if n != bridges_before:
        raise RuntimeError(f"{label}: {n} bridges left after removing every network")
    return Result(create0, rm0, createn, rmn, fill, drain_s)


def report(label: str, res: Result, existing: int, summary: Summary, target: bool) -> None:
    print_stats(f"{label}: network create/rm", [res.create0, res.rm0, res.createn, res.rmn,
                                                 res.fill])
    f = res.fill.samples
    w = min(20, max(1, len(f) // 2))
    print(f"{label}: creating the {existing}: {sum(f) / 1000:.1f} s; median of #1-{w} "
          f"{statistics.median(f[:w]):.2f} ms, of #{len(f) - w + 1}-{len(f)} "
          f"{statistics.median(f[-w:]):.2f} ms; removing them: {res.drain_s:.1f} s")
    summary.figure(f"{label} create p50, 0 existing", res.create0.p50)
    summary.figure(f"{label} create p50, {existing} existing", res.createn.p50)
    summary.figure(f"{label} rm p50, 0 existing", res.rm0.p50)
    summary.figure(f"{label} rm p50, {existing} existing", res.rmn.p50)
    summary.figure(f"{label} create #{existing + 1} / #1", ratio(res.createn.p50,
                                                                 res.create0.p50), "x",
                   target=TARGET_GROWTH if target else None)
    summary.figure(f"{label} rm #{existing + 1} / #1", ratio(res.rmn.p50, res.rm0.p50), "x")


def cnet_body(name: str, subnet: str) -> dict:
    return {"Name": name, "Driver": "bridge", "IPAM": {"Config": [{"Subnet": subnet}]}}


def docker_body(name: str, subnet: str) -> dict:
    return {"Name": name, "Driver": "bridge", "CheckDuplicate": True,
            "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet}]}}


def run(existing: int, rounds: int, with_docker: bool, phases: bool) -> int:
    header(f"network_create: API network create+rm with 0 and {existing} existing networks, "
           f"{rounds} rounds")
    summary = Summary("network_create")
    daemon_kw: dict = {}
    phases_out = None
    if phases:
        # cnetd --bridge none still holds 2 networks (host, none); the probe makes 3
        daemon_kw, phases_out = phases_daemon("networks", 3, existing + 2, match=PROBE[0])
    with Daemon(**daemon_kw) as d:
        cnet = measure("cnet", d.api, d.ns, existing, rounds, cnet_body, 0)
    report("cnet", cnet, existing, summary, target=True)
    if phases_out is not None:
        print_phases(phases_out, ("network_create", "network_delete"), "0 other networks",
                     f"{existing} other networks")
        summary.print()
        return 0
    data = {"cnet": {k: getattr(cnet, k).to_dict()
                     for k in ("create0", "rm0", "createn", "rmn", "fill")}}

    reason = docker_missing() if with_docker else "skipped (--no-docker)"
    if reason:
        print(f"\ndocker: {reason}")
        summary.text("docker anchor", "not measured", reason)
    else:
        try:
            with Docker() as dk:
                version = dk.version
                dres = measure("docker", dk.api, dk.ns, existing, rounds, docker_body, 0)
        except Exception as exc:
            print(f"\ndocker: anchor failed here: {exc}")
            summary.text("docker anchor", "failed", str(exc)[:60])
        else:
            print(f"\n(docker {version}: API on its unix socket, iptables in its namespace)")
            report("docker", dres, existing, summary, target=False)
            summary.figure("cnet/docker create p50, 0 existing",
                           ratio(cnet.create0.p50, dres.create0.p50), "x")
            summary.figure(f"cnet/docker create p50, {existing} existing",
                           ratio(cnet.createn.p50, dres.createn.p50), "x")
            summary.figure("cnet/docker rm p50, 0 existing",
                           ratio(cnet.rm0.p50, dres.rm0.p50), "x")
            data["docker"] = {k: getattr(dres, k).to_dict()
                              for k in ("create0", "rm0", "createn", "rmn", "fill")}
    summary.print()
    summary.save({"existing": existing, "rounds": rounds, **data})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--existing", type=int, default=200)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--no-docker", action="store_true", help="skip the docker anchor")
    p.add_argument("--phases", action="store_true",
                   help="time the daemon's internal phases (cnet only)")
    args = p.parse_args(argv)
    if not 1 <= args.existing <= 25000:
        p.error("--existing must be within 1..25000")
    return main_wrapper(lambda: run(args.existing, max(1, args.rounds),
                                    not (args.no_docker or args.phases), args.phases))


if __name__ == "__main__":
    sys.exit(main())
