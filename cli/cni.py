"""cnet-cni: a CNI 1.1.0 plugin that attaches containers to cnet networks.

A runtime (podman, containerd, CRI-O, cnitool) runs it with CNI_COMMAND and friends in
the environment and the network configuration on stdin:

    {"cniVersion": "1.1.0", "name": "mynet", "type": "cnet",
     "network": "mynet",                  # the cnet network (default: "name")
     "host": "unix:///run/cnet/cnet.sock",  # default: $CNET_HOST, else that path
     "driver": "bridge",                  # only used when the network is created
     "ipam": {"ranges": [[{"subnet": "10.88.5.0/24", "gateway": "10.88.5.1"}]]}}

ADD makes (once per CNI_CONTAINERID) an *external* cnet sandbox on CNI_NETNS, named
`cni-<container id>` (the first 12 characters of a hex id) and labelled with the full
container id, and connects it to the network with the interface CNI_IFNAME; a network
cnetd does not know yet is created first from the `ipam` ranges (host-local's `ranges`
or `subnet`/`gateway`; no `ipam`: cnet picks a subnet). Capabilities (runtimeConfig):
`ips`, `mac`, `aliases` (a list, or podman's {network: [names]}), `portMappings`;
CNI_ARGS `IP=`, `MAC=` and `K8S_POD_NAME=` (a DNS alias) too. The names resolve through
cnet's embedded DNS at 127.0.0.11 inside the namespace, hence the result's `dns`.
DEL disconnects (and removes the sandbox when it was the last network); it succeeds
when anything is already gone. CHECK compares prevResult with cnetd and with the
interface in the namespace. STATUS asks cnetd. GC disconnects every cnet-cni attachment
made under this CNI network name that `cni.dev/valid-attachments` does not list (each
attachment's CNI name is the sandbox label `cnet.cni.network.<cnet network>`: two CNI
configs may share one cnet network), and removes the empty `cni-*` sandboxes that an
interrupted ADD under this name left behind.

Errors are CNI error objects on stdout with a non-zero exit: 1 incompatible version,
4 bad environment, 6 undecodable config, 7 invalid config, 11 cnetd unreachable (try
again later), 50/51 for STATUS, 999 anything else.

Start-up cost matters (a runtime runs this for every container): only json and the
stdlib-socket client of cli/client.py are imported on the ADD/DEL path.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cnet.cli.client import Client

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
DEFAULT_HOST = "unix:///run/cnet/cnet.sock"
HOST_ENV = "CNET_HOST"
DNS_SERVER = "127.0.0.11"  # cnet's embedded resolver inside every user-network sandbox
TIMEOUT = 60.0

LABEL_CONTAINER = "cnet.cni.container-id"
LABEL_NETWORK = "cnet.cni.network"  # the CNI network of the first attachment
LABEL_ATTACHMENT = LABEL_NETWORK + "."  # + cnet network: the CNI network attached under
LABEL_IFNAME = "cnet.cni.ifname"

# well-known error codes (SPEC.md, "Error")
E_VERSION, E_ENV, E_DECODE, E_CONFIG, E_AGAIN = 1, 4, 6, 7, 11
E_STATUS_DOWN, E_STATUS_LIMITED, E_OTHER = 50, 51, 999

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_HEX = frozenset("0123456789abcdef")


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


# --- input ------------------------------------------------------------------------------


def _env(name: str, required: bool) -> str:
    value = os.environ.get(name, "")
    if required and not value:
        raise CNIError(E_ENV, f"required environment variable {name} is missing")
    return value


def _check_container_id(cid: str) -> str:
    if not cid or not cid[0].isalnum() or not cid.isascii() or not set(cid) <= _ID_CHARS:
        raise CNIError(E_ENV, f"invalid CNI_CONTAINERID {cid!r}",
                       "must start with an alphanumeric character, followed by "
                       "alphanumerics, '_', '.' or '-'")
    return cid


def _check_ifname(name: str) -> str:
    if (not name or len(name) > 15 or name in (".", "..")
            or any(c in "/:" or c.isspace() for c in name)):
        raise CNIError(E_ENV, f"invalid CNI_IFNAME {name!r}",
                       "must be 1-15 characters, not . or .., without / : or whitespace")
    return name


def _parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS "K=V;K2=V2" (unknown keys are ignored, as with IgnoreUnknown=1)."""
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise CNIError(E_ENV, f"invalid CNI_ARGS pair {pair!r}", "expected KEY=VALUE;...")
        out[key] = value
    return out


