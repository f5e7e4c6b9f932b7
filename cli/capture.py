"""`cnet capture TARGET`: packets on a container's, endpoint's, network's or the node's
interfaces, without knowing interface names.

cnetd resolves TARGET into (namespace, interface, label) triples
(GET /capture/targets); this process (root, on the same host) then captures itself in
those namespaces (cnet.capture.live).
"""

from __future__ import annotations

import signal
import sys

import click
from cnet.cli.common import client, fail


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("-i", "--interface", "iface", metavar="IFACE",
              help="Only this interface (eth1); for a network: its bridge or VTEP "
                   "(`bridge`, `vtep`, or the device name) instead of its endpoints.")
@click.option("-f", "--filter", "bpf", metavar="BPF", help="A pcap filter (tcpdump syntax).")
@click.option("-c", "--count", type=click.IntRange(min=1), help="Stop after COUNT packets.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Stop after S seconds.")
@click.option("-w", "--write", "path", type=click.Path(dir_okay=False, writable=True),
              metavar="FILE", help="Write the packets to FILE (pcapng, one interface "
                                   "block per container/interface) instead of printing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet.")
@click.option("--decap", is_flag=True,
              help="Open VXLAN packets: outer VTEPs (node names) and VNI, then the inner "
                   "flow with container names.")
@click.option("--dns", is_flag=True,
              help="Only DNS (port 53, the containers' loopback included, where "
                   "127.0.0.11 answers): a query/answer log.")
@click.argument("target")
def capture(iface: str | None, bpf: str | None, count: int | None, duration: float | None,
            path: str | None, as_json: bool, decap: bool, dns: bool, target: str) -> None:
    """Capture packets on TARGET: a container or sandbox, an endpoint id, a network
    (every endpoint on it; with -i its bridge/VTEP) or `node` (the underlay).

    Ends after -c packets, --duration seconds, or Ctrl-C."""
    from cnet.capture.live import CaptureError, LiveCapture, Target, compile_bpf

    if dns:
        bpf = f"({bpf}) and port 53" if bpf else "port 53"
    if bpf:
        try:
            compile_bpf(bpf)  # a bad filter fails before anything else happens
        except CaptureError as exc:
            fail(str(exc))
    query = {"target": target}
    if iface:
        query["iface"] = iface
    if dns:
        query["lo"] = "1"
    if decap:
        query["names"] = "1"
    res = client().get("/capture/targets", query=query)
    decoding = {"dns": dns}
    if decap:
        decoding.update(names=res.get("Names") or {},
                        vxlan_ports=frozenset(res.get("VxlanPorts") or [4789]))
    targets = [Target(t["Netns"], t["Interface"], t["Label"]) for t in res["Targets"]]

    cap = LiveCapture(targets, bpf)
    try:
        cap.open()
    except CaptureError as exc:
        fail(str(exc))
    writer = None
    ids: dict[Target, int] = {}
    state = {"seen": 0}
    old = signal.signal(signal.SIGTERM, _stop)
    try:
        if path:
            from cnet.capture.pcapng import PcapngWriter

            writer = PcapngWriter(open(path, "wb"))  # noqa: SIM115 (closed below)
            for t in targets:
                ids[t] = writer.add_interface(t.label, f"{t.ifname} in {t.netns}")
        click.echo("capturing on " + ", ".join(t.label for t in targets), err=True)
        _emit(cap.packets(count, duration), writer, ids, as_json, state, decoding)
    except KeyboardInterrupt:  # what the kernel already holds still counts
        left = cap.pending()
        if count is not None:
            left = left[:max(0, count - state["seen"])]
        _emit(left, writer, ids, as_json, state, decoding)
    finally:
        signal.signal(signal.SIGTERM, old)
        cap.close()
        if writer is not None:
            writer.close()
    seen = state["seen"]
    click.echo(f"{seen} packet{'s' if seen != 1 else ''} captured", err=True)


def _emit(pkts, writer, ids, as_json: bool, state: dict, decoding: dict) -> None:
    from cnet.capture.live import decode, json_record, summary_line

    out = sys.stdout
    if as_json:
        import json
    for pkt in pkts:
        state["seen"] += 1
        if writer is not None:
            writer.write(ids[pkt.target], pkt.ts_ns, pkt.data, pkt.orig_len)
            continue
        fields = decode(pkt.data, **decoding)
        if as_json:
            out.write(json.dumps(json_record(pkt, fields)) + "\n")
        else:
            out.write(summary_line(pkt, fields) + "\n")
        out.flush()
