"""Integration fixtures: throwaway host namespaces and real cnetd processes in them.

- `host_ns`: a fresh network namespace (harness.Netns, `cnet-t-<8hex>`) standing for a
  host; deleted (with anything still running in it) after the test.
- `daemon`: a started harness.Daemon inside `host_ns` (own data-root, exec-root, socket;
  --log-level debug). Teardown: stop (SIGTERM, SIGKILL after 10 s), `cnetd --cleanup`,
  remove its temp dir; its log is attached to the report of a failing test.
- `daemon_factory(ns=None, **kw)`: start more daemons (multi-host); each gets its own new
  host namespace unless `ns` is given; kwargs go to harness.Daemon (args=[...],
  log_level=...). All are torn down like `daemon`, then their namespaces deleted.
- `outside`: a namespace wired to `host_ns` by a veth (host 192.0.2.1/24, outside
  192.0.2.2/24), see harness.wire_outside.

Everything here is skipped (with the reason) when not root or `ip`/`nft`/`nsenter` are
missing. Teardown problems (daemon hung on SIGTERM, died unexpectedly, cleanup failed)
fail the test.
"""

from __future__ import annotations

import harness
import pytest


@pytest.fixture(autouse=True)
def _integration_requirements():
    reason = harness.requirements_missing()
    if reason:
        pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    here = str(__file__).rsplit("/", 1)[0] + "/"
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def host_ns():
    ns = harness.Netns()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def outside(host_ns):
    o = harness.wire_outside(host_ns)
    try:
        yield o
    finally:
        o.delete()


@pytest.fixture
def daemon(request, host_ns):
    with harness.running_daemon(request, host_ns) as d:
        yield d


@pytest.fixture
def daemon_factory(request):
    daemons: list[harness.Daemon] = []
    namespaces: list[harness.Netns] = []

    def make(ns=None, *, start: bool = True, **kw) -> harness.Daemon:
        if ns is None:
            ns = harness.Netns()
            namespaces.append(ns)
        d = harness.Daemon(ns, **kw)
        daemons.append(d)
        harness.register_daemon(request, d)
        if start:
            d.start()
        return d

    try:
        yield make
    finally:
        try:
            errors: list[str] = []
            for d in reversed(daemons):
                errors += harness.shutdown_daemon(d)
            harness.fail_on_teardown_errors(errors)
        finally:
            for ns in namespaces:
                ns.delete()


@pytest.fixture
def cdaemon(daemon, busybox_tar):
    """A daemon with the busybox image imported as `busybox`."""
    daemon.cli("image", "import", str(busybox_tar), "busybox")
    return daemon
