"""Live capture on interfaces in several network namespaces, and decoding.

Each target interface gets its own AF_PACKET socket, created inside the target's
namespace (setns on the calling thread, then back): a packet socket stays bound to the
namespace it was born in. The BPF filter is compiled once with libpcap (through scapy)
and attached before the socket is bound, so nothing unfiltered is ever queued. Kernel
timestamps (SO_TIMESTAMPNS) date each packet.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cnet.cnm.osl.nsenter import in_netns

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
RCVBUF = 16 << 20
BUFSIZE = 262144
LINKTYPE_ETHERNET = 1


class CaptureError(Exception):
    """A one-line problem (bad filter, interface gone)."""


@dataclass(frozen=True)
class Target:
    netns: str
    ifname: str
    label: str  # container/interface, e.g. "web/eth0"


@dataclass
class Packet:
    target: Target
    ts_ns: int
    data: bytes
    outgoing: bool
    orig_len: int


def compile_bpf(expr: str):
    """The filter as a sock_fprog ready for SO_ATTACH_FILTER (raises CaptureError)."""
    from scapy.arch.common import compile_filter
    from scapy.libs.structures import sock_fprog

    try:
        prog = compile_filter(expr, linktype=LINKTYPE_ETHERNET)
    except Exception:
        raise CaptureError(f'invalid BPF filter "{expr}"') from None
    return prog, sock_fprog(prog.bf_len, prog.bf_insns)


def _open(target: Target, fprog) -> socket.socket:
    try:
        with in_netns(target.netns):
            # protocol 0 receives nothing until bind(): the filter is in place first
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                if fprog is not None:
                    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                                    bytes(fprog[1]))
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.bind((target.ifname, ETH_P_ALL))
            except BaseException:
                sock.close()
                raise
    except OSError as exc:
        raise CaptureError(f"cannot capture on {target.label} ({target.ifname}): "
                           f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class LiveCapture:
    """Packets from every target, in arrival order, until count/deadline/stop()."""

    def __init__(self, targets: list[Target], bpf: str | None = None):
        self.targets = targets
        self.bpf = bpf
        self._sel: selectors.DefaultSelector | None = None
        self._socks: list[socket.socket] = []

    def open(self) -> None:
        fprog = compile_bpf(self.bpf) if self.bpf else None
        self._sel = selectors.DefaultSelector()
        try:
            for t in self.targets:
                sock = _open(t, fprog)
                self._socks.append(sock)
                self._sel.register(sock, selectors.EVENT_READ, t)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for s in self._socks:
            s.close()
        self._socks = []

    def __enter__(self) -> LiveCapture:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def packets(self, count: int | None = None, duration: float | None = None
                ) -> Iterator[Packet]:
        assert self._sel is not None
        deadline = None if duration is None else time.monotonic() + duration
        seen = 0
        anc = socket.CMSG_SPACE(16)
        while count is None or seen < count:
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return
            for key, _ in self._sel.select(timeout):
                sock, target = key.fileobj, key.data
                while count is None or seen < count:
                    try:
                        data, ancdata, flags, addr = sock.recvmsg(BUFSIZE, anc,
                                                                  socket.MSG_TRUNC)
                    except BlockingIOError:
                        break
                    ts_ns = 0
                    for level, kind, value in ancdata:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", value[:16])
                            ts_ns = sec * 1_000_000_000 + nsec
                    orig = len(data)
                    if flags & socket.MSG_TRUNC:
                        data = data[:BUFSIZE]
                    seen += 1
                    yield Packet(target, ts_ns or time.time_ns(), data,
                                 addr[2] == PACKET_OUTGOING, orig)


# -- decoding ----------------------------------------------------------------------

_ICMP_TYPES = {0: "echo-reply", 3: "dest-unreach", 5: "redirect", 8: "echo-request",
               11: "time-exceeded"}


def _tcp_flags(flags: int) -> str:
    names = "FSRPAUEC"
    return "".join(n for i, n in enumerate(names) if flags & (1 << i)) or "."


def decode(data: bytes) -> dict:
    """src, dst, protocol, info (and ports) of an Ethernet frame."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Ether

    try:
        pkt = Ether(data)
    except Exception:
        return {"src": "?", "dst": "?", "protocol": "?", "info": "undecodable frame"}
    out: dict = {"src": pkt.src, "dst": pkt.dst, "protocol": f"0x{pkt.type:04x}",
                 "info": ""}
    if ARP in pkt:
        a = pkt[ARP]
        out.update(src=a.psrc, dst=a.pdst, protocol="ARP",
                   info=(f"who-has {a.pdst} tell {a.psrc}" if a.op == 1
                         else f"{a.psrc} is-at {a.hwsrc}" if a.op == 2 else f"op {a.op}"))
        return out
    ip = pkt[IP] if IP in pkt else pkt[IPv6] if IPv6 in pkt else None
    if ip is None:
        return out
    out.update(src=ip.src, dst=ip.dst, protocol="IPv4" if IP in pkt else "IPv6")
    if IP in pkt and ip.frag:
        out["info"] = f"fragment offset {ip.frag * 8}"
    if TCP in pkt:
        t = pkt[TCP]
        payload = len(bytes(t.payload))
        out.update(protocol="TCP", sport=t.sport, dport=t.dport,
                   info=f"{t.sport} > {t.dport} [{_tcp_flags(int(t.flags))}] seq={t.seq}"
                        f" ack={t.ack} len={payload}")
    elif UDP in pkt:
        u = pkt[UDP]
        out.update(protocol="UDP", sport=u.sport, dport=u.dport,
                   info=f"{u.sport} > {u.dport} len={max(u.len - 8, 0) if u.len else 0}")
        if 4789 in (u.sport, u.dport):
            out["protocol"] = "VXLAN"
        elif 53 in (u.sport, u.dport):
            out["protocol"] = "DNS"
    elif ICMP in pkt:
        c = pkt[ICMP]
        name = _ICMP_TYPES.get(c.type, f"type {c.type}")
        extra = f" id={c.id} seq={c.seq}" if c.type in (0, 8) else ""
        out.update(protocol="ICMP", info=name + extra)
    elif IPv6 in pkt and ip.nh == 58:
        out.update(protocol="ICMPv6", info=ip.payload.name)
    else:
        out["info"] = out["info"] or f"proto {ip.proto if IP in pkt else ip.nh}"
    return out


def summary_line(pkt: Packet, fields: dict) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(pkt.ts_ns // 1_000_000_000))
    frac = (pkt.ts_ns % 1_000_000_000) // 1000
    arrow = "out" if pkt.outgoing else "in "
    return (f"{ts}.{frac:06d} {pkt.target.label} {arrow} {fields['src']} -> "
            f"{fields['dst']} {fields['protocol']} {fields['info']}".rstrip())


def json_record(pkt: Packet, fields: dict) -> dict:
    return {"time": pkt.ts_ns / 1e9, "interface": pkt.target.label,
            "ifname": pkt.target.ifname,
            "direction": "out" if pkt.outgoing else "in", "length": pkt.orig_len,
            **fields}

