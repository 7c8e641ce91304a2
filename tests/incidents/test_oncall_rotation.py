"""Who is on call: rotation arithmetic case by case, across DST changes, and overrides.

Each case gives an instant in UTC (with the local time it is in a comment) and who must hold
the layer then. The instants sit on both sides of hand-offs, and on the DST days of both
hemispheres, where a UTC-based rotation would hand off an hour early or late.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.errors import BadRequest
from stackwatch.incidents.oncall import Override, handoff_instant, on_call, parse_layers, parse_timezone

WEEKLY_BERLIN = {"name": "primary", "participants": ["ann", "bob", "cat"], "rotation": "weekly",
                 "handoff_day": "monday", "handoff_time": "09:00", "start": "2025-01-06"}
DAILY_BERLIN_0230 = {"participants": ["a", "b"], "rotation": "daily", "handoff_time": "02:30", "start": "2025-03-29"}
WEEKLY_NY_FRIDAY = {"participants": ["x", "y"], "rotation": "weekly", "handoff_day": "friday",
                    "handoff_time": "17:00", "start": "2025-03-07"}
TWO_DAY_KOLKATA = {"participants": ["p", "q", "r"], "rotation": "daily", "shift_length": 2,
                   "handoff_time": "09:00", "start": "2025-01-01"}
DAILY_SYDNEY_0230 = {"participants": ["s", "t"], "rotation": "daily", "handoff_time": "02:30", "start": "2025-10-01"}

CASES = [
    # Weekly, Monday 09:00 Berlin.
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-01-06T08:00:00Z", "ann"),  # Mon 09:00 CET, the first hand-off
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-01-06T07:59:59Z", "cat"),  # one second before: the shift before
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-01-12T22:00:00Z", "ann"),  # Sunday night, still ann
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-01-13T07:59:59Z", "ann"),
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-01-13T08:00:00Z", "bob"),
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-01-20T08:00:00Z", "cat"),
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-01-27T08:00:00Z", "ann"),  # wraps around
    ("Europe/Berlin", WEEKLY_BERLIN, "2024-12-30T08:00:00Z", "cat"),  # before the start: rotates backwards
    # Spring forward (Sun 30 Mar 2025): Monday 09:00 is now 07:00 UTC, not 08:00.
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-03-31T06:59:59Z", "cat"),  # 08:59:59 CEST
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-03-31T07:00:00Z", "ann"),  # 09:00 CEST (week 12)
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-03-31T07:30:00Z", "ann"),  # a UTC rotation would still say cat
    # Fall back (Sun 26 Oct 2025): Monday 09:00 is 08:00 UTC again.
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-10-27T07:30:00Z", "cat"),  # 08:30 CET
    ("Europe/Berlin", WEEKLY_BERLIN, "2025-10-27T08:00:00Z", "ann"),  # 09:00 CET (week 42)
    # Daily 02:30 Berlin: on 30 Mar 02:30 does not exist; the hand-off is when clocks reach 03:00.
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-03-29T01:30:00Z", "a"),  # 02:30 CET, the first hand-off
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-03-30T00:59:59Z", "a"),  # 01:59:59 CET
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-03-30T01:00:00Z", "b"),  # 03:00 CEST, right after the jump
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-03-31T00:29:59Z", "b"),  # 02:29:59 CEST
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-03-31T00:30:00Z", "a"),  # 02:30 CEST
    # On 26 Oct 02:30 happens twice: hand off at the first one, never back in the repeated hour.
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-10-26T00:29:59Z", "a"),  # 02:29:59 CEST (day 210)
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-10-26T00:30:00Z", "b"),  # 02:30 CEST (day 211)
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-10-26T01:10:00Z", "b"),  # 02:10 CET, the repeated hour
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-10-26T01:30:00Z", "b"),  # 02:30 CET, the second one
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-10-27T01:29:59Z", "b"),  # 02:29:59 CET next day
    ("Europe/Berlin", DAILY_BERLIN_0230, "2025-10-27T01:30:00Z", "a"),
    # US DST starts Sun 9 Mar 2025: Friday 17:00 New York is 21:00 UTC, no longer 22:00.
    ("America/New_York", WEEKLY_NY_FRIDAY, "2025-03-07T22:00:00Z", "x"),  # 17:00 EST, first hand-off
    ("America/New_York", WEEKLY_NY_FRIDAY, "2025-03-14T20:59:59Z", "x"),  # 16:59:59 EDT
    ("America/New_York", WEEKLY_NY_FRIDAY, "2025-03-14T21:00:00Z", "y"),  # 17:00 EDT
    ("America/New_York", WEEKLY_NY_FRIDAY, "2025-03-14T21:30:00Z", "y"),  # a UTC rotation would say x
    ("America/New_York", WEEKLY_NY_FRIDAY, "2025-03-10T12:00:00Z", "x"),  # mid-week after the change
    # Two-day shifts in a zone with a half-hour offset and no DST.
    ("Asia/Kolkata", TWO_DAY_KOLKATA, "2025-01-01T03:30:00Z", "p"),  # 09:00 IST
    ("Asia/Kolkata", TWO_DAY_KOLKATA, "2025-01-03T03:29:59Z", "p"),  # still day 1 of the shift
    ("Asia/Kolkata", TWO_DAY_KOLKATA, "2025-01-03T03:30:00Z", "q"),
    ("Asia/Kolkata", TWO_DAY_KOLKATA, "2025-01-05T03:30:00Z", "r"),
    ("Asia/Kolkata", TWO_DAY_KOLKATA, "2025-01-07T03:30:00Z", "p"),
    # Southern hemisphere: Sydney springs forward Sun 5 Oct 2025 02:00 -> 03:00.
    ("Australia/Sydney", DAILY_SYDNEY_0230, "2025-10-04T15:59:59Z", "t"),  # 01:59:59 AEST on the 5th (day 3)
    ("Australia/Sydney", DAILY_SYDNEY_0230, "2025-10-04T16:00:00Z", "s"),  # 03:00 AEDT (day 4)
    ("Australia/Sydney", DAILY_SYDNEY_0230, "2025-10-05T15:29:59Z", "s"),  # 02:29:59 AEDT on the 6th
    ("Australia/Sydney", DAILY_SYDNEY_0230, "2025-10-05T15:30:00Z", "t"),  # 02:30 AEDT
]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(("zone", "spec", "at", "expected"), CASES)
def test_rotation(zone: str, spec: dict[str, object], at: str, expected: str) -> None:
    (layer,) = parse_layers([spec])
    answer = on_call(layer, parse_timezone(zone), _at(at))
    assert (answer.user, answer.source) == (expected, "rotation")
    assert answer.shift_start is not None and answer.shift_end is not None
    assert answer.shift_start <= _at(at) < answer.shift_end


def test_shift_bounds_follow_local_time_across_dst() -> None:
    (layer,) = parse_layers([WEEKLY_BERLIN])
    answer = on_call(layer, parse_timezone("Europe/Berlin"), _at("2025-03-27T12:00:00Z"))
    # The shift that spans the spring change starts at 09:00 CET and ends at 09:00 CEST: 167 hours.
    assert answer.user == "cat"
    assert answer.shift_start == _at("2025-03-24T08:00:00Z")
    assert answer.shift_end == _at("2025-03-31T07:00:00Z")
    assert answer.shift_end - answer.shift_start == timedelta(hours=167)


def test_handoff_instant_in_gap_and_fold() -> None:
    berlin = parse_timezone("Europe/Berlin")
    from datetime import date, time

    assert handoff_instant(date(2025, 3, 30), time(2, 30), berlin) == _at("2025-03-30T01:00:00Z")
    assert handoff_instant(date(2025, 10, 26), time(2, 30), berlin) == _at("2025-10-26T00:30:00Z")
    assert handoff_instant(date(2025, 10, 26), time(4, 0), berlin) == _at("2025-10-26T03:00:00Z")


def test_overrides_win_and_the_newest_covering_one_decides() -> None:
    (layer, secondary) = parse_layers([WEEKLY_BERLIN, {**WEEKLY_BERLIN, "name": "secondary",
                                                       "participants": ["dan", "eve"]}])
    berlin = parse_timezone("Europe/Berlin")
    overrides = [
        Override("primary", "zoe", _at("2025-01-07T00:00:00Z"), _at("2025-01-08T00:00:00Z"), id=1),
        Override("primary", "yan", _at("2025-01-07T10:00:00Z"), _at("2025-01-07T12:00:00Z"), id=2),
        Override("secondary", "max", _at("2025-01-01T00:00:00Z"), _at("2025-02-01T00:00:00Z"), id=3),
    ]
    assert on_call(layer, berlin, _at("2025-01-07T09:00:00Z"), overrides).user == "zoe"
    assert on_call(layer, berlin, _at("2025-01-07T11:00:00Z"), overrides).user == "yan"
    answer = on_call(layer, berlin, _at("2025-01-07T12:00:00Z"), overrides)
    assert (answer.user, answer.source, answer.override_id) == ("zoe", "override", 1)
    back = on_call(layer, berlin, _at("2025-01-08T00:00:00Z"), overrides)  # the end is exclusive
    assert (back.user, back.source) == ("ann", "rotation")
    assert on_call(secondary, berlin, _at("2025-01-07T11:00:00Z"), overrides).user == "max"


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], "non-empty list"),
        ([{"participants": []}], "participants"),
        ([{"participants": ["a"], "handoff_time": "25:00"}], "handoff_time"),
        ([{"participants": ["a"], "rotation": "monthly"}], "rotation"),
        ([{"participants": ["a"], "handoff_day": "funday"}], "handoff_day"),
        ([{"participants": ["a"], "start": "soon"}], "start"),
        ([{"participants": ["a"], "start": "0001-01-01"}], "start"),
        ([{"participants": ["a"], "shift_length": 0}], "shift_length"),
        ([{"participants": ["a"], "colour": "red"}], "unknown field"),
        ([{"participants": ["a"]}, {"name": "primary", "participants": ["b"]}], "distinct"),
    ],
)
def test_bad_layers_are_refused_with_the_field_named(layers: list[object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_layers(layers)


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(BadRequest, match="unknown time zone"):
        parse_timezone("Mars/Olympus_Mons")


def test_naive_instant_is_a_programming_error() -> None:
    (layer,) = parse_layers([WEEKLY_BERLIN])
    with pytest.raises(ValueError):
        on_call(layer, parse_timezone("UTC"), datetime(2025, 1, 1))
    assert on_call(layer, parse_timezone("UTC"), datetime(2025, 1, 6, 9, tzinfo=UTC)).user == "ann"


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "Australia/Lord_Howe",
         "America/Santiago", "Pacific/Chatham"]


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    rotation=st.sampled_from(["daily", "weekly"]),
    shift_length=st.integers(1, 3),
    participants=st.integers(1, 4),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 45]),
    day=st.sampled_from(["monday", "wednesday", "sunday"]),
    offset_s=st.integers(0, 10 * 365 * 86400),
)
def test_rotation_invariants(zone: str, rotation: str, shift_length: int, participants: int, hour: int,
                             minute: int, day: str, offset_s: int) -> None:
    """For any instant: it lies in its shift; the shift starts at the hand-off's local time (or the
    first instant after, in a DST gap); the next shift belongs to the next participant; a shift is
    its nominal length give or take the DST change."""
    names = [f"u{i}" for i in range(participants)]
    (layer,) = parse_layers([{"participants": names, "rotation": rotation, "shift_length": shift_length,
                              "handoff_time": f"{hour:02d}:{minute:02d}", "handoff_day": day,
                              "start": "2021-03-01"}])
    tz = parse_timezone(zone)
    at = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=offset_s)
    answer = on_call(layer, tz, at)
    assert answer.shift_start is not None and answer.shift_end is not None
    assert answer.shift_start <= at < answer.shift_end
    nominal = timedelta(days=layer.period_days)
    assert abs((answer.shift_end - answer.shift_start) - nominal) <= timedelta(hours=2)
    local = answer.shift_start.astimezone(tz)
    wall = local.replace(tzinfo=None)
    target = wall.replace(hour=hour, minute=minute, second=0, microsecond=0)
    assert wall >= target and wall - target <= timedelta(hours=1)  # exact, or pushed out of a gap
    if rotation == "weekly":
        assert local.strftime("%A").lower() == day
    before = on_call(layer, tz, answer.shift_start - timedelta(microseconds=1))
    after = on_call(layer, tz, answer.shift_end)
    i = names.index(answer.user or "")
    assert after.user == names[(i + 1) % participants]
    assert before.user == names[(i - 1) % participants]
    assert after.shift_start == answer.shift_end and before.shift_end == answer.shift_start
