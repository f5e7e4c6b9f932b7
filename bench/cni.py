"""cnet-cni against the reference CNI `bridge` plugin (+ `host-local` IPAM), same run.

1. Plugin latency: the wall time of one plugin process, run as a runtime runs it
   (`nsenter --net=<host ns> PLUGIN`, CNI_* in the environment, the config on stdin),
   for N containers (namespaces made here), interleaved cnet / bridge: ADD of each, then
   DEL of each (so the ADDs find N-1 attachments already there). cnet-cni talks to a
   cnetd in its own throwaway namespace; the bridge plugin runs in another one. Floors:
   VERSION of each (process start-up only). Before any figure, one cnet-cni ADD's result
   is checked against the kernel (address on eth0) and its DEL against cnetd (no
   sandbox left).
2. `podman run --rm --network NET busybox true` with podman 4 (CNI backend), podman
   running in each host namespace, NET one of: a network podman made itself (`podman
   network create`: bridge + host-local, portmap, firewall, tuning: what a podman user
   gets), a minimal reference conflist (bridge + host-local, tuning), and a conflist
   with cnet-cni (`{"type": "cnet"}`, tuning). Same storage (overlay, temp
   --root/--runroot), busybox imported from Debian's busybox-static, containers.conf
   with `default_ulimits = []` (no CAP_SYS_RESOURCE here), runs rotated.

Everything made here is removed at the end: namespaces (cnet-b-*), podman's containers,
storage mounts and temp dirs, cnetd (with `cnetd --cleanup`), /var/lib/containers if
podman created it (it keeps a blob cache there whatever --root says), whatever appeared
in /run/cni and /var/lib/cni (libcni's result cache, tuning's backups, host-local's
leases of podman's own network).

Target: cnet no slower than the native path (ratios <= 1.0).

    python bench/cni.py [-n 30] [--podman-runs 10] [--no-podman]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from anchors import CNI_DIR, CniBridge, cni_missing, cni_version
from common import (
    Daemon,
    Netns,
    Stats,
    Summary,
    header,
    in_ns,
    main_wrapper,
    mktemp,
    no_interrupts,
    print_stats,
    ratio,
    sh,
    tool,
)

WARMUP = 3
#: where the reference plugins and libcni (podman) keep state whatever the config says
CNI_STATE_DIRS = (Path("/run/cni"), Path("/var/lib/cni"))


def _tree(top: Path) -> set[Path]:
    out = set()
    for dirpath, _dirs, files in os.walk(top):
        out.add(Path(dirpath))
        out.update(Path(dirpath) / f for f in files)
    return out


@contextlib.contextmanager
def cni_state_guard():
    """Remove what appears in /run/cni and /var/lib/cni meanwhile (tuning's backups,
    host-local's leases of podman's network, libcni's result cache)."""
    before = {p for top in CNI_STATE_DIRS for p in _tree(top)}
    try:
        yield
    finally:
        new = {p for top in CNI_STATE_DIRS for p in _tree(top)} - before
        for p in sorted(new, key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                p.rmdir() if p.is_dir() else p.unlink()
PODMAN = shutil.which("podman")
BUSYBOX = Path("/bin/busybox")


class CnetCni:
    """cnet-cni against a cnetd in a throwaway namespace; same call shape as CniBridge."""

    def __init__(self, daemon: Daemon, subnet: str = "10.62.0.0/16"):
        self.daemon = daemon
        self.binary = tool("cnet-cni")
        self.containers: list[Netns] = []
        self.config = json.dumps({
            "cniVersion": "1.0.0", "name": "cnbcni", "type": "cnet", "host": daemon.host,
            "ipam": {"ranges": [[{"subnet": subnet}]]}})

    def container_ns(self) -> Netns:
        ns = Netns(f"k{len(self.containers)}")
        self.containers.append(ns)
        return ns.create()

    def run(self, command: str, container_id: str, ns: Netns | None
            ) -> tuple[float, subprocess.CompletedProcess]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
               "CNI_PATH": str(CNI_DIR)}
        if ns is not None:
            env.update(CNI_CONTAINERID=container_id, CNI_NETNS=ns.path, CNI_IFNAME="eth0")
        t0 = time.perf_counter()
        proc = subprocess.run(["nsenter", f"--net={self.daemon.ns.path}", self.binary],
                              input=self.config.encode(), env=env, capture_output=True,
                              timeout=60)
        ms = (time.perf_counter() - t0) * 1000.0
        if proc.returncode != 0:
            raise RuntimeError(f"cnet-cni {command} failed: {proc.stdout.decode()} "
                               f"{proc.stderr.decode()}")
        return ms, proc

    def call(self, command: str, container_id: str, ns: Netns) -> float:
        return self.run(command, container_id, ns)[0]

    def close(self) -> list[str]:
        errors: list[str] = []
        for ns in self.containers:
            errors += ns.delete()
        return errors


def bridge_version_ms() -> float:
    t0 = time.perf_counter()
    sh(CNI_DIR / "bridge", input="", env={"CNI_COMMAND": "VERSION"})
    return (time.perf_counter() - t0) * 1000.0


def plugin_latency(n: int, summary: Summary) -> dict:
    with Daemon() as d, CniBridge() as ref:
        cnet = CnetCni(d)
        try:
            # correctness first
            ns = cnet.container_ns()
            _, proc = cnet.run("ADD", "cnbcheck", ns)
            result = json.loads(proc.stdout)
            addr = result["ips"][0]["address"]
            shown = in_ns(ns.path, "ip", "-o", "-4", "addr", "show", "eth0").stdout
            if addr not in shown:
                raise RuntimeError(f"cnet-cni ADD said {addr}, eth0 has: {shown}")
            cnet.call("DEL", "cnbcheck", ns)
            left = d.api.get("/sandboxes")
            if left:
                raise RuntimeError(f"cnet-cni DEL left sandboxes: {left}")
            print(f"check: cnet-cni ADD gave {addr} on eth0, DEL left nothing; "
                  f"reference bridge plugin {cni_version()}")

            stats = {k: Stats(k) for k in ("cnet-cni ADD", "bridge ADD", "cnet-cni DEL",
                                           "bridge DEL", "cnet-cni VERSION",
                                           "bridge VERSION")}
            pairs = []
            for i in range(WARMUP + n):
                pairs.append((f"cnb{i}", cnet.container_ns(), ref.container_ns()))
            for cid, cns, rns in pairs[:WARMUP]:
                cnet.call("ADD", cid, cns)
                ref.call("ADD", cid, rns)
            for cid, cns, rns in pairs[:WARMUP]:
                cnet.call("DEL", cid, cns)
                ref.call("DEL", cid, rns)
            timed = pairs[WARMUP:]
            for i, (cid, cns, rns) in enumerate(timed):  # alternate who goes first
                order = ((cnet, "cnet-cni"), (ref, "bridge"))
                for plugin, name in order if i % 2 == 0 else order[::-1]:
                    stats[f"{name} ADD"].add(plugin.call("ADD", cid, cns if plugin is cnet
                                                         else rns))
            for i, (cid, cns, rns) in enumerate(timed):
                order = ((cnet, "cnet-cni"), (ref, "bridge"))
                for plugin, name in order if i % 2 == 0 else order[::-1]:
                    stats[f"{name} DEL"].add(plugin.call("DEL", cid, cns if plugin is cnet
                                                         else rns))
            for _ in range(n):
                stats["cnet-cni VERSION"].add(cnet.run("VERSION", "", None)[0])
                stats["bridge VERSION"].add(bridge_version_ms())
            print_stats(f"CNI plugin calls, {n} containers each, wall time of the process",
                        list(stats.values()))
            if d.api.get("/sandboxes"):
                raise RuntimeError("cnet-cni DEL left sandboxes behind")
        finally:
            with no_interrupts():
                for e in cnet.close():
                    print(f"bench: cleanup: {e}", file=sys.stderr)
    for op in ("ADD", "DEL"):
        c, b = stats[f"cnet-cni {op}"].p50, stats[f"bridge {op}"].p50
        summary.figure(f"cnet-cni {op} p50", c)
        summary.figure(f"bridge {op} p50 (anchor)", b)
        summary.figure(f"cnet-cni / bridge {op} p50", ratio(c, b), "x", target=1.0)
    summary.figure("cnet-cni VERSION p50 (process floor)", stats["cnet-cni VERSION"].p50)
    summary.figure("bridge VERSION p50 (process floor)", stats["bridge VERSION"].p50)
    return {k: s.to_dict() for k, s in stats.items()}


# --------------------------------------------------------------------------- podman
class Podman:
    """podman 4 with the CNI backend and everything in a temp dir."""

    def __init__(self) -> None:
        self.root = mktemp("podman")
        self.plugins = self.root / "plugins"
        self.netd = self.root / "net.d"
        self.plugins.mkdir()
        self.netd.mkdir()
        (self.plugins / "cnet").symlink_to(tool("cnet-cni"))
        self.conf = self.root / "containers.conf"
        self.conf.write_text(
            "[containers]\ndefault_ulimits = []\n"
            "[network]\nnetwork_backend = \"cni\"\n"
            f"cni_plugin_dirs = [\"{self.plugins}\", \"{CNI_DIR}\"]\n"
            f"network_config_dir = \"{self.netd}\"\n"
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
            "runtime = \"runc\"\n")
        self.made_var = not Path("/var/lib/containers").exists()

    def argv(self, ns: Netns, *args: str) -> list[str]:
        return ["nsenter", f"--net={ns.path}", str(PODMAN), "--root", str(self.root / "root"),
                "--runroot", str(self.root / "run"), "--tmpdir", str(self.root / "tmp"),
                "--storage-driver", "overlay", *args]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def __call__(self, ns: Netns, *args: str, check: bool = True) -> str:
        return sh(*self.argv(ns, *args), env=self.env, check=check).stdout

    def timed(self, ns: Netns, *args: str) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(self.argv(ns, *args), env=self.env, capture_output=True,
                              timeout=120)
        ms = (time.perf_counter() - t0) * 1000.0
        if proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {proc.stderr.decode()}")
        return ms

    def close(self, namespaces: list[Netns]) -> list[str]:
        """Remove the containers (from the namespace each network lives in), then the
        storage; call once, before the namespaces go."""
        errors: list[str] = []
        live = [ns for ns in namespaces if ns.created]
        for ns in live:
            with contextlib.suppress(Exception):
                self(ns, "rm", "-af", "-t", "0", check=False)
        if live and (self.root / "root").exists():
            with contextlib.suppress(Exception):
                self(live[0], "system", "reset", "-f", check=False)
        for line in Path("/proc/self/mounts").read_text().splitlines()[::-1]:
            mp = line.split()[1]
            if mp.startswith(str(self.root)):
                errors.append(f"podman mount left: {mp} (unmounted)")
                sh("umount", "-l", mp, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.made_var:
            shutil.rmtree("/var/lib/containers", ignore_errors=True)
        return errors


def podman_missing() -> str | None:
    if PODMAN is None:
        return "podman not installed (apt-get install podman)"
    if not BUSYBOX.exists():
        return "no /bin/busybox to import (apt-get install busybox-static)"
    return cni_missing()


def podman_run(runs: int, summary: Summary) -> dict:
    podman = Podman()
    ref_ns = Netns("pod")
    d = Daemon()
    # (key, label, host namespace, network)
    variants = [("native", "reference: podman network create (bridge, portmap, firewall, "
                 "tuning)", ref_ns, "refnet"),
                ("minimal", "reference: bridge + tuning", ref_ns, "refmin"),
                ("cnet", "cnet-cni + tuning", d.ns, "cnbpod")]
    stats = {key: Stats(f"podman run --rm, {label}") for key, label, _, _ in variants}
    try:
        d.start()
        ref_ns.create()
        tar = podman.root / "busybox.tar"
        sh(Path(__file__).resolve().parent.parent / "scripts" / "build-busybox-image.sh", tar)
        podman(ref_ns, "import", str(tar), "busybox")
        podman(ref_ns, "network", "create", "--subnet", "10.61.0.0/24", "refnet")
        (podman.netd / "refmin.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "refmin", "plugins": [
                {"type": "bridge", "bridge": "cnbmin0", "isGateway": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.59.0.0/24"}]],
                          "dataDir": str(podman.root / "ipam")}},
                {"type": "tuning"}]}))
        (podman.netd / "cnbpod.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "cnbpod", "plugins": [
                {"type": "cnet", "host": d.host,
                 "ipam": {"ranges": [[{"subnet": "10.60.0.0/24"}]]},
                 "capabilities": {"portMappings": True, "ips": True, "mac": True,
                                  "aliases": True}},
                {"type": "tuning"}]}))
        check = "ip -o -4 addr show eth0; echo ok"
        for _key, _label, ns, net in variants:
            out = podman(ns, "run", "--rm", "--network", net, "busybox", "sh", "-c", check)
            if "ok" not in out or "inet 10." not in out:
                raise RuntimeError(f"podman on {net}: {out}")
        print(f"check: podman {podman(ref_ns, 'version', '-f', '{{.Client.Version}}').strip()}"
              " runs busybox with an address on every network")
        for _ in range(2):  # warm-up
            for _key, _label, ns, net in variants:
                podman.timed(ns, "run", "--rm", "--network", net, "busybox", "true")
        for i in range(runs):  # rotate who goes first
            k = i % len(variants)
            for key, _label, ns, net in variants[k:] + variants[:k]:
                stats[key].add(podman.timed(ns, "run", "--rm", "--network", net, "busybox",
                                            "true"))
        if d.api.get("/sandboxes"):
            raise RuntimeError("podman rm left cnet sandboxes behind")
    finally:
        with no_interrupts():
            errors = podman.close([d.ns, ref_ns])
            errors += ref_ns.delete()
            errors += d.close()
            for e in errors:
                print(f"bench: cleanup: {e}", file=sys.stderr)
    print_stats("podman run --rm busybox true", list(stats.values()))
    c, n, m = stats["cnet"].p50, stats["native"].p50, stats["minimal"].p50
    summary.figure("podman run --rm, cnet-cni p50", c)
    summary.figure("podman run --rm, podman's own CNI network p50 (anchor)", n)
    summary.figure("podman run --rm, bridge + tuning p50 (anchor)", m)
    summary.figure("podman run --rm cnet-cni / podman's network", ratio(c, n), "x",
                   target=1.0)
    summary.figure("podman run --rm cnet-cni / bridge + tuning", ratio(c, m), "x")
    return {k: s.to_dict() for k, s in stats.items()}


def run(n: int, podman_runs: int, with_podman: bool) -> int:
    header("bench/cni: cnet-cni vs the reference CNI bridge plugin")
    reason = cni_missing()
    if reason:
        print(f"bench/cni: {reason}")
        return 0
    summary = Summary("cni")
    with cni_state_guard():
        extra = {"plugins": plugin_latency(n, summary)}
        if with_podman:
            reason = podman_missing()
            if reason:
                summary.text("podman run --rm", "skipped", reason)
            else:
                extra["podman"] = podman_run(podman_runs, summary)
    summary.print()
    summary.save(extra)
    return 1 if summary.missed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="containers per plugin (default 30)")
    ap.add_argument("--podman-runs", type=int, default=10)
    ap.add_argument("--no-podman", action="store_true")
    args = ap.parse_args(argv)
    return main_wrapper(lambda: run(args.n, args.podman_runs, not args.no_podman))


if __name__ == "__main__":
    sys.exit(main())
