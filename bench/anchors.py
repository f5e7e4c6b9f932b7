"""Anchors measured in the same run as cnet: dockerd and the CNI reference bridge plugin.

- `Docker`: dockerd (Debian `docker.io`, 20.10) started inside a throwaway network
  namespace with its own data-root, exec-root, socket, config file and cgroup parent;
  vfs storage (overlay2 on request), no default bridge (`--bridge=none`), iptables left
  on (it programs the throwaway namespace only). A busybox image is imported from
  Debian's busybox-static (or any rootfs tar, `import_tar`). On exit: containers and
  networks it made are removed, dockerd gets SIGTERM (its process group SIGKILL after
  a timeout), any process left in its namespace or cgroups or naming its temp dir is
  killed by pid, cgroups, temp dir, namespace and the /etc/docker/key.json it writes
  are removed.
- `RootFirewallGuard`: snapshots the root namespace's nftables tables, legacy iptables
  tables and ip_forward before an anchor runs and puts back whatever changed.
- `CniBridge`: the `bridge` plugin with `host-local` IPAM, run with `nsenter --net=` in
  a throwaway host namespace against throwaway container namespaces.

Every anchor is optional: `*_missing()` says why it cannot run and how to install it.

    python bench/anchors.py     # checks that each anchor starts and stops cleanly
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common import Api, Netns, in_ns, main_wrapper, mktemp, no_interrupts, sh, wait_api

DOCKER_API = "/v1.41"  # docker.io 20.10
CNI_DIR = Path("/usr/lib/cni")
BUSYBOX = Path("/bin/busybox")


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(d))
        except OSError:
            continue
    return out


# --------------------------------------------------------------------------- root firewall
class RootFirewallGuard:
    """Restore the root namespace's firewall and ip_forward if an anchor changed them.

    Reads only what exists (nft list, /proc/net/ip_tables_names, iptables-legacy-save of
    existing tables), so taking the snapshot instantiates nothing.
    """

    def __init__(self) -> None:
        self.changes: list[str] = []

    @staticmethod
    def _nft_tables() -> dict[str, str]:
        if shutil.which("nft") is None:
            return {}
        out = {}
        listing = sh("nft", "list", "tables", check=False).stdout
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "table":  # -s: no counters (they move)
                body = sh("nft", "-s", "list", "table", parts[1], parts[2], check=False).stdout
                out[f"{parts[1]} {parts[2]}"] = body
        return out

    @staticmethod
    def _legacy() -> dict[str, str]:
        out = {}
        for fam, names, save in (("ip", "/proc/net/ip_tables_names", "iptables-legacy-save"),
                                 ("ip6", "/proc/net/ip6_tables_names",
                                  "ip6tables-legacy-save")):
            try:
                tables = Path(names).read_text().split()
            except OSError:
                continue
            if shutil.which(save) is None:
                continue
            for t in tables:
                text = sh(save, "-t", t, check=False).stdout
                # chain counters ([packets:bytes]) move with any traffic in the root
                # namespace: not a change anyone made
                out[f"{fam} {t}"] = "\n".join(re.sub(r"\[\d+:\d+\]$", "[0:0]", x)
                                              for x in text.splitlines()
                                              if not x.startswith("#"))
        return out

    @staticmethod
    def _forward() -> str:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()

    def __enter__(self) -> RootFirewallGuard:
        self.nft, self.legacy, self.fwd = self._nft_tables(), self._legacy(), self._forward()
        return self

    def __exit__(self, *exc: object) -> None:
        with no_interrupts():
            self.restore()

    def restore(self) -> None:
        nft = self._nft_tables()
        for table, body in nft.items():
            if self.nft.get(table) != body:
                fam, name = table.split()
                sh("nft", "delete", "table", fam, name, check=False)
                if table in self.nft:
                    sh("nft", "-f", "-", input=self.nft[table], check=False)
                what = "restored" if table in self.nft else "removed"
                self.changes.append(f"nft table {table} {what}")
        for table, body in self.nft.items():
            if table not in nft:
                sh("nft", "-f", "-", input=body, check=False)
                self.changes.append(f"nft table {table} re-created")
        legacy = self._legacy()
        for table, body in legacy.items():
            if self.legacy.get(table) == body:
                continue
            fam, name = table.split()
            cmd = "iptables-legacy" if fam == "ip" else "ip6tables-legacy"
            if table in self.legacy:
                sh(f"{cmd}-restore", "-T", name, input=self.legacy[table] + "\n", check=False)
            else:  # a legacy table cannot be unregistered: empty it, policies ACCEPT
                sh(cmd, "-t", name, "-F", check=False)
                sh(cmd, "-t", name, "-X", check=False)
                for chain in ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"):
                    sh(cmd, "-t", name, "-P", chain, "ACCEPT", check=False)
            self.changes.append(f"legacy {table} restored")
        if self._forward() != self.fwd:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.fwd)
            self.changes.append(f"net.ipv4.ip_forward restored to {self.fwd}")
        for c in self.changes:
            print(f"anchors: root namespace changed during the run: {c}", file=sys.stderr)


# --------------------------------------------------------------------------- docker
def docker_missing() -> str | None:
    if shutil.which("dockerd") is None:
        return "anchor not installed: dockerd (apt-get install docker.io)"
    if not BUSYBOX.exists():
        return "anchor not installed: busybox for the test image (apt-get install busybox-static)"
    return None


def docker_cli() -> str:
    """The docker client shipped with dockerd (same API version), else any on PATH.

    Debian's docker.io puts dockerd in /usr/sbin and its client in /usr/bin: both are
    tried before PATH, which may find a newer client installed elsewhere first.
    """
    dockerd = Path(shutil.which("dockerd") or "")
    for cand in (dockerd.parent / "docker", dockerd.parent.parent / "bin" / "docker"):
        if dockerd.name and cand.exists():
            return str(cand)
    return shutil.which("docker") or "docker"


class Docker:
    """dockerd in a throwaway namespace; use as a context manager."""

    IMAGE = "cnb-busybox:latest"

    def __init__(self, storage_driver: str = "vfs", default_bridge: bool = False) -> None:
        """`storage_driver`: vfs (default, works anywhere) or overlay2 (what cnet uses);
        `default_bridge`: keep docker0 (off by default: the anchors make their networks)."""
        self.storage_driver = storage_driver
        self.default_bridge = default_bridge
        self.ns = Netns("docker")
        self.root = mktemp("docker")
        self.sock = str(self.root / "docker.sock")
        self.cgroup_parent = self.root.name  # /sys/fs/cgroup/<ctrl>/<this>
        self.cli = docker_cli()
        self.env = {**os.environ, "DOCKER_CONFIG": str(self.root / "client")}
        self.proc: subprocess.Popen | None = None
        self.guard = RootFirewallGuard()
        self.key_json = Path("/etc/docker/key.json")
        self.key_json_existed = self.key_json.exists()
        self.containers: list[str] = []
        self.networks: list[str] = []
        self._api: Api | None = None
        self.version = ""

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.sock, prefix=DOCKER_API)
        return self._api

    def argv(self, *args: str) -> list[str]:
        return [self.cli, "-H", f"unix://{self.sock}", *args]

    def run(self, *args: str, timeout: float = 120) -> str:
        return sh(*self.argv(*args), env=self.env, timeout=timeout).stdout.strip()

    def start(self) -> Docker:
        self.guard.__enter__()
        self.ns.create()
        (self.root / "daemon.json").write_text("{}\n")
        log = open(self.root / "dockerd.log", "wb")
        with log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.ns.path}", "dockerd",
                 "--config-file", str(self.root / "daemon.json"),
                 "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x"),
                 "--pidfile", str(self.root / "docker.pid"), "-H", f"unix://{self.sock}",
                 *([] if self.default_bridge else ["--bridge=none"]),
                 f"--storage-driver={self.storage_driver}",
                 f"--cgroup-parent=/{self.cgroup_parent}",
                 "--log-level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc
        try:
            wait_api(self.sock, "/_ping", lambda: proc.poll() is None, "dockerd", timeout=60)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.logs()}") from None
        self.version = self.api.get("/version").get("Version", "?")
        return self

    def import_busybox(self) -> None:
        img = self.root / "image"
        (img / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, img / "bin" / "busybox")
        for name in ("sh", "sleep", "ip"):
            (img / "bin" / name).symlink_to("busybox")
        tar = self.root / "busybox.tar"
        sh("tar", "-C", img, "-cf", tar, ".")
        self.import_tar(tar)

    def import_tar(self, tar: Path, image: str = IMAGE) -> None:
        """`docker import` a rootfs tarball (e.g. scripts/build-busybox-image.sh's)."""
        self.run("import", str(tar), image)

    def network_create(self, name: str, subnet: str) -> None:
        self.run("network", "create", "--subnet", subnet, name)
        self.networks.append(name)

    def container(self, name: str, network: str) -> None:
        self.containers.append(name)
        self.run("run", "-d", "--name", name, "--network", network, self.IMAGE,
                 "sleep", "3600")

    def logs(self) -> str:
        try:
            return (self.root / "dockerd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _cgroup_dirs(self) -> list[Path]:
        base = Path("/sys/fs/cgroup")
        if not base.is_dir():
            return []
        return [p for p in base.glob(f"*/{self.cgroup_parent}") if p.is_dir()]

    def _cgroup_pids(self) -> list[int]:
        pids: set[int] = set()
        for d in self._cgroup_dirs():
            for procs in d.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in procs.read_text().split())
        return sorted(pids)

    def close(self) -> list[str]:
        errors: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            for c in self.containers:
                with contextlib.suppress(Exception):
                    sh(*self.argv("rm", "-f", c), env=self.env, check=False, timeout=60)
            for n in self.networks:
                with contextlib.suppress(Exception):
                    sh(*self.argv("network", "rm", n), env=self.env, check=False, timeout=60)
        if self._api is not None:
            self._api.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    errors.append("dockerd did not stop within 30 s: killed its process group")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            self.proc = None
        # Anything left is ours: in our namespace, in our cgroups, or naming our temp dir.
        for _ in range(3):
            left = sorted(set(self.ns.pids()) | set(self._cgroup_pids())
                          | set(_pids_mentioning(str(self.root))))
            if not left:
                break
            errors.append(f"processes left after dockerd stopped, killed: {left}")
            _kill_pids(left)
            time.sleep(0.5)
        for line in Path("/proc/self/mounts").read_text().splitlines()[::-1]:
            mp = line.split()[1]
            if mp.startswith(str(self.root)):
                sh("umount", "-l", mp, check=False)
        for d in sorted(self._cgroup_dirs(), key=lambda p: -len(p.parts)):
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()),
                              key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            try:
                d.rmdir()
            except OSError as exc:
                errors.append(f"cgroup {d}: {exc}")
        if not self.key_json_existed:
            with contextlib.suppress(FileNotFoundError):
                self.key_json.unlink()
        errors += self.ns.delete()
        shutil.rmtree(self.root, ignore_errors=True)
        self.guard.restore()
        return errors

    def __enter__(self) -> Docker:
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        with no_interrupts():
            for e in self.close():
                print(f"anchors: docker cleanup: {e}", file=sys.stderr)


