"""Clocks for AuthService tests: wall and monotonic time that only move when a test moves them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clocks:
    """Wall and monotonic time that only move when a test moves them."""

    def __init__(self) -> None:
        self.wall = datetime(2025, 1, 1, tzinfo=UTC)
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds
