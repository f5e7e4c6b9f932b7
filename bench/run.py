"""`cnet run --rm IMAGE true` end to end, against `docker run --rm` (issue 3's benchmark).

cnet: one cnetd in a throwaway namespace; the busybox rootfs tar that
scripts/build-busybox-image.sh builds, `cnet image import`ed as `busybox`; a bridge network
`benchnet`. Before any figure, a correctness check: `cnet run --rm --network benchnet
busybox sh -c 'echo ok; ip -o -4 addr show eth0'` exits 0 and prints ok and an address on
benchnet, and afterwards nothing is left: `cnet ps -aq` is empty, and (independently of
the daemon's word) no veth in its namespace, no mount under its exec-root's containers,
no process in its namespace but cnetd, no cgroup under its cgroup parent. The same
leftover check runs again after all timed runs.

Timed, back to back (so work the daemon defers after a command returns is paid by the
next one), after WARMUP untimed runs, the wall time of the real CLI process:

  run --rm   cnet -H ... run --rm --network benchnet busybox true
  run -d     cnet -H ... run -d --network benchnet --name cnbK busybox true
  rm -f      cnet -H ... rm -f cnbK               (right after run -d)

A CLI run that exits non-zero is listed with its error, left out of the figures, and makes
the script exit 1 (an intermittent failure then shows with its rate next to the figures).

Then the same container through the API on a keep-alive connection, to show where the
time goes: POST /containers/create?name= (HostConfig.AutoRemove, NetworkMode benchnet),
POST /containers/{id}/start, POST /containers/{id}/wait (cnet answers once the container
exited), then GET /containers/json?all=1, which runs on the daemon's worker after the
auto-removal and so times what is left of it. Floors: `python -c pass` and `python -S -c
pass` (the shim's interpreter start), `cnet --help`, `cnet ps -q` (CLI start-up plus one
request).

Anchor, same run, same shape (skipped with a note when docker.io is not installed):
dockerd in its own throwaway namespace, overlay2 storage like cnet's overlayfs
(--docker-storage vfs to change), the same tar `docker import`ed, `docker network create
benchnet`, `docker run --rm --network benchnet IMG true`, `run -d` + `rm -f`, and the API
sequence (wait?condition=removed issued before start on a second connection, as the docker
CLI does: otherwise it could miss a container already removed).

Where cnet's time goes (--no-phases skips it): a second cnetd, started by this script
(`run.py --as-cnetd OUT.json <cnetd args>`) with wall-clock timers wrapped by name around
the runtime's steps (sandbox, endpoint/veth, overlay mount, spec, shim start, exit handling,
removal, store writes), and with `runc` on its PATH replaced by a bash wrapper that logs
each runc call's duration; N more `cnet run --rm ... true` runs, after the warm-ups, are
summed per step. Timers and the wrapper add a little (a few ms per runc call), which is
why these figures come from their own daemon and are not the headline ones.

Target: cnet run --rm p50 <= 0.6x docker's (issue 3 measured docker at 388 ms/op here).

    python bench/run.py [-n 20] [--docker-storage overlay2|vfs] [--no-docker] [--no-phases]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from anchors import Docker, docker_missing
from common import (
    REPO_ROOT,
    Daemon,
    Stats,
    Summary,
    count_links,
    fmt,
    header,
    main_wrapper,
    mktemp,
    print_table,
    ratio,
    sh,
    timed,
    wall_ms,
)

NETWORK = "benchnet"
SUBNET = "10.72.0.0/24"
IMAGE = "busybox"
WARMUP = 2
FLOOR_RUNS = 10
TARGET_VS_DOCKER = 0.6
DOCKER_REFERENCE_MS = 388  # issue 3: docker run --rm on a user-defined network, measured here
BUILD_IMAGE = REPO_ROOT / "scripts" / "build-busybox-image.sh"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def print_runs(title: str, stats: list[Stats]) -> None:
    print(f"\n{title} (ms)")
    print_table(["operation", "n", "p50", "p90", "min", "max"],
                [[s.name, str(s.n), fmt(s.p50), fmt(s.p(90)), fmt(min(s.samples)),
                  fmt(max(s.samples))] for s in stats if s.samples])
    sys.stdout.flush()


def cli_ms(argv: list[str], failures: list[str], what: str) -> float | None:
    """Wall ms of one CLI run; None, and the failure recorded, if it exited non-zero.

    A failed run is counted, not fatal, so that an intermittent failure shows up with
    its rate next to the figures of the runs that worked.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    ms = (time.perf_counter() - t0) * 1000.0
    if proc.returncode != 0:
        failures.append(f"{what}: exit {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[:200]}")
        return None
    return ms


