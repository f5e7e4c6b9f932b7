"""Entering network namespaces with setns(2).

setns(CLONE_NEWNET) switches only the calling thread, so the daemon uses
`in_netns` on its kernel worker thread for the short moments it must open a
socket or write a sysctl inside a sandbox; the CLI uses `enter_netns` before
exec'ing a command.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns_fd(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def enter_netns(path: str) -> None:
    """Move the calling thread (the whole process if single-threaded) into `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_fd(fd)
    finally:
        os.close(fd)


@contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the body with the calling thread inside the namespace at `path`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(path)
        try:
            yield
        finally:
            setns_fd(home)
    finally:
        os.close(home)


def unshare_net() -> None:
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None
          ) -> None:
    _check(
        _libc.mount(
            src.encode(), target.encode(), fstype.encode() if fstype else None, flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")
