"""ACCEPT rules for cnet bridges in dockerd's DOCKER-USER chain (the Docker plugin).

The one place cnet writes to a firewall it does not own, through the iptables binaries
rather than libnftables: dockerd's rules live in whichever backend (nft or legacy) its
iptables uses, and only the same binaries reliably add to that chain. Every rule carries
the comment `cnet:<daemon-id>`, so that start and `cnetd --cleanup` find their own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

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
    the policy for its bridges (isolation, internal networks, published ports)."""

    CHAIN = "DOCKER-USER"

    def __init__(self, daemon_id: str):
        self.comment = f"cnet:{daemon_id}"
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        self.binaries = [b for b in (shutil.which(n, path=path) for n in ("iptables",
                                                                          "ip6tables")) if b]

    @staticmethod
    def _run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def apply(self, bridge: str, add: bool = True) -> None:
        for binary in self.binaries:
            if self._run(binary, "-w", "10", "-n", "-L", self.CHAIN).returncode != 0:
                continue  # no dockerd firewall in this namespace (or --iptables=false)
            for way in ("-i", "-o"):
                rule = [self.CHAIN, way, bridge, "-m", "comment", "--comment", self.comment,
                        "-j", "ACCEPT"]
                present = self._run(binary, "-w", "10", "-C", *rule).returncode == 0
                if present == add:
                    continue
                proc = self._run(binary, "-w", "10", "-I" if add else "-D", *rule)
                if proc.returncode != 0 and add:
                    raise CnetError(f"{os.path.basename(binary)} {self.CHAIN} {way} {bridge}: "
                                    f"{proc.stderr.strip()}")

    def prune(self, keep: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Delete this daemon's rules except those of the bridges in `keep` (daemon
        start; `cnetd --cleanup` keeps none). Returns errors."""
        errors: list[str] = []
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
