"""ContainerManager's network changes and published ports, on a fake controller whose
connect/disconnect can fail half way (as the real one can: the gateway-bridge endpoint
is dropped or added around the endpoint being made or given back), and its records.

Each endpoint change, done or failed, is followed by the ports: never left DNATed to an
address the container gave back. Old records are normalised by exact name, full id or
a `network ls` id prefix only; a deleted network's key can be disconnected."""

from __future__ import annotations

import logging
from copy import deepcopy

import pytest
from cnet.cnm import ids
from cnet.cnm.errors import CnetError, Conflict, NotFound
from cnet.cnm.model import Endpoint, Network, Sandbox
from cnet.runtime import containers as containers_mod
from cnet.runtime.containers import ContainerManager
from cnet.runtime.ports import PortPublisher

CID = "c0" * 32
B_ID, B2_ID, OV_ID, GW_ID, IN_ID = ("b1" * 32, "b2" * 32, "0e" * 32, "9a" * 32, "1a" * 32)
BINDINGS = {"80/tcp": [{"HostPort": "8080"}]}
PORTS = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}


class FakeStore:
    def __init__(self) -> None:
        self.data: dict[str, dict] = {}

    def put(self, key: str, value: dict) -> None:
        self.data[key] = deepcopy(value)

    def list(self, prefix: str) -> dict:
        return {k: deepcopy(v) for k, v in self.data.items() if k.startswith(prefix)}

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class FakeCtl:
    """The controller's lookups, and connect/disconnect with failure hooks: `on_connect`
    / `on_disconnect` run (with the sandbox) after the endpoint was joined / given back
    and may raise, as a failing commit or gateway-bridge change does."""

    def __init__(self) -> None:
        self.networks: dict[str, Network] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.store = FakeStore()
        self.on_connect = self.on_disconnect = None
        self.disconnects: list[str] = []
        self._next = 1
        for nid, name, driver, internal in (
                (B_ID, "B", "bridge", False), (B2_ID, "B2", "bridge", False),
                (OV_ID, "ov", "overlay", False), (GW_ID, "cnet_gwbridge", "bridge", False),
                (IN_ID, "inner", "bridge", True)):
            self.networks[nid] = Network(id=nid, name=name, driver=driver, scope="local",
                                         created="", pools=[], internal=internal)
        self.sandboxes[CID] = Sandbox(id=CID, name="w", created="", key="/nonexistent")

    def network(self, ref: str) -> Network:
        return ids.resolve("network", ref, self.networks.values(), lambda n: (n.id, n.name))

    def sandbox(self, ref: str) -> Sandbox:
        return ids.resolve("sandbox", ref, self.sandboxes.values(), lambda s: (s.id, s.name))

    def join(self, net_id: str, sb: Sandbox) -> Endpoint:
        n = self._next
        self._next += 1
        ep = Endpoint(id=f"{n:064x}", name=sb.name, network_id=net_id,
                      ipv4=f"10.0.{n}.2/24", sandbox_id=sb.id)
        self.endpoints[ep.id] = ep
        sb.endpoints.append(ep.id)
        return ep

    def drop(self, sb: Sandbox, net_id: str) -> None:
        ep = next(self.endpoints[e] for e in sb.endpoints
                  if self.endpoints[e].network_id == net_id)
        sb.endpoints.remove(ep.id)
        del self.endpoints[ep.id]

    def connect(self, net_ref, target, ipv4=None, ipv6=None, aliases=()):
        net, sb = self.network(net_ref), self.sandbox(target)
        ep = self.join(net.id, sb)
        if self.on_connect is not None:
            try:
                self.on_connect(sb)
            except BaseException:
                self.drop(sb, net.id)  # the controller's undo: the new endpoint goes
                raise
        return ep

    def disconnect(self, net_ref, target, force=False):
        net, sb = self.network(net_ref), self.sandbox(target)
        self.disconnects.append(net.name)
        self.drop(sb, net.id)
        if self.on_disconnect is not None:
            self.on_disconnect(sb)


