"""Gratuitous ARP: tell the hosts on a bridge that an address now has a MAC.

When a remote endpoint appears on an overlay, a container that was already trying to
reach its address holds an INCOMPLETE neighbour entry and asks again only every
retrans_time (1 s by default). An unsolicited ARP announcing the new binding updates
such waiting entries at once (Linux accepts it for entries it already has), so traffic
flows as soon as the peer is programmed instead of up to a second later.
"""

from __future__ import annotations

import socket
import struct

from cnet.cnm.osl import nsenter

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _mac(text: str) -> bytes:
    return bytes(int(b, 16) for b in text.split(":"))


def announce(netns_path: str, ifname: str, ip: str, mac: str) -> None:
    """Send one gratuitous ARP request (sender = target = `ip`, from `mac`) out of
    `ifname` inside `netns_path`; a bridge floods it to all its ports."""
    sha, spa = _mac(mac), socket.inet_aton(ip)
    frame = (BROADCAST + sha + struct.pack("!H", ETH_P_ARP)
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet/IPv4, request
             + sha + spa + b"\x00" * 6 + spa)
    with nsenter.in_netns(netns_path):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind((ifname, 0))
        sock.send(frame)
