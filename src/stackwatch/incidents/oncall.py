"""On-call rotation arithmetic: who holds a layer of a schedule at an instant.

A layer rotates its participants, in order, at a wall-clock hand-off time in the schedule's
time zone: every day (``daily``) or every week on a weekday (``weekly``), optionally every
``shift_length`` days or weeks. Hand-offs follow the local clock, not UTC, because that is how
teams agree on them ("Monday 09:00 Berlin time"), so across a DST change a shift is an hour
shorter or longer. Two edge cases are settled here:

* a hand-off time that does not exist on the day the clocks go forward (02:30 in a 02:00→03:00
  jump) happens at the first instant the local clock reads at least that time (03:00);
* a hand-off time that exists twice on the day the clocks go back happens at its first
  occurrence, and the repeated hour does not hand back.

Overrides win over the rotation: the most recently created override covering the instant and
the layer decides. Pure functions over plain data, so the rules can be tested case by case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stackwatch.errors import BadRequest

__all__ = [
    "WEEKDAYS",
    "Layer",
    "OnCall",
    "Override",
    "handoff_instant",
    "on_call",
    "parse_layers",
    "parse_timezone",
]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_LAYER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Layer:
    name: str
    participants: tuple[str, ...]
    rotation: str = "weekly"
    shift_length: int = 1
    handoff_time: time = time(9, 0)
    handoff_day: int = 0  # Monday
    start: date = date(2024, 1, 1)

    @property
    def period_days(self) -> int:
        return self.shift_length * (7 if self.rotation == "weekly" else 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "participants": list(self.participants),
            "rotation": self.rotation,
            "shift_length": self.shift_length,
            "handoff_time": self.handoff_time.strftime("%H:%M"),
            "handoff_day": WEEKDAYS[self.handoff_day],
            "start": self.start.isoformat(),
        }


@dataclass(frozen=True)
class Override:
    layer: str
    user: str
    start: datetime
    end: datetime
    id: int = 0


@dataclass(frozen=True)
class OnCall:
    """The answer to "who is on call": the person, why (rotation or override) and until when."""

    layer: str
    user: str | None
    source: str
    shift_start: datetime | None = None
    shift_end: datetime | None = None
    override_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "user": self.user,
            "source": self.source,
            "shift_start": _iso(self.shift_start),
            "shift_end": _iso(self.shift_end),
            "override_id": self.override_id,
        }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'") from None


def _parse_layer(raw: Any, index: int) -> Layer:
    where = f"layers[{index}]"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: expected an object")
    known = {"name", "participants", "rotation", "shift_length", "handoff_time", "handoff_day", "start"}
    unknown = set(raw) - known
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = str(raw.get("name") or ("primary" if index == 0 else "secondary" if index == 1 else ""))
    if not _LAYER_NAME.match(name):
        raise BadRequest(f"{where}.name: {name!r} is not a valid layer name (letters, digits, '_.-')")
    participants = raw.get("participants")
    if not isinstance(participants, list) or not participants or not all(
        isinstance(p, str) and p.strip() for p in participants
    ):
        raise BadRequest(f"{where}.participants: expected a non-empty list of user names")
    rotation = str(raw.get("rotation", "weekly")).lower()
    if rotation not in ("daily", "weekly"):
        raise BadRequest(f"{where}.rotation: expected 'daily' or 'weekly', got {rotation!r}")
    shift_length = raw.get("shift_length", 1)
    if not isinstance(shift_length, int) or isinstance(shift_length, bool) or not 1 <= shift_length <= 366:
        raise BadRequest(f"{where}.shift_length: expected an integer from 1 to 366")
    hhmm = _HHMM.match(str(raw.get("handoff_time", "09:00")))
    if not hhmm:
        raise BadRequest(f"{where}.handoff_time: expected HH:MM (24-hour), got {raw.get('handoff_time')!r}")
    day = str(raw.get("handoff_day", "monday")).lower()
    if day not in WEEKDAYS:
        raise BadRequest(f"{where}.handoff_day: expected a weekday name, got {raw.get('handoff_day')!r}")
    try:
        start = date.fromisoformat(str(raw.get("start", "2024-01-01")))
    except ValueError:
        raise BadRequest(f"{where}.start: expected a date YYYY-MM-DD, got {raw.get('start')!r}") from None
    if not 1970 <= start.year <= 2200:
        raise BadRequest(f"{where}.start: {start} is outside the years 1970 to 2200")
    return Layer(
        name=name,
        participants=tuple(p.strip() for p in participants),
        rotation=rotation,
        shift_length=shift_length,
        handoff_time=time(int(hhmm.group(1)), int(hhmm.group(2))),
        handoff_day=WEEKDAYS.index(day),
        start=start,
    )


def parse_layers(raw: Any) -> list[Layer]:
    """Validate a schedule's layers (a 4xx names the bad field); names must be distinct."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest("layers: expected a non-empty list (e.g. a 'primary' and a 'secondary' layer)")
    layers = [_parse_layer(item, i) for i, item in enumerate(raw)]
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise BadRequest(f"layers: names must be distinct, got {names}")
    return layers


