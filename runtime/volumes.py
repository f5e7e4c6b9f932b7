"""Volumes, local driver: `<data-root>/volumes/<name>/_data`, recorded as `volume/<name>`.

A record is what docker's volume inspect shows: Name, Driver ("local"), Mountpoint,
CreatedAt, Labels, Scope ("local"), Options. Creating an existing name returns it
(docker's idempotent create). A volume in use by a container (`set_users`) cannot be
removed, not even with force (force only forgives a missing volume, as in docker).
Removal renames the directory out of the way first (`.trash-*`, not a valid volume
name), drops the record, then deletes the data: a failed removal never leaves a
record without data. On start, leftover trash is deleted and a recorded volume whose
directory vanished gets an empty one again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.store import Store, Txn

log = logging.getLogger(__name__)

PREFIX = "volume/"
NAME_RX = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
TRASH = ".trash-"
DRIVER = "local"

Users = Callable[[str], list[str]]


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RX.fullmatch(name):
        raise InvalidParameter(
            f'"{name}" includes invalid characters for a local volume name, only '
            f'"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
            "directory, use absolute path"
        )


def disk_usage(path: str) -> int:
    """Bytes of the files under `path` (hard links counted once), without following
    symlinks."""
    total, seen = 0, set()
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(base, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class VolumeStore:
    def __init__(self, root: str, store: Store) -> None:
        self.root = os.path.abspath(root)
        self.store = store
        os.makedirs(self.root, mode=0o701, exist_ok=True)
        os.chmod(self.root, 0o701)
        self._lock = threading.RLock()
        self._users: Users = lambda name: []
        self._restore()

    # -- queries ---------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any]:
        rec = self.store.get(PREFIX + name) if isinstance(name, str) and name else None
        if rec is None:
            raise NotFound(f"get {name}: no such volume")
        return rec

    def list(self) -> list[dict[str, Any]]:
        return sorted(self.store.list(PREFIX).values(), key=lambda v: v["Name"])

    def mountpoint(self, name: str) -> str:
        return self.get(name)["Mountpoint"]

    def users(self, name: str) -> list[str]:
        return list(self._users(name))

    # -- changes ---------------------------------------------------------------------
    def set_users(self, fn: Users) -> None:
        """`fn(volume_name)` -> names of the containers that mount the volume."""
        self._users = fn

    def create(self, name: str | None = None, driver: str = DRIVER,
               labels: dict[str, str] | None = None,
               opts: dict[str, str] | None = None) -> dict[str, Any]:
        driver = driver or DRIVER
        if driver != DRIVER:
            raise InvalidParameter(f'volume driver "{driver}" not found (only "local")')
        if opts:
            raise InvalidParameter(
                "local volume options are not supported: " + ", ".join(sorted(opts)))
        if labels is not None and (not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
            raise InvalidParameter("volume labels must map strings to strings")
        if name:
            check_name(name)
        with self._lock:
            name = name or secrets.token_hex(32)
            existing = self.store.get(PREFIX + name)
            if existing is not None:
                return existing
            vdir = os.path.join(self.root, name)
            data = os.path.join(vdir, "_data")
            rec = {
                "Name": name,
                "Driver": DRIVER,
                "Mountpoint": data,
                "CreatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Labels": dict(labels or {}),
                "Scope": "local",
                "Options": dict(opts or {}),
            }
            os.makedirs(vdir, mode=0o701, exist_ok=True)
            try:
                os.makedirs(data, mode=0o755, exist_ok=True)
                self.store.commit(Txn(puts={PREFIX + name: rec}, absent=[PREFIX + name]))
            except BaseException:
                shutil.rmtree(vdir, ignore_errors=True)
                raise
            return rec

    def remove(self, name: str, force: bool = False) -> None:
        with self._lock:
            try:
                self.get(name)
            except NotFound:
                if force:
                    return
                raise
            users = self.users(name)
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            self._delete(name)

    def prune(self) -> tuple[list[str], int]:
        """Remove every volume no container uses: (names removed, bytes reclaimed)."""
        names, reclaimed = [], 0
        with self._lock:
            for rec in self.list():
                name = rec["Name"]
                if self.users(name):
                    continue
                reclaimed += disk_usage(os.path.join(self.root, name))
                self._delete(name)
                names.append(name)
        return names, reclaimed

    # -- internals ---------------------------------------------------------------------
    def _delete(self, name: str) -> None:
        vdir = os.path.join(self.root, name)
        trash = os.path.join(self.root, TRASH + secrets.token_hex(8))
        moved = False
        if os.path.lexists(vdir):
            os.rename(vdir, trash)
            moved = True
        try:
            self.store.delete(PREFIX + name)
        except BaseException:
            if moved:
                os.rename(trash, vdir)
            raise
        if moved:
            shutil.rmtree(trash, ignore_errors=True)

    def _restore(self) -> None:
        for entry in os.listdir(self.root):
            if entry.startswith(TRASH):
                shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)
        for rec in self.list():
            data = rec["Mountpoint"]
            if not os.path.isdir(data):
                log.warning("volume %s: %s is missing, recreating it empty", rec["Name"], data)
                with contextlib.suppress(OSError):
                    os.makedirs(data, mode=0o755, exist_ok=True)
