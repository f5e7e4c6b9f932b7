"""`cnet network connect`/`disconnect` end to end, against docker and the CNI bridge plugin.

cnet: one cnetd in a throwaway namespace, networks `cnbbase` and `cnbnet`, 3 sandboxes
already on `cnbbase`. Timed: the wall time of the real CLI process, `cnet network connect
cnbnet sbK` then `cnet network disconnect cnbnet sbK`, ROUNDS rounds over the sandboxes
(after 2 untimed warm-up rounds). Then the same through the API on a keep-alive connection
(what the daemon costs without the CLI), `cnet --help`, `cnet network ls`, the bare
interpreter and `import click` as a floor, and `python -X importtime` of cnet.cli.main.

Anchors, same run, same shape (skipped with a note when not installed):
- docker: dockerd in its own throwaway namespace, 3 busybox containers on a user network,
  `docker network connect/disconnect` (CLI wall time), then the same through its API;
- CNI: the reference `bridge` plugin with `host-local` IPAM, `CNI_COMMAND=ADD`/`DEL` run
  with `nsenter --net=<throwaway host ns>` against throwaway container namespaces (the
  nsenter exec itself is measured too).

Targets: cnet connect p50 <= 0.5x docker's. cnet/CNI is informational.

    python bench/connect_cli.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from anchors import CniBridge, Docker, cni_missing, cni_version, docker_missing
from common import (
    Daemon,
    Stats,
    Summary,
    header,
    in_ns,
    main_wrapper,
    print_stats,
    print_table,
    ratio,
    timed,
    wall_ms,
)

TARGETS = 3
WARMUP = 2
STARTUP_RUNS = 20
TARGET_VS_DOCKER = 0.5


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CNET_HOST", None)
    return env


def importtime(argv: list[str], top: int = 12) -> tuple[float, list[tuple[int, int, str]]]:
    """(total ms of top-level imports, [(cumulative us, depth, module)] largest first)."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), timeout=60)
    rows = []
    total = 0
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        cum, depth, name = int(m.group(2)), (len(m.group(3)) - 1) // 2, m.group(4)
        rows.append((cum, depth, name))
        if depth == 0:
            total += cum
    rows.sort(key=lambda r: -r[0])
    return total / 1000.0, rows[:top]


def print_importtime(title: str, total_ms: float, rows: list[tuple[int, int, str]]) -> None:
    print(f"\n{title}: {total_ms:.1f} ms of imports; largest cumulative:")
    print_table(["module (depth)", "cumulative ms"],
                [[f"{'  ' * d}{name} ({d})", f"{cum / 1000:.1f}"] for cum, d, name in rows])