def _wall(t: datetime, tz: ZoneInfo) -> datetime:
    return t.astimezone(tz).replace(tzinfo=None, fold=0)


def handoff_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of the hand-off at local time ``at`` on ``day`` (see the module docs)."""
    wall = datetime.combine(day, at)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(first, tz) == wall:
        # Exists (once, or twice: fold=0 is the first occurrence, unless fold=1 is earlier).
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        return min(first, second) if _wall(second, tz) == wall else first
    # In a gap: the first instant whose wall-clock reading is >= wall, found by bisection
    # between the two readings of the non-existent time (at most a few hours apart).
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = first
    if lo > hi:
        lo, hi = hi, lo
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if _wall(mid, tz) >= wall:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0) if _wall(hi.replace(microsecond=0), tz) >= wall else hi


def _shift_day(layer: Layer, at: datetime, tz: ZoneInfo) -> date:
    """The local date of the hand-off that began the shift containing ``at``."""
    day = at.astimezone(tz).date()
    if layer.rotation == "weekly":
        day -= timedelta(days=(day.weekday() - layer.handoff_day) % 7)
    if at < handoff_instant(day, layer.handoff_time, tz):
        day -= timedelta(days=7 if layer.rotation == "weekly" else 1)
    return day


def _epoch(layer: Layer) -> date:
    if layer.rotation == "weekly":
        return layer.start - timedelta(days=(layer.start.weekday() - layer.handoff_day) % 7)
    return layer.start


def on_call(layer: Layer, tz: ZoneInfo, at: datetime, overrides: list[Override] | tuple[Override, ...] = ()) -> OnCall:
    """Who holds ``layer`` at instant ``at`` (aware), overrides first."""
    if at.tzinfo is None:
        raise ValueError("on_call needs an aware datetime")
    covering = [o for o in overrides if o.layer == layer.name and o.start <= at < o.end]
    if covering:
        winner = max(covering, key=lambda o: (o.id, o.start))
        return OnCall(layer.name, winner.user, "override", winner.start, winner.end, winner.id)
    step = 7 if layer.rotation == "weekly" else 1
    day = _shift_day(layer, at, tz)
    # Days since the epoch's hand-off, in whole steps; then whole shifts of shift_length steps.
    steps = (day - _epoch(layer)).days // step
    shift = steps // layer.shift_length
    user = layer.participants[shift % len(layer.participants)]
    first_day = _epoch(layer) + timedelta(days=shift * layer.period_days)
    start = handoff_instant(first_day, layer.handoff_time, tz)
    end = handoff_instant(first_day + timedelta(days=layer.period_days), layer.handoff_time, tz)
    return OnCall(layer.name, user, "rotation", start, end)
