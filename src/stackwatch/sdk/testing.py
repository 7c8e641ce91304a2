"""Helpers for the tests of apps that use the SDK.

``capture_logs()`` collects the events the SDK would write and ship (the same dicts: redacted,
with ``context``, ``request_id``, ``trace_id``...), so a test asserts on what production would
see instead of on formatted text::

    from stackwatch.sdk.testing import capture_logs

    def test_signup_logs_the_event(client):
        with capture_logs() as logs:
            client.post("/signup", json={"email": "ann@example.com"})
        event = next(e for e in logs if e["message"] == "Business event: signup")
        assert event["context"]["plan"] == "pro"
        assert "ann@example.com" not in str(event)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from stackwatch.sdk.logging import TRACE, EventBuilder, current_builder, install_trace_level

__all__ = ["capture_logs"]


class _CaptureHandler(logging.Handler):
    def __init__(self, builder: EventBuilder, events: list[dict[str, Any]]) -> None:
        super().__init__()
        self.builder = builder
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(self.builder.build(record))


@contextmanager
def capture_logs(level: int | str = TRACE, logger: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Collect the SDK's log events emitted inside the block; yields the (growing) list.

    Works with or without ``init()`` (before it, default settings: redaction on, service
    ``app``). ``level``: the lowest level captured; the logger's level is lowered for the
    block if needed and restored after. ``logger``: capture one logger (and its children)
    instead of the root.
    """
    install_trace_level()
    events: list[dict[str, Any]] = []
    handler = _CaptureHandler(current_builder(), events)
    target = logging.getLogger(logger)
    number = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    handler.setLevel(number)
    previous = target.level
    if target.getEffectiveLevel() > number:
        target.setLevel(number)
    target.addHandler(handler)
    try:
        yield events
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)