def bench_cnet(rounds: int, summary: Summary) -> dict[str, Stats]:
    connect, disconnect = Stats("cnet network connect"), Stats("cnet network disconnect")
    api_connect, api_disconnect = Stats("API connect"), Stats("API disconnect")
    help_, ls = Stats("cnet --help"), Stats("cnet network ls")
    bare, click_ = Stats("python -c pass"), Stats("python -c 'import click'")
    nosite = Stats("python -S -c pass (no site)")
    env = cli_env()
    with Daemon() as d:
        api = d.api
        api.post("/networks/create", {"Name": "cnbbase", "Driver": "bridge",
                                      "IPAM": {"Config": [{"Subnet": "10.70.0.0/24"}]}})
        api.post("/networks/create", {"Name": "cnbnet", "Driver": "bridge",
                                      "IPAM": {"Config": [{"Subnet": "10.71.0.0/16"}]}})
        for k in range(TARGETS):
            api.post("/sandboxes/create", {"Name": f"sb{k}"})
            api.post("/networks/cnbbase/connect", {"Container": f"sb{k}"})
        for r in range(WARMUP + rounds):
            sb = f"sb{r % TARGETS}"
            ms_c = wall_ms(d.cli("network", "connect", "cnbnet", sb), env=env)
            if r == 0:  # check the real thing happened (outside the timing)
                key = api.get(f"/sandboxes/{sb}")["Key"]
                out = in_ns(key, "ip", "-o", "-4", "addr", "show", "dev", "eth1").stdout
                if " 10.71." not in out:
                    raise RuntimeError(f"connect did not give {sb} an address on cnbnet: {out}")
            ms_d = wall_ms(d.cli("network", "disconnect", "cnbnet", sb), env=env)
            if r >= WARMUP:
                connect.add(ms_c)
                disconnect.add(ms_d)
        for r in range(WARMUP + rounds):
            body = {"Container": f"sb{r % TARGETS}"}
            ms_c, _ = timed(api.post, "/networks/cnbnet/connect", body)
            ms_d, _ = timed(api.post, "/networks/cnbnet/disconnect", body)
            if r >= WARMUP:
                api_connect.add(ms_c)
                api_disconnect.add(ms_d)
        for _ in range(STARTUP_RUNS):
            help_.add(wall_ms([d.cnet, "--help"], env=env))
            ls.add(wall_ms(d.cli("network", "ls"), env=env))
            bare.add(wall_ms([sys.executable, "-c", "pass"], env=env))
            nosite.add(wall_ms([sys.executable, "-S", "-c", "pass"], env=env))
            click_.add(wall_ms([sys.executable, "-c", "import click"], env=env))
        total, rows = importtime([sys.executable, "-X", "importtime", "-c",
                                  "import cnet.cli.main"])
        total_ls, rows_ls = importtime([sys.executable, "-X", "importtime", d.cnet,
                                        "-H", d.host, "network", "ls"])
    print_stats(f"cnet, {rounds} rounds over {TARGETS} sandboxes already on another network",
                [connect, disconnect, api_connect, api_disconnect])
    print_stats(f"CLI start-up, {STARTUP_RUNS} runs each",
                [help_, ls, bare, nosite, click_])
    print_importtime("python -X importtime -c 'import cnet.cli.main'", total, rows)
    print_importtime("python -X importtime cnet network ls", total_ls, rows_ls)
    summary.figure("cnet network connect p50", connect.p50)
    summary.figure("cnet network disconnect p50", disconnect.p50)
    summary.figure("cnet API connect p50", api_connect.p50)
    summary.figure("cnet API disconnect p50", api_disconnect.p50)
    summary.figure("cnet --help p50", help_.p50)
    summary.figure("cnet network ls p50", ls.p50)
    summary.figure("python -c pass p50 (floor)", bare.p50)
    summary.figure("python -S -c pass p50 (no site)", nosite.p50)
    summary.figure("imports of cnet.cli.main", total)
    return {"connect": connect, "disconnect": disconnect, "api_connect": api_connect,
            "api_disconnect": api_disconnect, "help": help_, "ls": ls}


def bench_docker(rounds: int) -> dict[str, Stats] | None:
    reason = docker_missing()
    if reason:
        print(f"\ndocker: {reason}")
        return None
    connect, disconnect = Stats("docker network connect"), Stats("docker network disconnect")
    api_connect, api_disconnect = Stats("API connect"), Stats("API disconnect")
    ls = Stats("docker network ls")
    try:
        with Docker() as dk:
            dk.import_busybox()
            dk.network_create("cnbbase", "10.70.0.0/24")
            dk.network_create("cnbnet", "10.71.0.0/16")
            for k in range(TARGETS):
                dk.container(f"c{k}", "cnbbase")
            for r in range(WARMUP + rounds):
                c = f"c{r % TARGETS}"
                ms_c = wall_ms(dk.argv("network", "connect", "cnbnet", c), env=dk.env)
                ms_d = wall_ms(dk.argv("network", "disconnect", "cnbnet", c), env=dk.env)
                if r >= WARMUP:
                    connect.add(ms_c)
                    disconnect.add(ms_d)
            for r in range(WARMUP + rounds):
                body = {"Container": f"c{r % TARGETS}"}
                ms_c, _ = timed(dk.api.post, "/networks/cnbnet/connect", body)
                ms_d, _ = timed(dk.api.post, "/networks/cnbnet/disconnect", body)
                if r >= WARMUP:
                    api_connect.add(ms_c)
                    api_disconnect.add(ms_d)
            for _ in range(STARTUP_RUNS):
                ls.add(wall_ms(dk.argv("network", "ls"), env=dk.env))
            version = dk.version
    except Exception as exc:  # the anchor is optional: say why, keep going
        print(f"\ndocker: anchor failed here: {exc}")
        return None
    print_stats(f"docker {version} (vfs, iptables in its namespace), {rounds} rounds over "
                f"{TARGETS} containers already on another network",
                [connect, disconnect, api_connect, api_disconnect, ls])
    return {"connect": connect, "disconnect": disconnect, "api_connect": api_connect,
            "api_disconnect": api_disconnect, "ls": ls}


