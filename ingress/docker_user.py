"""ACCEPT rules for cnet bridges in dockerd's DOCKER-USER chain (the Docker plugin).

The one place cnet writes to a firewall it does not own, through the iptables binaries
rather than libnftables: dockerd's rules live in whichever backend (nft or legacy) its
iptables uses, and only the same binaries reliably add to that chain. Every rule carries
the comment `cnet:<daemon-id>`, so that start and `cnetd --cleanup` find their own.

The chain is not always there when cnet wants it (at boot cnetd starts before dockerd,
which needs the plugin socket) and others flush it (`iptables -F`: dockerd re-adds its
own rules, not ours), so the plugin re-ensures a network's rules at every Join: one
`-S DOCKER-USER` per family when nothing is missing. These subprocesses may wait on the
xtables lock: the plugin runs them on its HTTP threads, never on the kernel worker.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading

from cnet.cnm.errors import CnetError


class DockerUserRules:
    """ACCEPT rules for a cnet bridge in dockerd's DOCKER-USER chain.

    dockerd sets the iptables FORWARD policy to DROP, and with br_netfilter even traffic
    between two ports of one bridge goes through it: without these rules a cnet network
    would carry nothing, not even container to container. A drop in any table is final
    (an accept in cnet's own nftables table cannot override it), so the exception must
    live in dockerd's firewall, in the chain Docker keeps for other tools. The rules are
    written with the iptables binaries because that is how dockerd writes its own: they
    pick the backend (nft or legacy) dockerd's rules live in. cnet's own table keeps
    the policy for its bridges (isolation, internal networks, published ports).

    Thread-safe: every change runs under one lock (two Joins never insert a rule twice).
    `wanted` holds the bridges whose rules should exist; the plugin changes it on the
    kernel worker (a network created or deleted) and ensure() only adds the rules of a
    bridge still in it, so a Join answered just before its network went never leaves
    rules behind."""

    CHAIN = "DOCKER-USER"

    def __init__(self, daemon_id: str):
        self.comment = f"cnet:{daemon_id}"
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        self.binaries = [b for b in (shutil.which(n, path=path) for n in ("iptables",
                                                                          "ip6tables")) if b]
        self.wanted: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def _rule(self, way: str, bridge: str) -> list[str]:
        return [self.CHAIN, way, bridge, "-m", "comment", "--comment", self.comment,
                "-j", "ACCEPT"]

    def _present(self, listing: str, bridge: str) -> set[str]:
        """The ways ("-i", "-o") whose rule for `bridge` the `-S` listing holds."""
        found = set()
        for line in listing.splitlines():
            parts = shlex.split(line)
            for way in ("-i", "-o"):
                if parts[1:] == self._rule(way, bridge) and parts[0] == "-A":
                    found.add(way)
        return found

    def apply(self, bridge: str, add: bool = True) -> None:
        """Insert (add) or delete the bridge's rules in every family whose chain exists
        (none: no dockerd firewall in this namespace yet, or --iptables=false). One `-S`
        per family when nothing changes. An insert is all or nothing: if one fails, the
        rules this call inserted (in any family) are deleted before raising."""
        with self._lock:
            self._apply(bridge, add)

    def ensure(self, bridge: str) -> None:
        """apply() for a bridge still `wanted` (Join, on an HTTP thread)."""
        with self._lock:
            if bridge in self.wanted:
                self._apply(bridge, True)

    def _apply(self, bridge: str, add: bool) -> None:
        inserted: list[tuple[str, list[str]]] = []
        try:
            for binary in self.binaries:
                listing = self._run(binary, "-w", "10", "-S", self.CHAIN)
                if listing.returncode != 0:
                    continue  # the chain is missing
                present = self._present(listing.stdout, bridge)
                for way in ("-i", "-o"):
                    if (way in present) == add:
                        continue
                    rule = self._rule(way, bridge)
                    proc = self._run(binary, "-w", "10", "-I" if add else "-D", *rule)
                    if proc.returncode == 0:
                        if add:
                            inserted.append((binary, rule))
                    elif add:
                        raise CnetError(f"{os.path.basename(binary)} {self.CHAIN} {way} "
                                        f"{bridge}: {proc.stderr.strip()}")
        except BaseException:
            for binary, rule in reversed(inserted):
                self._run(binary, "-w", "10", "-D", *rule)
            raise

    def prune(self, keep: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Delete this daemon's rules except those of the bridges in `keep` (daemon
        start; `cnetd --cleanup` keeps none). Returns errors."""
        errors: list[str] = []
        with self._lock:
            for binary in self.binaries:
                listing = self._run(binary, "-w", "10", "-S", self.CHAIN)
                if listing.returncode != 0:
                    continue
                for line in listing.stdout.splitlines():
                    parts = shlex.split(line)
                    if parts[:2] != ["-A", self.CHAIN] or self.comment not in parts:
                        continue
                    iface = next((parts[i + 1] for i, p in enumerate(parts[:-1])
                                  if p in ("-i", "-o")), None)
                    if iface in keep:
                        continue
                    proc = self._run(binary, "-w", "10", "-D", *parts[1:])
                    if proc.returncode != 0:
                        errors.append(f"{os.path.basename(binary)} -D {' '.join(parts[1:])}: "
                                      f"{proc.stderr.strip()}")
        return errors
