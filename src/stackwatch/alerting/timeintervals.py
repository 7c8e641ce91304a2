"""Alertmanager's time intervals: recurring windows of hours, weekdays, days, months, years.

Used by ``mute_time_intervals``/``active_time_intervals`` on routes and by recurring maintenance
windows. Each field is a list of inclusive ranges (``monday:friday``, ``1:5``, ``-1`` for the last
day of the month); a field left out matches everything; ``times`` are ``HH:MM`` with the start
included and the end excluded; all of it is read in ``location`` (an IANA zone, default UTC).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["TimeInterval", "parse_time_interval", "parse_time_intervals"]

_WEEKDAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]
_HHMM = re.compile(r"^(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class TimeInterval:
    times: tuple[tuple[int, int], ...] = ()  # minutes since midnight, [start, end)
    weekdays: tuple[tuple[int, int], ...] = ()  # 0 = Sunday, as Alertmanager counts
    days_of_month: tuple[tuple[int, int], ...] = ()
    months: tuple[tuple[int, int], ...] = ()
    years: tuple[tuple[int, int], ...] = ()
    location: tzinfo = field(default=UTC)
    location_name: str = "UTC"

    def contains(self, at: datetime) -> bool:
        """Whether the instant ``at`` (aware) lies in the interval, read in its location."""
        local = at.astimezone(self.location)
        if self.times:
            minute = local.hour * 60 + local.minute
            if not any(s <= minute < e for s, e in self.times):
                return False
        if self.weekdays:
            wd = (local.weekday() + 1) % 7
            if not any(s <= wd <= e for s, e in self.weekdays):
                return False
        if self.days_of_month:
            last = calendar.monthrange(local.year, local.month)[1]
            ok = False
            for s, e in self.days_of_month:
                s2 = s if s > 0 else last + s + 1
                e2 = e if e > 0 else last + e + 1
                if max(1, s2) <= local.day <= min(last, e2):
                    ok = True
                    break
            if not ok:
                return False
        if self.months and not any(s <= local.month <= e for s, e in self.months):
            return False
        return not (self.years and not any(s <= local.year <= e for s, e in self.years))

    def to_json(self) -> dict[str, Any]:
        def hhmm(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        out: dict[str, Any] = {}
        if self.times:
            out["times"] = [{"start_time": hhmm(s), "end_time": hhmm(e)} for s, e in self.times]
        if self.weekdays:
            out["weekdays"] = [_WEEKDAYS[s] if s == e else f"{_WEEKDAYS[s]}:{_WEEKDAYS[e]}" for s, e in self.weekdays]
        for key in ("days_of_month", "months", "years"):
            ranges = getattr(self, key)
            if ranges:
                out[key] = [str(s) if s == e else f"{s}:{e}" for s, e in ranges]
        out["location"] = self.location_name
        return out


def _minutes(text: Any, where: str) -> int:
    m = _HHMM.match(str(text))
    if not m:
        raise ValueError(f"{where}: {text!r} is not a time of day HH:MM")
    hours, minutes = int(m.group(1)), int(m.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{where}: {text!r} is out of range 00:00..24:00")
    return hours * 60 + minutes


def _named(text: str, names: list[str], first: int, where: str) -> int:
    t = text.strip().lower()
    if t in names:
        return names.index(t) + first
    raise ValueError(f"{where}: unknown name {text!r}")


def _ranges(items: Any, where: str, parse_one: Any, lo: int, hi: int, allow_negative: bool = False
            ) -> tuple[tuple[int, int], ...]:
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a list")
    out = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        text = str(item)
        parts = text.split(":")
        if len(parts) > 2 or not all(p.strip() for p in parts):
            raise ValueError(f"{here}: bad range {text!r}")
        start = parse_one(parts[0], here)
        end = parse_one(parts[-1], here)
        for v in (start, end):
            if allow_negative:
                if not (lo <= abs(v) <= hi) or v == 0:
                    raise ValueError(f"{here}: {v} is out of range (1..{hi} or -{hi}..-1)")
            elif not lo <= v <= hi:
                raise ValueError(f"{here}: {v} is out of range {lo}..{hi}")
        if (start >= 0) == (end >= 0) and start > end:
            raise ValueError(f"{here}: start {start} is after end {end}")
        out.append((start, end))
    return tuple(out)


def _int(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None


def parse_time_interval(raw: Any, where: str = "time_interval") -> TimeInterval:
    """One interval (a mapping with times/weekdays/days_of_month/months/years/location)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = set(raw) - {"times", "weekdays", "days_of_month", "months", "years", "location"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    times: list[tuple[int, int]] = []
    for i, t in enumerate(raw.get("times") or []):
        here = f"{where}.times[{i}]"
        if not isinstance(t, dict) or "start_time" not in t or "end_time" not in t:
            raise ValueError(f"{here}: expected start_time and end_time")
        s, e = _minutes(t["start_time"], here + ".start_time"), _minutes(t["end_time"], here + ".end_time")
        if s >= e:
            raise ValueError(f"{here}: start_time must be before end_time")
        times.append((s, e))
    name = str(raw.get("location") or "UTC")
    if name == "Local":
        loc: tzinfo = datetime.now().astimezone().tzinfo or UTC
    elif name == "UTC":
        loc = UTC
    else:
        try:
            loc = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{where}.location: unknown time zone {name!r}") from None
    return TimeInterval(
        times=tuple(times),
        weekdays=_ranges(raw.get("weekdays") or [], f"{where}.weekdays",
                         lambda t, w: _named(t, _WEEKDAYS, 0, w), 0, 6),
        days_of_month=_ranges(raw.get("days_of_month") or [], f"{where}.days_of_month", _int, 1, 31,
                              allow_negative=True),
        months=_ranges(raw.get("months") or [], f"{where}.months",
                       lambda t, w: _int(t, w) if t.strip().lstrip("-").isdigit() else _named(t, _MONTHS, 1, w),
                       1, 12),
        years=_ranges(raw.get("years") or [], f"{where}.years", _int, 1, 9999),
        location=loc,
        location_name=name,
    )


def parse_time_intervals(raw: Any, where: str) -> tuple[TimeInterval, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a list of intervals")
    return tuple(parse_time_interval(item, f"{where}[{i}]") for i, item in enumerate(raw))


def any_contains(intervals: Sequence[TimeInterval], at: datetime) -> bool:
    return any(i.contains(at) for i in intervals)
