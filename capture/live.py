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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cnet.cnm.osl.nsenter import in_netns

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
PACKET_OTHERHOST = 3  # a frame for another MAC (a promiscuous port, a flooded frame)
PACKET_OUTGOING = 4
RCVBUF = 16 << 20
BUFSIZE = 262144
LINKTYPE_ETHERNET = 1


class CaptureError(Exception):
    """A one-line problem (bad filter, interface gone)."""


ANY = "*"  # Target.ifname: every interface of the namespace, present and future


@dataclass(frozen=True)
class Target:
    netns: str
    ifname: str  # or ANY
    label: str  # container/interface, e.g. "web/eth0"


@dataclass
class Packet:
    target: Target
    ts_ns: int
    data: bytes
    outgoing: bool
    orig_len: int
    ifname: str = ""  # the interface it was seen on
    pkttype: int = 0  # PACKET_HOST, PACKET_OTHERHOST, PACKET_OUTGOING, ...


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
    every = target.ifname == ANY
    try:
        with in_netns(target.netns):
            # protocol 0 receives nothing until bind(): the filter is in place first.
            # Every interface means no bind (ifindex 0): the socket hears all at once,
            # and what it queued before the filter is read away below.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                 socket.htons(ETH_P_ALL) if every else 0)
            try:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                if fprog is not None:
                    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                                    bytes(fprog[1]))
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                if not every:
                    sock.bind((target.ifname, ETH_P_ALL))
            except BaseException:
                sock.close()
                raise
    except OSError as exc:
        raise CaptureError(f"cannot capture on {target.label} ({target.ifname}): "
                           f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    if every:
        _drain(sock, target, socket.CMSG_SPACE(16), limit=1 << 30)
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

    def close(self, wait: bool = True) -> None:
        """Close every socket. The kernel waits for an RCU grace period per packet
        socket (~13 ms here): with `wait=False` a thread does it, so that a caller
        with many sockets need not wait for them."""
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        socks, self._socks = self._socks, []
        if wait or len(socks) < 2:
            for s in socks:
                s.close()
            return
        threading.Thread(target=lambda: [s.close() for s in socks], daemon=True,
                         name="capture-close").start()

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
            # Read everything that is ready, then hand it out in time order: on a
            # network-wide capture the sender's and the receiver's copies interleave.
            batch: list[Packet] = []
            for key, _ in self._sel.select(timeout):
                batch += _drain(key.fileobj, key.data, anc)
            batch.sort(key=lambda p: p.ts_ns)
            for pkt in batch:
                if count is not None and seen >= count:
                    return
                seen += 1
                yield pkt


    def pending(self) -> list[Packet]:
        """What the kernel already queued on the sockets, in time order (read at Ctrl-C:
        packets seen before the interrupt are not lost)."""
        assert self._sel is not None
        anc = socket.CMSG_SPACE(16)
        out: list[Packet] = []
        for key in list(self._sel.get_map().values()):
            out += _drain(key.fileobj, key.data, anc, limit=1 << 30)  # type: ignore[arg-type]
        return sorted(out, key=lambda p: p.ts_ns)


def _drain(sock: socket.socket, target: Target, anc: int, limit: int = 256
           ) -> list[Packet]:
    out: list[Packet] = []
    while len(out) < limit:
        try:
            data, ancdata, _flags, addr = sock.recvmsg(BUFSIZE, anc)
        except BlockingIOError:
            break
        if addr[2] == PACKET_OUTGOING and addr[0] == "lo":
            continue  # loopback shows each packet twice; libpcap keeps one
        ts_ns = 0
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                ts_ns = sec * 1_000_000_000 + nsec
        out.append(Packet(target, ts_ns or time.time_ns(), data,
                          addr[2] == PACKET_OUTGOING, len(data), addr[0], addr[2]))
    return out


# -- decoding ----------------------------------------------------------------------

_ICMP_TYPES = {0: "echo-reply", 3: "dest-unreach", 5: "redirect", 8: "echo-request",
               11: "time-exceeded"}


def _tcp_flags(flags: int) -> str:
    names = "FSRPAUEC"
    return "".join(n for i, n in enumerate(names) if flags & (1 << i)) or "."


_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
           28: "AAAA", 33: "SRV", 255: "ANY"}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
           5: "REFUSED"}


def _name(raw) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def decode_dns(payload: bytes) -> dict | None:
    """A DNS message as {id, kind (query/answer), qname, qtype, rcode, answers}."""
    from scapy.layers.dns import DNS

    try:
        msg = DNS(payload)
        q = msg.qd
        qname, qtype = (_name(q.qname), _QTYPES.get(q.qtype, str(q.qtype))) if q else ("", "")
        answers = []
        rr = msg.an
        for i in range(msg.ancount or 0):
            rec = rr[i] if rr is not None else None
            if rec is None:
                break
            rdata = rec.rdata
            answers.append(f"{_QTYPES.get(rec.type, rec.type)} "
                           f"{_name(rdata) if not isinstance(rdata, list) else rdata}")
    except Exception:
        return None
    return {"id": msg.id, "kind": "answer" if msg.qr else "query", "qname": qname,
            "qtype": qtype, "rcode": _RCODES.get(msg.rcode, str(msg.rcode)),
            "answers": answers}


def _dns_info(d: dict) -> str:
    if d["kind"] == "query":
        return f"query {d['qtype']} {d['qname']} id={d['id']}"
    return (f"answer {d['qtype']} {d['qname']} {d['rcode']} "
            f"[{', '.join(d['answers'])}] id={d['id']}")


def _who(addr: str, names: dict[str, str]) -> str:
    name = names.get(addr)
    return f"{name}({addr})" if name else addr


def decode(data: bytes, *, names: dict[str, str] | None = None,
           vxlan_ports: frozenset[int] | None = None, dns: bool = False) -> dict:
    """src, dst, protocol, info (and ports) of an Ethernet frame.

    With `vxlan_ports`, VXLAN packets on those UDP ports are opened: `outer` holds the
    VTEPs (named from `names`, e.g. nodes) and the VNI, the rest describes the inner
    frame (its addresses named after containers). With `dns`, DNS messages on port 53
    are decoded into `dns` and the info."""
    out = _decode(data, dns)
    if vxlan_ports and "_payload" in out and out.get("dport") in vxlan_ports:
        payload = out.pop("_payload", b"")
        if len(payload) >= 8 and payload[0] & 0x08:
            names = names or {}
            vni = int.from_bytes(payload[4:7], "big")
            inner = _decode(payload[8:], dns)
            inner.pop("_payload", None)
            outer = {"src": out["src"], "dst": out["dst"], "vni": vni,
                     "src_name": names.get(out["src"]), "dst_name": names.get(out["dst"])}
            inner["outer"] = outer
            inner["src_name"], inner["dst_name"] = names.get(inner["src"]), \
                names.get(inner["dst"])
            inner["info"] = (f"[VXLAN {_who(out['src'], names)} -> {_who(out['dst'], names)}"
                             f" vni {vni}] {_who(inner['src'], names)} -> "
                             f"{_who(inner['dst'], names)} {inner['protocol']} "
                             f"{inner['info']}").rstrip()
            return inner
    out.pop("_payload", None)
    return out


def _mac(b: bytes) -> str:
    return b.hex(":")


def _fast(data: bytes, dns: bool) -> dict | None:
    """ARP and IPv4 TCP/UDP/ICMP with struct (~100x cheaper than building scapy
    packets, which keeps decoded output up with thousands of packets/s); None for
    everything else, which scapy decodes."""
    if len(data) < 14:
        return None
    etype = int.from_bytes(data[12:14], "big")
    if etype == 0x0806 and len(data) >= 42 and data[14:20] == b"\x00\x01\x08\x00\x06\x04":
        op = int.from_bytes(data[20:22], "big")
        psrc, pdst = socket.inet_ntoa(data[28:32]), socket.inet_ntoa(data[38:42])
        info = (f"who-has {pdst} tell {psrc}" if op == 1
                else f"{psrc} is-at {_mac(data[22:28])}" if op == 2 else f"op {op}")
        return {"src": psrc, "dst": pdst, "protocol": "ARP", "info": info}
    if etype != 0x0800 or len(data) < 34 or data[14] >> 4 != 4:
        return None
    ihl = (data[14] & 0x0F) * 4
    total = int.from_bytes(data[16:18], "big")
    frag = int.from_bytes(data[20:22], "big") & 0x1FFF
    proto = data[23]
    out: dict = {"src": socket.inet_ntoa(data[26:30]), "dst": socket.inet_ntoa(data[30:34]),
                 "protocol": "IPv4", "info": ""}
    l4 = 14 + ihl
    end = min(len(data), 14 + total) if total else len(data)
    if frag:
        out["info"] = f"fragment offset {frag * 8}"
        return out
    if proto == 6 and len(data) >= l4 + 20:
        sport, dport, seq, ack = struct.unpack_from("!HHII", data, l4)
        off = (data[l4 + 12] >> 4) * 4
        flags = data[l4 + 13]
        if dns and 53 in (sport, dport):
            return None
        out.update(protocol="TCP", sport=sport, dport=dport,
                   info=f"{sport} > {dport} [{_tcp_flags(flags)}] seq={seq} ack={ack} "
                        f"len={max(end - l4 - off, 0)}")
        return out
    if proto == 17 and len(data) >= l4 + 8:
        sport, dport, ulen = struct.unpack_from("!HHH", data, l4)
        payload = data[l4 + 8:end]
        out.update(protocol="UDP", sport=sport, dport=dport,
                   info=f"{sport} > {dport} len={max(ulen - 8, 0)}", _payload=payload)
        if 4789 in (sport, dport):
            out["protocol"] = "VXLAN"
        elif 53 in (sport, dport):
            out["protocol"] = "DNS"
            msg = decode_dns(payload) if dns else None
            if msg:
                out.update(dns=msg, info=_dns_info(msg))
        return out
    if proto == 1 and len(data) >= l4 + 8:
        kind = data[l4]
        name = _ICMP_TYPES.get(kind, f"type {kind}")
        if kind in (0, 8):
            ident, seq = struct.unpack_from("!HH", data, l4 + 4)
            name += f" id={ident} seq={seq}"
            out["icmp_id"] = ident
        out.update(protocol="ICMP", info=name)
        return out
    return None


