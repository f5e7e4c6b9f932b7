"""Root test configuration: makes `harness` importable and checks every test for leaks.

The leak check is the outermost function-scoped fixture (autouse, declared in the root
conftest, so pytest sets it up first and tears it down last among function fixtures):
it snapshots kernel/process state before the test and, after every other fixture's
teardown, fails the test listing anything new that is ours — /run/netns/cnet-* entries,
mounts whose path contains "cnet", cnetd processes, an nft table `cnet` or links with a
`cnet:` alias in the root namespace, container shim processes of our exec roots, cgroups
under /sys/fs/cgroup/*/cnet/<daemon-id> of our daemons — then removes it so later tests
are not poisoned.
How state is attributed when several test sessions share a machine: see harness.py
("leak check"); name your namespaces with harness.unique_name() / harness.Netns so
they are provably yours.

Opt out (e.g. for state deliberately shared across a module) with
`@pytest.mark.no_leak_check`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # `import harness` from any test, whatever the import mode
    sys.path.insert(0, _TESTS)

import harness  # noqa: E402

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_leak_check: skip the per-test leak check (namespaces, mounts, ...)"
    )
    config.addinivalue_line("markers", "integration: needs root and real kernel namespaces")
    harness.register_session()


def pytest_unconfigure(config: pytest.Config) -> None:
    harness.unregister_session()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"cnet harness: session {harness.SESSION_ID}, cnet={harness.CNET}, "
        f"cnetd={harness.CNETD}"
    ]


#: new state the leak check did not count (concurrent sessions), for the summary
_IGNORED: set[str] = set()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _IGNORED:
        tr = terminalreporter
        tr.write_sep("-", "leak check: not counted (other test sessions or cnetd were running)")
        for item in sorted(_IGNORED)[:10]:
            tr.write_line(f"  {item}")
        if len(_IGNORED) > 10:
            tr.write_line(f"  ... and {len(_IGNORED) - 10} more")


@pytest.fixture(autouse=True)
def leak_check(request: pytest.FixtureRequest):
    """Fail the test if it leaves namespaces, mounts, processes, nft, links or cgroups behind."""
    if request.node.get_closest_marker("no_leak_check"):
        yield
        return
    before = harness.snapshot()
    yield
    leaks = harness.find_leaks(before)
    _IGNORED.update(leaks.ignored)
    if leaks:
        desc = leaks.describe()
        errors = harness.clean_leaks(leaks)
        msg = f"test leaked (now cleaned up):\n{desc}"
        if errors:
            msg += "\ncleanup errors:\n  " + "\n  ".join(errors)
        pytest.fail(msg, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On the first failing phase, attach the logs of the test's cnetd daemons to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and not item.stash.get(harness.FAILED_KEY, False):
        for d in item.stash.get(harness.DAEMONS_KEY, []):
            rep.sections.append((f"cnetd log: {d.name} ({d.root})", d.logs() or "(empty)"))
    if rep.failed:
        item.stash[harness.FAILED_KEY] = True


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory):
    """A busybox rootfs tarball built once per session by scripts/build-busybox-image.sh
    (integration and multihost tests import it as the `busybox` image)."""
    out = tmp_path_factory.mktemp("busybox") / "busybox.tar"
    harness.sh(str(harness.REPO_ROOT / "scripts" / "build-busybox-image.sh"), str(out))
    return out
