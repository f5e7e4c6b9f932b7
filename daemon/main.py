"""cnetd: the cnet daemon (entry point, flags, wiring, lifecycle)."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import threading

from cnet.cnm.cluster import DEFAULT_TTL, Cluster, parse_cluster_store
from cnet.cnm.controller import PREDEFINED, Controller
from cnet.cnm.driverapi import ClusterInfo
from cnet.cnm.errors import CnetError
from cnet.cnm.etcd import EtcdClient
from cnet.cnm.etcdstore import EtcdStore
from cnet.cnm.ipam import DEFAULT_POOLS, Ipam, parse_pool_option
from cnet.cnm.osl import features
from cnet.cnm.osl.kernel import Kernel
from cnet.cnm.reconcile import cleanup, load, reconcile
from cnet.cnm.store import SQLiteStore, Store
from cnet.daemon.api_ports import restore_sandbox_ports
from cnet.daemon.app import App
from cnet.daemon.dnswire import DNSWiring, host_upstreams
from cnet.daemon.plugin_docker import (
    DEFAULT_SOCKET,
    DockerPlugin,
    PluginServer,
    PluginUnavailable,
)
from cnet.daemon.server import UnixHTTPServer
from cnet.daemon.worker import KernelWorker
from cnet.dns.names import NameTable
from cnet.dns.server import DNSServer
from cnet.drivers.bridge.driver import DEFAULT_BRIDGE, BridgeDriver
from cnet.drivers.bridge.options import NAME as BRIDGE_NAME_OPTION
from cnet.drivers.host.driver import HostDriver
from cnet.drivers.ipvlan.driver import IpvlanDriver
from cnet.drivers.macvlan.driver import MacvlanDriver
from cnet.drivers.null.driver import NullDriver
from cnet.drivers.overlay.driver import OverlayDriver
from cnet.ingress.docker_user import DockerUserRules
from cnet.ingress.firewall import Firewall
from cnet.runtime.cleanup import runtime_cleanup
from cnet.runtime.containers import ContainerManager, cgroup_parent, cgroup_version
from cnet.runtime.images import ImageStore
from cnet.runtime.ports import PortPublisher
from cnet.runtime.volumes import VolumeStore

from cnet import __version__

log = logging.getLogger("cnetd")
DRIVERS = (BridgeDriver, HostDriver, NullDriver, OverlayDriver, MacvlanDriver, IpvlanDriver)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cnetd", description="the cnet network daemon")
    p.add_argument("-H", "--host", default="unix:///run/cnet/cnet.sock",
                   help="API socket, unix:///path (default %(default)s)")
    p.add_argument("--data-root", default="/var/lib/cnet", help="persistent state")
    p.add_argument("--exec-root", default="/run/cnet", help="runtime state (namespaces)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--default-address-pool", action="append", default=[],
                   metavar="base=CIDR,size=N",
                   help="replace the default address pools (repeatable)")
    p.add_argument("--bridge", default="", metavar="none",
                   help='"none" to skip the predefined "bridge" network')
    p.add_argument("--dns", action="append", default=[], metavar="IP",
                   help="DNS server for containers (repeatable; default: the host's)")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", metavar="PATH",
                   help="the host resolver configuration the embedded DNS forwards to "
                        "(followed when it changes; ignored with --dns)")
    p.add_argument("--cluster-store", default="", metavar="etcd://HOST:PORT[,HOST:PORT]",
                   help="join a cluster whose state is in these etcd members (overlay networks)")
    p.add_argument("--advertise-addr", default="", metavar="IP",
                   help="this node's underlay address (VXLAN endpoint); needs --cluster-store")
    p.add_argument("--node-name", default="", help="this node's name (default: the hostname)")
    p.add_argument("--node-ttl", type=int, default=DEFAULT_TTL, metavar="SECONDS",
                   help="a node silent this long is Down and its endpoints leave the "
                        "cluster (default %(default)s)")
    p.add_argument("--docker-plugin-socket", default=None, metavar="PATH",
                   help="serve Docker's remote network and IPAM driver plugin API here "
                        f'(default {DEFAULT_SOCKET}; the plugin name is the basename; '
                        '"none" to disable)')
    p.add_argument("--cleanup", action="store_true",
                   help="remove every kernel object this daemon owns, then exit")
    p.add_argument("--version", action="version", version=f"cnetd {__version__}")
    args = p.parse_args(argv)
    if not args.host.startswith("unix://"):
        p.error("-H must be unix:///path")
    if args.cluster_store:
        try:
            args.etcd_endpoints = parse_cluster_store(args.cluster_store)
        except ValueError as exc:
            p.error(str(exc))
        if not args.advertise_addr:
            p.error("--cluster-store needs --advertise-addr IP (this node's underlay address)")
    elif args.advertise_addr or args.node_name:
        p.error("--advertise-addr and --node-name need --cluster-store")
    if not 2 <= args.node_ttl <= 3600:
        p.error("--node-ttl must be between 2 and 3600 seconds")
    return args


def check_advertise_addr(addr: str) -> None:
    """The VXLAN endpoint must be an address of this host (namespace)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((addr, 0))
    except OSError as exc:
        raise CnetError(f"--advertise-addr {addr}: not an address of this host "
                        f"({exc.strerror or exc})") from None


