"""Lookups of stored references (records of older versions keep what the user typed)."""

from __future__ import annotations

from cnet.cnm import ids

NETS = [("0123456789abcdef" * 4, "web"), ("cafe" + "0" * 60, "db"),
        ("cafe1" + "1" * 59, "cafe")]


def _find(ref: str):
    return ids.resolve_stored(ref, NETS, lambda n: n)


def test_full_id_then_exact_name():
    assert _find(NETS[0][0]) == NETS[0]
    assert _find("db") == NETS[1]
    assert _find("cafe") == NETS[2]  # the name, not the networks whose id starts "cafe"


def test_long_prefix_only():
    assert _find("0123456789ab") == NETS[0]  # as `network ls` shows it
    assert _find("0123") is None  # a deleted network's name, not a reference
    assert _find("cafe00000000") == NETS[1]
    assert _find("cafe") == NETS[2]
    assert _find("beef") is None and _find("") is None


def test_ambiguous_long_prefix_is_none():
    twins = [("a" * 12 + "0" * 52, "x"), ("a" * 12 + "1" * 52, "y")]
    assert ids.resolve_stored("a" * 12, twins, lambda n: n) is None