def read_config(data: bytes) -> dict[str, Any]:
    """The decoded network configuration; its version and name are checked."""
    try:
        conf = json.loads(data)
    except ValueError as exc:
        raise CNIError(E_DECODE, "failed to decode the network configuration", str(exc)) \
            from None
    if not isinstance(conf, dict):
        raise CNIError(E_DECODE, "failed to decode the network configuration",
                       "expected a JSON object")
    version = conf.get("cniVersion")
    if version is None:
        raise CNIError(E_VERSION, "incompatible CNI versions",
                       "the configuration has no cniVersion (that is 0.1.0); supported: "
                       + ", ".join(SUPPORTED_VERSIONS))
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(E_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports "
                       + ", ".join(SUPPORTED_VERSIONS))
    name = conf.get("name")
    if not isinstance(name, str) or not name or not name[0].isalnum() \
            or not set(name) <= _ID_CHARS:
        raise CNIError(E_CONFIG, "invalid network configuration",
                       f"invalid network name {name!r}")
    for key in ("network", "host", "driver"):
        if key in conf and (not isinstance(conf[key], str) or not conf[key]):
            raise CNIError(E_CONFIG, "invalid network configuration",
                           f'"{key}" must be a non-empty string')
    host = conf.get("host") or os.environ.get(HOST_ENV) or DEFAULT_HOST
    if not host.startswith("unix:///"):
        raise CNIError(E_CONFIG, "invalid network configuration",
                       f'"host" must be unix:///path/to/cnet.sock, not {host!r}')
    conf["host"] = host
    net = conf.get("network") or name
    if not net[0].isalnum() or not set(net) <= _ID_CHARS:
        raise CNIError(E_CONFIG, "invalid network configuration",
                       f"invalid cnet network name {net!r}")
    conf["network"] = net
    for key in ("ipam", "runtimeConfig", "args", "prevResult", "options"):
        if conf.get(key) is not None and not isinstance(conf[key], dict):
            raise CNIError(E_CONFIG, "invalid network configuration",
                           f'"{key}" must be an object')
    return conf


def network_request(conf: dict[str, Any]) -> dict[str, Any]:
    """Docker's network create body for a network named by the config but unknown to
    cnetd: bridge driver (or "driver"), pools from host-local style `ipam` ranges."""
    ipam = conf.get("ipam") or {}
    ranges = ipam.get("ranges")
    if ranges is None:
        ranges = [[ipam]] if ipam.get("subnet") else []
    configs, v6 = [], False
    if not isinstance(ranges, list):
        raise CNIError(E_CONFIG, "invalid network configuration", '"ipam.ranges" must be a list')
    for rset in ranges:
        if isinstance(rset, dict):  # a range set written without its inner list
            rset = [rset]
        if not isinstance(rset, list):
            raise CNIError(E_CONFIG, "invalid network configuration",
                           '"ipam.ranges" must be a list of lists of ranges')
        for r in rset:
            if not isinstance(r, dict) or not isinstance(r.get("subnet"), str):
                raise CNIError(E_CONFIG, "invalid network configuration",
                               'every ipam range needs a "subnet"')
            cfg = {"Subnet": r["subnet"]}
            if r.get("gateway"):
                cfg["Gateway"] = str(r["gateway"])
            configs.append(cfg)
            v6 = v6 or ":" in r["subnet"]
    options = {str(k): str(v) for k, v in (conf.get("options") or {}).items()}
    return {"Name": conf["network"], "Driver": conf.get("driver") or "bridge",
            "IPAM": {"Config": configs}, "EnableIPv6": v6, "Options": options,
            "Labels": {LABEL_NETWORK: conf["name"]}}


