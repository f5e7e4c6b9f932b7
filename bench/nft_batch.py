"""libnftables batch cost of one network add/rm vs the networks already in `inet cnet`.

Everything runs in-process on one worker thread that entered a throwaway network
namespace (`cnet-b-<8hex>-nft`, deleted at the end, even on Ctrl-C): the root
namespace's firewall is never touched. For each EXISTING count (default 0, 200, 1000)
the table is reset to hold that many networks (10.100.0.0/24, 10.100.1.0/24, ...), then
ROUNDS rounds (after WARMUP untimed ones) add and remove one more network (a bridge with
10.200.0.0/24 and fd00:200::/64, masquerading). Figures are p50 in ms; "+N" columns are
the growth over the empty table measured in the same run.

Sections:
1. `Firewall` (cnet.ingress.firewall as installed, or --firewall-rev): add_network,
   remove_network.
2. Layouts as raw JSON batches through one libnftables context: the current one (constant
   rules, a network is only elements of the sets bridges/masq/internal/icc); the one
   before it (`P`: ingress/firewall.py at the last revision with per-network chains
   `net-<id>-out/-in` reached through verdict maps fwd_in/fwd_out, an ifname set `masq`),
   the same without `flush chain`; older ones built on it: masq4/masq6 interval sets of
   subnets (with and without `flush chain`), and masquerade through a verdict map jumping
   to a third per-network chain `net-<id>-nat`.
3. What grows: one-command batches that isolate each cost, on the per-chain layout (kernel
   commit, libnftables' chain listing, kernel jump validation, interval-set element
   listing; JSON vs text) and on the current one,
   and, with strace installed, the netlink bytes libnftables reads for each add/remove.

    python bench/nft_batch.py [--existing 0,200,1000] [--rounds 30] [--no-strace]
                              [--firewall-rev REV]

--firewall-rev REV runs section 1 with `ingress/firewall.py` as it was at git revision REV
(e.g. the commit before a change), for before/after figures from the same script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnet.cnm.osl.nsenter import enter_netns
from cnet.ingress import firewall as F
from cnet.ingress.firewall import NetworkRules
from common import (
    REPO_ROOT,
    Netns,
    Stats,
    Summary,
    fmt,
    header,
    in_ns,
    main_wrapper,
    mktemp,
    print_table,
)

WARMUP = 3
CHAINS_MARK = 'MAP_FWD_IN = "fwd_in"'  # the per-network chain layout's firewall.py
Cmd = dict[str, Any]
T = {"family": "inet", "table": "cnet"}
PROBE = NetworkRules("f" * 64, "cnbprobe", ("10.200.0.0/24",), ("fd00:200::/64",),
                     False, True, True)


def chains_layout_module() -> Any:
    """ingress/firewall.py at the last revision with per-network chains (for section 2):
    HEAD while the change that removed them is uncommitted, else that change's parent."""
    if CHAINS_MARK in Path(F.__file__).read_text():
        return F

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, check=True).stdout

    if CHAINS_MARK in git("show", "HEAD:ingress/firewall.py"):
        return firewall_module("HEAD")
    last = git("log", "-1", "--format=%H", "-S", CHAINS_MARK, "--", "ingress/firewall.py")
    return firewall_module(f"{last.strip()}^")


P: Any = F  # set by run(): the per-chain layout's module


def _p(net: NetworkRules) -> Any:
    return P.NetworkRules(*(getattr(net, f) for f in net.__dataclass_fields__))


def existing(i: int) -> NetworkRules:
    return NetworkRules(f"{i:012x}" + "e" * 52, f"cnb{i:06x}",
                        (f"10.{100 + i // 256}.{i % 256}.0/24",), (), False, True, True)


# --------------------------------------------------------------------------- layouts
def _elem(verb: str, name: str, elems: list[Any]) -> Cmd:
    return {verb: {"element": {**T, "name": name, "elem": elems}}}


