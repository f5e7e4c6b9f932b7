"""An undo stack: every step that changed something registers how to take it back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Undo:
    """Use as `with Undo() as undo: ...; undo.push(fn, *args)`.

    If the body raises, the registered steps run in reverse order, best effort
    (a failing step is logged and the others still run), then the error
    propagates. On success nothing runs.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def push(self, fn: Callable[..., Any], *args: Any) -> None:
        self._steps.append((fn, args))

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            for fn, args in reversed(self._steps):
                try:
                    fn(*args)
                except Exception:
                    log.exception("rollback step %s failed", getattr(fn, "__name__", fn))
        self._steps.clear()
        return False