def connect_cluster(args: argparse.Namespace, daemon_id: str, submit) -> Cluster:
    """The etcd client (waiting, with retries, until a member answers) and this node."""
    check_advertise_addr(args.advertise_addr)
    client = EtcdClient(args.etcd_endpoints)

    def unreachable(reason: str) -> None:
        log.error("%s (retrying)", reason)

    client.wait_until_reachable(on_error=unreachable)
    info = ClusterInfo(node_id=daemon_id, node_name=args.node_name or socket.gethostname(),
                       advertise_addr=args.advertise_addr)
    return Cluster(client, EtcdStore(client), info, submit, ttl=args.node_ttl)


def daemon_identity(store: Store) -> dict:
    """The daemon's id and IPv6 ULA prefix, made once and kept in the store."""
    ident = store.get("daemon/identity")
    if ident is None:
        g = secrets.token_bytes(5)  # RFC 4193 global id
        ula = f"fd{g[0]:02x}:{g[1]:02x}{g[2]:02x}:{g[3]:02x}{g[4]:02x}::/48"
        ident = {"id": secrets.token_hex(6), "ula": ula}
        store.put("daemon/identity", ident)
    return ident


def build(args: argparse.Namespace, submit=None) -> tuple[Controller, Cluster | None]:
    """Everything but the server: stores, kernel, firewall, IPAM, drivers, controller."""
    store = SQLiteStore(os.path.join(args.data_root, "cnet.db"))
    ident = daemon_identity(store)
    cluster = None
    if args.cluster_store and not args.cleanup:
        cluster = connect_cluster(args, ident["id"], submit)
    kernel = Kernel(os.path.join(args.exec_root, "netns"))
    pools = [parse_pool_option(p) for p in args.default_address_pool] or DEFAULT_POOLS
    ipam = Ipam(pools, ident["ula"], host_prefixes=lambda: kernel.host.route_prefixes())
    ctl = Controller(store, kernel, Firewall(), ipam, ident["id"],
                     default_bridge=args.bridge != "none",
                     gstore=cluster.store if cluster else None,
                     cluster=cluster.info if cluster else None)
    for cls in DRIVERS:
        ctl.register_driver(cls)
    return ctl, cluster


def ensure_predefined(ctl: Controller) -> None:
    """Docker's three networks: bridge (cnet0), host, none."""
    names = {n.name for n in ctl.networks.values()}
    for name, driver in PREDEFINED:
        if name in names or (name == "bridge" and not ctl.default_bridge):
            continue
        req: dict = {"Name": name, "Driver": driver}
        if driver == "bridge":
            req["Options"] = {BRIDGE_NAME_OPTION: DEFAULT_BRIDGE}
        ctl.create_network(req, predefined=True)