def _decode(data: bytes, dns: bool = False) -> dict:
    fast = _fast(data, dns)
    if fast is not None:
        return fast
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
        if dns and 53 in (t.sport, t.dport) and payload > 2:
            msg = decode_dns(bytes(t.payload)[2:])
            if msg:
                out.update(protocol="DNS", dns=msg, info=_dns_info(msg))
    elif UDP in pkt:
        u = pkt[UDP]
        out.update(protocol="UDP", sport=u.sport, dport=u.dport,
                   info=f"{u.sport} > {u.dport} len={max(u.len - 8, 0) if u.len else 0}")
        if 4789 in (u.sport, u.dport):
            out["protocol"] = "VXLAN"
        elif 53 in (u.sport, u.dport):
            out["protocol"] = "DNS"
            msg = decode_dns(bytes(u.payload)) if dns else None
            if msg:
                out.update(dns=msg, info=_dns_info(msg))
        out["_payload"] = bytes(u.payload)
    elif ICMP in pkt:
        c = pkt[ICMP]
        name = _ICMP_TYPES.get(c.type, f"type {c.type}")
        extra = f" id={c.id} seq={c.seq}" if c.type in (0, 8) else ""
        out.update(protocol="ICMP", info=name + extra)
        if c.type in (0, 8):
            out["icmp_id"] = c.id
    elif IPv6 in pkt and ip.nh == 58:
        from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest

        echo = pkt.getlayer(ICMPv6EchoRequest) or pkt.getlayer(ICMPv6EchoReply)
        if echo is not None:  # (scapy's reply class derives from its request class)
            kind = "echo-request" if echo.type == 128 else "echo-reply"
            out.update(protocol="ICMPv6", info=f"{kind} id={echo.id} seq={echo.seq}",
                       icmp_id=echo.id)
        else:
            out.update(protocol="ICMPv6", info=ip.payload.name.removeprefix("ICMPv6 "))
    else:
        out["info"] = out["info"] or f"proto {ip.proto if IP in pkt else ip.nh}"
    return out


def summary_line(pkt: Packet, fields: dict) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(pkt.ts_ns // 1_000_000_000))
    frac = (pkt.ts_ns % 1_000_000_000) // 1000
    arrow = "out" if pkt.outgoing else "in "
    if "outer" in fields:  # --decap: the info names both flows
        return f"{ts}.{frac:06d} {pkt.target.label} {arrow} {fields['info']}"
    return (f"{ts}.{frac:06d} {pkt.target.label} {arrow} {fields['src']} -> "
            f"{fields['dst']} {fields['protocol']} {fields['info']}".rstrip())


def json_record(pkt: Packet, fields: dict) -> dict:
    return {"time": pkt.ts_ns / 1e9, "interface": pkt.target.label,
            "ifname": pkt.target.ifname,
            "direction": "out" if pkt.outgoing else "in", "length": pkt.orig_len,
            **fields}

