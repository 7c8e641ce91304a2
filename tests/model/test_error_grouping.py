"""Grouping of error events into issues, titles and culprits, as data: each case is an event and
what grouping must say about it; pairs say which events share an issue and which do not."""

from __future__ import annotations

from typing import Any

import pytest

from stackwatch.model.errors import (
    culprit,
    event_id,
    event_timestamp,
    fingerprint,
    group,
    normalize_level,
    normalize_message,
    title,
)


def frame(module: str, function: str, lineno: int = 1, in_app: bool | None = True, **extra: Any) -> dict[str, Any]:
    f: dict[str, Any] = {"module": module, "function": function, "lineno": lineno, "filename": module.replace(".", "/") + ".py"}
    if in_app is not None:
        f["in_app"] = in_app
    f.update(extra)
    return f


def exc_event(kind: str, value: str, frames: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    exc: dict[str, Any] = {"type": kind, "value": value}
    if frames is not None:
        exc["stacktrace"] = {"frames": frames}
    return {"exception": {"values": [exc]}, **extra}


APP_FRAMES = [frame("django.core.handlers", "inner", in_app=False), frame("shop.views", "checkout", 10),
              frame("shop.payments", "charge", 42)]

# (event, variant, components)
CASES: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("in-app frames only, no line numbers", exc_event("ValueError", "bad amount 17", APP_FRAMES), "stacktrace",
     ["ValueError", "shop.views.checkout", "shop.payments.charge"]),
    ("no frame in-app: all frames", exc_event("KeyError", "'x'", [frame("lib.a", "f", in_app=False),
                                                                  frame("lib.b", "g", in_app=None)]),
     "stacktrace", ["KeyError", "lib.a.f", "lib.b.g"]),
    ("no frames: type and normalised message", exc_event("TimeoutError", "timed out after 30.5s to 10.0.0.7:5432"),
     "exception", ["TimeoutError", "timed out after <int>s to <ip>"]),
    ("message template wins over the formatted text",
     {"logentry": {"message": "Order %s failed for %s", "params": ["17", "bob"], "formatted": "Order 17 failed for bob"}},
     "message", ["Order %s failed for %s"]),
    ("plain message normalised", {"message": "user 3fa85f64-5717-4562-b3fc-2c963f66afa6 hit quota at 0xdeadbeef"},
     "message", ["user <uuid> hit quota at <hex>"]),
    ("custom fingerprint", exc_event("ValueError", "x", APP_FRAMES, fingerprint=["payments", "stripe-down"]),
     "custom", ["payments", "stripe-down"]),
    ("custom fingerprint with {{ default }}", exc_event("ValueError", "x", APP_FRAMES, fingerprint=["tenant-a", "{{ default }}"]),
     "custom", ["tenant-a", "ValueError", "shop.views.checkout", "shop.payments.charge"]),
    ("{{default}} alone is the default grouping", exc_event("ValueError", "x", APP_FRAMES, fingerprint=["{{default}}"]),
     "stacktrace", ["ValueError", "shop.views.checkout", "shop.payments.charge"]),
    ("chained exceptions: every exception of the chain",
     {"exception": {"values": [{"type": "KeyError", "stacktrace": {"frames": [frame("shop.cache", "get")]}},
                               {"type": "RuntimeError", "value": "lookup failed",
                                "stacktrace": {"frames": [frame("shop.views", "show")]}}]}},
     "stacktrace", ["KeyError", "shop.cache.get", "RuntimeError", "shop.views.show"]),
    ("message with attached thread stack",
     {"message": "slow", "threads": {"values": [{"current": True, "stacktrace": {"frames": [frame("w.jobs", "run")]}}]}},
     "stacktrace", ["w.jobs.run"]),
    ("browser frames without module: file name without query", exc_event(
        "TypeError", "x is undefined",
        [{"filename": "https://cdn.example.com/js/app.min.js?v=123", "function": "render", "in_app": True}]),
     "stacktrace", ["TypeError", "app.min.js.render"]),
    ("nothing to group by", {}, "fallback", ["<no grouping information>"]),
]


@pytest.mark.parametrize(("name", "event", "variant", "components"), CASES, ids=[c[0] for c in CASES])
def test_grouping_components(name: str, event: dict[str, Any], variant: str, components: list[str]) -> None:
    result = group(event)
    assert (result.variant, result.components) == (variant, components)
    assert len(result.hash) == 32


