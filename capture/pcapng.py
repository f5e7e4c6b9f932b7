"""A minimal pcapng writer: one Interface Description Block per captured interface,
named after its container/interface, nanosecond timestamps, Enhanced Packet Blocks.

tshark, Wireshark and tcpdump (libpcap >= 1.1, one link type) read it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_OPT_COMMENT, _IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 1, 2, 3, 9
_SHB_HARDWARE, _SHB_USERAPPL = 2, 4


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = b"".join(struct.pack("<HH", code, len(val)) + _pad(val) for code, val in opts)
    return out + struct.pack("<HH", 0, 0)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


class PcapngWriter:
    def __init__(self, stream: BinaryIO, application: str = "cnet capture"):
        self.stream = stream
        self._ids: dict[str, int] = {}
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _options(
            [(_SHB_USERAPPL, application.encode())])
        stream.write(_block(_SHB, shb))

    def add_interface(self, name: str, description: str = "",
                      linktype: int = LINKTYPE_ETHERNET) -> int:
        """Declare an interface (once per name); returns its interface id."""
        if name in self._ids:
            return self._ids[name]
        opts = [(_IF_NAME, name.encode()), (_IF_TSRESOL, bytes([9]))]
        if description:
            opts.append((_IF_DESCRIPTION, description.encode()))
        body = struct.pack("<HHI", linktype, 0, SNAPLEN) + _options(opts)
        self.stream.write(_block(_IDB, body))
        self._ids[name] = len(self._ids)
        return self._ids[name]

    def write(self, iface_id: int, ts_ns: int, data: bytes, orig_len: int | None = None,
              comment: str = "") -> None:
        body = struct.pack("<IIIII", iface_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data),
                           len(data) if orig_len is None else orig_len) + _pad(data)
        if comment:
            body += _options([(_OPT_COMMENT, comment.encode())])
        self.stream.write(_block(_EPB, body))

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()