def _chain(verb: str, name: str) -> Cmd:
    return {verb: {"chain": {**T, "name": name}}}


def _rule(chain: str, *expr: dict) -> Cmd:
    return {"add": {"rule": {**T, "chain": chain, "expr": list(expr)}}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _uses_masq_set(cmd: Cmd) -> bool:
    """A command of the current layout that touches its `masq` set."""
    text = json.dumps(cmd)
    return '"@masq"' in text or '"name": "masq"' in text


def _no_flush(cmds: list[Cmd]) -> list[Cmd]:
    return [c for c in cmds if "flush" not in c]


def _without_masq(cmds: list[Cmd]) -> list[Cmd]:
    return [c for c in cmds if not _uses_masq_set(c)]


def _table_reset(base: list[Cmd]) -> list[Cmd]:
    table = {"table": {"family": "inet", "name": "cnet"}}
    return [{"add": table}, {"delete": table}, *base]


# The layout before this change: subnets in interval sets masq4/masq6, matched by saddr.
def old_base() -> list[Cmd]:
    sets = [{"add": {"set": {**T, "name": n, "type": t, "flags": ["interval"]}}}
            for n, t in (("masq4", "ipv4_addr"), ("masq6", "ipv6_addr"))]
    rules = [_rule("postrouting",
                   {"match": {"op": "==", "left": {"payload": {"protocol": p, "field": "saddr"}},
                              "right": f"@{n}"}},
                   {"match": {"op": "!=", "left": _meta("oifname"), "right": "@bridges"}},
                   {"masquerade": None})
             for p, n in (("ip", "masq4"), ("ip6", "masq6"))]
    base = _without_masq(P.render_base())
    return base[:1] + sets + base[1:] + rules


def _old_masq(net: NetworkRules, verb: str) -> list[Cmd]:
    if not net.masquerades:
        return []
    out = []
    for name, subnets in (("masq4", net.subnets4), ("masq6", net.subnets6)):
        prefixes = [{"prefix": {"addr": s.split("/")[0], "len": int(s.split("/")[1])}}
                    for s in subnets]
        if prefixes:
            out.append(_elem(verb, name, prefixes))
    return out


def old_add(net: NetworkRules) -> list[Cmd]:
    return _without_masq(P.render_network(_p(net))) + _old_masq(net, "add")


def old_remove(net: NetworkRules) -> list[Cmd]:
    cmds = _without_masq(P.render_removal(_p(net)))
    return _old_masq(net, "delete") + cmds


def old_reset(nets: list[NetworkRules]) -> list[Cmd]:
    return _table_reset(old_base()) + [c for n in nets for c in old_add(n)]


# Masquerade through `iifname vmap @masq_in` -> jump net-<id>-nat (a third chain each).
def nat_base() -> list[Cmd]:
    return _without_masq(P.render_base()) + [
        {"add": {"map": {**T, "name": "masq_in", "type": "ifname", "map": "verdict"}}},
        _rule("postrouting", {"vmap": {"key": _meta("iifname"), "data": "@masq_in"}}),
    ]


def _nat_chain(net: NetworkRules) -> str:
    return f"net-{net.id[:12]}-nat"


def nat_add(net: NetworkRules) -> list[Cmd]:
    nat = _nat_chain(net)
    cmds = _without_masq(P.render_network(_p(net)))
    if net.masquerades:
        cmds = [_chain("add", nat), _chain("flush", nat),
                _rule(nat, {"match": {"op": "!=", "left": _meta("oifname"),
                                      "right": "@bridges"}}, {"masquerade": None}),
                *cmds, _elem("add", "masq_in", [[net.bridge, {"jump": {"target": nat}}]])]
    return cmds


def nat_remove(net: NetworkRules) -> list[Cmd]:
    cmds = _without_masq(P.render_removal(_p(net)))
    if net.masquerades:
        nat = _nat_chain(net)
        cmds = [_elem("delete", "masq_in", [net.bridge]), *cmds,
                _chain("flush", nat), _chain("delete", nat)]
    return cmds


def nat_reset(nets: list[NetworkRules]) -> list[Cmd]:
    return _table_reset(nat_base()) + [c for n in nets for c in nat_add(n)]


@dataclass
class Layout:
    name: str
    reset: Callable[[list[NetworkRules]], list[Cmd]]
    add: Callable[[NetworkRules], list[Cmd]]
    remove: Callable[[NetworkRules], list[Cmd]]


NEW = "sets only (current)"
CHAINS = "chains: net-<id>-out/-in via fwd vmaps"
LAYOUTS = [
    Layout(NEW, F.render_reset, F.render_network, F.render_removal),
    Layout(CHAINS, lambda ns: P.render_reset([_p(n) for n in ns]),
           lambda n: P.render_network(_p(n)), lambda n: P.render_removal(_p(n))),
    Layout("chains, no flush chain", lambda ns: P.render_reset([_p(n) for n in ns]),
           lambda n: _no_flush(P.render_network(_p(n))), lambda n: P.render_removal(_p(n))),
    Layout("older: masq4/masq6 interval sets", old_reset, old_add, old_remove),
    Layout("older, no flush chain", old_reset, lambda n: _no_flush(old_add(n)), old_remove),
    Layout("chains + masq vmap -> net-<id>-nat", nat_reset, nat_add, nat_remove),
]


# --------------------------------------------------------------------------- kernel side
class Nft:
    """One libnftables context, created on (and only used from) the namespace thread."""

    def __init__(self) -> None:
        import nftables

        self.ctx = nftables.Nftables()

    def json(self, cmds: list[Cmd]) -> None:
        rc, _, err = self.ctx.json_cmd({"nftables": cmds})
        if rc != 0:
            raise RuntimeError(f"libnftables: {err.strip()}")

    def text(self, cmd: str) -> None:
        rc, _, err = self.ctx.cmd(cmd)
        if rc != 0:
            raise RuntimeError(f"libnftables: {cmd}: {err.strip()}")

    def has_bridge(self, bridge: str) -> bool:
        rc, out, _ = self.ctx.cmd("list set inet cnet bridges")
        return rc == 0 and f'"{bridge}"' in out


def rounds_of(rounds: int, do: Callable[[], None], undo: Callable[[], None],
              stats_do: Stats, stats_undo: Stats | None = None) -> None:
    for r in range(WARMUP + rounds):
        t0 = time.perf_counter()
        do()
        t1 = time.perf_counter()
        undo()
        t2 = time.perf_counter()
        if r >= WARMUP:
            stats_do.add((t1 - t0) * 1000)
            if stats_undo is not None:
                stats_undo.add((t2 - t1) * 1000)


def strace_kb(ns: Netns, cmds: list[Cmd], tmp: Path) -> float:
    """KB libnftables reads from netlink while running `cmds` (via `nft -j -f`)."""
    batch, trace = tmp / "batch.json", tmp / "trace"
    batch.write_text(json.dumps({"nftables": cmds}))
    in_ns(ns.path, "strace", "-f", "-qq", "-e", "trace=recvmsg", "-o", trace,
          "nft", "-j", "-f", batch)
    got = sum(int(m) for m in re.findall(r"= (\d+)$", trace.read_text(), re.M))
    return got / 1024


def firewall_module(rev: str | None) -> Any:
    """cnet.ingress.firewall, or ingress/firewall.py as it was at git revision `rev`."""
    if rev is None:
        return F
    src = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{rev}:ingress/firewall.py"],
                         capture_output=True, text=True, check=True).stdout
    path = mktemp("fwrev") / "firewall_rev.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("firewall_rev", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["firewall_rev"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    shutil.rmtree(path.parent, ignore_errors=True)
    return mod


