"""NameTable: names, aliases, scoping, families, PTR, case, changes."""

from __future__ import annotations

import pytest
from cnet.dns import wire
from cnet.dns.names import NameTable

A, AAAA, PTR, MX = wire.QTYPE_A, wire.QTYPE_AAAA, wire.QTYPE_PTR, 15
N1 = frozenset({"n1"})
N2 = frozenset({"n2"})
BOTH = frozenset({"n1", "n2"})


@pytest.fixture
def table() -> NameTable:
    t = NameTable()
    t.set_endpoint("n1", "front", "e1", ["c1", "web", "0123456789ab", "host1"],
                   "10.0.0.2/24", "fd00::2/64")
    t.set_endpoint("n1", "front", "e2", ["c2", "web"], "10.0.0.3", None)
    t.set_endpoint("n1", "front", "e3", ["c3", "web"], None, "fd00::3")
    t.set_endpoint("n2", "back", "e9", ["c9", "db"], "10.1.0.9", None)
    return t


def test_every_name_of_an_endpoint(table):
    for name in ("c1", "web", "0123456789ab", "host1", "c1.front", "web.front",
                 "0123456789ab.front", "host1.front"):
        assert "10.0.0.2" in table.resolve(N1, name, A), name
    assert table.resolve(N1, "c1", AAAA) == ["fd00::2"]
    assert table.resolve(N1, "c1.back", A) is None  # wrong network name


def test_shared_alias_returns_every_address(table):
    assert table.resolve(N1, "web", A) == ["10.0.0.2", "10.0.0.3"]
    assert table.resolve(N1, "web", AAAA) == ["fd00::2", "fd00::3"]


def test_network_scoping(table):
    assert table.resolve(N1, "c9", A) is None
    assert table.resolve(N1, "db.back", A) is None
    assert table.resolve(N2, "c1", A) is None
    assert table.resolve(N2, "c9", A) == ["10.1.0.9"]
    assert table.resolve(BOTH, "c9", A) == ["10.1.0.9"]
    assert table.resolve(frozenset(), "c1", A) is None


def test_same_name_on_two_networks_is_the_union():
    t = NameTable()
    t.set_endpoint("n1", "front", "e1", ["c1"], "10.0.0.2", None)
    t.set_endpoint("n2", "back", "e2", ["c1"], "10.1.0.2", None)
    assert sorted(t.resolve(BOTH, "c1", A)) == ["10.0.0.2", "10.1.0.2"]
    assert t.resolve(N2, "c1", A) == ["10.1.0.2"]


def test_known_name_without_that_family_is_empty_not_unknown(table):
    assert table.resolve(N1, "c2", AAAA) == []   # A only
    assert table.resolve(N1, "c3", A) == []      # AAAA only
    assert table.resolve(N1, "c1", MX) == []     # other types of a known name: NODATA
    assert table.resolve(N1, "nope", AAAA) is None


def test_ptr(table):
    assert table.resolve(N1, "2.0.0.10.in-addr.arpa", PTR) == ["c1.front"]
    rev6 = "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"
    assert table.resolve(N1, rev6, PTR) == ["c3.front"]
    assert table.resolve(N1, "9.0.1.10.in-addr.arpa", PTR) is None  # other network
    assert table.resolve(N2, "9.0.1.10.in-addr.arpa.", PTR) == ["c9.back"]
    assert table.resolve(N1, "2.0.0.10.in-addr.arpa", A) == []
    assert table.resolve(N1, "99.0.0.10.in-addr.arpa", PTR) is None


def test_case_insensitive_and_trailing_dot(table):
    assert table.resolve(N1, "C1.", A) == ["10.0.0.2"]
    assert table.resolve(N1, "WeB.FrOnT.", A) == ["10.0.0.2", "10.0.0.3"]
    t = NameTable()
    t.set_endpoint("n1", "Front", "e1", ["MyApp."], "10.0.0.7", None)
    assert t.resolve(N1, "myapp.front", A) == ["10.0.0.7"]


def test_changes_bump_generation_and_notify(table):
    calls = []
    table.subscribe(lambda: calls.append(table.generation))
    g = table.generation
    table.set_endpoint("n1", "front", "e4", ["c4"], "10.0.0.4", None)
    assert table.resolve(N1, "c4", A) == ["10.0.0.4"]
    assert table.remove_endpoint("e2")
    assert table.resolve(N1, "c2", A) is None
    assert table.resolve(N1, "web", A) == ["10.0.0.2"]
    assert table.resolve(N1, "3.0.0.10.in-addr.arpa", PTR) is None
    assert not table.remove_endpoint("e2")  # unknown: no change, no notification
    assert calls == [g + 1, g + 2]


def test_set_replaces_an_endpoint(table):
    table.set_endpoint("n1", "front", "e1", ["c1"], "10.0.0.20", None)
    assert table.resolve(N1, "c1", A) == ["10.0.0.20"]
    assert table.resolve(N1, "host1", A) is None
    assert table.resolve(N1, "c1", AAAA) == []
    assert table.resolve(N1, "2.0.0.10.in-addr.arpa", PTR) is None
    assert table.resolve(N1, "20.0.0.10.in-addr.arpa", PTR) == ["c1.front"]


def test_remove_network(table):
    assert table.remove_network("n1") == 3
    assert table.resolve(N1, "c1", A) is None
    assert table.resolve(N2, "c9", A) == ["10.1.0.9"]
    assert table.remove_network("n1") == 0


@pytest.mark.parametrize("names,ipv4,ipv6", [
    ([], "10.0.0.5", None),
    (["", " "], "10.0.0.5", None),
    (["a" * 64], "10.0.0.5", None),
    (["bad..name"], "10.0.0.5", None),
    (["c5"], "fd00::5", None),
    (["c5"], "10.0.0.5", "10.0.0.6"),
    (["c5"], "not-an-ip", None),
])
def test_bad_input_changes_nothing(table, names, ipv4, ipv6):
    g = table.generation
    with pytest.raises(ValueError):
        table.set_endpoint("n1", "front", "e5", names, ipv4, ipv6)
    assert table.generation == g
    assert table.endpoint("e5") is None
