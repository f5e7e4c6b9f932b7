"""The state store: a small key/value interface with atomic transactions.

Keys are '/'-separated paths (`network/<id>`, `ipam/<net>/<ip>`), values are
JSON objects. The interface is what an etcd implementation will provide for
global-scope state: get, put, delete, list by prefix, a transaction with
"must be absent" guards, and change notifications.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnet.cnm.errors import Conflict, NotFound

Value = dict[str, Any]
Watcher = Callable[[str, Value | None], None]


@dataclass
class Txn:
    """Writes applied all together or not at all."""

    puts: dict[str, Value] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # keys that must not exist
    present: list[str] = field(default_factory=list)  # keys that must exist
    leased: list[str] = field(default_factory=list)  # puts tied to the node's lease (etcd)


class KeyExists(Conflict):
    """A Txn's `absent` guard failed: `key` exists (with `value`, when the store read it)."""

    def __init__(self, key: str, value: Value | None = None):
        super().__init__(f"store key {key} already exists")
        self.key = key
        self.value = value


class KeyMissing(NotFound):
    """A Txn's `present` guard failed: `key` does not exist."""

    def __init__(self, key: str):
        super().__init__(f"store key {key} does not exist")
        self.key = key


class Store(ABC):
    def __init__(self) -> None:
        self._watchers: list[tuple[str, Watcher]] = []

    @abstractmethod
    def get(self, key: str) -> Value | None: ...

    @abstractmethod
    def list(self, prefix: str) -> dict[str, Value]: ...

    @abstractmethod
    def _commit(self, txn: Txn) -> None: ...

    def commit(self, txn: Txn) -> None:
        """Apply `txn` atomically; KeyExists when an `absent` key exists, KeyMissing when a
        `present` key does not."""
        self._commit(txn)
        for key, value in txn.puts.items():
            self._notify(key, value)
        for key in txn.deletes:
            self._notify(key, None)

    def put(self, key: str, value: Value) -> None:
        self.commit(Txn(puts={key: value}))

    def delete(self, key: str) -> None:
        self.commit(Txn(deletes=[key]))

    def watch(self, prefix: str, callback: Watcher) -> None:
        self._watchers.append((prefix, callback))

    def _notify(self, key: str, value: Value | None) -> None:
        for prefix, callback in self._watchers:
            if key.startswith(prefix):
                callback(key, value)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class SQLiteStore(Store):
    """Embedded single-host store: one SQLite file under the data root, WAL mode."""

    def __init__(self, path: str):
        super().__init__()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )

    def get(self, key: str) -> Value | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, prefix: str) -> dict[str, Value]:
        # Range scan on the primary key: prefix <= key < prefix + U+FFFF.
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\uffff"),
            ).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def _commit(self, txn: Txn) -> None:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for key in txn.absent:
                    row = cur.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                    if row:
                        raise KeyExists(key, json.loads(row[0]))
                for key in txn.present:
                    if not cur.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone():
                        raise KeyMissing(key)
                cur.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in txn.deletes])
                cur.executemany(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                    [(k, json.dumps(v, separators=(",", ":"))) for k, v in txn.puts.items()],
                )
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

