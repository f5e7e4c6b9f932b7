"""The SQLite store: prefix listing, atomic transactions with guards, persistence."""

import pytest
from cnet.cnm.errors import Conflict
from cnet.cnm.store import SQLiteStore, Txn


def test_prefix_list_and_persistence(tmp_path):
    s = SQLiteStore(str(tmp_path / "db" / "cnet.db"))
    s.put("network/a", {"n": 1})
    s.put("network/b", {"n": 2})
    s.put("networks-not/x", {"n": 3})
    s.put("endpoint/a", {"n": 4})
    assert set(s.list("network/")) == {"network/a", "network/b"}
    s.close()
    s2 = SQLiteStore(str(tmp_path / "db" / "cnet.db"))
    assert s2.get("network/b") == {"n": 2}
    s2.delete("network/b")
    assert s2.get("network/b") is None


def test_transaction_is_all_or_nothing(tmp_path):
    s = SQLiteStore(str(tmp_path / "cnet.db"))
    s.put("ipam/n/10.0.0.2", {"endpoint": "e1"})
    with pytest.raises(Conflict):
        s.commit(Txn(puts={"endpoint/e2": {}, "ipam/n/10.0.0.2": {"endpoint": "e2"}},
                     absent=["ipam/n/10.0.0.2"]))
    assert s.get("endpoint/e2") is None
    assert s.get("ipam/n/10.0.0.2") == {"endpoint": "e1"}


def test_watchers_see_changes(tmp_path):
    s = SQLiteStore(str(tmp_path / "cnet.db"))
    seen = []
    s.watch("endpoint/", lambda k, v: seen.append((k, v)))
    s.commit(Txn(puts={"endpoint/x": {"a": 1}, "network/y": {}}, deletes=["endpoint/z"]))
    assert seen == [("endpoint/x", {"a": 1}), ("endpoint/z", None)]