def repeat(n: int, fn: Callable[[int], None]) -> None:
    """fn(i) for WARMUP untimed rounds (i < 0) then n timed ones (i = 0..n-1)."""
    for i in range(-WARMUP, n):
        fn(i)


def build_image(out: Path) -> Path:
    tar = out / "busybox.tar"
    proc = sh(BUILD_IMAGE, tar, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {BUILD_IMAGE.name} failed: {proc.stderr.strip()}")
    print(f"image: {BUILD_IMAGE.relative_to(REPO_ROOT)} -> {tar.stat().st_size >> 10} KiB tar")
    return tar


# --------------------------------------------------------------------------- cnet
def cnet_leftovers(d: Daemon, daemon_id: str) -> list[str]:
    """What a finished container could leave behind, looked up without asking cnetd."""
    problems = []
    ps = sh(*d.cli("ps", "-aq")).stdout.split()
    if ps:
        problems.append(f"`cnet ps -aq` lists {ps}")
    veths = count_links(d.ns.path, "veth")
    if veths:
        problems.append(f"{veths} veth(s) left in the daemon's namespace")
    under = str(d.exec_root / "containers")
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1].startswith(under)]
    if mounts:
        problems.append(f"mounts left: {mounts}")
    assert d.proc is not None
    others = sorted(set(d.ns.pids()) - {d.proc.pid})
    if others:
        cmds = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode(
            errors="replace") for p in others if Path(f"/proc/{p}").exists()]
        problems.append(f"processes left in the daemon's namespace: {others} {cmds}")
    cgroups = [str(c) for c in Path("/sys/fs/cgroup").glob(f"*/cnet/{daemon_id}/*")
               if c.is_dir()]
    if cgroups:
        problems.append(f"cgroups left: {cgroups[:4]}")
    return problems


def cnet_check(d: Daemon, daemon_id: str) -> None:
    """`run --rm` really runs the command on benchnet, exits 0 and leaves nothing."""
    prefix = SUBNET.rsplit(".", 1)[0] + "."
    proc = sh(*d.cli("run", "--rm", "--network", NETWORK, IMAGE, "sh", "-c",
                     "echo ok; ip -o -4 addr show eth0"), check=False)
    lines = proc.stdout.splitlines()
    problems = []
    if proc.returncode != 0:
        problems.append(f"exit code {proc.returncode}: {proc.stderr.strip()}")
    if not lines or lines[0] != "ok":
        problems.append(f"printed {proc.stdout!r}, expected ok first")
    if f"inet {prefix}" not in proc.stdout:
        problems.append(f"no address on {NETWORK} ({SUBNET}) in the container: {proc.stdout!r}")
    problems += cnet_leftovers(d, daemon_id)
    if problems:
        raise RuntimeError("cnet correctness check failed, no figures:\n  "
                           + "\n  ".join(problems))
    addr = re.search(r"inet (\S+)", proc.stdout)
    print(f"check: cnet run --rm printed ok, had {addr.group(1) if addr else '?'} on "
          f"{NETWORK}, exit 0, nothing left behind")


def bench_cnet(n: int, tar: Path, failures: list[str]) -> dict[str, Stats]:
    rm_run, run_d, rm_f = Stats("cnet run --rm"), Stats("cnet run -d"), Stats("cnet rm -f")
    create, start = Stats("API create"), Stats("API start")
    wait, removal = Stats("API wait (exited)"), Stats("API list after wait (removal)")
    total = Stats("API total")
    help_, ps = Stats("cnet --help"), Stats("cnet ps -q")
    bare, nosite = Stats("python -c pass"), Stats("python -S -c pass (shim floor)")
    with Daemon() as d:
        api = d.api
        print(f"cnet: cnetd in {d.ns.name}, load {loadavg()}")
        sh(*d.cli("image", "import", tar, IMAGE))
        sh(*d.cli("network", "create", "--subnet", SUBNET, NETWORK))
        daemon_id = api.get("/info")["DaemonID"]
        cnet_check(d, daemon_id)

        def one_rm(i: int) -> None:
            ms = cli_ms(d.cli("run", "--rm", "--network", NETWORK, IMAGE, "true"), failures,
                        "cnet run --rm")
            if i >= 0 and ms is not None:
                rm_run.add(ms)

        def one_d(i: int) -> None:
            name = f"cnbd{i + WARMUP}"
            ms_run = cli_ms(d.cli("run", "-d", "--network", NETWORK, "--name", name, IMAGE,
                                  "true"), failures, "cnet run -d")
            ms_rm = cli_ms(d.cli("rm", "-f", name), failures, "cnet rm -f")
            if i >= 0 and ms_run is not None and ms_rm is not None:
                run_d.add(ms_run)
                rm_f.add(ms_rm)

        body = {"Image": IMAGE, "Cmd": ["true"],
                "HostConfig": {"AutoRemove": True, "NetworkMode": NETWORK}}

        def one_api(i: int) -> None:
            ms_c, c = timed(api.post, f"/containers/create?name=cnba{i + WARMUP}", body)
            ms_s, _ = timed(api.call, "POST", f"/containers/{c['Id']}/start")
            ms_w, res = timed(api.call, "POST", f"/containers/{c['Id']}/wait")
            ms_l, left = timed(api.get, "/containers/json?all=1")
            if res.get("StatusCode") != 0 or left:
                raise RuntimeError(f"API run: exit {res}, containers left: {left}")
            if i >= 0:
                for s, ms in ((create, ms_c), (start, ms_s), (wait, ms_w), (removal, ms_l)):
                    s.add(ms)
                total.add(ms_c + ms_s + ms_w + ms_l)

        repeat(n, one_rm)
        repeat(n, one_d)
        repeat(n, one_api)
        for _ in range(FLOOR_RUNS):
            help_.add(wall_ms([d.cnet, "--help"]))
            ps.add(wall_ms(d.cli("ps", "-q")))
            bare.add(wall_ms([sys.executable, "-c", "pass"]))
            nosite.add(wall_ms([sys.executable, "-S", "-c", "pass"]))
        problems = cnet_leftovers(d, daemon_id)
        if problems:
            raise RuntimeError("cnet left things behind after the timed runs:\n  "
                               + "\n  ".join(problems))
        print(f"cnet: {3 * (n + WARMUP)} timed-loop containers, nothing left behind; "
              f"load {loadavg()}")
    print_runs(f"cnet, {n} runs each after {WARMUP} warm-ups (CLI wall time)",
               [rm_run, run_d, rm_f])
    print_runs("cnet API, same container (keep-alive unix socket)",
               [create, start, wait, removal, total])
    print_runs(f"floors, {FLOOR_RUNS} runs each", [bare, nosite, help_, ps])
    return {"run_rm": rm_run, "run_d": run_d, "rm_f": rm_f, "api_create": create,
            "api_start": start, "api_wait": wait, "api_removal": removal,
            "api_total": total, "help": help_, "ps": ps, "python": bare, "python_S": nosite}


# --------------------------------------------------------------------------- phases
SHIM_STEP = "  shim: spawn to ready (runc run inside)"
#: (module, attribute, label) timed in the --as-cnetd daemon. Indentation shows where the
#: runtime calls them today (a container is on its networks only while it runs); a step that
#: moves elsewhere keeps its label, a step that disappears is skipped.
PHASES = [
    ("cnet.runtime.containers", "ContainerManager.create", "create (POST /containers/create)"),
    ("cnet.cnm.controller", "Controller.create_sandbox", "  sandbox: netns"),
    ("cnet.runtime.containers", "ContainerManager.start", "start (POST .../start)"),
    ("cnet.cnm.controller", "Controller.connect", "  endpoint: IPAM, veth, join"),
    ("cnet.runtime.rootfs", "mount", "  overlay mount"),
    ("cnet.runtime.containers", "ContainerManager._spec", "  OCI spec + /etc files"),
    ("cnet.runtime.shimclient", "start_shim", SHIM_STEP),
    ("cnet.runtime.containers", "ContainerManager._on_exit", "exit handling (shim gone)"),
    ("cnet.runtime.containers", "ContainerManager._release", "  release (again in remove)"),
    ("cnet.cnm.controller", "Controller.disconnect", "    endpoint: leave, veth delete"),
    ("cnet.runtime.rootfs", "unmount", "    overlay unmount"),
    ("cnet.runtime.containers", "ContainerManager.remove", "  remove (--rm)"),
    ("cnet.runtime.rootfs", "remove", "    writable layer"),
    ("cnet.cnm.controller", "Controller.delete_sandbox", "    sandbox delete"),
    ("cnet.runtime.containers", "ContainerManager._runc", "    runc (cnetd's)"),
    ("cnet.runtime.containers", "ContainerManager._save", "store writes (all)"),
]


