"""The embedded resolver's core (cnet.dns), in-process and over real sockets.

1. In-process (no sockets): answers/s of `AnswerCache.answer` on a hit (one address, and
   a shared alias rotating three), of a miss (`build`: dnslib validation, NameTable,
   encoding), of a cached "forward" verdict, and the anchor: a naive dnslib
   parse-reply-pack per query, measured in the same run.
2. Over UDP (needs root): a DNSServer serves a throwaway namespace (`cnet-b-<hex>-sb`) at
   127.0.0.11; a dnsmasq in a second one (`cnet-b-<hex>-up`, linked by a veth) holds the
   same names and is the upstream. A Python client *process* inside the sandbox keeps
   WINDOW queries in flight for SECONDS and reports qps and p50/p99 latency, against:
   our local names, dnsmasq serving the same names (anchor), a forwarded name through us,
   and that name asked of dnsmasq directly. Then one query at a time for the forward
   round-trip. The Python client is itself a bottleneck: figures are a floor; the
   dnsperf comparison belongs to bench/dns.sh.

    python bench/dns_core.py [--seconds 3] [--window 64] [--no-sockets]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dnslib  # noqa: E402
from cnet.dns.answers import AnswerCache  # noqa: E402
from cnet.dns.forwarder import Upstream  # noqa: E402
from cnet.dns.names import NameTable  # noqa: E402
from cnet.dns.server import DNSServer  # noqa: E402
from common import Netns, Summary, header, in_ns, main_wrapper, print_table, sh  # noqa: E402

NETS = frozenset({"n1"})
UP_IP, SB_IP = "198.51.100.2", "198.51.100.1"


def _q(name: str, qid: int, qtype: str = "A") -> bytes:
    rec = dnslib.DNSRecord.question(name, qtype)
    rec.header.id = qid
    return bytes(rec.pack())


def _table() -> NameTable:
    t = NameTable()
    for i in range(1, 51):
        t.set_endpoint("n1", "front", f"e{i}", [f"c{i}", f"{i:012x}", f"h{i}"],
                       f"10.0.0.{i + 1}", f"fd00::{i + 1:x}")
    for i in range(1, 4):
        t.set_endpoint("n1", "front", f"w{i}", [f"web{i}", "web"], f"10.0.1.{i}", None)
    return t


def _rate(fn, queries: list[bytes], seconds: float = 1.0) -> float:
    """calls per second of fn(query) cycling through `queries`."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    k = len(queries)
    while True:
        for i in range(2000):
            fn(queries[i % k])
        n += 2000
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def in_process(summary: Summary) -> dict[str, float]:
    table = _table()
    cache = AnswerCache(table)
    hit_q = [_q("c7", i) for i in range(256)]
    alias_q = [_q("web", i) for i in range(256)]
    fwd_q = [_q("example.test", i) for i in range(256)]
    for q in (hit_q[0], alias_q[0], fwd_q[0]):
        cache.lookup(NETS, q)

    def miss(q: bytes) -> None:
        cache.invalidate()
        cache.lookup(NETS, q)

    def naive(q: bytes) -> bytes:
        req = dnslib.DNSRecord.parse(q)
        r = req.reply()
        r.add_answer(dnslib.RR(req.q.qname, rdata=dnslib.A("10.0.0.8"), ttl=600))
        return r.pack()

    answer = cache.answer
    rates = {
        "hit (1 address)": _rate(lambda q: answer(NETS, q), hit_q),
        "hit (alias, 3 rotating)": _rate(lambda q: answer(NETS, q), alias_q),
        "hit (forward verdict)": _rate(lambda q: answer(NETS, q), fwd_q),
        "miss (dnslib check + table + encode)": _rate(miss, hit_q, 0.5),
        "anchor: naive dnslib parse/reply/pack": _rate(naive, hit_q, 0.5),
    }
    naive_rate = rates["anchor: naive dnslib parse/reply/pack"]
    rows = [[k, f"{v:,.0f}", f"{1e6 / v:.2f}", f"{v / naive_rate:.1f}x"]
            for k, v in rates.items()]
    print("\nin-process (one thread, no sockets)")
    print_table(["path", "answers/s", "us/answer", "vs naive dnslib"], rows)
    summary.text("in-process hit answers/s", f"{rates['hit (1 address)']:,.0f}",
                 f"{rates['hit (1 address)'] / naive_rate:.0f}x naive dnslib")
    summary.text("in-process miss answers/s",
                 f"{rates['miss (dnslib check + table + encode)']:,.0f}")
    return rates


CLIENT = r"""
import json, socket, sys, time
ip, port, names, seconds, window = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), \
    float(sys.argv[4]), int(sys.argv[5])
def q(name, qid):
    qn = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\0"
    return qid.to_bytes(2, "big") + b"\1\0\0\1\0\0\0\0\0\0" + qn + b"\0\1\0\1"
qs = [q(n, 0)[2:] for n in names]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((ip, port)); s.settimeout(1.0)
out = {}; lat = []; nid = 0; lost = 0; errors = 0
pc = time.perf_counter; end = pc() + seconds; t0 = pc()
while pc() < end:
    while len(out) < window:
        nid = (nid + 1) & 0xFFFF
        s.send(nid.to_bytes(2, "big") + qs[nid % len(qs)]); out[nid] = pc()
    try:
        r = s.recv(4096)
    except socket.timeout:
        lost += len(out); out.clear(); continue
    t = out.pop((r[0] << 8) | r[1], None)
    if t is not None:
        lat.append(pc() - t)
        if r[3] & 15: errors += 1
took = pc() - t0
lat.sort()
p = lambda x: lat[min(len(lat) - 1, int(len(lat) * x))] * 1e3 if lat else float("nan")
print(json.dumps({"qps": len(lat) / took, "n": len(lat), "lost": lost, "errors": errors,
                  "p50": p(0.5), "p99": p(0.99)}))
"""


