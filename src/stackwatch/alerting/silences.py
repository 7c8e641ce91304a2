"""Silences and maintenance windows: the two ways people mute alerts on purpose.

A silence mutes whatever its matchers select between ``starts_at`` and ``ends_at``
(Alertmanager's model, same API). A maintenance window is planned work: one-off or recurring (an
Alertmanager time interval with a time zone), and it mutes only alerts below ``pass_severity``,
so a P0 still pages during a database upgrade while its P3 noise does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stackwatch.alerting.matchers import Matcher, matches_all
from stackwatch.alerting.severity import at_least
from stackwatch.alerting.timeintervals import TimeInterval, parse_time_intervals

__all__ = ["MaintenanceWindowSpec", "Silence", "matchers_from_json", "matchers_to_json"]


def matchers_from_json(items: Any, where: str = "matchers") -> list[Matcher]:
    """Alertmanager v2 matchers ``[{"name", "value", "isRegex", "isEqual"}]`` → :class:`Matcher`."""
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a list of matchers")
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("value"), str):
            raise ValueError(f"{where}[{i}]: expected {{name, value, isRegex, isEqual}}")
        regex, equal = bool(m.get("isRegex", False)), bool(m.get("isEqual", True))
        op = ("=~" if equal else "!~") if regex else ("=" if equal else "!=")
        out.append(Matcher.create(m["name"], op, m["value"]))
    return out


def matchers_to_json(matchers: list[Matcher]) -> list[dict[str, Any]]:
    return [m.to_json() for m in matchers]


@dataclass
class Silence:
    id: str
    matchers: list[Matcher]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    updated_at: datetime

    def state(self, now: datetime) -> str:
        if now < self.starts_at:
            return "pending"
        if now >= self.ends_at:
            return "expired"
        return "active"

    def mutes(self, labels: dict[str, str], now: datetime) -> bool:
        return self.state(now) == "active" and matches_all(self.matchers, labels)

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": {"state": self.state(now)},
            "updatedAt": _iso(self.updated_at),
            "matchers": matchers_to_json(self.matchers),
            "startsAt": _iso(self.starts_at),
            "endsAt": _iso(self.ends_at),
            "createdBy": self.created_by,
            "comment": self.comment,
        }


@dataclass
class MaintenanceWindowSpec:
    id: str
    name: str
    matchers: list[Matcher] = field(default_factory=list)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    recurrence: list[dict[str, Any]] | None = None
    pass_severity: str = "P0"
    created_by: str = ""
    comment: str = ""
    intervals: tuple[TimeInterval, ...] = ()

    def __post_init__(self) -> None:
        if self.recurrence is not None and not self.intervals:
            self.intervals = parse_time_intervals(self.recurrence, "recurrence")
        if self.recurrence is None and (self.starts_at is None or self.ends_at is None):
            raise ValueError("a maintenance window needs starts_at and ends_at, or a recurrence")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        at_least({}, self.pass_severity)  # validates the name

    def active(self, now: datetime) -> bool:
        if self.starts_at is not None and now < self.starts_at:
            return False
        if self.ends_at is not None and now >= self.ends_at:
            return False
        return not self.intervals or any(i.contains(now) for i in self.intervals)

    def mutes(self, labels: dict[str, str], now: datetime) -> bool:
        return (self.active(now) and matches_all(self.matchers, labels)
                and not at_least(labels, self.pass_severity))

    def state(self, now: datetime) -> str:
        if self.active(now):
            return "active"
        if self.ends_at is not None and now >= self.ends_at:
            return "expired"
        return "scheduled"

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "matchers": matchers_to_json(self.matchers),
            "starts_at": _iso(self.starts_at) if self.starts_at else None,
            "ends_at": _iso(self.ends_at) if self.ends_at else None,
            "recurrence": self.recurrence,
            "pass_severity": self.pass_severity,
            "created_by": self.created_by,
            "comment": self.comment,
            "state": self.state(now),
        }


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")