def bench_cni(rounds: int) -> dict[str, Stats] | None:
    reason = cni_missing()
    if reason:
        print(f"\nCNI: {reason}")
        return None
    add, delete = Stats("bridge ADD"), Stats("bridge DEL")
    nsenter = Stats("nsenter --net=... true")
    try:
        with CniBridge() as cni:
            namespaces = [cni.container_ns() for _ in range(TARGETS)]
            for r in range(WARMUP + rounds):
                ns = namespaces[r % TARGETS]
                ms_a = cni.call("ADD", f"cnb{r}", ns)
                if r == 0:
                    out = in_ns(ns.path, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
                    if " 10.63." not in out:
                        raise RuntimeError(f"CNI ADD gave no address: {out}")
                ms_d = cni.call("DEL", f"cnb{r}", ns)
                if r >= WARMUP:
                    add.add(ms_a)
                    delete.add(ms_d)
            for _ in range(STARTUP_RUNS):
                nsenter.add(wall_ms(["nsenter", f"--net={cni.host.path}", "true"]))
    except Exception as exc:
        print(f"\nCNI: anchor failed here: {exc}")
        return None
    print_stats(f"CNI bridge plugin (spec {cni_version()}, host-local IPAM, ipMasq off), "
                f"{rounds} rounds over {TARGETS} namespaces", [add, delete, nsenter])
    return {"add": add, "del": delete, "nsenter": nsenter}


def run(rounds: int) -> int:
    header(f"connect_cli: `cnet network connect/disconnect` end to end, {rounds} rounds")
    summary = Summary("connect_cli")
    cnet = bench_cnet(rounds, summary)
    docker = bench_docker(rounds)
    cni = bench_cni(rounds)
    if docker:
        summary.figure("docker network connect p50", docker["connect"].p50)
        summary.figure("docker network disconnect p50", docker["disconnect"].p50)
        summary.figure("docker API connect p50", docker["api_connect"].p50)
        summary.figure("cnet/docker connect (CLI)",
                       ratio(cnet["connect"].p50, docker["connect"].p50), "x",
                       target=TARGET_VS_DOCKER)
        summary.figure("cnet/docker disconnect (CLI)",
                       ratio(cnet["disconnect"].p50, docker["disconnect"].p50), "x")
        summary.figure("cnet/docker connect (API)",
                       ratio(cnet["api_connect"].p50, docker["api_connect"].p50), "x")
        summary.figure("cnet/docker network ls (CLI)",
                       ratio(cnet["ls"].p50, docker["ls"].p50), "x")
    else:
        summary.text("docker anchor", "not measured", "apt-get install docker.io")
    if cni:
        summary.figure("CNI bridge ADD p50", cni["add"].p50)
        summary.figure("CNI bridge DEL p50", cni["del"].p50)
        summary.figure("cnet connect / CNI ADD",
                       ratio(cnet["connect"].p50, cni["add"].p50), "x")
        summary.figure("cnet disconnect / CNI DEL",
                       ratio(cnet["disconnect"].p50, cni["del"].p50), "x")
    else:
        summary.text("CNI anchor", "not measured", "apt-get install containernetworking-plugins")
    summary.print()
    summary.save({"rounds": rounds,
                  "cnet": {k: v.to_dict() for k, v in cnet.items()},
                  "docker": {k: v.to_dict() for k, v in (docker or {}).items()},
                  "cni": {k: v.to_dict() for k, v in (cni or {}).items()}})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    return main_wrapper(lambda: run(max(1, args.rounds)))


if __name__ == "__main__":
    sys.exit(main())
