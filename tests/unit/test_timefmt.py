from cnet.cnm import timefmt


def test_parse_accepts_nanoseconds_micro_and_none():
    a = timefmt.parse("2026-11-28T20:42:23.109905429Z")
    b = timefmt.parse("2026-11-28T20:42:23.109905Z")
    assert a == b and a is not None and a.microsecond == 109905
    assert timefmt.parse("2026-11-28T20:42:23Z").second == 23
    assert timefmt.parse("garbage") is None and timefmt.epoch("") == 0.0
    assert timefmt.parse(timefmt.now()) is not None
