"""`cnet trace` cost: how long a whole trace takes, as the node fills with sandboxes.

One cnetd in a throwaway namespace, a network, sandboxes `a` and `b`, then 48 more.
Times `cnet trace a b` end to end (p50 of ROUNDS) with 2 and with 50 sandboxes (every
local sandbox's namespace is watched), next to the anchor: `nsenter ping -c 1` from
`a` to `b` in the same run, the least one runs to learn whether b is reachable at all.
A trace includes a deliberate 150 ms grace period for trailing copies and events.

    python bench/trace.py [--rounds 10] [--more 48]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import Daemon, header, main_wrapper, ratio


def _median_ms(cmd: list[str], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        samples.append((time.perf_counter() - t0) * 1000)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stdout}{proc.stderr}")
    return statistics.median(samples)


def body() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--more", type=int, default=48)
    opts = ap.parse_args()
    header("trace: cnet trace a b, end to end")
    with Daemon() as d:
        def cli(*args: str) -> None:
            subprocess.run(d.cli(*args), check=True, capture_output=True)

        cli("network", "create", "--subnet", "10.202.0.0/16", "tbnet")
        for name in ("a", "b"):
            cli("sandbox", "create", name)
            cli("network", "connect", "tbnet", name)
        key = d.api.get("/sandboxes/a")["Key"]
        ip_b = d.api.get("/sandboxes/b")["Networks"]["tbnet"]["IPAddress"].split("/")[0]
        ping = ["nsenter", f"--net={key}", "ping", "-c", "1", "-W", "1", ip_b]
        trace = d.cli("trace", "a", "b")
        rows = []
        for count in (2, 2 + opts.more):
            while len(d.api.get("/sandboxes")) < count:
                name = f"x{len(d.api.get('/sandboxes'))}"
                cli("sandbox", "create", name)
                cli("network", "connect", "tbnet", name)
            anchor = _median_ms(ping, opts.rounds)
            took = _median_ms(trace, opts.rounds)
            rows.append((count, took, anchor))
            print(f"  {count:3d} sandboxes: cnet trace p50 {took:7.1f} ms   "
                  f"nsenter ping -c 1 p50 {anchor:6.1f} ms   ratio {ratio(took, anchor):.1f}x")
        growth = rows[-1][1] / rows[0][1]
        print(f"  growth from {rows[0][0]} to {rows[-1][0]} sandboxes: {growth:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(body))