def endpoint_config(conf: dict[str, Any], ifname: str, cni_args: dict[str, str]
                    ) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """(EndpointConfig of the connect request, Docker PortBindings) from the
    capabilities in runtimeConfig, `args.cni` and CNI_ARGS (in that precedence)."""
    rc = conf.get("runtimeConfig") or {}
    bad = "invalid runtimeConfig"
    ips = rc.get("ips")
    if ips is None:
        ips = ((conf.get("args") or {}).get("cni") or {}).get("ips")
    if ips is None and cni_args.get("IP"):
        ips = cni_args["IP"].split(",")
    if ips is not None and (not isinstance(ips, list)
                            or not all(isinstance(i, str) and i for i in ips)):
        raise CNIError(E_CONFIG, bad, '"ips" must be a list of addresses')
    ipam: dict[str, str] = {}
    for ip in ips or []:
        addr = ip.split("/", 1)[0]
        field = "IPv6Address" if ":" in addr else "IPv4Address"
        if field in ipam:
            raise CNIError(E_CONFIG, bad, f"more than one IPv{field[3]} address in {ips}")
        ipam[field] = addr
    mac = rc.get("mac") or cni_args.get("MAC")
    if mac is not None and not isinstance(mac, str):
        raise CNIError(E_CONFIG, bad, '"mac" must be a string')
    aliases = rc.get("aliases") or []
    if isinstance(aliases, dict):  # podman: {network name: [aliases]}
        aliases = aliases.get(conf["name"]) or aliases.get(conf["network"]) or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise CNIError(E_CONFIG, bad, '"aliases" must be a list of names')
    pod = cni_args.get("K8S_POD_NAME")
    if pod and pod not in aliases:
        aliases = [pod, *aliases]
    ep: dict[str, Any] = {"InterfaceName": ifname}
    if ipam:
        ep["IPAMConfig"] = ipam
    if aliases:
        ep["Aliases"] = list(aliases)
    if mac:
        ep["MacAddress"] = mac
    return ep, port_bindings(rc.get("portMappings"))


def port_bindings(mappings: Any) -> dict[str, list[dict]]:
    """CNI portMappings -> Docker's PortBindings."""
    if not mappings:
        return {}
    out: dict[str, list[dict]] = {}
    if not isinstance(mappings, list):
        raise CNIError(E_CONFIG, "invalid runtimeConfig", '"portMappings" must be a list')
    for m in mappings:
        try:
            host, ctr = int(m["hostPort"]), int(m["containerPort"])
            proto = str(m.get("protocol") or "tcp").lower()
            host_ip = str(m.get("hostIP") or "")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CNIError(E_CONFIG, "invalid runtimeConfig",
                           f"invalid port mapping {m!r}: needs integer hostPort and "
                           "containerPort") from None
        if proto not in ("tcp", "udp") or not 0 < host < 65536 or not 0 < ctr < 65536:
            raise CNIError(E_CONFIG, "invalid runtimeConfig", f"invalid port mapping {m!r}")
        if host_ip in ("0.0.0.0", "::"):
            host_ip = ""
        out.setdefault(f"{ctr}/{proto}", []).append({"HostIp": host_ip,
                                                     "HostPort": str(host)})
    return out


def sandbox_name(container_id: str) -> str:
    """`cni-<id>`: a hex id's first 12 characters, a short id as it is, a long other id
    by its hash (the full id is in the sandbox's label)."""
    if len(container_id) <= 32 and not (len(container_id) == 64
                                        and set(container_id) <= _HEX):
        return "cni-" + container_id
    if set(container_id) <= _HEX:
        return "cni-" + container_id[:12]
    import hashlib

    return "cni-" + hashlib.sha256(container_id.encode()).hexdigest()[:12]


# --- talking to cnetd --------------------------------------------------------------------


def _client(conf: dict[str, Any]) -> Client:
    from cnet.cli.client import Client

    return Client(conf["host"], timeout=TIMEOUT)


