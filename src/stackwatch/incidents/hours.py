"""Working hours: when incidents of a severity that does not page at night may page people.

P0 and P1 page at any hour; P2 to P4 wait for working hours (the severity table's "pages at
night: no", PagerDuty's low urgency outside support hours). An incident of those severities
that opens at night is opened and tracked at once; its escalation starts when working hours do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["WorkingHours"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class WorkingHours:
    timezone: str = "UTC"
    days: frozenset[int] = frozenset(range(5))  # Monday is 0
    start: time = time(9, 0)
    end: time = time(18, 0)

    @classmethod
    def from_config(cls, raw: Any) -> WorkingHours | None:
        """``incidents.working_hours``: a mapping, or ``always`` (every severity pages at any hour)."""
        from stackwatch.errors import ConfigError

        if raw == "always":
            return None
        if not isinstance(raw, dict):
            raise ConfigError("incidents.working_hours: expected a mapping (timezone, days, start, end) or 'always'")
        unknown = set(raw) - {"timezone", "days", "start", "end"}
        if unknown:
            raise ConfigError(f"incidents.working_hours: unknown key(s) {', '.join(sorted(unknown))}")
        tz = str(raw.get("timezone", "UTC"))
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"incidents.working_hours.timezone: unknown time zone {tz!r}") from None
        days = raw.get("days", list(_DAYS[:5]))
        if not isinstance(days, list) or not days or not all(str(d).lower()[:3] in _DAYS for d in days):
            raise ConfigError(f"incidents.working_hours.days: expected a list of weekdays (mon..sun), got {days!r}")

        def clock(key: str, default: time) -> time:
            text = raw.get(key)
            if text is None:
                return default
            try:
                return time.fromisoformat(str(text))
            except ValueError:
                raise ConfigError(f"incidents.working_hours.{key}: expected HH:MM, got {text!r}") from None

        start, end = clock("start", time(9, 0)), clock("end", time(18, 0))
        if end <= start:
            raise ConfigError("incidents.working_hours: end must be after start")
        return cls(tz, frozenset(_DAYS.index(str(d).lower()[:3]) for d in days), start, end)

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.timezone))
        return local.weekday() in self.days and self.start <= local.time() < self.end

    def next_start(self, at: datetime) -> datetime:
        """The first start of working hours after ``at`` (UTC)."""
        tz = ZoneInfo(self.timezone)
        local = at.astimezone(tz)
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            start = datetime.combine(day, self.start, tzinfo=tz)
            if start > local:
                return start.astimezone(UTC)
        return at + timedelta(days=1)  # unreachable with at least one working day

    def describe(self) -> str:
        days = ", ".join(_DAYS[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"