def start(app: App, args: argparse.Namespace) -> None:
    ctl = app.controller
    snap = app.cluster.snapshot() if app.cluster else None
    load(ctl, Cluster.networks(snap) if snap else ())
    if snap:
        Cluster.preload_peers(ctl, snap)
    reconcile(ctl)
    ensure_predefined(ctl)
    app.images = ImageStore(os.path.join(args.data_root, "images"), ctl.store)
    app.volumes = VolumeStore(os.path.join(args.data_root, "volumes"), ctl.store)
    app.containers = ContainerManager(
        ctl, app.worker, app.images, app.volumes, PortPublisher(ctl.firewall),
        data_root=args.data_root, exec_root=args.exec_root, dns=args.dns)
    app.containers.load()
    names = NameTable()
    app.dns = DNSServer(names).start()
    wiring = DNSWiring(ctl, app.dns, names,
                       lambda: args.dns or host_upstreams(args.resolv_conf),
                       app.containers.dns_info)
    ctl.listeners.append(wiring)
    ctl.endpoint_names = wiring.names_for
    wiring.restore()
    if not args.dns:
        wiring.watch_resolv_conf(app.worker.submit, args.resolv_conf)
    if app.cluster and snap:
        app.cluster.start(ctl, snap)
    app.containers.restore()
    restore_sandbox_ports(app)  # cnet-cni's portMappings (bare sandboxes)
    feats = features.probe(ctl.kernel.netns_dir, ctl.firewall.available())
    app.info = {
        "DataRoot": args.data_root,
        "ExecRoot": args.exec_root,
        "Store": {"Type": "sqlite", "Path": ctl.store.path},  # type: ignore[attr-defined]
        "Cluster": cluster_info(app.cluster, args) if app.cluster else None,
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version(),
        "KernelFeatures": [
            {"Name": f.name, "Present": f.present, "Disables": f.disables} for f in feats
        ],
    }


def cluster_info(cluster: Cluster, args: argparse.Namespace) -> dict:
    return {"Store": args.cluster_store, "NodeID": cluster.info.node_id,
            "NodeName": cluster.info.node_name, "AdvertiseAddr": cluster.info.advertise_addr,
            "NodeTTL": cluster.ttl}


def open_docker_plugin(args: argparse.Namespace) -> PluginServer | None:
    """Docker's plugin API socket, bound before any state is built. The default socket
    already served by a live process (another cnetd) is left alone with a warning; a
    chosen one is an error."""
    path = args.docker_plugin_socket or DEFAULT_SOCKET
    if path == "none":
        return None
    try:
        return PluginServer(path)
    except PluginUnavailable as exc:
        if args.docker_plugin_socket:
            raise CnetError(f"--docker-plugin-socket: {exc}") from None
        log.warning("Docker plugin API disabled: %s", exc)
    except OSError as exc:
        raise CnetError(f"--docker-plugin-socket {path}: {exc.strerror or exc}") from None
    return None


def start_docker_plugin(app: App, server: PluginServer | None) -> None:
    """Rebuild the plugin's state (its pools stay reserved even when the socket is
    served by someone else), then serve."""
    plugin = DockerPlugin(app)
    app.worker.run(plugin.load)
    if server is not None:
        server.start(plugin)
        path = str(server.server_address)
        log.info("Docker network and IPAM plugin %r on %s",
                 os.path.splitext(os.path.basename(path))[0], path)


def raise_nofile_limit() -> None:
    """Soft -> hard open-files limit: every sandbox costs a netlink socket and the DNS
    listeners' fds (the hard limit itself cannot be raised without CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug is per message
    worker = KernelWorker()
    try:
        ctl, cluster = worker.run(build, args, worker.submit)
        if args.cleanup:
            errors = runtime_cleanup(args.exec_root, cgroup_parent(ctl.daemon_id))
            errors += worker.run(cleanup, ctl)
            errors += DockerUserRules(ctl.daemon_id).prune()
            for e in errors:
                print(f"cnetd: cleanup: {e}", file=sys.stderr)
            return 1 if errors else 0
        plugin_server = open_docker_plugin(args)
        app = App(controller=ctl, worker=worker, cluster=cluster)
        try:
            worker.run(start, app, args)
            start_docker_plugin(app, plugin_server)
        except BaseException:
            if plugin_server is not None:
                plugin_server.stop()
            raise
    except CnetError as exc:
        print(f"cnetd: {exc}", file=sys.stderr)
        return 1
    server = UnixHTTPServer(args.host[len("unix://"):], app)
    stop = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        log.info("signal %d: shutting down (sandboxes keep their networking)", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("cnetd %s listening on %s (daemon id %s)", __version__, args.host, ctl.daemon_id)
    server.serve_forever(poll_interval=0.5)
    server.server_close()
    os.unlink(server.server_address) if os.path.exists(server.server_address) else None
    if plugin_server is not None:
        plugin_server.stop()
    if app.dns is not None:
        app.dns.close()
    if app.cluster is not None:
        app.cluster.stop()
    worker.run(ctl.store.close)
    worker.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
