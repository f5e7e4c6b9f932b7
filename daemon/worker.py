"""The kernel worker: one thread that runs every controller operation in turn.

pyroute2 handles belong to the thread that opened them, and one operation at a
time keeps the store, the allocators and the kernel consistent without locks.
HTTP threads only parse, submit and wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class KernelWorker:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., object], *args) -> None:
        """Queue work without waiting (monitor threads, timers); errors are logged."""
        def guarded() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("background task %s failed", getattr(fn, "__name__", fn))

        self._pool.submit(guarded)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