def _api_error(exc: Exception) -> CNIError:
    """cnetd's errors as CNI errors (unreachable: try again later)."""
    from cnet.cli.client import APIError, ClientError, DaemonUnreachable

    if isinstance(exc, DaemonUnreachable):
        return CNIError(E_AGAIN, "cnetd is not reachable", str(exc))
    if isinstance(exc, APIError):
        code = E_CONFIG if exc.status == 400 else E_OTHER
        return CNIError(code, exc.message)
    if isinstance(exc, TimeoutError):
        return CNIError(E_AGAIN, "cnetd did not answer in time", str(exc))
    if isinstance(exc, ClientError):
        return CNIError(E_AGAIN, "lost the connection to cnetd", str(exc))
    return CNIError(E_OTHER, f"{type(exc).__name__}: {exc}")


def _status(exc: Exception) -> int | None:
    from cnet.cli.client import APIError

    return exc.status if isinstance(exc, APIError) else None


def _get_or_none(client: Client, path: str) -> Any:
    try:
        return client.get(path)
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise


def attachment_label(network: str) -> str:
    """The sandbox label whose value is the CNI network name of the attachment to the
    cnet network `network`."""
    return LABEL_ATTACHMENT + network


def attachment_owner(sb: dict, network: str) -> str | None:
    """The CNI network name the sandbox was attached to `network` under (sandboxes from
    before the per-network label: the name of their first attachment)."""
    labels = sb.get("Labels") or {}
    return labels.get(attachment_label(network)) or labels.get(LABEL_NETWORK)


def _sandbox(client: Client, container_id: str) -> dict | None:
    """The cnet-cni sandbox of this container, or None."""
    from cnet.cli.client import url_path

    sb = _get_or_none(client, url_path("sandboxes", sandbox_name(container_id)))
    if sb is None or (sb.get("Labels") or {}).get(LABEL_CONTAINER) != container_id:
        return None
    return sb


# --- results ------------------------------------------------------------------------------


def build_result(version: str, conf: dict[str, Any], net: dict, ep: dict, netns: str,
                 prev: dict | None = None) -> dict[str, Any]:
    """The ADD result in the config's version (0.4.0 ips carry "version")."""
    interfaces: list[dict[str, Any]] = list((prev or {}).get("interfaces") or [])
    if net.get("Driver") == "bridge":  # the host side (drivers/bridge: "veth" + id[:7])
        interfaces.append({"name": "veth" + ep["EndpointID"][:7]})
    index = len(interfaces)
    interfaces.append({"name": ep["InterfaceName"], "mac": ep["MacAddress"],
                       "sandbox": netns})
    ips: list[dict[str, Any]] = list((prev or {}).get("ips") or [])
    routes: list[dict[str, Any]] = list((prev or {}).get("routes") or [])
    for addr, plen, gw, version_tag, dst in (
            (ep["IPAddress"], ep["IPPrefixLen"], ep["Gateway"], "4", "0.0.0.0/0"),
            (ep["GlobalIPv6Address"], ep["GlobalIPv6PrefixLen"], ep["IPv6Gateway"], "6",
             "::/0")):
        if not addr:
            continue
        ip: dict[str, Any] = {"address": f"{addr}/{plen}", "interface": index}
        if version == "0.4.0":
            ip["version"] = version_tag
        if gw:
            ip["gateway"] = gw
            routes.append({"dst": dst, "gw": gw})
        ips.append(ip)
    result: dict[str, Any] = {"cniVersion": version, "interfaces": interfaces, "ips": ips}
    if routes:
        result["routes"] = routes
    dns = dict((prev or {}).get("dns") or {})
    if net.get("Name") != "bridge":  # user-defined networks have the embedded DNS
        servers = list(dns.get("nameservers") or [])
        if DNS_SERVER not in servers:
            servers.insert(0, DNS_SERVER)
        dns["nameservers"] = servers
    if dns:
        result["dns"] = dns
    return result


# --- CHECK: the interface as the kernel sees it ----------------------------------------
# The process joins the namespace with setns(2) (ctypes: os.setns is Python 3.12+) and
# asks with the classic socket ioctls (MAC, primary IPv4 address and netmask) and
# /proc/self/net/if_inet6; cnet-cni exits right after, so it never goes back. Importing
# pyroute2 would cost more than the whole CHECK.

CLONE_NEWNET = 0x40000000
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
SIOCGIFHWADDR = 0x8927


