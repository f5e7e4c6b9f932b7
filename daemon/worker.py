"""The kernel worker: one thread that runs every controller operation in turn.

pyroute2 handles belong to the thread that opened them, and one operation at a
time keeps the store, the allocators and the kernel consistent without locks.
HTTP threads only parse, submit and wait.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class KernelWorker:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
