"""`cnet trace SRC DST`: send one probe from SRC and show the path it took on this node
(hops, the kernel's lookups, the nftables rules it met) and one verdict line."""

from __future__ import annotations

import click
from cnet.cli.common import client, fail


@click.command()
@click.option("--proto", "proto", type=click.Choice(["icmp", "tcp", "udp"]), default="icmp",
              show_default=True, help="The probe: an ICMP echo, a TCP SYN or a UDP datagram.")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port (tcp, udp).")
@click.option("--timeout", type=click.FloatRange(0, 30, min_open=True), default=2.0,
              show_default=True, metavar="S", help="How long to wait for an answer.")
@click.option("--json", "as_json", is_flag=True, help="The whole report as JSON.")
@click.argument("src")
@click.argument("dst")
def trace(proto: str, port: int | None, timeout: float, as_json: bool, src: str,
          dst: str) -> None:
    """Trace a probe from container/sandbox SRC to DST (a container, sandbox, DNS name or
    address; a published port: the node's address with --proto tcp --port N).

    Exits 0 when the probe was delivered, 1 otherwise."""
    if proto != "icmp" and port is None:
        fail(f"--proto {proto} needs --port N")
    if proto == "icmp" and port is not None:
        fail("--port goes with --proto tcp or udp")
    body = {"Source": src, "Destination": dst, "Protocol": proto, "Port": port,
            "Timeout": timeout}
    report = client().post("/trace", body=body)
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render(report))
    raise SystemExit(0 if report.get("Delivered") else 1)


def _who(report: dict) -> str:
    name, ip = report.get("DestinationName"), report["DestinationIP"]
    return f"{name} ({ip})" if name else ip


def render(report: dict) -> str:
    probe = report["Protocol"] + (f"/{report['Port']}" if report.get("Port") else "")
    lines = [f"trace {report['Source']} -> {_who(report)}, {probe} probe "
             f"(id {report['ProbeId']})"]
    if report["Lookups"]:
        lines.append("lookups:")
        lines += [f"  {step}" for step in report["Lookups"]]
    if report["Hops"]:
        lines.append("path:")
        width = max(len(h["Where"]) for h in report["Hops"])
        iwidth = max(len(h["Interface"]) for h in report["Hops"])
        last = None
        for i, h in enumerate(report["Hops"], 1):
            what = f"  ({h['What']})" if h["What"] else ""
            when = f"{h['Time']:>9.1f}us" if h["Time"] != last else " " * 11
            last = h["Time"]
            lines.append(f"  {i:>2} {when}  {h['Packet']:<7} "
                         f"{h['Where']:<{width}}  {h['Interface']:<{iwidth}} "
                         f"{h['Direction']:<3}  {h['Flow']}{what}")
    if report["Rules"]:
        lines.append("nftables (node):")
        for r in report["Rules"]:
            ifs = " ".join(x for x in (f"in {r['In']}" if r["In"] else "",
                                       f"out {r['Out']}" if r["Out"] else "") if x)
            handle = f" #{r['Handle']}" if r["Handle"] is not None else ""
            times = f" x{r['Packets']}" if r.get("Packets", 1) > 1 else ""
            why = f"  # {r['Comment']}" if r.get("Comment") else ""
            lines.append(f"  {r['Packet']:<7} {r['Table']} {r['Chain']}{handle}: "
                         f"{r['Rule']} -> {r['Verdict']}{times}"
                         + (f"  [{ifs}]" if ifs else "") + why)
    if report.get("EventsLost"):
        lines.append("  (some nftables trace events were lost)")
    lines.append(f"verdict: {report['Verdict']}")
    return "\n".join(lines)