def client(ns: Netns, ip: str, names: list[str], seconds: float, window: int) -> dict:
    out = in_ns(ns.path, sys.executable, "-c", CLIENT, ip, "53", ",".join(names),
                str(seconds), str(window), timeout=seconds + 60).stdout
    return json.loads(out)


def over_sockets(summary: Summary, seconds: float, window: int) -> None:
    if shutil.which("dnsmasq") is None:
        print("\nover UDP: skipped (dnsmasq not installed)")
        return
    tag = secrets.token_hex(3)
    tmp = tempfile.mkdtemp(prefix="cnb-dns-")
    table = _table()
    local = [f"c{i}" for i in range(1, 51)]
    args = ["dnsmasq", "-C", "/dev/null", "--no-resolv", "--no-hosts", "--local=/#/",
            "--address=/example.test/192.0.2.53", "--port", "53", "--listen-address", UP_IP,
            "--bind-interfaces", "--keep-in-foreground", f"--pid-file={tmp}/pid",
            "--cache-size=1000"]
    args += [f"--host-record=c{i},10.0.0.{i + 1}" for i in range(1, 51)]
    server = DNSServer(table)
    dnsmasq = None
    with Netns("sb") as sb, Netns("up") as up:
        try:
            sh("ip", "-n", sb.name, "link", "add", f"cbs{tag}", "type", "veth", "peer",
               "name", f"cbu{tag}", "netns", up.name)
            sh("ip", "-n", sb.name, "addr", "add", f"{SB_IP}/24", "dev", f"cbs{tag}")
            sh("ip", "-n", sb.name, "link", "set", f"cbs{tag}", "up")
            sh("ip", "-n", up.name, "addr", "add", f"{UP_IP}/24", "dev", f"cbu{tag}")
            sh("ip", "-n", up.name, "link", "set", f"cbu{tag}", "up")
            dnsmasq = subprocess.Popen(["nsenter", f"--net={up.path}", *args],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                if "192.0.2.53" in in_ns(sb.path, "dig", f"@{UP_IP}", "+short", "+time=1",
                                         "example.test", check=False).stdout:
                    break
                time.sleep(0.1)
            server.start()
            server.add_sandbox("bench", sb.path, NETS, upstreams=[Upstream(UP_IP)])
            runs = [
                ("cnet local names", "127.0.0.11", local, window),
                ("anchor: dnsmasq, same names", UP_IP, local, window),
                ("cnet forwarded (example.test)", "127.0.0.11", ["example.test"], window),
                ("anchor: dnsmasq direct (example.test)", UP_IP, ["example.test"], window),
                ("cnet forwarded, 1 at a time", "127.0.0.11", ["example.test"], 1),
                ("anchor: dnsmasq direct, 1 at a time", UP_IP, ["example.test"], 1),
                ("cnet local, 1 at a time", "127.0.0.11", local, 1),
            ]
            res = {}
            for name, ip, names, win in runs:
                res[name] = r = client(sb, ip, names, seconds, win)
                print(f"  {name}: {r['qps']:,.0f} qps  p50 {r['p50']:.3f} ms  "
                      f"p99 {r['p99']:.3f} ms  lost {r['lost']}  errors {r['errors']}",
                      flush=True)
            rows = [[k, str(w), f"{v['qps']:,.0f}", f"{v['p50']:.3f}", f"{v['p99']:.3f}",
                     str(v["lost"]), str(v["errors"])]
                    for (k, _ip, _n, w), v in zip(runs, res.values(), strict=True)]
            print(f"\nover UDP, a Python client process in the sandbox ({seconds:g} s each)")
            print_table(["target", "window", "qps", "p50 ms", "p99 ms", "lost", "errors"],
                        rows)
            print(f"server stats: {server.stats()}")
            loc, anc = res["cnet local names"], res["anchor: dnsmasq, same names"]
            summary.text("UDP local names qps (python client)",
                         f"{loc['qps']:,.0f} (p99 {loc['p99']:.2f} ms)",
                         f"{loc['qps'] / anc['qps']:.2f}x dnsmasq")
            fw = res["cnet forwarded (example.test)"]
            summary.text("UDP forwarded qps (python client)", f"{fw['qps']:,.0f}",
                         f"{fw['qps'] / res['anchor: dnsmasq direct (example.test)']['qps']:.2f}"
                         "x dnsmasq direct")
            one, direct = res["cnet forwarded, 1 at a time"], \
                res["anchor: dnsmasq direct, 1 at a time"]
            summary.text("forward round-trip p50", f"{one['p50']:.3f} ms",
                         f"dnsmasq direct {direct['p50']:.3f} ms")
        finally:
            server.close()
            if dnsmasq is not None:
                dnsmasq.kill()
                dnsmasq.wait()
            shutil.rmtree(tmp, ignore_errors=True)


def body() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--no-sockets", action="store_true")
    a = ap.parse_args()
    header("cnet.dns core")
    summary = Summary("dns_core")
    in_process(summary)
    if not a.no_sockets and os.geteuid() == 0:
        over_sockets(summary, a.seconds, a.window)
    summary.print()
    summary.save()
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(body))
