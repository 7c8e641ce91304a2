"""Time expressions in query parameters: RFC 3339, epoch seconds, or relative (``-1h``, ``now-15m``)."""

from __future__ import annotations

import datetime as dt
import re
import time

from stackwatch.errors import BadRequest

__all__ = ["parse_duration", "parse_time", "time_range"]

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
    "y": 365 * 86400 * 1_000_000_000,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> int:
    """``1h30m``, ``15m``, ``500ms`` -> nanoseconds. A bare number means seconds."""
    text = text.strip()
    if not text:
        raise BadRequest("empty duration")
    try:
        return int(float(text) * 1_000_000_000)
    except ValueError:
        pass
    pos = 0
    total = 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(float(m.group(1)) * _UNITS[m.group(2)])
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise BadRequest(f"invalid duration {text!r}: use forms like 30s, 15m, 1h30m, 7d")
    return total


def parse_time(text: str | None, *, now_ns: int | None = None, default_ns: int | None = None) -> int:
    """Parse a point in time to ns since the epoch (UTC)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if text is None or not text.strip():
        if default_ns is None:
            raise BadRequest("missing time")
        return default_ns
    text = text.strip()
    if text == "now":
        return now_ns
    if text.startswith("now-") or text.startswith("now+"):
        sign = -1 if text[3] == "-" else 1
        return now_ns + sign * parse_duration(text[4:])
    if text[0] in "-+":  # relative to now: -1h, +30s, -3600 (seconds)
        sign = -1 if text[0] == "-" else 1
        return now_ns + sign * parse_duration(text[1:])
    if re.fullmatch(r"\d+(\.\d+)?", text):
        value = float(text)
        # Epoch seconds, or ms/us/ns when the number is too large to be seconds.
        if value > 1e17:
            return int(value)
        if value > 1e14:
            return int(value * 1_000)
        if value > 1e11:
            return int(value * 1_000_000)
        return int(value * 1_000_000_000)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"invalid time {text!r}: use RFC 3339 (2026-01-02T15:04:05Z), epoch seconds, or relative (-1h, now-15m)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    frac_ns = 0
    m = re.search(r"\.(\d+)", text)
    if m:
        frac_ns = int(m.group(1)[:9].ljust(9, "0"))
    whole = int(parsed.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + frac_ns


def time_range(start: str | None, end: str | None, *, default_span: str = "1h") -> tuple[int, int]:
    """Resolve a start/end pair; end defaults to now, start to end minus ``default_span``."""
    now = time.time_ns()
    end_ns = parse_time(end, now_ns=now, default_ns=now)
    start_ns = parse_time(start, now_ns=now, default_ns=end_ns - parse_duration(default_span))
    if start_ns >= end_ns:
        raise BadRequest("start must be before end")
    return start_ns, end_ns
