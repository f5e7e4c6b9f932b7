"""Cluster flags and overlay networks on a daemon without (a reachable) cluster store."""

from __future__ import annotations

import harness
import pytest


def test_overlay_without_a_cluster_store_is_refused(daemon):
    before = daemon.cli_json("network", "ls", "--format", "json")
    err = daemon.cli_error("network", "create", "-d", "overlay", "--attachable", "prod")
    assert "cluster store" in err and "--cluster-store" in err
    assert daemon.cli_json("network", "ls", "--format", "json") == before
    assert "single host" in daemon.cli("info").stdout
    err = daemon.cli_error("node", "ls")
    assert "not part of a cluster" in err
    err = daemon.cli_error("network", "create", "cnet_gwbridge")
    assert "reserved" in err


@pytest.mark.parametrize("args, message", [
    (["--cluster-store", "etcd://127.0.0.1:2379"], "needs --advertise-addr"),
    (["--cluster-store", "http://127.0.0.1:2379", "--advertise-addr", "127.0.0.1"],
     "unsupported cluster store"),
    (["--cluster-store", "etcd://127.0.0.1:notaport", "--advertise-addr", "127.0.0.1"],
     "invalid etcd endpoint"),
    (["--advertise-addr", "127.0.0.1"], "need --cluster-store"),
])
def test_bad_cluster_flags_are_one_line_errors(host_ns, args, message):
    proc = harness.sh("nsenter", f"--net={harness.netns_path(host_ns)}", harness.CNETD,
                      *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_advertise_addr_must_be_local(host_ns):
    d = harness.Daemon(host_ns, args=["--cluster-store", "etcd://127.0.0.1:9",
                                      "--advertise-addr", "10.123.0.1"])
    with pytest.raises(harness.DaemonError, match="exited during startup"):
        d.start(timeout=10)
    logs = d.logs()
    d.close()
    assert "--advertise-addr 10.123.0.1: not an address of this host" in logs
    assert "Traceback" not in logs


def test_an_unreachable_store_at_start_is_retried_without_crashing(host_ns):
    """cnetd says why, keeps retrying (it does not serve until the store answers) and
    stops cleanly on SIGTERM."""
    host_ns.ip("link", "set", "lo", "up")
    d = harness.Daemon(host_ns, args=["--cluster-store", "etcd://127.0.0.1:9",
                                      "--advertise-addr", "127.0.0.1"])
    try:
        with pytest.raises(harness.DaemonError, match="not ready"):
            d.start(timeout=4)
        logs = d.logs()
        assert logs.count("cluster store unavailable: 127.0.0.1:9: ") >= 2, logs
        assert "retrying" in logs and "Traceback" not in logs
    finally:
        harness.shutdown_daemon(d)
