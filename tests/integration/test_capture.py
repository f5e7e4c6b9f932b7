"""`cnet capture`: packets captured in the sandboxes' namespaces, checked by reading the
pcapng with tshark; JSON lines; a network-wide capture; one-line errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import harness
import pytest

TSHARK = shutil.which("tshark")


def _setup(d) -> tuple[str, str]:
    d.cli("network", "create", "--subnet", "10.93.0.0/24", "capnet")
    for name in ("a", "b"):
        d.cli("sandbox", "create", name)
        d.cli("network", "connect", "capnet", name)
    return d.sandbox_ip("a", "capnet"), d.sandbox_ip("b", "capnet")


def _start(d, *args: str) -> subprocess.Popen:
    """Start `cnet capture ARGS` and wait until its sockets are open."""
    proc = subprocess.Popen([harness.CNET, "-H", d.host, "capture", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if not line.startswith("capturing on"):
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"capture did not start: {line}{err}")
    proc.listening = line.strip()  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    return out, err


def _tshark(path, *fields: str) -> list[list[str]]:
    cmd = [TSHARK, "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    proc = harness.sh(*cmd)
    return [line.split("|") for line in proc.stdout.splitlines() if line]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_capture_pcapng_read_by_tshark(daemon, tmp_path):
    d = daemon
    ip_a, ip_b = _setup(d)
    pcap = tmp_path / "a.pcapng"
    proc = _start(d, "a", "-f", "icmp", "-c", "4", "--duration", "15", "-w", str(pcap))
    assert harness.ping(d.sandbox_key("a"), ip_b, count=2)
    _, err = _finish(proc)
    assert "4 packets captured" in err
    rows = _tshark(pcap, "frame.interface_name", "ip.src", "ip.dst", "_ws.col.Protocol",
                   "icmp.type")
    assert len(rows) == 4
    assert {r[0] for r in rows} == {"a/eth0"}
    assert all(r[3] == "ICMP" for r in rows)
    assert sorted((r[1], r[2], r[4]) for r in rows) == sorted(
        [(ip_a, ip_b, "8"), (ip_b, ip_a, "0")] * 2)
    # one interface description block, named after the sandbox's interface
    ifaces = harness.sh(TSHARK, "-r", str(pcap), "-q", "-z", "io,stat,0").stdout
    assert ifaces  # tshark parses the whole file


def test_capture_json_lines(daemon):
    d = daemon
    ip_a, ip_b = _setup(d)
    with harness.TcpServer(d.sandbox_key("b"), 8080, reply=b"hi\n"):
        proc = _start(d, "b", "--json", "-f", "tcp port 8080", "-c", "3", "--duration", "15")
        assert harness.tcp_request(d.sandbox_key("a"), ip_b, 8080) == b"hi\n"
        out, _ = _finish(proc)
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 3
    syn = recs[0]
    assert syn["interface"] == "b/eth0" and syn["direction"] == "in"
    assert (syn["src"], syn["dst"], syn["protocol"]) == (ip_a, ip_b, "TCP")
    assert syn["dport"] == 8080 and "[S]" in syn["info"]
    assert recs[1]["src"] == ip_b and "[SA]" in recs[1]["info"]
    assert all(isinstance(r["time"], float) and r["length"] > 0 for r in recs)


def test_capture_network_sees_every_sandbox(daemon):
    d = daemon
    ip_a, ip_b = _setup(d)
    d.cli("sandbox", "create", "c")
    d.cli("network", "connect", "capnet", "c")
    ip_c = d.sandbox_ip("c", "capnet")
    proc = _start(d, "capnet", "-f", "icmp[icmptype] == icmp-echo", "-c", "4",
                  "--duration", "15")
    assert harness.ping(d.sandbox_key("a"), ip_c)
    assert harness.ping(d.sandbox_key("b"), ip_c)
    out, _ = _finish(proc)
    lines = out.splitlines()
    assert len(lines) == 4, out
    seen = {(line.split()[1], line.split()[2]) for line in lines}
    # each request leaves its sender and arrives at c
    assert seen == {("a/eth0", "out"), ("b/eth0", "out"), ("c/eth0", "in")}
    assert any(f"{ip_a} -> {ip_c} ICMP echo-request" in line for line in lines)
    assert any(f"{ip_b} -> {ip_c} ICMP echo-request" in line for line in lines)


def test_capture_network_bridge_interface(daemon):
    d = daemon
    _setup(d)
    # Bridged frames between two ports never reach the bridge device itself: what it
    # sees is the traffic to and from the host side (the gateway).
    proc = _start(d, "capnet", "-i", "bridge", "-f", "icmp", "-c", "2", "--json",
                  "--duration", "15")
    assert harness.ping(d.sandbox_key("a"), "10.93.0.1")
    out, _ = _finish(proc)
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 2
    assert {r["interface"] for r in recs} == {f"capnet/{recs[0]['ifname']}"}
    assert recs[0]["ifname"] != "eth0"
    assert [(r["src"], r["dst"], r["direction"]) for r in recs] == [
        (d.sandbox_ip("a", "capnet"), "10.93.0.1", "in"),
        ("10.93.0.1", d.sandbox_ip("a", "capnet"), "out")]


def test_capture_duration_ends_cleanly(daemon, tmp_path):
    d = daemon
    _setup(d)
    pcap = tmp_path / "idle.pcapng"
    proc = _start(d, "a", "-f", "tcp port 9", "--duration", "0.5", "-w", str(pcap))
    _, err = _finish(proc)
    assert "0 packets captured" in err
    if TSHARK:
        assert _tshark(pcap, "frame.number") == []


def test_capture_errors_are_one_line(daemon):
    d = daemon
    _setup(d)
    err = d.cli_error("capture", "nosuchthing", "-c", "1")
    assert "nosuchthing" in err and len(err.splitlines()) == 1
    err = d.cli_error("capture", "a", "-f", "tcp port ((", "-c", "1")
    assert "BPF" in err and len(err.splitlines()) == 1
    err = d.cli_error("capture", "a", "-i", "eth7", "-c", "1")
    assert "eth7" in err and len(err.splitlines()) == 1


def test_capture_node_sees_the_underlay(daemon, outside):
    d = daemon
    _setup(d)  # the bridge and host veths are cnet's: not part of `node`
    proc = _start(d, "node", "-f", "icmp", "-c", "2", "--duration", "15")
    assert harness.ping(outside.path, outside.host_ip)
    out, _ = _finish(proc)
    assert proc.listening == f"capturing on node/{outside.host_if}"
    lines = out.splitlines()
    assert len(lines) == 2
    assert f"node/{outside.host_if} in  {outside.outside_ip} -> {outside.host_ip} ICMP " \
           "echo-request" in lines[0]
    assert "echo-reply" in lines[1]


def test_capture_ctrl_c_flushes_the_file(daemon, tmp_path):
    d = daemon
    _, ip_b = _setup(d)
    pcap = tmp_path / "int.pcapng"
    proc = _start(d, "a", "-f", "icmp", "-w", str(pcap))
    assert harness.ping(d.sandbox_key("a"), ip_b, count=3)
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc)
    assert "6 packets captured" in err
    if TSHARK:
        assert len(_tshark(pcap, "ip.src")) == 6


def test_capture_dns_log(daemon):
    d = daemon
    _, ip_b = _setup(d)
    proc = _start(d, "a", "--dns", "--json", "-c", "2", "--duration", "15")
    assert proc.listening == "capturing on a/lo, a/eth0"  # 127.0.0.11 answers on lo
    dig = harness.nsexec(d.sandbox_key("a"), "dig", "+short", "+time=2", "+tries=1",
                         "@127.0.0.11", "b", check=True)
    assert dig.stdout.split() == [ip_b]
    recs = [r["dns"] for r in map(json.loads, _finish(proc)[0].splitlines())]
    assert [(r["kind"], r["qname"], r["qtype"]) for r in recs] == [
        ("query", "b.", "A"), ("answer", "b.", "A")]
    assert recs[1]["rcode"] == "NOERROR" and recs[1]["answers"] == [f"A {ip_b}"]
    assert recs[0]["id"] == recs[1]["id"]