def enter_netns(path: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def interface_state(netns: str, ifname: str) -> tuple[str, set[str]]:
    """(MAC, {"addr/prefix", ...}) of `ifname` in the namespace at `netns`; the process
    stays in that namespace. OSError (ENODEV) if there is no such interface."""
    import fcntl
    import socket
    import struct

    enter_netns(netns)
    name = ifname.encode()
    addrs: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16s16x", name)
        hw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
        mac = ":".join(f"{b:02x}" for b in hw[18:24])
        try:
            addr = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24]
            mask = fcntl.ioctl(s.fileno(), SIOCGIFNETMASK, req)[20:24]
            plen = bin(int.from_bytes(mask, "big")).count("1")
            addrs.add(f"{socket.inet_ntoa(addr)}/{plen}")
        except OSError:  # EADDRNOTAVAIL: no IPv4 address
            pass
    try:
        with open("/proc/self/net/if_inet6") as f:
            for line in f:
                hexaddr, _idx, plen, _scope, _flags, dev = line.split()
                if dev == ifname:
                    raw = bytes.fromhex(hexaddr)
                    addrs.add(f"{socket.inet_ntop(socket.AF_INET6, raw)}/{int(plen, 16)}")
    except FileNotFoundError:  # IPv6 disabled in the kernel
        pass
    return mac, addrs


# --- commands -------------------------------------------------------------------------------


def cmd_add(conf: dict[str, Any]) -> dict[str, Any]:
    cid = _check_container_id(_env("CNI_CONTAINERID", True))
    netns = _env("CNI_NETNS", True)
    ifname = _check_ifname(_env("CNI_IFNAME", True))
    if not os.path.isabs(netns) or not os.path.exists(netns):
        raise CNIError(E_ENV, f"invalid CNI_NETNS {netns!r}: no such namespace file")
    cni_args = _parse_cni_args(os.environ.get("CNI_ARGS", ""))
    ep_config, bindings = endpoint_config(conf, ifname, cni_args)
    net_req = network_request(conf)  # validated even when the network exists
    from cnet.cli.client import url_path

    client = _client(conf)
    undo: list[tuple[str, str, Any]] = []
    try:
        net = _get_or_none(client, url_path("networks", conf["network"]))
        if net is None:
            try:
                client.post("/networks/create", net_req)
                undo.append(("DELETE", url_path("networks", conf["network"]), None))
            except Exception as exc:
                if _status(exc) != 409:  # created meanwhile by a concurrent ADD: fine
                    raise
            net = client.get(url_path("networks", conf["network"]))
        name = sandbox_name(cid)
        label = attachment_label(net["Name"])
        try:
            client.post("/sandboxes/create", {
                "Name": name, "Key": netns,
                "Labels": {LABEL_CONTAINER: cid, LABEL_NETWORK: conf["name"],
                           LABEL_IFNAME: ifname, label: conf["name"]}})
            undo.append(("DELETE", url_path("sandboxes", name), None))
        except Exception as exc:
            if _status(exc) != 409:
                raise
            sb = _sandbox(client, cid)  # attached to another network already?
            if sb is None or sb["Key"] != netns:
                where = f" in {sb['Key']}" if sb else ""
                raise CNIError(E_OTHER, f"cannot make sandbox {name} for container {cid}"
                                        f"{where}: {_api_error(exc).msg}") from None
            old = (sb.get("Labels") or {}).get(label)
            if net["Name"] not in (sb.get("Networks") or {}) and old != conf["name"]:
                # recorded before the connect: an attachment never lacks its CNI name
                client.post(url_path("sandboxes", name, "labels"),
                            {"Labels": {label: conf["name"]}})
                undo.append(("POST", url_path("sandboxes", name, "labels"),
                             {"Labels": {label: old}}))
        ep = client.post(url_path("networks", net["Name"], "connect"),
                         {"Container": name, "EndpointConfig": ep_config})
        undo.append(("POST", url_path("networks", net["Name"], "disconnect"),
                     {"Container": name, "Force": True}))
        if bindings:
            client.post(url_path("sandboxes", name, "ports"),
                        {"Network": net["Name"], "PortBindings": bindings})
        if not (ep or {}).get("EndpointID"):  # a cnetd whose connect answers {}
            ep = client.get(url_path("sandboxes", name))["Networks"][net["Name"]]
    except BaseException:
        for method, path, body in reversed(undo):  # leave nothing behind
            try:
                client.request(method, path, body=body)
            except Exception:
                pass
        raise
    return build_result(conf["cniVersion"], conf, net, ep, netns, conf.get("prevResult"))