def as_cnetd(out: str, argv: list[str]) -> int:
    """cnetd with PHASES timed (all threads); SIGUSR1 zeroes the totals; JSON at exit."""
    import functools
    import importlib
    import json
    import signal
    import threading

    totals: dict[str, list[float]] = {}
    lock = threading.Lock()

    def wrap(label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: object, **kw: object) -> object:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                ms = (time.perf_counter() - t0) * 1000.0
                with lock:
                    slot = totals.setdefault(label, [0.0, 0])
                    slot[0] += ms
                    slot[1] += 1
        return inner

    for mod, attr, label in PHASES:  # a refactor costs detail, never a crash
        try:
            owner = importlib.import_module(mod)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, name, wrap(label, getattr(owner, name)))
        except (ImportError, AttributeError):
            continue
    signal.signal(signal.SIGUSR1, lambda _s, _f: totals.clear())
    from cnet.daemon.main import main as cnetd_main

    try:
        return cnetd_main(argv)
    finally:
        Path(out).write_text(json.dumps(totals))


RUNC_WRAPPER = """#!/bin/bash
t0=$EPOCHREALTIME
{runc} "$@"
rc=$?
echo "$t0 $EPOCHREALTIME $*" >>{log}
exit $rc
"""


def runc_calls(log: Path) -> dict[str, list[float]]:
    """{"<caller>: runc <subcommand>": [total ms, calls]} from the wrapper's log."""
    out: dict[str, list[float]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        t0, t1, *args = line.split()
        caller = "shim" if "--log" in args else "cnetd"
        sub = next((a for a in args if a in ("run", "create", "start", "delete", "kill",
                                             "state", "exec", "update")), args[-1])
        key = f"{caller}: runc {sub}" + (" --force" if "--force" in args else "")
        slot = out.setdefault(key, [0.0, 0])
        slot[0] += (float(t1.replace(",", ".")) - float(t0.replace(",", "."))) * 1000.0
        slot[1] += 1
    return out


def bench_phases(n: int, tar: Path, failures: list[str]) -> None:
    """Sum each runtime step over n `cnet run --rm` runs in a daemon with timers."""
    import json
    import signal

    real_runc = shutil.which("runc")
    if real_runc is None:
        print("\nphases: runc not found")
        return
    tmp = mktemp("phases")
    wall = Stats("cnet run --rm (timed daemon)")
    try:
        (tmp / "bin").mkdir()
        runc_log, out = tmp / "runc.log", tmp / "phases.json"
        wrapper = tmp / "bin" / "runc"
        wrapper.write_text(RUNC_WRAPPER.format(runc=real_runc, log=runc_log))
        wrapper.chmod(0o755)
        launcher = [sys.executable, str(Path(__file__).resolve()), "--as-cnetd", str(out)]
        env = {"PATH": f"{tmp / 'bin'}:{os.environ.get('PATH', '')}"}
        with Daemon(launcher=launcher, env=env) as d:
            sh(*d.cli("image", "import", tar, IMAGE))
            sh(*d.cli("network", "create", "--subnet", SUBNET, NETWORK))
            argv = d.cli("run", "--rm", "--network", NETWORK, IMAGE, "true")
            for _ in range(WARMUP):
                cli_ms(argv, failures, "cnet run --rm (timed daemon)")
            sh(*d.cli("ps", "-aq"))  # the worker is idle: nothing in flight
            assert d.proc is not None
            d.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            runc_log.unlink(missing_ok=True)
            for _ in range(n):
                ms = cli_ms(argv, failures, "cnet run --rm (timed daemon)")
                if ms is not None:
                    wall.add(ms)
            if sh(*d.cli("ps", "-aq")).stdout.strip():  # also waits for the last removal
                raise RuntimeError("phases: containers left behind")
            calls = runc_calls(runc_log)
        totals = json.loads(out.read_text())
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"\nphases: no data ({exc})")
        return
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nwhere cnet's time goes: {n} runs of `cnet run --rm` in a cnetd with timers "
          f"(p50 {fmt(wall.p50)} ms each), ms per run (nested rows are part of the row above)")
    rows = [[label, f"{totals[label][1] / n:.1f}", f"{totals[label][0] / n:.2f}"]
            for _, _, label in PHASES if label in totals]
    rows += [[f"{key} (wrapper)", f"{v[1] / n:.1f}", f"{v[0] / n:.2f}"]
             for key, v in sorted(calls.items())]
    print_table(["step", "calls/run", "ms/run"], rows)
    shim = totals.get(SHIM_STEP)
    runc_run = calls.get("shim: runc run")
    if shim and runc_run:
        print(f"shim start without runc run: {(shim[0] - runc_run[0]) / n:.2f} ms/run "
              "(python -S, imports, daemonize, ready line; the wrapper's bash included)")


