"""Watches shim processes (pidfds in one epoll) and reports when one exits.

The shims are not cnetd's children (they daemonize so containers survive
cnetd), so waitpid cannot be used; a pidfd becomes readable when its process
exits, whoever its parent is.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class ShimMonitor:
    def __init__(self, on_exit: Callable[[str], None]):
        self._on_exit = on_exit
        self._ep = select.epoll()
        self._fds: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="shim-monitor", daemon=True)
        self._thread.start()

    def watch(self, container_id: str, shim_pid: int) -> None:
        try:
            fd = os.pidfd_open(shim_pid)
        except ProcessLookupError:
            self._on_exit(container_id)
            return
        with self._lock:
            self._fds[fd] = container_id
        self._ep.register(fd, select.EPOLLIN)

    def _run(self) -> None:
        while True:
            for fd, _ in self._ep.poll():
                if fd == self._wake_r:
                    return
                with self._lock:
                    cid = self._fds.pop(fd, None)
                self._ep.unregister(fd)
                os.close(fd)
                if cid is not None:
                    try:
                        self._on_exit(cid)
                    except Exception:
                        log.exception("exit handling of %s failed", cid)

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
