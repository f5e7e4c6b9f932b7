"""Batched UDP I/O for the resolver's hot path: recvmmsg/sendmmsg through ctypes (Linux).

`Batch` owns preallocated C buffers for `BATCH` datagrams: one struct mmsghdr array to
receive into (each with its own sockaddr_storage and a MAX_QUERY-byte data slot) and one
to send from (each with its own data slot; its msg_name points at the receive slot's
address, so an answer goes back to where its query came from without decoding the
address). The DNS loop is one thread and finishes a batch (receive, answer, send)
before it starts the next, so one `Batch` serves every sandbox of a server.

`open_batch()` returns None where recvmmsg/sendmmsg are missing (not Linux, no libc
symbol); `Batch.recv` raises OSError(ENOSYS) where the kernel lacks them: the server
then falls back to recvfrom/sendto for good.

Field offsets are read from the ctypes structures (x86_64: msghdr 56 bytes, mmsghdr 64)
and the arrays are accessed through integer memoryviews, which costs far less per packet
than ctypes attribute access.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket

BATCH = 64
#: the largest datagram read (and answer sent from a slot; larger ones are sent alone)
SLOT = 4096
NAME = 128  # sizeof(struct sockaddr_storage)

MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_SIZE = ctypes.sizeof(_Mmsghdr)
_U32 = ctypes.sizeof(ctypes.c_uint32)
_PTR = ctypes.sizeof(ctypes.c_void_p)
#: index of msg_namelen, msg_len (as uint32) and msg_name (as pointer) in one entry
NAMELEN = _Msghdr.namelen.offset // _U32
LEN = _Mmsghdr.len.offset // _U32
NAMEPTR = _Msghdr.name.offset // _PTR
STRIDE32 = _SIZE // _U32
STRIDEP = _SIZE // _PTR
_PTRFMT = "Q" if _PTR == 8 else "I"


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                     ctypes.c_void_p]
    recv.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return recv, send


def addr_of(name: memoryview, family: int | None = None):
    """The (host, port[, flowinfo, scope_id]) tuple of a sockaddr_in / sockaddr_in6."""
    fam = int.from_bytes(name[0:2], "little") if family is None else family
    port = int.from_bytes(name[2:4], "big")
    if fam == socket.AF_INET6:
        return (socket.inet_ntop(socket.AF_INET6, name[8:24]), port,
                int.from_bytes(name[4:8], "big"), int.from_bytes(name[24:28], "little"))
    return socket.inet_ntoa(name[4:8]), port


class Batch:
    def __init__(self, recvmmsg, sendmmsg, n: int = BATCH) -> None:
        self.n = n
        self._recvmmsg = recvmmsg
        self._sendmmsg = sendmmsg
        self.rdata = ctypes.create_string_buffer(n * SLOT)
        self.sdata = ctypes.create_string_buffer(n * SLOT)
        self.names = ctypes.create_string_buffer(n * NAME)
        self.riov = (_Iovec * n)()
        self.siov = (_Iovec * n)()
        self.rmsg = (_Mmsghdr * n)()
        self.smsg = (_Mmsghdr * n)()
        rbase, sbase = ctypes.addressof(self.rdata), ctypes.addressof(self.sdata)
        nbase = ctypes.addressof(self.names)
        #: address of each receive slot's sockaddr
        self.name_addr = [nbase + i * NAME for i in range(n)]
        for i in range(n):
            self.riov[i].base, self.riov[i].len = rbase + i * SLOT, SLOT
            self.siov[i].base = sbase + i * SLOT
            h = self.rmsg[i].hdr
            h.name, h.namelen = self.name_addr[i], NAME
            h.iov, h.iovlen = ctypes.addressof(self.riov[i]), 1
            h = self.smsg[i].hdr
            h.iov, h.iovlen = ctypes.addressof(self.siov[i]), 1
        self.raddr = ctypes.addressof(self.rmsg)
        self.saddr = ctypes.addressof(self.smsg)
        #: a pristine receive array: every msg_namelen back to NAME before a recvmmsg
        self._rpristine = bytes(memoryview(self.rmsg).cast("B"))
        self.rmv = memoryview(self.rmsg).cast("B")
        self.r32 = self.rmv.cast("I")
        self.s32 = memoryview(self.smsg).cast("B").cast("I")
        self.sptr = memoryview(self.smsg).cast("B").cast(_PTRFMT)
        self.siovp = memoryview(self.siov).cast("B").cast(_PTRFMT)  # base, len pairs
        self.rbytes = memoryview(self.rdata).cast("B")
        self.sbytes = memoryview(self.sdata).cast("B")
        self.nbytes = memoryview(self.names).cast("B")

    def recv(self, fd: int) -> int:
        """Datagrams received (0: none ready). OSError on any other failure."""
        self.rmv[:] = self._rpristine
        got = self._recvmmsg(fd, self.raddr, self.n, MSG_DONTWAIT, None)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, "recvmmsg: " + errno.errorcode.get(err, str(err)))
        return got

    def send(self, fd: int, count: int) -> int:
        """Send the first `count` prepared entries; how many could not be sent."""
        failed = 0
        start = 0
        send = self._sendmmsg
        while start < count:
            sent = send(fd, self.saddr + start * _SIZE, count - start, MSG_DONTWAIT)
            if sent <= 0:
                if sent < 0 and ctypes.get_errno() == errno.EINTR:
                    continue
                failed += 1  # this one failed, like a sendto raising OSError
                start += 1
            else:
                start += sent
        return failed


def open_batch(n: int = BATCH) -> Batch | None:
    fns = _libc()
    return None if fns is None else Batch(*fns, n=n)
