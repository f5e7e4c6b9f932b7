"""cnet-cni, the CNI 1.1.0 plugin: driven directly with the spec's environment variables
against a real cnetd, chained with the reference plugins, and used by podman (CNI
backend) for real containers.

Every test runs cnetd in a throwaway host namespace (harness.Daemon) and runs the
plugin there too (a runtime runs plugins in its own namespace); container namespaces
are made by the test (`ip netns add`), as a runtime would. Assertions look at the
kernel (`ip`, ping, dig at 127.0.0.11, TCP through a published port), at cnetd's API
and at its store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import harness
import pytest

REFERENCE_PLUGINS = Path("/usr/lib/cni")
#: where the reference plugins and libcni (podman) keep state whatever the config says
CNI_STATE_DIRS = (Path("/run/cni"), Path("/var/lib/cni"))
PODMAN = shutil.which("podman")
SUBNET, GATEWAY = "10.77.0.0/24", "10.77.0.1"


def _cnet_cni() -> str | None:
    for cand in (harness.BIN_DIR / "cnet-cni", harness.REPO_ROOT / ".venv/bin/cnet-cni"):
        if cand.exists():
            return str(cand)
    return shutil.which("cnet-cni")


CNET_CNI = _cnet_cni()

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _requirements():
    if CNET_CNI is None:
        pytest.skip("cnet-cni is not installed (make setup)")


def _tree(top: Path) -> set[Path]:
    out = set()
    for dirpath, _dirs, files in os.walk(top):
        out.add(Path(dirpath))
        out.update(Path(dirpath) / f for f in files)
    return out


@pytest.fixture(autouse=True)
def _cni_state():
    """Remove what the reference plugins and podman leave in /run/cni and /var/lib/cni
    (tuning's backups, host-local's leases, libcni's result cache) during a test."""
    before = {p for top in CNI_STATE_DIRS for p in _tree(top)}
    yield
    new = {p for top in CNI_STATE_DIRS for p in _tree(top)} - before
    for p in sorted(new, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            p.rmdir() if p.is_dir() else p.unlink()


@pytest.fixture
def cni_host():
    """A host namespace (where cnetd and the plugin run)."""
    ns = harness.Netns()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def cnid(request, cni_host):
    """cnetd in cni_host."""
    with harness.running_daemon(request, cni_host) as d:
        yield d


@pytest.fixture
def containers():
    """make() -> a new container namespace (lo up), all deleted afterwards."""
    made: list[harness.Netns] = []

    def make() -> harness.Netns:
        ns = harness.Netns()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.delete()


# --- driving plugins -----------------------------------------------------------------------


class Result:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.rc = proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr
        try:
            self.json = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            self.json = None

    @property
    def code(self) -> int | None:
        return (self.json or {}).get("code")

    def __repr__(self) -> str:
        return f"rc={self.rc} stdout={self.stdout!r} stderr={self.stderr[-2000:]!r}"


def plugin(host, binary: str, command: str | None, conf, *, container: str | None = None,
           netns=None, ifname: str | None = "eth0", args: str | None = None,
           env: dict | None = None) -> Result:
    """Run a CNI plugin in the host namespace the way a runtime does: CNI_* in the
    environment, the config (a dict, or raw bytes/str) on stdin."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full.pop("CNET_HOST", None)
    values = {"CNI_COMMAND": command, "CNI_CONTAINERID": container,
              "CNI_NETNS": harness.netns_path(netns) if netns is not None else None,
              "CNI_IFNAME": ifname if container else None, "CNI_ARGS": args,
              "CNI_PATH": str(REFERENCE_PLUGINS)}
    full.update({k: v for k, v in values.items() if v is not None})
    full.update(env or {})
    data = conf if isinstance(conf, str | bytes) else json.dumps(conf)
    proc = subprocess.run(["nsenter", f"--net={harness.netns_path(host)}", binary],
                          input=data.encode() if isinstance(data, str) else data,
                          capture_output=True, text=False, env=full, timeout=60)
    return Result(subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace")))


def cni(d: harness.Daemon, command: str | None, conf, **kw) -> Result:
    return plugin(d.host_ns, CNET_CNI, command, conf, **kw)


def ok(res: Result) -> dict | None:
    assert res.rc == 0, res
    return res.json


def config(d: harness.Daemon | None, version: str = "1.1.0", name: str = "cninet",
           **extra) -> dict:
    conf = {"cniVersion": version, "name": name, "type": "cnet",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET,
                                                         "gateway": GATEWAY}]]}}
    if d is not None:
        conf["host"] = d.host
    conf.update(extra)
    return conf


# --- observing ----------------------------------------------------------------------------


def store_keys(d: harness.Daemon) -> set[str]:
    con = sqlite3.connect(f"file:{d.data_root / 'cnet.db'}?mode=ro", uri=True, timeout=5)
    try:
        return {row[0] for row in con.execute("SELECT key FROM kv")}
    finally:
        con.close()


def host_links(d: harness.Daemon) -> set[str]:
    out = d.run_in_host("ip", "-o", "link", "show").stdout
    return {line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines()}


def netns_links(ns: harness.Netns) -> set[str]:
    out = ns.ip("-o", "link", "show").stdout
    return {line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines()}


def addresses(ns: harness.Netns, ifname: str) -> set[str]:
    data = json.loads(ns.ip("-j", "addr", "show", "dev", ifname).stdout)
    return {f"{a['local']}/{a['prefixlen']}" for a in data[0]["addr_info"]
            if a.get("scope") == "global"}


def dig(ns, name: str) -> list[str]:
    proc = harness.nsexec(ns, "dig", "+short", "+time=2", "+tries=1", "@127.0.0.11", name)
    return proc.stdout.split()


def cnet_state(d: harness.Daemon) -> tuple:
    """What cnetd holds: sandboxes, endpoints per network, the store's keys."""
    sandboxes = sorted(s["Name"] for s in d.api("GET", "/sandboxes").json())
    eps = {n["Name"]: sorted(n["Containers"]) for n in d.api("GET", "/networks").json()}
    return sandboxes, eps, store_keys(d)


def nft_pub(d: harness.Daemon) -> list:
    out = d.run_in_host("nft", "-j", "list", "map", "inet", "cnet", "pub_any").stdout
    maps = [o["map"] for o in json.loads(out)["nftables"] if "map" in o]
    return maps[0].get("elem", []) if maps else []


# --- tests --------------------------------------------------------------------------------


def test_version_without_daemon(cni_host):
    for version in ("1.1.0", "1.0.0", "0.4.0"):
        out = ok(plugin(cni_host, CNET_CNI, "VERSION", {"cniVersion": version}))
        assert out == {"cniVersion": version,
                       "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    out = ok(plugin(cni_host, CNET_CNI, "VERSION", ""))
    assert out["cniVersion"] == "1.1.0"


def test_add_check_del_two_containers(cnid, containers):
    d = cnid
    c1, c2 = containers(), containers()
    conf = config(d)
    links0 = host_links(d)
    r1 = ok(cni(d, "ADD", conf, container="ctr-one", netns=c1))
    conf2 = config(d, runtimeConfig={"ips": ["10.77.0.50/24"], "mac": "c2:11:22:33:44:55",
                                     "aliases": ["db"]})
    r2 = ok(cni(d, "ADD", conf2, container="ctr-two", netns=c2, ifname="net1",
                args="IgnoreUnknown=1;K8S_POD_NAME=pod-two"))

    # the result: host veth + container interface, address with gateway, route, dns
    assert r1["cniVersion"] == "1.1.0"
    host_if, ctr_if = r1["interfaces"]
    assert ctr_if["name"] == "eth0" and ctr_if["sandbox"] == c1.path
    assert "sandbox" not in host_if and host_if["name"] in host_links(d)
    (ip1,) = r1["ips"]
    assert ip1["interface"] == 1 and ip1["gateway"] == GATEWAY and "version" not in ip1
    assert r1["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    assert r1["dns"] == {"nameservers": ["127.0.0.11"]}
    assert r2["ips"][0]["address"] == "10.77.0.50/24"
    assert r2["interfaces"][1] == {"name": "net1", "mac": "c2:11:22:33:44:55",
                                   "sandbox": c2.path}

    # ... is what the kernel has
    assert addresses(c1, "eth0") == {ip1["address"]}
    assert addresses(c2, "net1") == {"10.77.0.50/24"}
    link = json.loads(c2.ip("-j", "link", "show", "dev", "net1").stdout)[0]
    assert link["address"] == "c2:11:22:33:44:55" and "UP" in link["flags"]
    assert "default via 10.77.0.1 dev eth0" in c1.ip("route").stdout
    assert harness.wait_ping(c1, "10.77.0.50")
    assert harness.wait_ping(c2, ip1["address"].split("/")[0])
    # names at cnet's resolver inside the namespaces: sandbox name, aliases, pod name
    assert dig(c1, "db") == ["10.77.0.50"]
    assert dig(c1, "pod-two") == ["10.77.0.50"]
    assert dig(c2, "cni-ctr-one") == [ip1["address"].split("/")[0]]
    sb = d.api("GET", "/sandboxes/cni-ctr-one").json()
    assert sb["External"] and sb["Key"] == c1.path
    assert sb["Labels"]["cnet.cni.container-id"] == "ctr-one"

    # CHECK: fine as added; wrong when prevResult or the kernel disagree
    assert ok(cni(d, "CHECK", dict(conf, prevResult=r1), container="ctr-one", netns=c1)) \
        is None
    assert ok(cni(d, "CHECK", dict(conf2, prevResult=r2), container="ctr-two", netns=c2,
                  ifname="net1")) is None
    bad = json.loads(json.dumps(r1))
    bad["ips"][0]["address"] = "10.77.0.99/24"
    res = cni(d, "CHECK", dict(conf, prevResult=bad), container="ctr-one", netns=c1)
    assert res.rc != 0 and res.code == 999, res
    res = cni(d, "CHECK", conf, container="ctr-one", netns=c1)  # no prevResult
    assert res.rc != 0 and res.code == 7, res
    c1.ip("addr", "del", ip1["address"], "dev", "eth0")
    res = cni(d, "CHECK", dict(conf, prevResult=r1), container="ctr-one", netns=c1)
    assert res.rc != 0 and "lacks" in res.json["msg"], res

    # DEL (with prevResult, as runtimes do), then again: nothing left anywhere
    ok(cni(d, "DEL", dict(conf, prevResult=r1), container="ctr-one", netns=c1))
    ok(cni(d, "DEL", dict(conf, prevResult=r1), container="ctr-one", netns=c1))
    ok(cni(d, "DEL", conf2, container="ctr-two", netns=c2, ifname="net1"))
    ok(cni(d, "DEL", conf2, container="ctr-two", netns=c2, ifname="net1"))
    sandboxes, eps, keys = cnet_state(d)
    assert sandboxes == [] and eps["cninet"] == []
    assert not [k for k in keys if k.startswith(("sandbox/", "endpoint/"))]
    assert {ln for ln in host_links(d) - links0 if not ln.startswith("br-")} == set()
    assert netns_links(c1) == {"lo"} and netns_links(c2) == {"lo"}
    # the namespaces are the runtime's: cnet left them alone
    assert c1.exists() and c2.exists()


def test_del_is_idempotent(cnid, containers):
    d = cnid
    conf = config(d)
    # never added, and no network yet: success, nothing made
    ok(cni(d, "DEL", conf, container="nobody"))
    assert cnet_state(d)[0] == [] and "cninet" not in cnet_state(d)[1]
    # the runtime deleted the namespace before DEL (and gives no CNI_NETNS)
    c = containers()
    res = ok(cni(d, "ADD", conf, container="gone", netns=c))
    before = (cnet_state(d)[1]["cninet"], host_links(d))
    assert before[0] and res["interfaces"][0]["name"] in before[1]
    c.delete()
    ok(cni(d, "DEL", conf, container="gone"))
    ok(cni(d, "DEL", conf, container="gone"))
    sandboxes, eps, keys = cnet_state(d)
    assert sandboxes == [] and eps["cninet"] == []
    assert res["interfaces"][0]["name"] not in host_links(d)


def test_gc_removes_stale_attachments_only(cnid, containers):
    d = cnid
    conf = config(d)
    nss = {cid: containers() for cid in ("keep", "stale1", "stale2")}
    results = {cid: ok(cni(d, "ADD", conf, container=cid, netns=ns))
               for cid, ns in nss.items()}
    # a sandbox of cnet's own on the same network is not cnet-cni's to collect
    d.cli("sandbox", "create", "mine")
    d.cli("network", "connect", "cninet", "mine")
    gc = dict(conf, **{"cni.dev/valid-attachments": [
        {"containerID": "keep", "ifname": "eth0"},
        {"containerID": "stale2", "ifname": "eth9"}]})  # other interface: not this one
    ok(cni(d, "GC", gc))
    sandboxes, eps, _ = cnet_state(d)
    assert sandboxes == ["cni-keep", "mine"]
    assert netns_links(nss["stale1"]) == {"lo"} and netns_links(nss["stale2"]) == {"lo"}
    keep_ip = results["keep"]["ips"][0]["address"].split("/")[0]
    assert harness.wait_ping(d.sandbox_key("mine"), keep_ip)
    ok(cni(d, "GC", gc))  # again: nothing more to do
    ok(cni(d, "DEL", conf, container="keep", netns=nss["keep"]))
    d.cli("sandbox", "rm", "-f", "mine")


def test_gc_is_scoped_by_the_cni_network_name(cnid, containers):
    """Two CNI configs (names cnia, cnib) on one cnet network: a GC collects only the
    attachments made under its own name, and the empty cni-* sandboxes an interrupted
    ADD under its name left behind."""
    d = cnid
    conf_a = config(d, name="cnia", network="shared")
    conf_b = config(d, name="cnib", network="shared")
    conf_c = config(d, name="cnic", network="other", ipam={
        "ranges": [[{"subnet": "10.79.0.0/24", "gateway": "10.79.0.1"}]]})
    a1, b1, multi, killed_a, killed_b = (containers() for _ in range(5))
    ok(cni(d, "ADD", conf_a, container="a1", netns=a1))
    ok(cni(d, "ADD", conf_b, container="b1", netns=b1))
    # one container on two cnet networks: first under cnic, then under cnib
    ok(cni(d, "ADD", conf_c, container="multi", netns=multi))
    ok(cni(d, "ADD", conf_b, container="multi", netns=multi, ifname="eth1"))
    labels = d.api("GET", "/sandboxes/cni-multi").json()["Labels"]
    assert labels["cnet.cni.network.other"] == "cnic"
    assert labels["cnet.cni.network.shared"] == "cnib"
    # ADDs killed between making the sandbox and connecting it
    for cid, ns, name in (("killed-a", killed_a, "cnia"), ("killed-b", killed_b, "cnib")):
        r = d.api("POST", "/sandboxes/create", {
            "Name": f"cni-{cid}", "Key": ns.path,
            "Labels": {"cnet.cni.container-id": cid, "cnet.cni.network": name}})
        assert r.status == 201, r.json()

    ok(cni(d, "GC", dict(conf_a, **{"cni.dev/valid-attachments": []})))
    sandboxes, eps, _ = cnet_state(d)
    assert sandboxes == ["cni-b1", "cni-killed-b", "cni-multi"]
    assert netns_links(a1) == {"lo"}
    assert netns_links(b1) == {"lo", "eth0"} and netns_links(multi) == {"lo", "eth0", "eth1"}
    assert len(eps["shared"]) == 2 and all(
        "shared" in d.api("GET", f"/sandboxes/{n}").json()["Networks"]
        for n in ("cni-b1", "cni-multi"))

    # cnib's GC keeps b1 (listed) and drops multi's cnib attachment, not its cnic one
    ok(cni(d, "GC", dict(conf_b, **{"cni.dev/valid-attachments": [
        {"containerID": "b1", "ifname": "eth0"}]})))
    sandboxes, eps, _ = cnet_state(d)
    assert sandboxes == ["cni-b1", "cni-multi"]
    sb = d.api("GET", "/sandboxes/cni-multi").json()
    assert set(sb["Networks"]) == {"other"} and netns_links(multi) == {"lo", "eth0"}
    assert "cnet.cni.network.shared" not in sb["Labels"]
    # cnic's GC with multi listed: nothing to do
    ok(cni(d, "GC", dict(conf_c, **{"cni.dev/valid-attachments": [
        {"containerID": "multi", "ifname": "eth0"}]})))
    assert cnet_state(d)[0] == ["cni-b1", "cni-multi"]
    ok(cni(d, "DEL", conf_b, container="b1", netns=b1))
    ok(cni(d, "DEL", conf_c, container="multi", netns=multi))
    assert cnet_state(d)[0] == []


def test_status_and_unreachable_daemon(cnid, cni_host, containers):
    d = cnid
    assert ok(cni(d, "STATUS", config(d))) is None
    gone = config(None, host=f"unix://{d.root}/nothing.sock")
    res = plugin(cni_host, CNET_CNI, "STATUS", gone)
    assert res.rc != 0 and res.code == 51 and res.json["cniVersion"] == "1.1.0", res
    c = containers()
    for command in ("ADD", "DEL", "CHECK"):
        res = plugin(cni_host, CNET_CNI, command, dict(gone, prevResult={"ips": []}),
                     container="x1", netns=c)
        assert res.rc != 0 and res.code == 11, (command, res)
    # CNET_HOST is honoured when the config names no host
    assert plugin(cni_host, CNET_CNI, "STATUS", config(None),
                  env={"CNET_HOST": d.host}).rc == 0


def test_result_versions_ipv6_and_published_ports(cnid, containers):
    d = cnid
    outside = harness.wire_outside(d.host_ns)
    try:
        c = containers()
        conf = config(d, version="0.4.0", name="dual", ipam={"ranges": [
            [{"subnet": "10.78.0.0/24", "gateway": "10.78.0.1"}],
            [{"subnet": "fd00:78::/64", "gateway": "fd00:78::1"}]]},
            runtimeConfig={"portMappings": [
                {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]})
        res = ok(cni(d, "ADD", conf, container="dual1", netns=c))
        assert res["cniVersion"] == "0.4.0"
        v4, v6 = res["ips"]
        assert v4["version"] == "4" and v6["version"] == "6"
        assert v6["address"].startswith("fd00:78::") and v6["gateway"] == "fd00:78::1"
        assert {"dst": "::/0", "gw": "fd00:78::1"} in res["routes"]
        assert addresses(c, "eth0") == {v4["address"], v6["address"]}
        ok(cni(d, "CHECK", dict(conf, prevResult=res), container="dual1", netns=c))
        ports = d.api("GET", "/sandboxes/cni-dual1/ports").json()
        assert ports == {"dual": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}]}}
        with harness.TcpServer(c, 80, reply=b"hello-cni\n"):
            reply = harness.wait_for(
                lambda: _try_tcp(outside.path, "192.0.2.1", 18080), timeout=10,
                what="the published port")
            assert reply == b"hello-cni\n"
        ok(cni(d, "DEL", dict(conf, prevResult=res), container="dual1", netns=c))
        assert nft_pub(d) == []
        assert cnet_state(d)[0] == []
    finally:
        outside.delete()


def _try_tcp(ns, ip: str, port: int) -> bytes | None:
    try:
        return harness.tcp_request(ns, ip, port, timeout=2) or None
    except (ConnectionError, subprocess.TimeoutExpired):
        return None


BAD_ENV = [
    # (what, command, env overrides (None: unset), expected code)
    ("no CNI_COMMAND", None, {}, 4),
    ("unknown CNI_COMMAND", "FROB", {}, 4),
    ("no CNI_CONTAINERID", "ADD", {"CNI_CONTAINERID": None}, 4),
    ("bad CNI_CONTAINERID", "ADD", {"CNI_CONTAINERID": "-bad/id"}, 4),
    ("no CNI_NETNS", "ADD", {"CNI_NETNS": None}, 4),
    ("CNI_NETNS not there", "ADD", {"CNI_NETNS": "/run/netns/cnet-t-no-such-ns"}, 4),
    ("no CNI_IFNAME", "ADD", {"CNI_IFNAME": None}, 4),
    ("CNI_IFNAME too long", "ADD", {"CNI_IFNAME": "a-very-long-ifname"}, 4),
    ("CNI_IFNAME with a slash", "ADD", {"CNI_IFNAME": "eth/0"}, 4),
    ("CNI_ARGS not K=V", "ADD", {"CNI_ARGS": "IP"}, 4),
    ("DEL without CNI_IFNAME", "DEL", {"CNI_IFNAME": None}, 4),
]

BAD_CONFIG = [
    # (what, config (dict or raw text), expected code)
    ("not JSON", "{not json", 6),
    ("a JSON list", "[1, 2]", 6),
    ("no cniVersion", {"cniVersion": None}, 1),
    ("old cniVersion", {"cniVersion": "0.3.1"}, 1),
    ("future cniVersion", {"cniVersion": "9.0.0"}, 1),
    ("no name", {"name": None}, 7),
    ("bad host", {"host": "tcp://127.0.0.1:2375"}, 7),
    ("ipam ranges not a list", {"ipam": {"ranges": "10.0.0.0/8"}}, 7),
    ("range without subnet", {"ipam": {"ranges": [[{"gateway": "10.79.0.1"}]]}}, 7),
    ("subnet cnetd refuses", {"ipam": {"ranges": [[{"subnet": "10.79.0.0/33"}]]}}, 7),
    ("ips not a list", {"runtimeConfig": {"ips": "10.77.0.9"}}, 7),
    ("two IPv4 ips", {"runtimeConfig": {"ips": ["10.77.0.8", "10.77.0.9"]}}, 7),
    ("static ip outside the subnet", {"runtimeConfig": {"ips": ["192.168.200.9"]}}, 7),
    ("bad mac", {"runtimeConfig": {"mac": "not-a-mac"}}, 7),
    ("multicast mac", {"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}, 7),
    ("bad port mapping", {"runtimeConfig": {"portMappings": [{"hostPort": "x"}]}}, 7),
    ("port mapping, bad protocol", {"runtimeConfig": {"portMappings": [
        {"hostPort": 1, "containerPort": 2, "protocol": "sctp"}]}}, 7),
    ("aliases not names", {"runtimeConfig": {"aliases": [1, 2]}}, 7),
]


def test_malformed_env_and_config_allocate_nothing(cnid, containers):
    d = cnid
    c = containers()
    base_env = {"CNI_CONTAINERID": "ctr-bad", "CNI_NETNS": c.path, "CNI_IFNAME": "eth0"}
    before = (cnet_state(d), host_links(d), netns_links(c))

    def unchanged() -> None:
        assert (cnet_state(d), host_links(d), netns_links(c)) == before

    for what, command, override, code in BAD_ENV:
        env = dict(base_env, **{k: v for k, v in override.items() if v is not None})
        for k, v in override.items():
            if v is None:
                env.pop(k)
        res = plugin(d.host_ns, CNET_CNI, command, config(d), ifname=None, env=env)
        assert res.rc != 0 and res.code == code, (what, res)
        assert res.json["msg"] and res.json["cniVersion"] == "1.1.0", (what, res)
        unchanged()
    for what, change, code in BAD_CONFIG:
        if isinstance(change, str):
            conf = change
        else:
            conf = config(d)
            for k, v in change.items():
                if v is None:
                    conf.pop(k)
                else:
                    conf[k] = v
        res = cni(d, "ADD", conf, container="ctr-bad", netns=c)
        assert res.rc != 0 and res.code == code, (what, res)
        unchanged()


def test_add_conflicts_roll_back(cnid, containers):
    """A second ADD with the same interface name, a taken static address, a taken host
    port: errors, and nothing of the failed ADD stays."""
    d = cnid
    c1, c2 = containers(), containers()
    conf = config(d)
    r1 = ok(cni(d, "ADD", dict(conf, runtimeConfig={"portMappings": [
        {"hostPort": 18081, "containerPort": 80}]}), container="first", netns=c1))
    before = (cnet_state(d), host_links(d), netns_links(c2), nft_pub(d))
    # same interface in the same container, on another network
    res = cni(d, "ADD", config(d, name="other", ipam={"subnet": "10.76.0.0/24"}),
              container="first", netns=c1)
    assert res.rc != 0 and res.code == 999, res
    taken_ip = r1["ips"][0]["address"].split("/")[0]
    res = cni(d, "ADD", dict(conf, runtimeConfig={"ips": [taken_ip]}), container="second",
              netns=c2)
    assert res.rc != 0, res
    res = cni(d, "ADD", dict(conf, runtimeConfig={"portMappings": [
        {"hostPort": 18081, "containerPort": 81}]}), container="second", netns=c2)
    assert res.rc != 0 and "already allocated" in res.json["msg"], res
    after = (cnet_state(d), host_links(d), netns_links(c2), nft_pub(d))
    # the network "other" was made by the failed ADD and went with it
    assert after == before
    ok(cni(d, "DEL", conf, container="first", netns=c1))


def test_chained_with_reference_plugins(cnid, containers):
    """cnet first in a conflist, then `tuning` (and `bandwidth` when this kernel allows
    it) with prevResult, CHECK and DEL in reverse order, as libcni runs a chain."""
    tuning = REFERENCE_PLUGINS / "tuning"
    if not tuning.exists():
        pytest.skip("the reference plugins are not installed (containernetworking-plugins)")
    d = cnid
    c = containers()
    conflist = {"cniVersion": "1.0.0", "name": "chain", "plugins": [
        {"type": "cnet", "host": d.host, "ipam": {"subnet": "10.75.0.0/24"}},
        {"type": "tuning", "mtu": 1400, "promisc": True,
         "sysctl": {"net.ipv4.conf.eth0.arp_announce": "2"}},
    ]}

    def run_chain(command: str, plugins: list[dict], prev: dict | None) -> dict | None:
        for p in plugins:
            conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **p}
            if prev is not None:
                conf["prevResult"] = prev
            binary = CNET_CNI if p["type"] == "cnet" else str(REFERENCE_PLUGINS / p["type"])
            res = plugin(d.host_ns, binary, command, conf, container="chained", netns=c)
            assert res.rc == 0, (p["type"], command, res)
            if command == "ADD":
                prev = res.json
        return prev

    result = run_chain("ADD", conflist["plugins"], None)
    link = json.loads(c.ip("-j", "link", "show", "dev", "eth0").stdout)[0]
    assert link["mtu"] == 1400 and "PROMISC" in link["flags"]
    assert c.run("sysctl", "-n", "net.ipv4.conf.eth0.arp_announce").stdout.strip() == "2"
    assert result["dns"] == {"nameservers": ["127.0.0.11"]}
    run_chain("CHECK", conflist["plugins"], result)
    run_chain("DEL", list(reversed(conflist["plugins"])), result)
    assert cnet_state(d)[0] == [] and netns_links(c) == {"lo"}


def test_chained_bandwidth(cnid, containers):
    bandwidth = REFERENCE_PLUGINS / "bandwidth"
    if not bandwidth.exists():
        pytest.skip("the reference bandwidth plugin is not installed")
    d = cnid
    c = containers()
    conf = config(d, version="1.0.0")
    result = ok(cni(d, "ADD", conf, container="shaped", netns=c))
    bw = {"cniVersion": "1.0.0", "name": "cninet", "type": "bandwidth",
          "runtimeConfig": {"bandwidth": {"egressRate": 8_000_000, "egressBurst": 80_000}},
          "prevResult": result}
    try:
        res = plugin(d.host_ns, str(bandwidth), "ADD", bw, container="shaped", netns=c)
        if res.rc != 0:
            plugin(d.host_ns, str(bandwidth), "DEL", bw, container="shaped", netns=c)
            pytest.skip(f"bandwidth cannot shape here: {res.json or res.stderr}")
        # egress of the container = ingress of the host veth: policed there by tc
        host_veth = result["interfaces"][0]["name"]
        qdiscs = d.run_in_host("tc", "qdisc", "show", "dev", host_veth).stdout
        assert "tbf" in qdiscs or "ingress" in qdiscs, qdiscs
        ok(plugin(d.host_ns, str(bandwidth), "CHECK", bw, container="shaped", netns=c))
        ok(plugin(d.host_ns, str(bandwidth), "DEL", bw, container="shaped", netns=c))
    finally:
        ok(cni(d, "DEL", dict(conf, prevResult=result), container="shaped", netns=c))
    assert cnet_state(d)[0] == []


# --- podman ---------------------------------------------------------------------------------


class Podman:
    """podman 4 with the CNI backend, everything in a temp dir (storage, run root,
    containers.conf, CNI config dir, plugin dir with cnet-cni as `cnet`), run in the
    test's host namespace."""

    def __init__(self, host: harness.Netns, conflist: dict) -> None:
        self.host = host
        self.dir = Path(tempfile.mkdtemp(prefix=harness.unique_name() + "-podman-",
                                         dir="/tmp"))
        plugins, netd = self.dir / "plugins", self.dir / "net.d"
        plugins.mkdir()
        netd.mkdir()
        (plugins / "cnet").symlink_to(CNET_CNI)
        (netd / f"{conflist['name']}.conflist").write_text(json.dumps(conflist))
        self.conf = self.dir / "containers.conf"
        self.conf.write_text(
            "[containers]\ndefault_ulimits = []\n"
            "[network]\nnetwork_backend = \"cni\"\n"
            f"cni_plugin_dirs = [\"{plugins}\", \"{REFERENCE_PLUGINS}\"]\n"
            f"network_config_dir = \"{netd}\"\n"
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
            "runtime = \"runc\"\n")
        # podman keeps a blob cache in /var/lib/containers whatever --root says
        self.made_var = not Path("/var/lib/containers").exists()

    def __call__(self, *args: str, check: bool = True, timeout: float = 120):
        cmd = ["nsenter", f"--net={self.host.path}", PODMAN,
               "--root", str(self.dir / "root"), "--runroot", str(self.dir / "run"),
               "--tmpdir", str(self.dir / "tmp"), "--storage-driver", "overlay", *args]
        env = dict(os.environ, CONTAINERS_CONF=str(self.conf))
        env.pop("CNET_HOST", None)
        return harness.sh(*cmd, check=check, timeout=timeout, env=env)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self("rm", "-af", "-t", "0", check=False)
        with contextlib.suppress(Exception):
            self("system", "reset", "-f", check=False)
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if str(self.dir) in line]
        for m in sorted(mounts, key=len, reverse=True):
            harness.sh("umount", "-l", m, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.made_var:
            shutil.rmtree("/var/lib/containers", ignore_errors=True)


@pytest.mark.skipif(PODMAN is None, reason="podman is not installed")
def test_podman_containers_on_a_cnet_network(cnid, busybox_tar):
    d = cnid
    conflist = {"cniVersion": "1.0.0", "name": "podnet", "plugins": [
        {"type": "cnet", "host": d.host,
         "ipam": {"ranges": [[{"subnet": "10.74.0.0/24", "gateway": "10.74.0.1"}]]},
         "capabilities": {"portMappings": True, "ips": True, "mac": True, "aliases": True}},
        {"type": "tuning"}]}
    netns_before = set(os.listdir("/run/netns"))
    podman = Podman(d.host_ns, conflist)
    try:
        podman("import", str(busybox_tar), "busybox")
        podman("run", "-d", "--name", "web1", "--network", "podnet",
               "--network-alias", "www", "busybox", "sleep", "600")
        out = podman("run", "--rm", "--name", "client", "--network", "podnet", "busybox",
                     "sh", "-c", "ping -c1 -W2 web1 && ping -c1 -W2 www && "
                     "nslookup web1 127.0.0.11 && cat /etc/resolv.conf").stdout
        ip1 = podman("inspect", "-f",
                     "{{(index .NetworkSettings.Networks \"podnet\").IPAddress}}",
                     "web1").stdout.strip()
        assert ip1.startswith("10.74.0.")
        assert f"from {ip1}" in out and "nameserver 127.0.0.11" in out
        sandboxes = d.api("GET", "/sandboxes").json()
        assert len(sandboxes) == 1 and sandboxes[0]["External"]
        assert sandboxes[0]["Networks"]["podnet"]["IPAddress"] == ip1
        # the cnet side sees it, and cnet's own sandboxes reach it
        d.cli("sandbox", "create", "probe")
        d.cli("network", "connect", "podnet", "probe")
        assert harness.wait_ping(d.sandbox_key("probe"), ip1)
        d.cli("sandbox", "rm", "-f", "probe")
        podman("rm", "-f", "-t", "0", "web1")
        assert d.api("GET", "/sandboxes").json() == []
        assert d.api("GET", "/networks/podnet").json()["Containers"] == {}
        assert set(os.listdir("/run/netns")) <= netns_before | {
            n for n in os.listdir("/run/netns") if n.startswith("cnet-")}
    finally:
        podman.close()


def test_cnetd_restart_keeps_cni_attachments(cnid, containers):
    """Attachments outlive a cnetd restart (the namespaces are the runtime's): traffic and
    names still work, and DEL afterwards cleans up as before."""
    d = cnid
    c1, c2 = containers(), containers()
    conf = config(d)
    r1 = ok(cni(d, "ADD", conf, container="keep1", netns=c1))
    ok(cni(d, "ADD", conf, container="keep2", netns=c2, args="IP=10.77.0.77;MAC=c2:00:00:00:00:77"))
    assert addresses(c2, "eth0") == {"10.77.0.77/24"}
    d.restart()
    assert harness.wait_ping(c1, "10.77.0.77")
    assert harness.wait_for(lambda: dig(c2, "cni-keep1"), timeout=5, what="DNS after restart") \
        == [r1["ips"][0]["address"].split("/")[0]]
    ok(cni(d, "CHECK", dict(conf, prevResult=r1), container="keep1", netns=c1))
    for cid, ns in (("keep1", c1), ("keep2", c2)):
        ok(cni(d, "DEL", conf, container=cid, netns=ns))
    assert cnet_state(d)[0] == [] and netns_links(c1) == netns_links(c2) == {"lo"}


def test_cnetd_restart_keeps_published_ports(cnid, containers):
    """portMappings outlive a cnetd restart (it rebuilds its nftables table): the port is
    still published and still reserved; DEL afterwards releases it everywhere."""
    d = cnid
    outside = harness.wire_outside(d.host_ns)
    try:
        c, other = containers(), containers()
        conf = config(d, runtimeConfig={"portMappings": [
            {"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]})
        ok(cni(d, "ADD", conf, container="pub1", netns=c))
        sid = d.api("GET", "/sandboxes/cni-pub1").json()["Id"]
        assert [k for k in store_keys(d) if k.startswith("sandboxports/")] \
            == [f"sandboxports/{sid}/{d.api('GET', '/networks/cninet').json()['Id']}"]
        d.restart()
        assert d.api("GET", "/sandboxes/cni-pub1/ports").json() == {
            "cninet": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18081"}]}}
        assert len(nft_pub(d)) == 1
        with harness.TcpServer(c, 80, reply=b"after-restart\n"):
            reply = harness.wait_for(
                lambda: _try_tcp(outside.path, "192.0.2.1", 18081), timeout=10,
                what="the published port after a restart")
            assert reply == b"after-restart\n"
        # still reserved: nobody else gets it
        res = cni(d, "ADD", conf, container="pub2", netns=other)
        assert res.rc != 0 and "already allocated" in res.json["msg"], res
        ok(cni(d, "DEL", conf, container="pub1", netns=c))
        assert nft_pub(d) == []
        assert not [k for k in store_keys(d) if k.startswith("sandboxports/")]
        assert _try_tcp(outside.path, "192.0.2.1", 18081) is None
        d.restart()  # nothing comes back
        assert nft_pub(d) == [] and cnet_state(d)[0] == []
    finally:
        outside.delete()


def test_config_translation_and_result_merging():
    """The pure parts: host-local ranges -> cnet pools, portMappings -> PortBindings,
    sandbox names, and a result merged into a prevResult (cnet not first in a chain)."""
    from cnet.cli import cni as plugin_mod

    req = plugin_mod.network_request(plugin_mod.read_config(json.dumps(config(None, ipam={
        "type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.254"}],
                                         [{"subnet": "fd01::/64"}]]})).encode()))
    assert req["IPAM"]["Config"] == [{"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.254"},
                                     {"Subnet": "fd01::/64"}]
    assert req["EnableIPv6"] and req["Driver"] == "bridge" and req["Name"] == "cninet"
    assert plugin_mod.port_bindings([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        {"hostPort": 8081, "containerPort": 80}]) == {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "", "HostPort": "8081"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}]}
    hexid = "ab" * 32
    assert plugin_mod.sandbox_name(hexid) == "cni-" + hexid[:12]
    assert plugin_mod.sandbox_name("ctr-1") == "cni-ctr-1"
    long_a, long_b = "x" * 40 + "a", "x" * 40 + "b"
    assert plugin_mod.sandbox_name(long_a) != plugin_mod.sandbox_name(long_b)
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "dummy0"}],
            "ips": [{"address": "192.0.2.9/32", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]}}
    ep = {"EndpointID": "e" * 64, "InterfaceName": "eth1", "MacAddress": "02:42:0a:00:00:02",
          "IPAddress": "10.0.0.2", "IPPrefixLen": 24, "Gateway": "10.0.0.1",
          "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPv6Gateway": ""}
    out = plugin_mod.build_result("1.0.0", {}, {"Name": "n", "Driver": "bridge"}, ep,
                                  "/run/netns/x", prev)
    assert [i["name"] for i in out["interfaces"]] == ["dummy0", "veth" + "e" * 7, "eth1"]
    assert out["ips"][1] == {"address": "10.0.0.2/24", "interface": 2, "gateway": "10.0.0.1"}
    assert out["dns"]["nameservers"] == ["127.0.0.11", "192.0.2.53"]
