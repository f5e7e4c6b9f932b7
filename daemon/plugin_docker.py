"""Docker's remote network driver plugin API (libnetwork docs/remote.md): a stock dockerd
uses cnet networks through `docker network create -d cnet [--ipam-driver cnet]`.

A small HTTP/1.1 server of its own on a unix socket (default
/run/docker/plugins/cnet.sock: dockerd finds plugins there by the socket's basename),
separate from cnetd's API. dockerd POSTs JSON to /Plugin.Activate, /NetworkDriver.* and
/IpamDriver.* (the latter in daemon/plugin_ipam.py) with Accept
application/vnd.docker.plugins.v1.2+json. Answers are always HTTP 200 with a JSON object;
an error is a non-empty "Err" (NetworkDriver, Plugin) or "Error" (IpamDriver): dockerd's
plugin client reads only "Err" from a non-200 body, so a 200 keeps the IPAM's message
readable. An unknown method gets 404 (dockerd treats a 404 from the optional
Program/RevokeExternalConnectivity as "not implemented").

Mapping onto the CNM controller (every call runs on the kernel worker):
- CreateNetwork: a cnet network with dockerd's NetworkID as its id, named
  `docker-<id12>` (dockerd does not send the network's name), driver from
  `-o cnet.driver=DRIVER` (a cnet driver: bridge, the default, overlay, macvlan...),
  the subnet and gateway of IPv4Data/IPv6Data (from cnet's IPAM driver or Docker's
  default one), labelled `cnet.plugin=docker`. Other generic options go to the cnet
  driver as they are.
- CreateEndpoint: the endpoint with dockerd's EndpointID and the address the IPAM gave;
  the MAC is dockerd's, or cnet's (answered back) when dockerd has none.
- Join: the interface is made in cnetd's own namespace under a temporary name
  (controller.join_external); dockerd moves it into the container, names it eth<N> and
  configures it. Leave undoes it. Join also ensures the network's DOCKER-USER rules
  (ingress/docker_user.py): at boot the chain appears only once dockerd runs (after
  cnetd), and a flush (`iptables -F`) removes them.
- DeleteNetwork: dockerd only logs a refusal of DeleteEndpoint or DeleteNetwork and goes
  on, so the endpoints still in cnet then are orphans dockerd forgot: they are removed
  with the network (never a cnet network left behind by `docker network rm`).

The iptables binaries may wait on the xtables lock: a method decides on the worker and
returns an _After whose work (the iptables calls) runs on the HTTP thread, with the
worker undoing the method if that work fails.
- Program/RevokeExternalConnectivity: published ports (`docker run -p`) through cnet's
  nftables port publishing, sharing cnet's host port allocation.

Scope: GetCapabilities answers "local". dockerd 20.10 outside swarm mode only uses
global-scope remote networks with its own (deprecated) cluster store; with cnetd's
cluster store an `-o cnet.driver=overlay` network is global inside cnet (VXLAN to other
cnet nodes) but each dockerd still sees it as a local network of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from cnet.cnm import ids
from cnet.cnm.errors import CnetError, InvalidParameter, NotFound
from cnet.cnm.model import Endpoint, Network
from cnet.cnm.osl.netlink import KernelError
from cnet.cnm.store import Txn
from cnet.daemon.app import App
from cnet.daemon.plugin_ipam import IpamPlugin, text_field
from cnet.ingress.docker_user import DockerUserRules
from cnet.ingress.firewall import FirewallError
from cnet.runtime.ports import PortPublisher

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
DEFAULT_SOCKET = "/run/docker/plugins/cnet.sock"
LABEL = "cnet.plugin"  # on the cnet networks made through this API (value "docker")
DRIVER_OPTION = "cnet.driver"
GENERIC = "com.docker.network.generic"
PORTMAP = "com.docker.network.portmap"
EXPOSED = "com.docker.network.endpoint.exposedports"
PROTOS = {6: "tcp", 17: "udp"}
PROTO_NUMBERS = {v: k for k, v in PROTOS.items()}


class PluginUnavailable(Exception):
    """The plugin socket is served by another live process."""


def _hex_id(body: dict, name: str) -> str:
    value = text_field(body, name)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidParameter(f"invalid {name} {value!r}: want 64 hex digits")
    return value


def _obj(body: dict, name: str) -> dict:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter(f"{name} must be an object")
    return value


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


@dataclass
class _After:
    """A worker method's answer plus `work` for the HTTP thread (the iptables binaries,
    which may wait on the xtables lock: never on the kernel worker). If `work` raises,
    `undo` runs on the worker and the error is the answer."""
    answer: dict
    work: Callable[[], None]
    undo: Callable[[], None] | None = None


class DockerPlugin:
    """The NetworkDriver methods (and the dispatch for both APIs)."""

    def __init__(self, app: App, ports: PortPublisher | None = None):
        self.app = app
        self.ctl = app.controller
        self.ipam = IpamPlugin(self.ctl)
        if ports is None:
            ports = getattr(app.containers, "ports", None) or PortPublisher(self.ctl.firewall)
        self.ports = ports
        # endpoint id -> the port map dockerd asked for, with the host ports cnet chose
        self.port_maps: dict[str, list[dict]] = {}
        self.docker_user = DockerUserRules(self.ctl.daemon_id)

    def _bridge(self, net: Network) -> str | None:
        return net.driver_state.get("bridge") if net.driver == "bridge" else None

    # -- start (on the worker) ----------------------------------------------------------
    def load(self) -> None:
        """Rebuild the IPAM's pools and the published ports after a daemon start."""
        self.ipam.load()
        bridges = self.docker_user.wanted
        for net in self.ctl.networks.values():
            bridge = self._bridge(net)
            if bridge and net.labels.get(LABEL) == "docker":
                bridges.add(bridge)
                try:
                    self.docker_user.apply(bridge)
                except CnetError as exc:
                    log.warning("docker plugin: %s", exc)
        for err in self.docker_user.prune(keep=set(bridges)):
            log.warning("docker plugin: %s", err)
        stale = []
        for key, rec in self.ctl.store.list("docker/ports/").items():
            ep = self.ctl.endpoints.get(key.rsplit("/", 1)[1])
            if ep is None or not ep.ipv4 or not ep.driver_state.get("external_sandbox"):
                stale.append(key)
                continue
            if not self.ports.restore(ep.id, ep.ipv4.split("/")[0], rec["Ports"]):
                stale.append(key)  # another owner holds a host port (logged)
                continue
            self.port_maps[ep.id] = rec["PortMap"]
        if stale:
            self.ctl.store.commit(Txn(deletes=stale))

    # -- dispatch -----------------------------------------------------------------------
    def call(self, path: str, raw: bytes) -> tuple[int, dict]:
        """Answer one request: (HTTP status, JSON object)."""
        api, _, method = path.lstrip("/").partition(".")
        err_field = "Error" if api == "IpamDriver" else "Err"
        if api == "Plugin" and method == "Activate":
            return 200, {"Implements": ["NetworkDriver", "IpamDriver"]}
        if api == "NetworkDriver":
            fn = self.METHODS.get(method)
            target: Any = self
        elif api == "IpamDriver":
            fn = IpamPlugin.METHODS.get(method)
            target = self.ipam
        else:
            fn = None
        if fn is None:
            return 404, {err_field: f"unknown plugin method {path}"}
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            return 200, {err_field: f"invalid JSON body: {exc}"}
        if not isinstance(body, dict):
            return 200, {err_field: "the request body must be a JSON object"}
        log.debug("docker plugin: %s %s", path, json.dumps(body)[:2000])
        t0 = time.perf_counter()
        try:
            answer = self.app.worker.run(fn, target, body)
            if isinstance(answer, _After):
                answer = self._after(answer)
            log.debug("docker plugin: %s done in %.2f ms", path, (time.perf_counter() - t0) * 1e3)
            return 200, answer
        except (CnetError, KernelError, FirewallError) as exc:
            log.info("docker plugin: %s: %s", path, exc)
            return 200, {err_field: str(exc)}
        except Exception as exc:  # one bad request never kills the plugin
            log.exception("docker plugin: %s failed", path)
            return 200, {err_field: f"internal error: {exc}"}

    def _after(self, after: _After) -> dict:
        """Run a method's HTTP-thread work; undo the method on the worker if it fails."""
        try:
            after.work()
        except BaseException:
            if after.undo is not None:
                try:
                    self.app.worker.run(after.undo)
                except Exception:
                    log.exception("docker plugin: undo failed")
            raise
        return after.answer

    # -- NetworkDriver ------------------------------------------------------------------
    def _network(self, body: dict) -> Network:
        nid = _hex_id(body, "NetworkID")
        net = self.ctl.networks.get(nid)
        if net is None or net.labels.get(LABEL) != "docker":
            raise NotFound(f"network {ids.short(nid)} not found")
        return net

    def _endpoint(self, body: dict) -> Endpoint:
        net = self._network(body)
        eid = _hex_id(body, "EndpointID")
        ep = self.ctl.endpoints.get(eid)
        if ep is None or ep.network_id != net.id:
            raise NotFound(f"endpoint {ids.short(eid)} not found on network {net.name}")
        return ep

    def get_capabilities(self, body: dict) -> dict:
        return {"Scope": "local", "ConnectivityScope": "local"}

    def create_network(self, body: dict) -> dict:
        nid = _hex_id(body, "NetworkID")
        options = _obj(body, "Options")
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise InvalidParameter(f"{GENERIC} must be an object")
        generic = {str(k): str(v) for k, v in generic.items()}
        driver = generic.pop(DRIVER_OPTION, "bridge") or "bridge"  # cnet says if unknown
        unknown = sorted(k for k in generic if k.startswith("cnet."))
        if unknown:
            raise InvalidParameter(f"unknown option {unknown[0]}")
        configs: list[dict] = []
        for field in ("IPv4Data", "IPv6Data"):
            data = body.get(field) or []
            if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
                raise InvalidParameter(f"{field} must be a list of objects")
            for d in data:
                cfg: dict = {"Subnet": text_field(d, "Pool")}
                gw = text_field(d, "Gateway", required=False)
                if gw:
                    cfg["Gateway"] = gw.split("/")[0]
                aux = d.get("AuxAddresses") or {}
                if not isinstance(aux, dict):
                    raise InvalidParameter("AuxAddresses must be an object")
                if aux:
                    cfg["AuxiliaryAddresses"] = {k: str(v).split("/")[0]
                                                 for k, v in aux.items()}
                configs.append(cfg)
        if not any(":" not in c["Subnet"] for c in configs):
            raise InvalidParameter("the network needs an IPv4 pool (IPv4Data)")
        req = {
            "Name": f"docker-{nid[:12]}",
            "Driver": driver,
            "IPAM": {"Config": configs},
            "EnableIPv6": bool(body.get("IPv6Data")),
            "Internal": _truthy(options.get("com.docker.network.internal")),
            "Attachable": True,
            "Options": generic,
            "Labels": {LABEL: "docker"},
        }
        # A pool from cnet's IPAM driver is reserved in cnet's IPAM: the reservation
        # becomes the network's subnet (on this worker, so nothing comes in between).
        handed = [c["Subnet"] for c in configs if self.ipam.release_reservation(c["Subnet"])]
        try:
            net = self.ctl.create_network(req, network_id=nid)
        except BaseException:
            for subnet in handed:
                self.ipam.sync_reservation(subnet)
            raise
        log.info("docker plugin: network %s (%s) created", net.name, driver)
        bridge = self._bridge(net)
        if not bridge:
            return {}
        self.docker_user.wanted.add(bridge)

        def work() -> None:  # on the HTTP thread
            try:
                self.docker_user.apply(bridge)
            except BaseException:
                # apply() takes back what it inserted; this also catches a rule that
                # went in with a failure reported
                self.docker_user.wanted.discard(bridge)
                self.docker_user.apply(bridge, add=False)
                raise

        def undo() -> None:  # on the worker
            self.docker_user.wanted.discard(bridge)
            self.ctl.delete_network(net.id)
            for subnet in handed:
                self.ipam.sync_reservation(subnet)
            log.info("docker plugin: network %s removed again", net.name)

        return _After({}, work, undo)

    def delete_network(self, body: dict) -> dict | _After:
        net = self._network(body)
        # dockerd calls this once it has no endpoint on the network, and ignores both a
        # refused DeleteEndpoint and a refused DeleteNetwork (libnetwork only logs them):
        # whatever endpoint cnet still has is an orphan. Those joined to a cnet sandbox
        # (a `cnet network connect`) are cnet's own and stay (the delete is refused).
        for ep in self.ctl.network_endpoints(net.id):
            if ep.sandbox_id:
                continue
            log.warning("docker plugin: network %s: removing endpoint %s dockerd left behind",
                        net.name, ids.short(ep.id))
            if ep.driver_state.get("external_sandbox"):
                try:
                    self._revoke(ep)
                    self.ctl.leave_external(ep.id)
                except Exception as exc:
                    log.warning("docker plugin: leave %s: %s", ids.short(ep.id), exc)
            try:
                self.ctl.delete_endpoint(ep.id)
            except Exception as exc:
                log.warning("docker plugin: delete endpoint %s: %s", ids.short(ep.id), exc)
        self.ctl.delete_network(net.id)
        for pool in net.pools:  # dockerd releases the pools after this: hold them till then
            self.ipam.sync_reservation(pool.subnet)
        bridge = self._bridge(net)
        if not bridge:
            return {}
        self.docker_user.wanted.discard(bridge)
        return _After({}, lambda: self.docker_user.apply(bridge, add=False))

    def create_endpoint(self, body: dict) -> dict:
        net = self._network(body)
        eid = _hex_id(body, "EndpointID")
        iface = _obj(body, "Interface")
        _obj(body, "Options")
        ipv4 = text_field(iface, "Address", required=False)
        ipv6 = text_field(iface, "AddressIPv6", required=False)
        mac = text_field(iface, "MacAddress", required=False)
        for cidr, v6 in ((ipv4, False), (ipv6, True)):
            pool = net.pool(v6)
            if cidr and (pool is None or cidr.partition("/")[2] !=
                         pool.subnet.partition("/")[2]):
                raise InvalidParameter(f"address {cidr} is not in the network's subnet")
        ep = self.ctl.create_endpoint(net.id, f"docker-{eid[:12]}",
                                      ipv4.split("/")[0] or None, ipv6.split("/")[0] or None,
                                      mac=mac or None, endpoint_id=eid)
        answer: dict = {}
        if not mac:
            answer["MacAddress"] = ep.mac
        if ep.ipv4 and not ipv4:
            answer["Address"] = ep.ipv4
        if ep.ipv6 and not ipv6:
            answer["AddressIPv6"] = ep.ipv6
        return {"Interface": answer} if answer else {}

    def endpoint_oper_info(self, body: dict) -> dict:
        ep = self._endpoint(body)
        value: dict = {"com.docker.network.endpoint.macaddress": ep.mac or ""}
        if ep.id in self.port_maps:
            value[PORTMAP] = self.port_maps[ep.id]
        return {"Value": value}

    def delete_endpoint(self, body: dict) -> dict:
        ep = self._endpoint(body)
        if ep.driver_state.get("external_sandbox"):  # dockerd skipped Leave: do it now
            self._revoke(ep)
            self.ctl.leave_external(ep.id)
        self.ctl.delete_endpoint(ep.id)
        return {}

    def join(self, body: dict) -> dict | _After:
        ep = self._endpoint(body)
        net = self.ctl.networks[ep.network_id]
        key = text_field(body, "SandboxKey")
        _obj(body, "Options")
        ifname, info = self.ctl.join_external(ep.id, key)
        answer = {"InterfaceName": {"SrcName": ifname, "DstPrefix": "eth"},
                  "Gateway": info.gateway4 or "", "GatewayIPv6": info.gateway6 or "",
                  "StaticRoutes": [{"Destination": dst, "RouteType": 0, "NextHop": via}
                                   for dst, via in info.static_routes]}
        bridge = self._bridge(net)
        if not bridge:
            return answer
        # Join runs for every container start (ProgramExternalConnectivity only for the
        # gateway network): the place to put back rules a flush or a boot order lost.
        return _After(answer, lambda: self.docker_user.ensure(bridge),
                      lambda: self._undo_join(ep.id))

    def _undo_join(self, endpoint_id: str) -> None:
        ep = self.ctl.endpoints.get(endpoint_id)
        if ep is not None and ep.driver_state.get("external_sandbox"):
            self.ctl.leave_external(ep.id)

    def leave(self, body: dict) -> dict:
        ep = self._endpoint(body)
        self._revoke(ep)
        self.ctl.leave_external(ep.id)
        return {}

    def discover(self, body: dict) -> dict:
        return {}

    def program_external_connectivity(self, body: dict) -> dict:
        ep = self._endpoint(body)
        options = _obj(body, "Options")
        portmap = options.get(PORTMAP) or []
        if not isinstance(portmap, list) or not all(isinstance(p, dict) for p in portmap):
            raise InvalidParameter(f"{PORTMAP} must be a list of objects")
        bindings: dict[str, list[dict]] = {}
        for p in portmap:
            proto = PROTOS.get(p.get("Proto", 6))
            port = p.get("Port")
            host_port = p.get("HostPort") or 0
            if proto is None:
                raise InvalidParameter(f"unsupported protocol {p.get('Proto')} (tcp, udp)")
            if not isinstance(port, int) or not isinstance(host_port, int):
                raise InvalidParameter("Port and HostPort must be numbers")
            host_ip = str(p.get("HostIP") or "")
            if host_ip in ("0.0.0.0", "::"):
                host_ip = ""
            # A range (HostPortEnd) is served by its first port.
            bindings.setdefault(f"{port}/{proto}", []).append(
                {"HostIp": host_ip, "HostPort": str(host_port) if host_port else ""})
        if not bindings:
            return {}
        if ep.id in self.port_maps:
            raise InvalidParameter(f"endpoint {ids.short(ep.id)} already has published ports")
        if not ep.ipv4:
            raise InvalidParameter("published ports need an IPv4 address")
        PortPublisher.validate(bindings)
        ip = ep.ipv4.split("/")[0]
        result = self.ports.publish(ep.id, ip, {"PortBindings": bindings}, {})
        try:
            pmap = []
            for key, published in result.items():
                port, _, proto = key.partition("/")
                for b in published:
                    hp = int(b["HostPort"])
                    pmap.append({"Proto": PROTO_NUMBERS[proto], "IP": ip, "Port": int(port),
                                 "HostIP": b["HostIp"], "HostPort": hp, "HostPortEnd": hp})
            self.ctl.store.put(f"docker/ports/{ep.id}", {"Ports": result, "PortMap": pmap})
        except BaseException:
            self.ports.release(ep.id)
            raise
        self.port_maps[ep.id] = pmap
        log.info("docker plugin: endpoint %s publishes %s", ids.short(ep.id),
                 ", ".join(f"{b['HostIp'] or '*'}:{b['HostPort']}->{k}"
                           for k, v in result.items() for b in v))
        return {}

    def _revoke(self, ep: Endpoint) -> None:
        if ep.id in self.port_maps:
            self.ports.release(ep.id)
            self.ctl.store.delete(f"docker/ports/{ep.id}")
            del self.port_maps[ep.id]

    def revoke_external_connectivity(self, body: dict) -> dict:
        self._revoke(self._endpoint(body))
        return {}

    def allocate_network(self, body: dict) -> dict:
        _hex_id(body, "NetworkID")
        return {}

    def free_network(self, body: dict) -> dict:
        _hex_id(body, "NetworkID")
        return {}

    METHODS = {
        "GetCapabilities": get_capabilities,
        "CreateNetwork": create_network,
        "DeleteNetwork": delete_network,
        "CreateEndpoint": create_endpoint,
        "EndpointOperInfo": endpoint_oper_info,
        "DeleteEndpoint": delete_endpoint,
        "Join": join,
        "Leave": leave,
        "DiscoverNew": discover,
        "DiscoverDelete": discover,
        "ProgramExternalConnectivity": program_external_connectivity,
        "RevokeExternalConnectivity": revoke_external_connectivity,
        "AllocateNetwork": allocate_network,
        "FreeNetwork": free_network,
    }


