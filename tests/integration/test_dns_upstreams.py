"""The embedded DNS forwards to the host's resolvers and follows their changes."""

from __future__ import annotations

import subprocess
import time

import harness


def _dnsmasq(outside, listen: str, answer: str, tmp) -> subprocess.Popen:
    return subprocess.Popen(
        ["nsenter", f"--net={outside.path}", "dnsmasq", "--no-resolv", "--no-hosts",
         f"--address=/example.test/{answer}", f"--listen-address={listen}",
         "--bind-interfaces", "--port=53", "--keep-in-foreground",
         f"--pid-file={tmp}/dnsmasq-{listen}.pid", "--user=root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _answer(d: harness.Daemon) -> list[str]:
    res = d.cli_json("dns", "lookup", "example.test", "--from", "c", "--format", "json")
    return res["Answers"]


def test_forwards_to_the_host_resolvers_and_follows_changes(host_ns, outside, busybox_tar,
                                                             daemon_factory, tmp_path):
    outside.run("ip", "addr", "add", "192.0.2.3/24", "dev", outside.outside_if)
    servers = [_dnsmasq(outside, "192.0.2.2", "192.0.2.77", tmp_path),
               _dnsmasq(outside, "192.0.2.3", "192.0.2.88", tmp_path)]
    try:
        conf = tmp_path / "resolv.conf"
        conf.write_text("nameserver 192.0.2.2\n")
        d = daemon_factory(host_ns, args=["--resolv-conf", str(conf)])
        d.cli("image", "import", str(busybox_tar), "busybox")
        d.cli("network", "create", "localnet")
        d.cli("run", "-d", "--name", "c", "--network", "localnet", "busybox", "sleep", "600")
        assert harness.wait_for(lambda: _answer(d) == ["192.0.2.77"], timeout=10)
        # Inside the container, through its resolv.conf, busybox's resolver agrees.
        out = d.cli("exec", "c", "nslookup", "-type=a", "example.test").stdout
        assert "192.0.2.77" in out
        conf.write_text("nameserver 192.0.2.3\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _answer(d) != ["192.0.2.88"]:
            time.sleep(0.5)
        assert _answer(d) == ["192.0.2.88"]
    finally:
        for s in servers:
            s.kill()
            s.wait()