# --------------------------------------------------------------------------- docker
def docker_check(dk: Docker) -> None:
    out = dk.run("run", "--rm", "--network", NETWORK, dk.IMAGE, "sh", "-c", "echo ok")
    left = dk.run("ps", "-aq")
    if out != "ok" or left:
        raise RuntimeError(f"docker run --rm printed {out!r}, containers left: {left!r}")


def docker_api_run(dk: Docker, name: str) -> tuple[float, float, float]:
    """create, start, and start-to-removed ms, through the API like the docker CLI does.

    POST /containers/{id}/wait?condition=removed goes first, on a second connection:
    dockerd sends the response head once the wait is registered and the body (the exit
    code) once the container is removed; then start. (A wait sent after start could find
    the container already removed.)
    """
    body = {"Image": dk.IMAGE, "Cmd": ["true"],
            "HostConfig": {"AutoRemove": True, "NetworkMode": NETWORK}}
    ms_c, c = timed(dk.api.post, f"/containers/create?name={name}", body)
    waiter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        waiter.settimeout(60)
        waiter.connect(dk.sock)
        waiter.sendall(f"POST {dk.api.prefix}/containers/{c['Id']}/wait?condition=removed "
                       "HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += _recv(waiter)
        head, _, buf = buf.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"docker wait: {head!r} {buf!r}")
        ms_s, _ = timed(dk.api.call, "POST", f"/containers/{c['Id']}/start")
        t0 = time.perf_counter()
        while b"}" not in buf:
            buf += _recv(waiter)
        ms_w = (time.perf_counter() - t0) * 1000.0
    finally:
        waiter.close()
    code = re.search(rb'"StatusCode":\s*(\d+)', buf)
    if code is None or code.group(1) != b"0":
        raise RuntimeError(f"docker API run: wait answered {buf!r}")
    return ms_c, ms_s, ms_w


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionResetError("dockerd closed the connection")
    return chunk


def bench_docker(n: int, tar: Path, storage: str) -> tuple[dict[str, Stats], str] | None:
    reason = docker_missing()
    if reason:
        print(f"\ndocker: {reason}")
        return None
    rm_run, run_d, rm_f = (Stats("docker run --rm"), Stats("docker run -d"),
                           Stats("docker rm -f"))
    create, start, wait = Stats("API create"), Stats("API start"), Stats("API start->removed")
    total = Stats("API total")
    try:
        with Docker(storage_driver=storage) as dk:
            print(f"\ndocker: dockerd {dk.version} ({storage}) in {dk.ns.name}, client "
                  f"{dk.cli}, load {loadavg()}")
            dk.import_tar(tar)
            dk.network_create(NETWORK, SUBNET)
            docker_check(dk)
            print("check: docker run --rm printed ok, nothing left behind")

            def one_rm(i: int) -> None:
                ms = wall_ms(dk.argv("run", "--rm", "--network", NETWORK, dk.IMAGE, "true"),
                             env=dk.env)
                if i >= 0:
                    rm_run.add(ms)

            def one_d(i: int) -> None:
                name = f"cnbd{i + WARMUP}"
                dk.containers.append(name)
                ms_run = wall_ms(dk.argv("run", "-d", "--network", NETWORK, "--name", name,
                                         dk.IMAGE, "true"), env=dk.env)
                ms_rm = wall_ms(dk.argv("rm", "-f", name), env=dk.env)
                dk.containers.remove(name)
                if i >= 0:
                    run_d.add(ms_run)
                    rm_f.add(ms_rm)

            def one_api(i: int) -> None:
                ms_c, ms_s, ms_w = docker_api_run(dk, f"cnba{i + WARMUP}")
                if i >= 0:
                    create.add(ms_c)
                    start.add(ms_s)
                    wait.add(ms_w)
                    total.add(ms_c + ms_s + ms_w)

            repeat(n, one_rm)
            repeat(n, one_d)
            repeat(n, one_api)
            left = dk.run("ps", "-aq")
            if left:
                raise RuntimeError(f"docker containers left after the timed runs: {left}")
            version = dk.version
            print(f"docker: done, load {loadavg()}")
    except Exception as exc:  # the anchor is optional: say why, keep going
        print(f"\ndocker: anchor failed here: {exc}")
        return None
    print_runs(f"docker {version} ({storage}), {n} runs each after {WARMUP} warm-ups "
               "(CLI wall time)", [rm_run, run_d, rm_f])
    print_runs("docker API, same container", [create, start, wait, total])
    return ({"run_rm": rm_run, "run_d": run_d, "rm_f": rm_f, "api_create": create,
             "api_start": start, "api_wait": wait, "api_total": total}, version)