def cmd_del(conf: dict[str, Any]) -> None:
    cid = _check_container_id(_env("CNI_CONTAINERID", True))
    _check_ifname(_env("CNI_IFNAME", True))
    client = _client(conf)
    sb = _sandbox(client, cid)
    if sb is None:
        return
    remove_attachment(client, sb, conf["network"])


def remove_attachment(client: Client, sb: dict, network: str) -> None:
    """Disconnect the sandbox from `network` (its published ports go with the
    endpoint), then remove the sandbox if that was its last network. Gone is fine."""
    from cnet.cli.client import url_path

    networks = sb.get("Networks") or {}
    try:
        if set(networks) - {network}:
            if network in networks:
                client.post(url_path("networks", network, "disconnect"),
                            {"Container": sb["Id"], "Force": True})
            if attachment_label(network) in (sb.get("Labels") or {}):
                client.post(url_path("sandboxes", sb["Id"], "labels"),
                            {"Labels": {attachment_label(network): None}})
        else:  # its last network: the sandbox goes, and its endpoint with it
            client.delete(url_path("sandboxes", sb["Id"]), query={"force": "1"})
    except Exception as exc:
        if _status(exc) != 404:
            raise


def cmd_check(conf: dict[str, Any]) -> None:
    cid = _check_container_id(_env("CNI_CONTAINERID", True))
    netns = _env("CNI_NETNS", True)
    ifname = _check_ifname(_env("CNI_IFNAME", True))
    prev = conf.get("prevResult")
    if not prev:
        raise CNIError(E_CONFIG, "invalid network configuration",
                       "CHECK needs prevResult (the result of the ADD)")
    client = _client(conf)
    sb = _sandbox(client, cid)
    if sb is None:
        raise CNIError(E_OTHER, f"container {cid} is not attached by cnet-cni")
    ep = (sb.get("Networks") or {}).get(conf["network"])
    if ep is None:
        raise CNIError(E_OTHER, f"container {cid} is not connected to {conf['network']}")
    if sb["Key"] != netns or ep["InterfaceName"] != ifname:
        raise CNIError(E_OTHER, f"cnetd has {ep['InterfaceName']} in {sb['Key']}, "
                                f"not {ifname} in {netns}")
    want = set()
    for addr, plen in ((ep["IPAddress"], ep["IPPrefixLen"]),
                       (ep["GlobalIPv6Address"], ep["GlobalIPv6PrefixLen"])):
        if addr:
            want.add(f"{addr}/{plen}")
    ifaces = prev.get("interfaces") or []
    ours = [i for i, itf in enumerate(ifaces)
            if itf.get("name") == ifname and itf.get("sandbox") == netns]
    if not ours:
        raise CNIError(E_OTHER, f"prevResult has no interface {ifname} in {netns}")
    listed = {ip.get("address") for ip in prev.get("ips") or [] if ip.get("interface") in ours}
    if want - listed:
        raise CNIError(E_OTHER, f"prevResult lacks {', '.join(sorted(want - listed))}")
    try:
        mac, addrs = interface_state(netns, ifname)
    except OSError as exc:
        raise CNIError(E_OTHER, f"interface {ifname} in {netns}: {exc.strerror or exc}") \
            from None
    if want - addrs:
        raise CNIError(E_OTHER, f"{ifname} in {netns} lacks "
                                f"{', '.join(sorted(want - addrs))}")
    prev_mac = (ifaces[ours[0]].get("mac") or "").lower()
    if prev_mac and prev_mac != mac:
        raise CNIError(E_OTHER, f"{ifname} has MAC {mac}, prevResult says {prev_mac}")


