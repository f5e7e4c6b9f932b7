"""Object ids (64 hex like Docker's), names and prefix lookup."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from typing import TypeVar

from cnet.cnm.errors import InvalidParameter, NotFound

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
T = TypeVar("T")


def new_id() -> str:
    return secrets.token_hex(32)


def short(object_id: str) -> str:
    return object_id[:12]


def check_name(kind: str, name: str) -> None:
    if not name or not NAME_RE.match(name) or len(name) > 128:
        raise InvalidParameter(
            f'invalid {kind} name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed'
        )


def resolve(kind: str, ref: str, objects: Iterable[T], key: Callable[[T], tuple[str, str]]) -> T:
    """Find an object by full id, exact name, or unique id prefix (Docker's order)."""
    items = list(objects)
    for obj in items:
        oid, name = key(obj)
        if ref == oid or ref == name:
            return obj
    if ref and all(c in "0123456789abcdef" for c in ref):
        matches = [o for o in items if key(o)[0].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(f"{kind} id prefix {ref} matches {len(matches)} {kind}s")
    raise NotFound(f"No such {kind}: {ref}")


STORED_PREFIX_MIN = 12  # as `ls` shows ids


def resolve_stored(ref: str, objects: Iterable[T], key: Callable[[T], tuple[str, str]]
                   ) -> T | None:
    """The object a *stored* reference stands for (a record of an older version keeps
    what the user typed): full id, exact name (the first, as resolve() takes it), or a
    unique id prefix of 12 hex digits or more; None otherwise. Never a shorter prefix:
    a stored short hex key is the name of something deleted since ("db", "cafe"), not
    a reference to whatever's id happens to start so."""
    items = list(objects)
    for obj in items:
        if key(obj)[0] == ref:
            return obj
    for obj in items:
        if key(obj)[1] == ref:
            return obj
    if len(ref) >= STORED_PREFIX_MIN and all(c in "0123456789abcdef" for c in ref):
        matches = [o for o in items if key(o)[0].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
    return None
