"""`cnet capture` must not drop packets at modest rates: 5,000 packets/s for 5 s.

One cnetd in a throwaway namespace, a network and two sandboxes. A paced UDP sender in
sandbox `a` sends RATE x SECONDS datagrams to `b` (port 9999) and counts them; `cnet
capture b -f "udp dst port 9999"` runs meanwhile, once writing a pcapng (`-w`, counted
back with tshark when installed, else from cnet's own count), then decoding every
packet (`--json` lines, then the one-line summaries, counted). Target: every datagram
sent is recorded.

    python bench/capture.py [--rate 5000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from common import Daemon, header, in_ns, main_wrapper, mktemp

SENDER = r"""
import socket, sys, time
dst, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
total, sent, start = int(rate * seconds), 0, time.monotonic()
while sent < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while sent < due:
        s.sendto(b"x" * 64, (dst, 9999))
        sent += 1
    time.sleep(0.0005)
print(sent)
"""


def one_run(d: Daemon, key: str, ip_b: str, rate: int, seconds: float, mode: str,
            tmp) -> tuple[int, int]:
    """(sent, recorded) for one capture in `mode` (pcapng, json or text)."""
    pcap = tmp / "bench.pcapng"
    args = {"pcapng": ["-w", str(pcap)], "json": ["--json"], "text": []}[mode]
    cap = subprocess.Popen(
        d.cli("capture", "b", "-f", "udp dst port 9999", "--duration",
              str(seconds + 3), *args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = cap.stderr.readline()
    if not line.startswith("capturing on"):
        cap.kill()
        raise RuntimeError(f"capture did not start: {line}{cap.communicate()[1]}")
    sender = in_ns(key, sys.executable, "-c", SENDER, ip_b, str(rate), str(seconds),
                   timeout=seconds + 30)
    sent = int(sender.stdout.strip())
    out, err = cap.communicate(timeout=seconds + 30)
    if mode != "pcapng":
        return sent, len(out.splitlines())
    tshark = shutil.which("tshark")
    if tshark:
        proc = subprocess.run([tshark, "-r", str(pcap), "-T", "fields", "-e",
                               "frame.number"], capture_output=True, text=True, timeout=120)
        return sent, len(proc.stdout.splitlines())
    return sent, int(err.split()[0]) if err.split() else 0


def body() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=5.0)
    opts = ap.parse_args()
    header(f"capture: {opts.rate} packets/s for {opts.seconds} s into one sandbox")
    tmp = mktemp("capbench")
    ok = True
    with Daemon() as d:
        subprocess.run(d.cli("network", "create", "--subnet", "10.201.0.0/24", "cbnet"),
                       check=True, capture_output=True)
        for name in ("a", "b"):
            subprocess.run(d.cli("sandbox", "create", name), check=True, capture_output=True)
            subprocess.run(d.cli("network", "connect", "cbnet", name), check=True,
                           capture_output=True)
        key = d.api.get("/sandboxes/a")["Key"]
        ip_b = d.api.get("/sandboxes/b")["Networks"]["cbnet"]["IPAddress"].split("/")[0]
        for mode in ("pcapng", "json", "text"):
            t0 = time.monotonic()
            sent, got = one_run(d, key, ip_b, opts.rate, opts.seconds, mode, tmp)
            verdict = "OK" if got == sent else "MISSED"
            ok &= got == sent
            print(f"  {mode:7s} sent {sent}, recorded {got} "
                  f"({sent - got} lost) in {time.monotonic() - t0:.1f} s  {verdict}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main_wrapper(body))