# -- the HTTP server ------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PluginServer

    def address_string(self) -> str:
        return "unix"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("docker plugin: %s", fmt % args)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_POST(self) -> None:
        status, payload = self.server.plugin.call(self.path.split("?", 1)[0], self._body())
        self._answer(status, payload)

    def do_GET(self) -> None:
        self._body()
        self._answer(404, {"Err": f"{self.command} {self.path}: plugin methods are POSTs"})

    do_PUT = do_DELETE = do_GET

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _served(path: str) -> bool:
    """Does a live process accept connections on the unix socket `path`?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
            return True
        except OSError as exc:  # only a refused connection proves nobody listens
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str):
        """Bind the socket (early, before the daemon builds any state: a refused socket
        must leave nothing behind); start() serves it."""
        self.plugin: DockerPlugin | None = None
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise PluginUnavailable(f"{path} exists and is not a socket")
            if _served(path):
                raise PluginUnavailable(f"{path} is served by another process")
            os.unlink(path)  # stale: its process is gone
        old = os.umask(0o117)  # 0660, like dockerd's own socket
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
        self._inode = os.stat(path).st_ino
        self._thread: threading.Thread | None = None

    def start(self, plugin: DockerPlugin) -> PluginServer:
        self.plugin = plugin
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="docker-plugin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and remove the socket (if it is still ours)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
        self.server_close()
        path = self.server_address
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == self._inode:
                os.unlink(path)
