"""Container start with networking in dockerd: Docker's own bridge vs a cnet network
reached through cnet's Docker plugin (issue 6's Docker benchmark).

One dockerd (Debian docker.io 20.10, overlay2, its default bridge docker0 on) and one
cnetd (`--bridge none`, serving the plugin API on /run/docker/plugins/cnet-b-<8hex>.sock)
share one throwaway network namespace. The busybox tar of scripts/build-busybox-image.sh
is `docker import`ed. Networks:

  none     --network none (no networking at all: the floor)
  docker0  --network bridge (Docker's default bridge)
  dbridge  `docker network create dbridge` (a user-defined Docker bridge: embedded DNS,
           like the cnet network, so the fairest comparison)
  cnet     `docker network create -d cnet-b-... --ipam-driver cnet-b-... cnetnet`

Before any figure, a check: on each network a container's eth0 has an address of that
network (`ip -o -4 addr`), and two containers on the cnet network ping each other.

Timed, interleaved (one round = one run on every network, so drift hits all alike), the
wall time of the docker CLI process, after WARMUP untimed rounds:

  run --rm   docker run --rm --network NET busybox true
  run -d     docker run -d --network NET busybox sleep 600
  rm -f      docker rm -f ID              (right after run -d)

Target: cnet no slower than Docker's bridge: run --rm p50 ratio cnet / dbridge <= 1.0.
The ratio against docker0 is shown too, and each path's networking cost over `none`.

    python bench/docker_plugin.py [-n 20]
    CNB_CNETD_LOG=debug python bench/docker_plugin.py   # keeps cnetd's log, with the
        # time of every plugin call, in /tmp/cnb-docker-plugin-cnetd.log
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from anchors import Docker, docker_missing
from common import (
    REPO_ROOT,
    Stats,
    Summary,
    header,
    in_ns,
    main_wrapper,
    mktemp,
    print_stats,
    ratio,
    sh,
    stop_process,
    tool,
    wait_api,
    wall_ms,
)

IMAGE = "busybox"
WARMUP = 2
TARGET = 1.0
PLUGIN_DIR = Path("/run/docker/plugins")
BUILD_IMAGE = REPO_ROOT / "scripts" / "build-busybox-image.sh"
KEPT_LOG = Path("/tmp/cnb-docker-plugin-cnetd.log")


class PluginCnetd:
    """cnetd inside dockerd's namespace, serving the Docker plugin API."""

    def __init__(self, ns_path: str):
        self.ns_path = ns_path
        self.name = f"cnet-b-{secrets.token_hex(4)}"
        self.plugin_sock = PLUGIN_DIR / f"{self.name}.sock"
        self.root = mktemp("cnetd")
        self.sock = str(self.root / "cnet.sock")
        self.cnetd = tool("cnetd")
        self.proc: subprocess.Popen | None = None

    def start(self) -> PluginCnetd:
        with open(self.root / "cnetd.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.ns_path}", self.cnetd, "-H", f"unix://{self.sock}",
                 "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                 "--log-level", os.environ.get("CNB_CNETD_LOG", "warning"), "--bridge", "none",
                 "--docker-plugin-socket", str(self.plugin_sock)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        proc = self.proc
        wait_api(self.sock, "/_ping", lambda: proc.poll() is None, "cnetd")
        return self

    def close(self) -> list[str]:
        errors: list[str] = []
        if self.proc is not None:
            problem = stop_process(self.proc)
            if problem:
                errors.append(f"cnetd {problem}")
            self.proc = None
        proc = in_ns(self.ns_path, self.cnetd, "--cleanup", "--data-root", self.root / "data",
                     "--exec-root", self.root / "exec", check=False)
        if proc.returncode != 0:
            errors.append(f"cnetd --cleanup: {(proc.stdout + proc.stderr).strip()}")
        if self.plugin_sock.exists():
            errors.append(f"{self.plugin_sock} left behind: removed")
            self.plugin_sock.unlink()
        if os.environ.get("CNB_CNETD_LOG") == "debug":
            shutil.copy(self.root / "cnetd.log", KEPT_LOG)
            print(f"cnetd's log (plugin calls timed): {KEPT_LOG}")
        shutil.rmtree(self.root, ignore_errors=True)
        return errors


def check(dk: Docker, networks: dict[str, str], cnet_net: str) -> None:
    for label, net in networks.items():
        if label == "none":
            continue
        out = dk.run("run", "--rm", "--network", net, IMAGE, "ip", "-o", "-4", "addr", "show",
                     "eth0")
        if " inet " not in out:
            raise RuntimeError(f"no IPv4 address on {label}: {out!r}")
    dk.containers += ["cnb-p1", "cnb-p2"]
    dk.run("run", "-d", "--name", "cnb-p1", "--network", cnet_net, IMAGE, "sleep", "600")
    dk.run("run", "-d", "--name", "cnb-p2", "--network", cnet_net, IMAGE, "sleep", "600")
    dk.run("exec", "cnb-p1", "ping", "-c", "1", "-W", "2", "cnb-p2")
    dk.run("rm", "-f", "cnb-p1", "cnb-p2")
    dk.containers = [c for c in dk.containers if not c.startswith("cnb-p")]


def bench(runs: int) -> int:
    missing = docker_missing()
    if missing:
        print(f"bench/docker_plugin.py: {missing}")
        return 0
    header("docker run with networking: Docker's bridge vs cnet's Docker plugin",
           [f"{runs} interleaved rounds after {WARMUP} warm-up rounds"])
    summary = Summary("docker_plugin")
    tar = mktemp("image") / "busybox.tar"
    dk = Docker(storage_driver="overlay2", default_bridge=True)
    cn: PluginCnetd | None = None
    try:
        sh(str(BUILD_IMAGE), str(tar))
        dk.start()
        cn = PluginCnetd(dk.ns.path).start()
        dk.import_tar(tar, IMAGE)
        dk.run("network", "create", "dbridge")
        dk.networks.append("dbridge")
        dk.run("network", "create", "-d", cn.name, "--ipam-driver", cn.name, "cnetnet")
        dk.networks.append("cnetnet")
        networks = {"none": "none", "docker0": "bridge", "dbridge": "dbridge",
                    "cnet": "cnetnet"}
        check(dk, networks, "cnetnet")
        print(f"dockerd {dk.version}; check passed (addresses on every network, "
              "ping by name on cnet)")
        rm_rm = {k: Stats(f"run --rm  {k}") for k in networks}
        run_d = {k: Stats(f"run -d    {k}") for k in networks}
        rm_f = {k: Stats(f"rm -f     {k}") for k in networks}
        docker = dk.argv()
        for i in range(WARMUP + runs):
            for label, net in networks.items():
                ms = wall_ms([*docker, "run", "--rm", "--network", net, IMAGE, "true"],
                             env=dk.env)
                name = f"cnb-{label}-{i}"
                dk.containers.append(name)
                ms_d = wall_ms([*docker, "run", "-d", "--name", name, "--network", net, IMAGE,
                                "sleep", "600"], env=dk.env)
                ms_rm = wall_ms([*docker, "rm", "-f", name], env=dk.env)
                dk.containers.remove(name)
                if i >= WARMUP:
                    rm_rm[label].add(ms)
                    run_d[label].add(ms_d)
                    rm_f[label].add(ms_rm)
        print_stats("docker CLI wall time", [*rm_rm.values(), *run_d.values(),
                                             *rm_f.values()])
        p = {k: s.p50 for k, s in rm_rm.items()}
        summary.figure("run --rm p50, cnet network (plugin)", p["cnet"])
        summary.figure("run --rm p50, docker user bridge", p["dbridge"])
        summary.figure("run --rm p50, docker0", p["docker0"])
        summary.figure("run --rm p50, --network none", p["none"])
        summary.figure("cnet / docker user bridge, run --rm", ratio(p["cnet"], p["dbridge"]),
                       "x", TARGET)
        summary.figure("cnet / docker0, run --rm", ratio(p["cnet"], p["docker0"]), "x")
        summary.figure("cnet / docker user bridge, run -d",
                       ratio(run_d["cnet"].p50, run_d["dbridge"].p50), "x", TARGET)
        summary.figure("cnet / docker user bridge, rm -f",
                       ratio(rm_f["cnet"].p50, rm_f["dbridge"].p50), "x")
        for label in ("docker0", "dbridge", "cnet"):
            summary.figure(f"networking cost over none, run --rm, {label}",
                           p[label] - p["none"])
        summary.print()
        summary.save()
        return 1 if summary.missed else 0
    finally:
        errors: list[str] = []
        # Containers and networks go while cnetd still serves the plugin (dockerd asks it
        # to remove its endpoints and networks), then cnetd, then dockerd and the namespace.
        if dk.proc is not None and dk.proc.poll() is None:
            for what, names in (("rm", dk.containers), ("network", dk.networks)):
                for n in list(names):
                    cmd = ["rm", "-f", n] if what == "rm" else ["network", "rm", n]
                    proc = subprocess.run(dk.argv(*cmd), env=dk.env, capture_output=True,
                                          text=True, timeout=60)
                    if proc.returncode != 0:
                        errors.append(f"docker {' '.join(cmd)}: {proc.stderr.strip()}")
                    names.remove(n)
        if cn is not None:
            errors += cn.close()
        errors += dk.close()
        shutil.rmtree(tar.parent, ignore_errors=True)
        for e in errors:
            print(f"bench: cleanup: {e}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=20, help="timed rounds (default 20)")
    args = p.parse_args()
    return main_wrapper(lambda: bench(max(1, args.runs)))


if __name__ == "__main__":
    sys.exit(main())
