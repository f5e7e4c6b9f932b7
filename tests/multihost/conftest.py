"""Multi-host fixtures: an underlay of host namespaces and a three-member etcd cluster.

- `etcd3` (module scope): Underlay(3) (hosts 10.99.0.1-3 on one bridge, see underlay.py)
  with etcd member i in host i's namespace on 10.99.0.(i+1):2379. Yields an Etcd3 with
  `.underlay`, `.members`, `.endpoints` ("10.99.0.1:2379,10.99.0.2:2379,10.99.0.3:2379")
  and `.endpoint_list`. Built before the first test of the module that asks for it, i.e.
  before that test's leak-check snapshot, so the leak check never reports it; torn down
  after the module's last test (namespaces deleted, no etcd process left).
  A test that stops or kills members need not restart them: after every test using
  `etcd3`, stopped members are started again and the cluster is waited healthy.

- `node_pair` (function scope): `node_pair(prefix, named=True)` starts cnetd on hosts 1
  and 2, joined to `etcd3`, named PREFIX1 and PREFIX2 (with named=False: after the
  hostname, as a cnetd without --node-name), and returns them. After the test their
  sandboxes and unused networks are removed (the global records live on in the module's
  etcd), then the daemons are shut down.

Talk to the cluster from a host namespace: `with etcdharness.in_netns(ns): ...`.
Everything here is skipped (with the reason) when not root, or `ip`/`nsenter`/etcd are
missing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import etcdharness
import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # `import underlay` from the tests of this folder
    sys.path.insert(0, _HERE)

from underlay import Underlay  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(_HERE + "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _multihost_requirements():
    reason = etcdharness.requirements_missing()
    if reason:
        pytest.skip(reason)


@dataclass
class Etcd3:
    underlay: Underlay
    members: list[etcdharness.EtcdMember]

    @property
    def endpoint_list(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def endpoints(self) -> str:
        return ",".join(self.endpoint_list)

    def heal(self, timeout: float = 20) -> None:
        """Start every member that is not running; wait until all are healthy."""
        for m in self.members:
            if not m.running:
                m.start()
        etcdharness.wait_healthy(self.members, timeout)


@pytest.fixture(scope="module")
def etcd3():
    reason = etcdharness.requirements_missing()
    if reason:
        pytest.skip(reason)
    with Underlay(3) as u:
        spec = [(f"m{i + 1}", ns, ip) for i, (ns, ip) in enumerate(u.hosts)]
        with etcdharness.etcd_cluster(spec) as members:
            yield Etcd3(u, members)


@pytest.fixture(autouse=True)
def _heal_etcd3(request):
    yield
    if "etcd3" in request.fixturenames:
        request.getfixturevalue("etcd3").heal()


class NodePair(list):
    """The two daemons of `node_pair`, and what several tests set up on them."""

    def overlay(self, net: str, subnet: str, names: tuple[str, str] = ("s1", "s2")
                ) -> tuple[str, str]:
        """An attachable overlay made on the first node (waited for on the second) and
        one sandbox on each node joined to it: their addresses."""
        import harness

        d1, d2 = self
        d1.cli("network", "create", "-d", "overlay", "--attachable", "--subnet", subnet, net)
        harness.wait_for(lambda: d2.cli("network", "inspect", net, check=False).returncode
                         == 0, timeout=5, what=f"{net} on the second node")
        for d, name in zip(self, names, strict=True):
            d.cli("sandbox", "create", name)
            d.cli("network", "connect", net, name)
        return d1.sandbox_ip(names[0], net), d2.sandbox_ip(names[1], net)


@pytest.fixture
def node_pair(etcd3, request):
    import harness

    daemons = NodePair()

    def start(prefix: str, named: bool = True) -> NodePair:
        for i, (ns, ip) in enumerate(etcd3.underlay.hosts[:2]):
            name = f"{prefix}{i + 1}"
            d = harness.Daemon(ns, name=name, args=[
                "--cluster-store", f"etcd://{etcd3.endpoints}", "--advertise-addr", ip,
                *(["--node-name", name] if named else [])])
            daemons.append(d)
            harness.register_daemon(request, d)
            d.start()
        return daemons

    yield start
    for d in daemons:  # what the test made (global records outlive a daemon), then it
        if d.running:
            ids = d.cli("sandbox", "ls", "-q", "--no-trunc", check=False).stdout.split()
            if ids:
                d.cli("sandbox", "rm", "-f", *ids, check=False)
    if daemons and daemons[0].running:
        daemons[0].cli("network", "prune", "-f", check=False)
    errors: list[str] = []
    for d in reversed(daemons):
        errors += harness.shutdown_daemon(d)
    assert not errors, errors