SAME = [
    ("line numbers and values differ", exc_event("ValueError", "bad amount 17", APP_FRAMES),
     exc_event("ValueError", "bad amount 99", [frame("django.core.handlers", "inner", 5, in_app=False),
                                               frame("shop.views", "checkout", 11), frame("shop.payments", "charge", 57)])),
    ("library frames differ, in-app frames equal", exc_event("ValueError", "x", APP_FRAMES),
     exc_event("ValueError", "x", [frame("flask.app", "dispatch", in_app=False), *APP_FRAMES[1:]])),
    ("numbers in messages", exc_event("IOError", "disk 3 failed after 12 retries"),
     exc_event("IOError", "disk 7 failed after 2 retries")),
    ("template params", {"logentry": {"message": "Login failed for %s", "params": ["a"]}},
     {"logentry": {"message": "Login failed for %s", "params": ["b"]}}),
    ("emails in messages", {"message": "no account for ann@example.com"}, {"message": "no account for bob@example.org"}),
    ("memory addresses", exc_event("AttributeError", "<Foo object at 0x7f3a2c> has no x"),
     exc_event("AttributeError", "<Foo object at 0x7f99aa> has no x")),
]

DIFFERENT = [
    ("different exception types", exc_event("ValueError", "x", APP_FRAMES), exc_event("TypeError", "x", APP_FRAMES)),
    ("different in-app function", exc_event("ValueError", "x", APP_FRAMES),
     exc_event("ValueError", "x", [*APP_FRAMES[:2], frame("shop.payments", "refund")])),
    ("different messages", {"message": "cache miss"}, {"message": "cache full"}),
    ("custom fingerprint splits", exc_event("ValueError", "x", APP_FRAMES, fingerprint=["a"]),
     exc_event("ValueError", "x", APP_FRAMES, fingerprint=["b"])),
    ("custom equal to default components is still its own issue",
     exc_event("ValueError", "x", APP_FRAMES, fingerprint=["ValueError", "shop.views.checkout", "shop.payments.charge"]),
     exc_event("ValueError", "x", APP_FRAMES)),
]


@pytest.mark.parametrize(("name", "a", "b"), SAME, ids=[c[0] for c in SAME])
def test_same_issue(name: str, a: dict[str, Any], b: dict[str, Any]) -> None:
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize(("name", "a", "b"), DIFFERENT, ids=[c[0] for c in DIFFERENT])
def test_different_issues(name: str, a: dict[str, Any], b: dict[str, Any]) -> None:
    assert fingerprint(a) != fingerprint(b)


TITLES = [
    (exc_event("ValueError", "bad amount\nsecond line", APP_FRAMES), "ValueError: bad amount", "shop.payments in charge"),
    (exc_event("StopIteration", "", APP_FRAMES), "StopIteration", "shop.payments in charge"),
    (exc_event("ValueError", "x", APP_FRAMES, transaction="/checkout"), "ValueError: x", "/checkout"),
    ({"logentry": {"message": "Order %s failed", "params": ["17"]}}, "Order 17 failed", ""),
    ({"message": "m" * 300}, "m" * 199 + "…", ""),
    ({"exception": {"values": [{"type": "KeyError", "value": "'a'"}, {"type": "RuntimeError", "value": "wrapped"}]}},
     "RuntimeError: wrapped", ""),
    ({}, "<unlabeled event>", ""),
]


@pytest.mark.parametrize(("event", "expected_title", "expected_culprit"), TITLES)
def test_titles_and_culprits(event: dict[str, Any], expected_title: str, expected_culprit: str) -> None:
    assert title(event) == expected_title
    assert culprit(event) == expected_culprit


@pytest.mark.parametrize(
    ("raw", "level"),
    [("warn", "warning"), ("WARNING", "warning"), ("critical", "fatal"), ("error", "error"), (40, "error"),
     (10, "debug"), ("nonsense", "error"), (None, "error")],
)
def test_levels(raw: Any, level: str) -> None:
    assert normalize_level(raw) == level


def test_message_normalisation_keeps_words() -> None:
    assert normalize_message("cafe add1 failed") == "cafe add1 failed"
    assert normalize_message("at 2024-05-01T12:00:00Z via https://x.io/a?b=1") == "at <date> via <url>"


def test_timestamps_and_event_ids() -> None:
    now = 1_800_000_000.0
    assert event_timestamp({"timestamp": now - 5}, now) == now - 5
    assert event_timestamp({"timestamp": "2027-01-15T06:00:00Z"}, now) == now - 2 * 3600
    assert event_timestamp({"timestamp": now + 3600}, now) == now  # a clock from the future
    assert event_timestamp({"timestamp": "garbage"}, now) == now
    assert event_timestamp({"timestamp": now - 90 * 86400}, now) == now  # older than the 30-day horizon
    assert event_id("3FA85F64-5717-4562-B3FC-2C963F66AFA6") == "3fa85f6457174562b3fc2c963f66afa6"
    assert len(event_id("nope")) == 32 and event_id("nope") != event_id("nope")
