"""The Docker plugin front-end without dockerd: the IPAM driver's pools, reservations and
addresses on a real Ipam and SQLite store, and who owns the plugin socket."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from cnet.cnm.errors import CnetError, Conflict, InvalidParameter, NotFound
from cnet.cnm.ipam import Ipam
from cnet.cnm.store import SQLiteStore
from cnet.daemon import main as daemon_main
from cnet.daemon.plugin_docker import PluginServer, PluginUnavailable
from cnet.daemon.plugin_ipam import GLOBAL_SPACE, LOCAL_SPACE, IpamPlugin


@pytest.fixture
def ctl(tmp_path: Path):
    store = SQLiteStore(str(tmp_path / "cnet.db"))
    yield SimpleNamespace(store=store, ipam=Ipam(), networks={})
    store.close()


def test_pools_are_reserved_in_cnets_ipam_until_released(ctl):
    plugin = IpamPlugin(ctl)
    pool = plugin.request_pool({"AddressSpace": LOCAL_SPACE})
    # automatic pools come from the last default pool down (dockerd's own IPAM starts at
    # the first one, 172.17.0.0/16)
    assert pool["Pool"] == "192.168.0.0/20" and pool["PoolID"] == pool["Pool"]
    with pytest.raises(Conflict, match="overlaps"):
        ctl.ipam.plan([{"Subnet": "192.168.1.0/24"}], False)
    with pytest.raises(Conflict, match="overlaps"):
        plugin.request_pool({"AddressSpace": LOCAL_SPACE, "Pool": "192.168.0.0/16"})
    wanted = plugin.request_pool({"AddressSpace": LOCAL_SPACE, "Pool": "10.50.0.0/24",
                                  "SubPool": "10.50.0.128/25"})
    assert wanted["Pool"] == "10.50.0.0/24"
    glob = plugin.request_pool({"AddressSpace": GLOBAL_SPACE})
    assert glob["Pool"].startswith("10.") and glob["Pool"].endswith("/24")
    assert len(ctl.store.list("docker/pool/")) == 3

    # a restarted daemon has the same pools and reservations
    again = IpamPlugin(SimpleNamespace(store=ctl.store, ipam=Ipam(), networks={}))
    again.load()
    assert set(again.pools) == {pool["Pool"], "10.50.0.0/24", glob["Pool"]}
    with pytest.raises(Conflict):
        again.ctl.ipam.plan([{"Subnet": "10.50.0.0/25"}], False)

    for p in (pool, wanted, glob):
        plugin.release_pool({"PoolID": p["PoolID"]})
    assert ctl.store.list("docker/") == {}
    ctl.ipam.plan([{"Subnet": "192.168.1.0/24"}], False)  # free again


def test_addresses(ctl):
    plugin = IpamPlugin(ctl)
    pid = plugin.request_pool({"AddressSpace": LOCAL_SPACE, "Pool": "10.60.0.0/24",
                               "SubPool": "10.60.0.64/26"})["PoolID"]
    gw = plugin.request_address({"PoolID": pid, "Options": {
        "RequestAddressType": "com.docker.network.gateway"}})
    assert gw["Address"] == "10.60.0.1/24"
    assert plugin.request_address({"PoolID": pid})["Address"] == "10.60.0.64/24"
    assert plugin.request_address({"PoolID": pid, "Address": "10.60.0.9"})["Address"] == \
        "10.60.0.9/24"
    with pytest.raises(Conflict, match="in use"):
        plugin.request_address({"PoolID": pid, "Address": "10.60.0.9"})
    for bad in ("10.60.0.0", "10.60.0.255", "10.61.0.1"):
        with pytest.raises(InvalidParameter):
            plugin.request_address({"PoolID": pid, "Address": bad})
    with pytest.raises(NotFound):
        plugin.request_address({"PoolID": "10.99.0.0/24"})
    plugin.release_address({"PoolID": pid, "Address": "10.60.0.64"})
    with pytest.raises(NotFound):
        plugin.release_address({"PoolID": pid, "Address": "10.60.0.64"})
    assert plugin.request_address({"PoolID": pid})["Address"] == "10.60.0.64/24"
    assert sorted(ctl.store.list("docker/addr/")) == [
        f"docker/addr/10.60.0.0_24/10.60.0.{n}" for n in (1, 64, 9)]


def _live(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


def test_socket_ownership(tmp_path: Path, monkeypatch, caplog):
    path = tmp_path / "cnet.sock"
    live = _live(path)
    try:
        with pytest.raises(PluginUnavailable):
            PluginServer(str(path))
        # the default path served by someone else: a warning, no plugin, nothing stolen
        monkeypatch.setattr(daemon_main, "DEFAULT_SOCKET", str(path))
        with caplog.at_level(logging.WARNING):
            assert daemon_main.open_docker_plugin(
                argparse.Namespace(docker_plugin_socket=None)) is None
        assert "served by another process" in caplog.text
        # a path given explicitly: an error
        with pytest.raises(CnetError, match="served by another process"):
            daemon_main.open_docker_plugin(argparse.Namespace(docker_plugin_socket=str(path)))
        assert daemon_main.open_docker_plugin(
            argparse.Namespace(docker_plugin_socket="none")) is None
    finally:
        live.close()
    # now stale (no process behind it): replaced, and removed when the server stops
    server = PluginServer(str(path))
    server.stop()
    assert not path.exists()
    # a socket someone else put there meanwhile is not ours to remove
    server = PluginServer(str(path))
    path.unlink()
    other = _live(path)
    try:
        server.stop()
        assert path.exists()
    finally:
        other.close()
    # something that is not a socket is never removed
    path.unlink()
    path.write_text("mine")
    with pytest.raises(PluginUnavailable, match="not a socket"):
        PluginServer(str(path))
    assert path.read_text() == "mine"
