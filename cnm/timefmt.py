"""Timestamps as Docker writes them (RFC 3339, UTC, fractional seconds, `Z`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_FRACTION = re.compile(r"\.(\d{1,9})Z$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(ts: str) -> datetime | None:
    """Accepts 0-9 fractional digits (the shim writes nanoseconds); None if unparsable."""
    if not ts:
        return None
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0") + "Z", ts)
    if "." not in text:
        text = text[:-1] + ".000000Z" if text.endswith("Z") else text
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def epoch(ts: str) -> float:
    dt = parse(ts)
    return dt.timestamp() if dt else 0.0