def run(counts: list[int], rounds: int, use_strace: bool, rev: str | None) -> int:
    global P
    fwmod = firewall_module(rev)
    P = chains_layout_module()
    header("nft_batch: libnftables batch cost of one network add/rm vs existing networks",
           [f"existing networks: {', '.join(map(str, counts))}; {rounds} rounds "
            f"(+{WARMUP} warm-up) each; p50 ms",
            f"section 1 uses ingress/firewall.py {'at ' + rev if rev else 'as installed'}"])
    fw_probe = fwmod.NetworkRules(*(getattr(PROBE, f) for f in PROBE.__dataclass_fields__))
    fw_nets = [fwmod.NetworkRules(*(getattr(n, f) for f in n.__dataclass_fields__))
               for n in (existing(i) for i in range(max(counts)))]
    use_strace = use_strace and bool(shutil.which("strace")) and bool(shutil.which("nft"))
    nets = [existing(i) for i in range(max(counts))]
    tmp = mktemp("nft")
    results: dict[str, dict[int, Stats]] = {}
    kb: dict[str, dict[int, float]] = {}

    def cell(name: str, n: int) -> Stats:
        return results.setdefault(name, {}).setdefault(n, Stats(name))

    with Netns("nft") as ns, ThreadPoolExecutor(
        max_workers=1, initializer=enter_netns, initargs=(ns.path,)
    ) as pool:
        def on_ns(fn: Callable[[], Any]) -> Any:
            return pool.submit(fn).result()

        nft: Nft = on_ns(Nft)
        fw = fwmod.Firewall()

        for n in counts:
            # 1. Firewall (as installed or at --firewall-rev).
            def firewall(n: int = n) -> None:
                fw.reset(fw_nets[:n])
                rounds_of(rounds, lambda: fw.add_network(fw_probe),
                          lambda: fw.remove_network(fw_probe),
                          cell("Firewall add_network", n), cell("Firewall remove_network", n))
                fw.add_network(fw_probe)
                assert nft.has_bridge(PROBE.bridge), "add_network left no trace"
                fw.remove_network(fw_probe)
                assert not nft.has_bridge(PROBE.bridge), "remove_network left a trace"
            on_ns(firewall)

            # 2. Layouts.
            def layout(lay: Layout, n: int = n) -> None:
                nft.json(lay.reset(nets[:n]))
                rounds_of(rounds, lambda: nft.json(lay.add(PROBE)),
                          lambda: nft.json(lay.remove(PROBE)),
                          cell(f"{lay.name} | add", n), cell(f"{lay.name} | rm", n))

            for lay in LAYOUTS:
                on_ns(lambda lay=lay: layout(lay))
                if use_strace:
                    kb.setdefault(f"{lay.name} | add", {})[n] = strace_kb(ns, lay.add(PROBE), tmp)
                    kb.setdefault(f"{lay.name} | rm", {})[n] = strace_kb(
                        ns, lay.remove(PROBE), tmp)

            # 3. What grows: one-command batches on the per-chain layout, then others.
            def parts(n: int = n) -> None:
                nft.json(LAYOUTS[1].reset(nets[:n]))
                chain = "cnb-probe"
                nft.json([_chain("add", "cnb-target")])
                jump = {"jump": {"target": "cnb-target"}}  # validation walks every chain
                cases = [
                    ("add chain (kernel commit only)",
                     lambda: nft.json([_chain("add", chain)]),
                     lambda: nft.json([_chain("delete", chain)])),
                    ("add element bridges (+ chain listing)",
                     lambda: nft.json([_elem("add", "bridges", ["cnbx"])]),
                     lambda: nft.json([_elem("delete", "bridges", ["cnbx"])])),
                    ("  same, as nft text instead of JSON",
                     lambda: nft.text("add element inet cnet bridges { cnbx }"),
                     lambda: nft.text("delete element inet cnet bridges { cnbx }")),
                    ("add element fwd_in jump (+ jump validation)",
                     lambda: nft.json([_elem("add", "fwd_in", [["cnbx", jump]])]),
                     lambda: nft.json([_elem("delete", "fwd_in", ["cnbx"])])),
                ]
                for name, do, undo in cases:
                    rounds_of(rounds, do, undo, cell(f"part | {name}", n))
                nft.json(old_reset(nets[:n]))
                rounds_of(rounds, lambda: nft.json([_elem("add", "bridges", ["cnbx"])]),
                          lambda: nft.json([_elem("delete", "bridges", ["cnbx"])]),
                          cell("part | add element bridges, older layout (+ interval sets)",
                               n))
                nft.json(F.render_reset(nets[:n]))
                rounds_of(rounds, lambda: nft.json([_elem("add", "bridges", ["cnbx"])]),
                          lambda: nft.json([_elem("delete", "bridges", ["cnbx"])]),
                          cell("part | add element bridges, current layout (sets only)", n))
                nft.json(F.render_reset([]))
            on_ns(parts)
        on_ns(lambda: fw.delete_table())
    shutil.rmtree(tmp, ignore_errors=True)

    def row(name: str) -> list[str]:
        by_n = results[name]
        base = by_n[counts[0]].p50
        cells = [fmt(by_n[n].p50) for n in counts]
        growth = [f"{by_n[n].p50 - base:+.2f}" for n in counts[1:]]
        return [name, *cells, *growth]

    heads = [*(str(n) for n in counts), *(f"+{n}" for n in counts[1:])]
    print(f"\n1. Firewall (ingress/firewall.py {'at ' + rev if rev else 'as installed'}), p50 ms")
    print_table(["operation", *heads],
                [row(k) for k in ("Firewall add_network", "Firewall remove_network")])
    print("\n2. Layouts: raw JSON batch of one network, p50 ms")
    print_table(["layout | batch", *heads],
                [row(k) for k in results if "|" in k and not k.startswith("part")])
    print("\n3. What grows: one-command batches, p50 ms")
    print_table(["batch", *heads], [[row(k)[0][7:], *row(k)[1:]]
                                    for k in results if k.startswith("part")])
    if kb:
        print("\n   netlink KB libnftables reads running the batch (nft -j -f under strace)")
        print_table(["layout | batch", *(str(n) for n in counts)],
                    [[k, *(f"{v[n]:.1f}" for n in counts)] for k, v in kb.items()])
    else:
        print("\n(strace or nft missing, or --no-strace: no netlink byte counts)")

    s = Summary("nft_batch")
    last = counts[-1]
    for name in ("Firewall add_network", "Firewall remove_network",
                 f"{CHAINS} | add", f"{NEW} | add", f"{NEW} | rm"):
        by_n = results[name]
        for n in counts[1:]:
            s.figure(f"{name}: {n} vs {counts[0]} networks", by_n[n].p50 / by_n[counts[0]].p50,
                     "x")
        s.figure(f"{name}: growth at {last}", by_n[last].p50 - by_n[counts[0]].p50)
    s.print()
    s.save({"p50": {k: {n: v.p50 for n, v in by_n.items()} for k, by_n in results.items()},
            "netlink_kb": kb})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--existing", default="0,200,1000",
                   help="comma-separated counts of networks already in the table")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--no-strace", action="store_true", help="skip the netlink byte counts")
    p.add_argument("--firewall-rev", metavar="REV",
                   help="section 1 with ingress/firewall.py from this git revision")
    args = p.parse_args(argv)
    counts = sorted({int(x) for x in args.existing.split(",") if x.strip()})
    if not counts or counts[0] < 0 or args.rounds < 1:
        p.error("need counts >= 0 and rounds >= 1")
    return main_wrapper(lambda: run(counts, args.rounds, not args.no_strace,
                                    args.firewall_rev))


if __name__ == "__main__":
    sys.exit(main())