def cmd_status(conf: dict[str, Any]) -> None:
    from cnet.cli.client import APIError, DaemonUnreachable

    try:
        _client(conf).get("/_ping")
    except DaemonUnreachable as exc:
        # No cnetd: no ADD, and the names of running containers are not served either.
        raise CNIError(E_STATUS_LIMITED, "cnetd is not running", str(exc)) from None
    except (APIError, OSError, Exception) as exc:
        raise CNIError(E_STATUS_DOWN, "cnetd cannot serve requests", str(exc)) from None


def cmd_gc(conf: dict[str, Any]) -> None:
    valid = conf.get("cni.dev/valid-attachments") or []
    if not isinstance(valid, list) or not all(isinstance(v, dict) for v in valid):
        raise CNIError(E_CONFIG, "invalid network configuration",
                       '"cni.dev/valid-attachments" must be a list of objects')
    keep = {(v.get("containerID"), v.get("ifname")) for v in valid}
    live = {v.get("containerID") for v in valid}
    client = _client(conf)
    errors = []
    for sb in client.get("/sandboxes"):
        labels = sb.get("Labels") or {}
        cid = labels.get(LABEL_CONTAINER)
        if not cid or sb.get("Name") != sandbox_name(cid):
            continue
        networks = sb.get("Networks") or {}
        if not networks:  # an ADD interrupted between sandbox and connect
            if labels.get(LABEL_NETWORK) != conf["name"] or cid in live:
                continue
        else:
            ep = networks.get(conf["network"])
            if ep is None or attachment_owner(sb, conf["network"]) != conf["name"] \
                    or (cid, ep.get("InterfaceName")) in keep:
                continue
        try:
            remove_attachment(client, sb, conf["network"])
        except Exception as exc:  # best effort: go on, report at the end
            errors.append(f"{sb['Name']}: {_api_error(exc).msg}")
    if errors:
        raise CNIError(E_OTHER, "garbage collection left attachments behind", "; ".join(errors))


def cmd_version(conf: dict[str, Any] | None) -> dict[str, Any]:
    version = (conf or {}).get("cniVersion")
    return {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST,
            "supportedVersions": list(SUPPORTED_VERSIONS)}


COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")


def run(command: str, data: bytes) -> dict[str, Any] | None:
    """Run one CNI command; the result to print (or None). Raises CNIError."""
    if command == "VERSION":
        try:
            conf = json.loads(data) if data.strip() else None
        except ValueError:
            conf = None
        return cmd_version(conf if isinstance(conf, dict) else None)
    if command not in COMMANDS:
        raise CNIError(E_ENV, f"unknown CNI_COMMAND {command!r}",
                       "expected one of " + ", ".join(COMMANDS))
    conf = read_config(data)
    try:
        if command == "ADD":
            return cmd_add(conf)
        if command == "DEL":
            cmd_del(conf)
        elif command == "CHECK":
            cmd_check(conf)
        elif command == "STATUS":
            cmd_status(conf)
        else:
            cmd_gc(conf)
    except CNIError:
        raise
    except Exception as exc:
        raise _api_error(exc) from None
    return None


def _config_version(data: bytes) -> str:
    try:
        version = json.loads(data).get("cniVersion")
    except (ValueError, AttributeError):
        return LATEST
    return version if version in SUPPORTED_VERSIONS else LATEST


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    data = b""
    try:
        if not command:
            raise CNIError(E_ENV, "required environment variable CNI_COMMAND is missing",
                           "this is a CNI plugin: container runtimes run it (see the "
                           "CNI specification); CNI_COMMAND=VERSION shows what it supports")
        if command != "VERSION" or not sys.stdin.isatty():
            try:
                data = sys.stdin.buffer.read()
            except OSError as exc:
                raise CNIError(5, "failed to read the network configuration", str(exc)) \
                    from None
        result = run(command, data)
    except CNIError as exc:
        err = {"cniVersion": _config_version(data), "code": exc.code, "msg": exc.msg}
        if exc.details:
            err["details"] = exc.details
        sys.stdout.write(json.dumps(err) + "\n")
        sys.stdout.flush()
        return 1
    except KeyboardInterrupt:
        return 130
    if result is not None:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