class StubIngress:
    def __init__(self) -> None:
        self.published: list = []
        self.unpublished: list = []

    def publish(self, entries) -> None:
        self.published.append(list(entries))

    def unpublish(self, entries) -> None:
        self.unpublished.append(list(entries))


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setattr(containers_mod, "ShimMonitor", lambda on_exit: None)
    ctl, ingress = FakeCtl(), StubIngress()
    ports = PortPublisher(ingress)
    mgr = ContainerManager(ctl, None, None, None, ports, data_root=str(tmp_path / "d"),
                           exec_root=str(tmp_path / "e"))
    return mgr, ctl, ports, ingress


def container(mgr: ContainerManager, nets: list[str], running: bool = True) -> dict:
    c = {"Id": CID, "Name": "w", "State": {"Running": running,
                                           "Status": "running" if running else "exited"},
         "HostConfig": {"PortBindings": BINDINGS, "PublishAllPorts": False},
         "Config": {"ExposedPorts": {"80/tcp": {}}},
         "Networks": {n: {} for n in nets}, "Ports": {}}
    mgr.containers[CID] = c
    if running:
        for n in nets:
            mgr.ctl.join(n, mgr.ctl.sandboxes[CID])
        target = mgr._ipv4(c)
        if target is not None:
            c["Ports"] = mgr.ports.publish(CID, target, c["HostConfig"], {})
    return c


def ip_on(ctl: FakeCtl, net_id: str) -> str:
    sb = ctl.sandboxes[CID]
    return next(ctl.endpoints[e].ipv4.split("/")[0] for e in sb.endpoints
                if ctl.endpoints[e].network_id == net_id)


def test_a_disconnect_failing_after_its_endpoint_went_still_moves_the_ports(env):
    """Disconnecting B from a container also on an overlay must add a gateway-bridge
    endpoint; that fails after B's address was given back: the ports must not stay
    DNATed to it."""
    mgr, ctl, ports, ingress = env
    c = container(mgr, [B_ID, OV_ID])
    b_ip = ip_on(ctl, B_ID)
    assert ports.target(CID) == b_ip

    def gateway_fails(sb):
        raise CnetError("gateway bridge: no free address")

    ctl.on_disconnect = gateway_fails
    with pytest.raises(CnetError, match="no free address"):
        mgr.disconnect_network("w", "B")
    assert ports.target(CID) is None and c["Ports"] == {}
    assert ingress.unpublished == [[(("tcp", "", 8080), b_ip, 80)]]


def test_a_disconnect_failing_moves_the_ports_to_the_next_bridge_endpoint(env):
    mgr, ctl, ports, _ = env
    container(mgr, [B_ID, B2_ID])
    ctl.on_disconnect = lambda sb: (_ for _ in ()).throw(CnetError("store: locked"))
    with pytest.raises(CnetError, match="locked"):
        mgr.disconnect_network("w", B_ID)
    assert ports.target(CID) == ip_on(ctl, B2_ID)


def test_a_connect_failing_after_the_gateway_endpoint_went_still_moves_the_ports(env):
    """A container on an overlay publishes on its gateway-bridge endpoint; connecting a
    bridge network drops that endpoint before the final commit, which fails: the ports
    must not stay DNATed to the gateway-bridge address given back."""
    mgr, ctl, ports, ingress = env
    c = container(mgr, [OV_ID, GW_ID])
    gw_ip = ip_on(ctl, GW_ID)
    assert ports.target(CID) == gw_ip

    def commit_fails(sb):
        ctl.drop(sb, GW_ID)  # _sync_gateway: the network has a gateway now
        raise CnetError("store: database is locked")

    ctl.on_connect = commit_fails
    with pytest.raises(CnetError, match="database is locked"):
        mgr.connect_network("w", "B", {})
    assert ports.target(CID) is None and c["Ports"] == {}
    assert ingress.unpublished == [[(("tcp", "", 8080), gw_ip, 80)]]
    assert B_ID not in c["Networks"]