# --------------------------------------------------------------------------- CNI
def cni_missing() -> str | None:
    for plugin in ("bridge", "host-local"):
        if not (CNI_DIR / plugin).exists():
            return (f"anchor not installed: {CNI_DIR / plugin} "
                    "(apt-get install containernetworking-plugins)")
    return None


def cni_version() -> str:
    proc = sh(CNI_DIR / "bridge", check=False, env={"CNI_COMMAND": "VERSION"})
    with contextlib.suppress(ValueError):
        return ",".join(json.loads(proc.stdout).get("supportedVersions", [])[-1:])
    return "?"


class CniBridge:
    """The reference bridge plugin in a throwaway host namespace; use as a context manager."""

    def __init__(self, subnet: str = "10.63.0.0/16", bridge: str = "cnib0"):
        self.host = Netns("cni")
        self.root = mktemp("cni")
        self.containers: list[Netns] = []
        self.config = json.dumps({
            "cniVersion": "1.0.0", "name": "cnbnet", "type": "bridge", "bridge": bridge,
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": subnet,
                     "dataDir": str(self.root / "ipam")},
        })

    def container_ns(self) -> Netns:
        ns = Netns(f"c{len(self.containers)}")
        self.containers.append(ns)
        return ns.create()

    def argv_env(self, command: str, container_id: str, ns: Netns,
                 ifname: str = "eth0") -> tuple[list[str], dict[str, str]]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": container_id, "CNI_NETNS": ns.path, "CNI_IFNAME": ifname,
               "CNI_PATH": str(CNI_DIR)}
        return ["nsenter", f"--net={self.host.path}", str(CNI_DIR / "bridge")], env

    def call(self, command: str, container_id: str, ns: Netns) -> float:
        """Run the plugin once; wall time in ms."""
        argv, env = self.argv_env(command, container_id, ns)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, input=self.config.encode(), env=env, capture_output=True,
                              timeout=60)
        ms = (time.perf_counter() - t0) * 1000.0
        if proc.returncode != 0:
            raise RuntimeError(f"CNI {command} failed: {proc.stdout.decode()} "
                               f"{proc.stderr.decode()}")
        return ms

    def close(self) -> list[str]:
        errors: list[str] = []
        for ns in self.containers:
            errors += ns.delete()
        errors += self.host.delete()
        shutil.rmtree(self.root, ignore_errors=True)
        return errors

    def __enter__(self) -> CniBridge:
        self.host.create()
        return self

    def __exit__(self, *exc: object) -> None:
        with no_interrupts():
            for e in self.close():
                print(f"anchors: cni cleanup: {e}", file=sys.stderr)


# --------------------------------------------------------------------------- self-check
def run() -> int:
    print("=== anchors: start/stop check")
    reason = docker_missing()
    if reason:
        print(f"docker: {reason}")
    else:
        with Docker() as d:
            d.import_busybox()
            d.network_create("cnbnet", "10.64.0.0/24")
            d.container("cnb1", "cnbnet")
            print(f"docker: dockerd {d.version} in {d.ns.name}, container running: "
                  f"{d.run('inspect', '-f', '{{.State.Running}}', 'cnb1')}")
    reason = cni_missing()
    if reason:
        print(f"cni: {reason}")
    else:
        with CniBridge() as cni:
            ns = cni.container_ns()
            ms = cni.call("ADD", "cnb1", ns)
            addr = in_ns(ns.path, "ip", "-o", "-4", "addr", "show", "eth0").stdout.split()[3]
            ms_del = cni.call("DEL", "cnb1", ns)
            print(f"cni: bridge plugin {cni_version()}: ADD {ms:.1f} ms ({addr}), "
                  f"DEL {ms_del:.1f} ms")
    return 0


def main() -> int:
    return main_wrapper(run)


if __name__ == "__main__":
    sys.exit(main())
