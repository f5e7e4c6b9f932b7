"""Published ports (nftables DNAT, no proxy) and volumes, with real packets and files."""

from __future__ import annotations

import json
import subprocess

import harness
import pytest

HTTPD = "mkdir -p /www && echo hi-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"


def http_get(target, url: str) -> str:
    """curl from a namespace (host or outside); empty string on failure."""
    proc = harness.nsexec(target, "curl", "-s", "-m", "2", url)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def http_from_container(d: harness.Daemon, name: str, ip: str, port: int) -> str:
    proc = d.cli("exec", name, "sh", "-c",
                 f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 {ip} {port}', check=False)
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def nft_pub_elements(d: harness.Daemon) -> list:
    out = d.run_in_host("nft", "-j", "list", "map", "inet", "cnet", "pub_any").stdout
    maps = [o["map"] for o in json.loads(out)["nftables"] if "map" in o]
    return maps[0].get("elem", []) if maps else []


def web(d: harness.Daemon, name: str, *publish: str, network: str = "bridge") -> None:
    args = [a for p in publish for a in ("-p", p)]
    d.cli("run", "-d", "--name", name, "--network", network, *args, "busybox",
          "sh", "-c", HTTPD.format(name=name))


def test_published_port_from_outside_host_loopback_and_hairpin(cdaemon, outside):
    d = cdaemon
    d.cli("network", "create", "localnet")
    web(d, "web", "5001:80", network="localnet")
    d.cli("run", "-d", "--name", "peer", "--network", "localnet", "busybox", "sleep", "600")
    assert harness.wait_for(lambda: http_get(outside.path, "http://192.0.2.1:5001/"),
                            timeout=5) == "hi-from-web"
    assert http_get(d.host_ns, "http://127.0.0.1:5001/") == "hi-from-web"
    assert http_get(d.host_ns, "http://192.0.2.1:5001/") == "hi-from-web"
    assert http_from_container(d, "peer", "192.0.2.1", 5001) == "hi-from-web"  # hairpin
    assert d.cli("port", "web").stdout.strip() == "80/tcp -> 0.0.0.0:5001"
    # The port is taken: a second container cannot have it, and nothing is left behind.
    before = d.cli("ps", "-aq").stdout
    err = d.cli_error("run", "-d", "--name", "web2", "-p", "5001:80", "busybox", "true")
    assert "port is already allocated" in err
    assert "web2" not in d.cli("ps", "-a").stdout and d.cli("ps", "-aq").stdout == before
    # Released on stop: the DNAT element goes, the port serves nothing, and can be reused.
    d.cli("stop", "-t", "1", "web")
    assert nft_pub_elements(d) == []
    assert http_get(outside.path, "http://192.0.2.1:5001/") == ""
    web(d, "web3", "5001:80")
    assert harness.wait_for(lambda: http_get(outside.path, "http://192.0.2.1:5001/"),
                            timeout=5) == "hi-from-web3"


def test_specific_host_ip_random_port_ranges_and_udp(cdaemon, outside):
    d = cdaemon
    web(d, "lo-only", "127.0.0.1:5002:80")
    assert harness.wait_for(lambda: http_get(d.host_ns, "http://127.0.0.1:5002/"),
                            timeout=5) == "hi-from-lo-only"
    assert http_get(outside.path, "http://192.0.2.1:5002/") == ""  # not on other addresses
    web(d, "rnd", "80")
    port = int(d.cli("port", "rnd", "80").stdout.strip().rsplit(":", 1)[1])
    assert port > 1024
    assert harness.wait_for(lambda: http_get(outside.path, f"http://192.0.2.1:{port}/"),
                            timeout=5) == "hi-from-rnd"
    d.cli("run", "-d", "--name", "rng", "-p", "6001-6002:80-81", "busybox", "sh", "-c",
          "httpd -p 80 -h /etc && httpd -p 81 -h /etc && sleep 600")
    ports = d.cli("port", "rng").stdout
    assert "80/tcp -> 0.0.0.0:6001" in ports and "81/tcp -> 0.0.0.0:6002" in ports
    # UDP: a datagram sent to the published port arrives in the container's namespace
    # on port 53 (busybox has no UDP server; tcpdump inside the sandbox sees it).
    d.cli("run", "-d", "--name", "udp", "-p", "5353:53/udp", "busybox", "sleep", "600")
    key = d.cli_json("inspect", "udp")[0]["NetworkSettings"]["SandboxKey"]
    cap = subprocess.Popen(["nsenter", f"--net={key}", "tcpdump", "-l", "-n", "-c", "1",
                            "-i", "eth0", "udp", "dst", "port", "53"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(30):
            harness.nsexec(outside.path, "sh", "-c", "echo ping-udp | nc -u -w1 192.0.2.1 5353")
            if cap.poll() is not None:
                break
        out = cap.communicate(timeout=5)[0]
    finally:
        cap.kill()
    assert ".53: UDP" in out or ".53:" in out


@pytest.mark.parametrize("spec", ["80:abc", "70000:80", "1.2.3:80:80", "80/sctp", "1-3:1-2"])
def test_bad_port_specs_are_refused(cdaemon, spec):
    err = cdaemon.cli_error("run", "-d", "-p", spec, "busybox", "true")
    assert err.startswith("Error:")
    assert cdaemon.cli("ps", "-aq").stdout.strip() == ""


def test_volume_persists_and_in_use_volume_cannot_go(cdaemon):
    d = cdaemon
    d.cli("run", "--rm", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert "data" in d.cli("volume", "ls", "-q").stdout.split()
    out = d.cli("run", "--rm", "--mount", "type=volume,source=data,target=/d", "busybox",
                "cat", "/d/f").stdout
    assert out.strip() == "kept"
    d.cli("run", "-d", "--name", "holder", "-v", "data:/data:ro", "busybox", "sleep", "600")
    err = d.cli_error("volume", "rm", "data")
    assert "holder" in err
    ro = d.cli("exec", "holder", "sh", "-c", "echo x > /data/g", check=False)
    assert ro.returncode != 0  # read-only mount
    d.cli("rm", "-f", "holder")
    d.cli("volume", "rm", "data")
    assert "data" not in d.cli("volume", "ls", "-q").stdout.split()


def test_bind_mount(cdaemon, tmp_path):
    (tmp_path / "in.txt").write_text("from-host\n")
    out = cdaemon.cli("run", "--rm", "-v", f"{tmp_path}:/host", "busybox", "sh", "-c",
                      "cat /host/in.txt; echo back > /host/out.txt").stdout
    assert out.strip() == "from-host"
    assert (tmp_path / "out.txt").read_text() == "back\n"


def test_published_ports_survive_daemon_restart(cdaemon, outside):
    d = cdaemon
    web(d, "web", "5004:80")
    assert harness.wait_for(lambda: http_get(outside.path, "http://192.0.2.1:5004/"),
                            timeout=5) == "hi-from-web"
    d.restart()
    assert http_get(outside.path, "http://192.0.2.1:5004/") == "hi-from-web"
    err = d.cli_error("run", "-d", "-p", "5004:80", "busybox", "true")
    assert "already allocated" in err