def test_a_failed_undo_of_a_connect_is_logged_and_the_first_error_raised(env, caplog):
    """The connect cannot publish the ports again (the host port is taken); undoing it
    fails too: the caller is told why the connect failed, the undo's failure is logged,
    and the ports are followed after it."""
    mgr, ctl, ports, _ = env
    c = container(mgr, [IN_ID])  # internal only: started without its bindings
    assert ports.target(CID) is None
    ports.publish("other", "10.9.9.9", {"PortBindings": BINDINGS}, {})

    def undo_fails(sb):
        raise CnetError("netlink: device or resource busy")

    ctl.on_disconnect = undo_fails
    with caplog.at_level(logging.ERROR, logger="cnet.runtime.containers"):
        with pytest.raises(Conflict, match="port is already allocated"):
            mgr.connect_network("w", "B", {})
    assert "undoing the connect of w to B" in caplog.text
    assert "device or resource busy" in caplog.text
    assert ctl.disconnects == ["B"]
    assert B_ID not in c["Networks"] and ports.target(CID) is None
    assert ports.target("other") == "10.9.9.9"


def test_a_record_entry_without_its_endpoint_is_dropped_by_disconnect(env):
    """A crash between giving the endpoint back and saving the record: the record still
    lists B; `network disconnect B` drops the entry (Docker's force path)."""
    mgr, ctl, ports, _ = env
    c = container(mgr, [B_ID, B2_ID])
    ctl.drop(ctl.sandboxes[CID], B_ID)
    mgr.disconnect_network("w", "B")
    assert list(c["Networks"]) == [B2_ID] and ctl.disconnects == []
    assert ctl.store.data[f"container/{CID}"]["Networks"] == {B2_ID: {}}
    assert ports.target(CID) == ip_on(ctl, B2_ID)  # followed there as well


def test_disconnect_of_a_deleted_network_drops_its_key(env):
    """Docker deletes a stopped container's key even when the network is gone: named as
    the record holds it (its id, or an older record's name)."""
    mgr, ctl, _, _ = env
    gone = "de" * 32
    c = container(mgr, [gone, "oldname", B_ID], running=False)
    mgr.disconnect_network("w", gone)
    mgr.disconnect_network("w", "oldname")
    assert list(c["Networks"]) == [B_ID]
    assert ctl.store.data[f"container/{CID}"]["Networks"] == {B_ID: {}}
    with pytest.raises(NotFound):
        mgr.disconnect_network("w", "nosuch")


def test_normalising_matches_exact_names_ids_and_long_prefixes_only(env, caplog):
    """An old record keyed by the name of a deleted network whose name is all hex is not
    re-keyed to whichever network's id starts so."""
    mgr, ctl, _, _ = env
    db_ish = "db" + "0" * 62
    ctl.networks[db_ish] = Network(id=db_ish, name="other", driver="bridge",
                                   scope="local", created="", pools=[])
    c = {"Name": "old", "Networks": {"db": {"Aliases": ["x"]}, "B": {}, B2_ID[:12]: {},
                                     OV_ID: {}, "cafe": {}, B_ID: {"dup": True}}}
    with caplog.at_level(logging.WARNING, logger="cnet.runtime.containers"):
        mgr._normalise(c)
    assert c["Networks"] == {"db": {"Aliases": ["x"]}, B_ID: {}, B2_ID: {}, OV_ID: {},
                             "cafe": {}}
    assert "network db not found (kept as is)" in caplog.text
    assert "network cafe not found (kept as is)" in caplog.text
    # Nor does a connect/disconnect by that network take the stale key for it.
    assert mgr._network_key(c, ctl.networks[db_ish]) is None


def test_restore_publishes_bindings_a_crash_left_unrecorded(env):
    mgr, ctl, ports, _ = env
    c = container(mgr, [B_ID])
    ports.release(CID)
    c["Ports"] = {}
    mgr._restore_ports(c)
    assert c["Ports"] == PORTS and ports.target(CID) == ip_on(ctl, B_ID)
    assert ctl.store.data[f"container/{CID}"]["Ports"] == PORTS


def test_restore_of_a_host_port_another_owner_holds_is_refused(env):
    mgr, ctl, ports, _ = env
    c = container(mgr, [B_ID])
    ports.release(CID)
    ports.restore("other", "10.9.9.9", PORTS)
    mgr._restore_ports(c)
    assert c["Ports"] == {} and ports.target(CID) is None
    assert ports.target("other") == "10.9.9.9"
