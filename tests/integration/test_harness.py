"""The harness itself: namespaces, probes, Daemon lifecycle (with a fake cnetd) and the
leak checker. Needs root and `ip`, but not the real cnetd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import harness
import pytest

# A stand-in for cnetd honouring its CLI contract: serves GET /_ping on the unix socket
# until SIGTERM, bind-mounts "a sandbox" netns under <exec-root>/netns on start, and
# `--cleanup` removes it. GET /netns answers the namespace it runs in.
FAKE_CNETD = """\
#!{python}
import argparse, http.server, os, signal, socketserver, subprocess, sys

p = argparse.ArgumentParser()
p.add_argument("-H", dest="host")
p.add_argument("--data-root")
p.add_argument("--exec-root")
p.add_argument("--log-level", default="info")
p.add_argument("--docker-plugin-socket")
p.add_argument("--cleanup", action="store_true")
a = p.parse_args()
{extra}
sbx = os.path.join(a.exec_root, "netns", "fake")
if a.cleanup:
    if os.path.exists(sbx):
        subprocess.run(["umount", sbx], check=False)
        os.unlink(sbx)
    print("cleanup done", file=sys.stderr)
    sys.exit(0)

os.makedirs(os.path.dirname(sbx), exist_ok=True)
if not os.path.exists(sbx):
    open(sbx, "w").close()
    subprocess.run(["mount", "--bind", "/proc/self/ns/net", sbx], check=True)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {{"/_ping": b"OK", "/netns": os.readlink("/proc/self/ns/net").encode()}}.get(
            self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")
    def log_message(self, fmt, *args):
        print("request:", fmt % args, file=sys.stderr, flush=True)

path = a.host.removeprefix("unix://")
if os.path.exists(path):
    os.unlink(path)
srv = socketserver.UnixStreamServer(path, H)
def term(*_):
    print("SIGTERM, bye", file=sys.stderr, flush=True)
    os.unlink(path)
    os._exit(0)
signal.signal(signal.SIGTERM, term)
print("fake cnetd serving on", path, file=sys.stderr, flush=True)
srv.serve_forever()
"""


def fake_cnetd(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "bin" / "cnetd"
    f.parent.mkdir(exist_ok=True)
    f.write_text(FAKE_CNETD.format(python=sys.executable, extra=textwrap.dedent(extra)))
    f.chmod(0o755)
    return f


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


# --------------------------------------------------------------------------- netns


def test_netns_create_run_delete():
    ns = harness.Netns()
    try:
        assert ns.name.startswith(f"cnet-t-{harness.SESSION_ID}") and len(ns.name) == 15
        assert ns.exists()
        assert ns.name in harness.sh("ip", "netns", "list").stdout
        out = harness.run(ns, "ip", "-br", "link", "show", "lo").stdout
        assert "UP" in out or "UNKNOWN" in out
        # our namespace is not the root one
        assert netns_inode(ns.path) != netns_inode("/proc/self/ns/net")
    finally:
        ns.delete()
    assert not ns.exists()
    ns.delete()  # idempotent


def test_netns_delete_kills_leftover_processes():
    with harness.Netns() as ns:
        proc = ns.popen("sleep", "300")
        harness.wait_for(lambda: proc.pid in ns.pids(), what="sleep inside the netns")
    assert proc.wait(timeout=10) == -9
    assert not ns.exists()


# --------------------------------------------------------------------------- probes


def test_outside_wiring_ping_and_tcp(host_ns, outside):
    assert outside.host == host_ns.name
    assert harness.ping(outside, "192.0.2.1")
    assert harness.ping(host_ns.path, "192.0.2.2", count=2)
    assert not harness.ping(outside, "192.0.2.77", timeout=1)
    with harness.TcpServer(outside, 8080, reply=b"pong\n"):
        assert harness.tcp_connect(host_ns, "192.0.2.2", 8080)
        assert harness.tcp_request(host_ns, "192.0.2.2", 8080) == b"pong\n"
    assert not harness.tcp_connect(host_ns, "192.0.2.2", 8080, timeout=1)
    with harness.TcpServer(outside, 9000, reply=None):
        assert harness.tcp_request(host_ns, "192.0.2.2", 9000, b"echo me") == b"echo me"
    # the root namespace was not touched
    assert outside.host_if not in harness.sh("ip", "-o", "link").stdout


# --------------------------------------------------------------------------- Daemon


def test_daemon_lifecycle_with_fake_cnetd(tmp_path, host_ns):
    d = harness.Daemon(host_ns, binary=fake_cnetd(tmp_path))
    try:
        d.start()
        assert d.api("GET", "/_ping").body == b"OK"
        # it runs in host_ns ...
        ns_link = d.api("GET", "/netns").body.decode()
        assert ns_link == f"net:[{netns_inode(host_ns.path)}]"
        # ... but shares our mount namespace: its bind mounts are visible here
        sbx = d.exec_root / "netns" / "fake"
        assert str(sbx) in Path("/proc/self/mounts").read_text()
        assert netns_inode(str(sbx)) == netns_inode(host_ns.path)
        pid = d.pid
        d.restart()
        assert d.pid != pid and d.api("GET", "/_ping").status == 200
        assert d.stop() == 0
        assert d.cleanup().returncode == 0
        assert str(sbx) not in Path("/proc/self/mounts").read_text()
        assert "SIGTERM, bye" in d.logs() and "cleanup done" in d.logs()
    finally:
        harness.shutdown_daemon(d)
    assert not d.root.exists()
    assert "cleanup done" in d.logs()  # kept after close()


def test_daemon_factory_fixture_with_fake_cnetd(tmp_path, daemon_factory):
    binary = fake_cnetd(tmp_path)
    a = daemon_factory(binary=binary)
    b = daemon_factory(binary=binary)
    assert a.host_ns.name != b.host_ns.name
    assert a.api("GET", "/netns").body != b.api("GET", "/netns").body


def test_daemon_startup_failure_shows_log(tmp_path, host_ns):
    binary = fake_cnetd(tmp_path, extra='print("boom: bad flag", file=sys.stderr); sys.exit(3)')
    d = harness.Daemon(host_ns, binary=binary)
    with pytest.raises(harness.DaemonError, match="(?s)rc=3.*boom: bad flag"):
        d.start(timeout=10)
    assert not d.running
    d.close()


def test_daemon_stop_escalates_to_sigkill(tmp_path, host_ns):
    binary = fake_cnetd(tmp_path, extra="signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "signal.signal = lambda *a: None")
    d = harness.Daemon(host_ns, binary=binary)
    try:
        d.start()
        with pytest.raises(harness.DaemonError, match="did not exit"):
            d.stop(timeout=0.5)
        assert d.returncodes == [-9]
    finally:
        harness.shutdown_daemon(d)


def test_daemon_crash_is_reported_unless_expected(tmp_path, host_ns):
    d = harness.Daemon(host_ns, binary=fake_cnetd(tmp_path))
    try:
        d.start()
        os.kill(d.pid, 9)
        harness.wait_for(lambda: not d.running, what="fake cnetd to die")
        with pytest.raises(harness.DaemonError, match="exited unexpectedly"):
            d.stop()
        d.start()
        d.kill()  # deliberate: no complaint
        assert d.stop() is None
    finally:
        harness.shutdown_daemon(d)


# --------------------------------------------------------------------------- leak check


def test_leak_checker_reports_and_cleans_netns_mounts_processes(tmp_path):
    before = harness.snapshot()
    assert not harness.find_leaks(before)

    ns = harness.Netns()  # leaked namespace
    top = Path("/tmp") / harness.unique_name()  # leaked mount inside a dir of ours
    (top / "exec").mkdir(parents=True)
    target = top / "exec" / "sbx"
    target.touch()
    harness.sh("mount", "--bind", ns.path, str(target))
    fake = tmp_path / "cnetd"  # leaked "cnetd" process
    fake.write_text("import time\ntime.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, str(fake), "--data-root", "x"])
    harness.wait_for(lambda: proc.pid in harness.snapshot().cnetd, what="fake cnetd")

    leaks = harness.find_leaks(before)
    assert leaks.netns == [ns.name]
    assert leaks.mounts == [str(target)] or sorted(leaks.mounts) == sorted(
        [str(target), ns.path])
    assert list(leaks.cnetd) == [proc.pid]
    text = leaks.describe()
    assert ns.name in text and str(target) in text and f"pid={proc.pid}" in text

    assert harness.clean_leaks(leaks) == []
    assert proc.wait(timeout=10) == -9
    assert not ns.exists() and not top.exists()
    assert not harness.find_leaks(before)


def test_leak_checker_ignores_other_sessions():
    other = "0000" if harness.SESSION_ID != "0000" else "ffff"
    assert not harness._ours(f"/tmp/cnet-t-{other}abcd/exec/netns/x")
    assert not harness._ours("cnet-demo-1234")
    assert harness._ours(f"cnet-t-{harness.SESSION_ID}abcd")
    assert harness._ours("/tmp/cnetdev/x")


def test_leak_checker_unmarked_namespaces_strict_or_lenient():
    before = harness.snapshot()
    name = "cnet-x-" + os.urandom(4).hex()  # a test's own naming, not provably ours
    harness.sh("ip", "netns", "add", name)
    try:
        lenient = harness.find_leaks(before, strict=False)
        assert name not in lenient.netns
        assert any(name in i for i in lenient.ignored)
        strict = harness.find_leaks(before, strict=True)
        assert strict.netns == [name]
        assert "not provably ours" in strict.describe()
        assert harness.clean_leaks(strict) == []
        assert Path(f"/run/netns/{name}").exists()  # reported, but left in place
    finally:
        harness.netns_delete(name)


def test_session_registry():
    harness.register_session()  # idempotent; conftest already did it
    assert (harness.SESSIONS_DIR / str(os.getpid())).read_text() == harness.SESSION_ID
    other = subprocess.Popen(["sleep", "300"])
    entry = harness.SESSIONS_DIR / str(other.pid)
    try:
        entry.write_text("beef")
        assert harness.other_sessions_alive()
    finally:
        other.kill()
        other.wait()
    harness.other_sessions_alive()
    assert not entry.exists()  # a dead session's entry is swept


# Runs the checker inside a throwaway namespace (so the root namespace's firewall and links
# are never touched) to show it sees nft tables named cnet and links aliased cnet:*.
NS_LEAK_PROBE = """
import json, subprocess, harness
before = harness.snapshot()
subprocess.run(["nft", "add", "table", "inet", "cnet"], check=True)
subprocess.run(["ip", "link", "add", "ctleak0", "type", "veth", "peer", "name", "ctleak1"],
               check=True)
subprocess.run(["ip", "link", "set", "ctleak0", "alias", "cnet:d1:ep1"], check=True)
leaks = harness.find_leaks(before)
errors = harness.clean_leaks(leaks)
print(json.dumps({"nft": leaks.nft_tables, "links": list(leaks.links.values()),
                  "errors": errors, "after": bool(harness.find_leaks(before))}))
"""


def test_leak_checker_sees_nft_tables_and_aliased_links(host_ns):
    env = dict(os.environ, PYTHONPATH=str(Path(harness.__file__).parent))
    out = harness.nsexec(host_ns, sys.executable, "-c", NS_LEAK_PROBE, check=True, env=env)
    res = json.loads(out.stdout)
    assert res == {"nft": ["inet cnet"], "links": ["cnet:d1:ep1"], "errors": [], "after": False}
    assert "ctleak" not in host_ns.ip("-o", "link").stdout
    assert "cnet" not in host_ns.run("nft", "list", "tables").stdout


INNER_TESTS = """
import pytest, harness

@pytest.fixture(autouse=True)
def module_autouse():
    ns = harness.Netns()
    yield
    ns.delete()

@pytest.fixture
def tidy_ns():
    ns = harness.Netns()
    yield ns
    ns.delete()

def test_tidy(tidy_ns):
    assert tidy_ns.exists()

def test_leaky():
    harness.Netns()

@pytest.mark.no_leak_check
def test_leaky_but_opted_out():
    harness.Netns(harness.unique_name())

def test_cleanup_after_opt_out():
    import os
    for n in os.listdir("/run/netns"):
        if n.startswith("cnet-t-" + harness.SESSION_ID):
            harness.netns_delete(n)
"""


def test_leak_fixture_fails_leaky_tests_only(pytester):
    tests_dir = Path(harness.__file__).parent
    pytester.makeconftest((tests_dir / "conftest.py").read_text())
    pytester.makepyfile(harness=(tests_dir / "harness.py").read_text(),
                        test_inner=INNER_TESTS)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=120)
    res.assert_outcomes(passed=4, errors=1)
    res.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaky*",
        "*test leaked (now cleaned up):*",
        "*netns /run/netns/cnet-t-*",
    ])
    assert "test_tidy" not in "\n".join(
        line for line in res.stdout.lines if line.startswith("ERROR"))