# --------------------------------------------------------------------------- main
def run(n: int, storage: str, with_docker: bool, phases: bool) -> int:
    header(f"run: `cnet run --rm {IMAGE} true` vs `docker run --rm`, on a user-defined "
           f"bridge network, {n} runs after {WARMUP} warm-ups",
           [f"load average at start: {loadavg()}"])
    summary = Summary("run")
    tmp = mktemp("run")
    try:
        tar = build_image(tmp)
        failures: list[str] = []
        cs = bench_cnet(n, tar, failures)
        docker = bench_docker(n, tar, storage) if with_docker else None
        if phases:
            bench_phases(n, tar, failures)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, st, q in (("cnet run --rm p50", cs["run_rm"], 50),
                        ("cnet run --rm p90", cs["run_rm"], 90),
                        ("cnet run -d p50", cs["run_d"], 50), ("cnet rm -f p50", cs["rm_f"], 50),
                        ("cnet API create+start+wait+list p50", cs["api_total"], 50),
                        ("cnet ps -q p50 (CLI floor)", cs["ps"], 50)):
        if st.samples:
            summary.figure(name, st.p(q))
    if docker:
        ds, version = docker
        summary.figure("docker run --rm p50", ds["run_rm"].p50,
                       note=f"issue 3: {DOCKER_REFERENCE_MS} ms")
        summary.figure("docker run -d p50", ds["run_d"].p50)
        summary.figure("docker rm -f p50", ds["rm_f"].p50)
        summary.figure("docker API create+start+removed p50", ds["api_total"].p50)
        for name, key, target in (("cnet/docker run --rm", "run_rm", TARGET_VS_DOCKER),
                                  ("cnet/docker run -d", "run_d", None),
                                  ("cnet/docker rm -f", "rm_f", None),
                                  ("cnet/docker API", "api_total", None)):
            if cs[key].samples:
                summary.figure(name, ratio(cs[key].p50, ds[key].p50), "x", target=target)
            else:
                summary.text(name, "no successful cnet run", "FAILED")
        summary.text("docker", f"{version} ({storage})")
    elif with_docker:
        summary.text("docker anchor", "not measured", "apt-get install docker.io")
    if failures:
        summary.text("cnet CLI runs that failed", str(len(failures)), "FAILED")
    summary.print()
    summary.save({"runs": n, "docker_storage": storage,
                  "cnet": {k: v.to_dict() for k, v in cs.items() if v.samples},
                  "docker": {k: v.to_dict() for k, v in (docker[0] if docker else {}).items()},
                  "failures": failures})
    if failures:
        print(f"\nbench: {len(failures)} cnet CLI run(s) failed (not in the figures):",
              file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=20)
    p.add_argument("--docker-storage", default="overlay2", choices=["overlay2", "vfs"])
    p.add_argument("--no-docker", action="store_true", help="skip the docker anchor")
    p.add_argument("--no-phases", action="store_true", help="skip the per-step breakdown")
    args = p.parse_args(argv)
    return main_wrapper(lambda: run(max(1, args.runs), args.docker_storage,
                                    not args.no_docker, not args.no_phases))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-cnetd"]:  # bench_phases' daemon, not a user entry point
        sys.exit(as_cnetd(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
