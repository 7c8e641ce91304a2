"""Severities P0-P4, their aliases, and the response each one promises, as data.

Rules label alerts ``severity: critical`` (the Prometheus community's habit) or ``severity: P1``
(the incident-response habit of the guides); both spellings mean the same level here, so routing,
maintenance windows and incidents compare severities without caring how a rule pack spells them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = ["SEVERITIES", "Severity", "at_least", "parse_severity", "severity_of"]


@dataclass(frozen=True)
class Severity:
    """One level: its code, its aliases, and the response time the team commits to."""

    code: str
    rank: int  # 0 is the most severe
    name: str
    aliases: tuple[str, ...]
    #: How soon someone must acknowledge a page of this level.
    ack_within: timedelta | None
    #: How soon work on it must start (the guides' response SLA).
    respond_within: timedelta
    #: Whether it pages a person at any hour (P0/P1) or waits for working hours.
    pages: bool
    description: str


SEVERITIES: tuple[Severity, ...] = (
    Severity("P0", 0, "critical", ("critical", "crit", "sev0", "sev1", "emergency", "page", "fatal"),
             timedelta(minutes=5), timedelta(minutes=15), True,
             "Outage or data loss for many users; all hands."),
    Severity("P1", 1, "high", ("high", "sev2", "major", "error"), timedelta(minutes=15), timedelta(hours=1), True,
             "A core feature is broken or badly degraded for some users."),
    Severity("P2", 2, "medium", ("medium", "sev3", "warning", "warn"), timedelta(hours=4), timedelta(hours=8),
             False, "Degradation with a workaround; fix within the working day."),
    Severity("P3", 3, "low", ("low", "sev4", "minor"), None, timedelta(days=3), False,
             "Minor issue; schedule it."),
    Severity("P4", 4, "info", ("info", "informational", "sev5", "none"), None, timedelta(days=14), False,
             "Informational; no action expected."),
)

_LOOKUP: dict[str, Severity] = {}
for _s in SEVERITIES:
    _LOOKUP[_s.code.lower()] = _s
    _LOOKUP[_s.name] = _s
    for _alias in _s.aliases:
        _LOOKUP.setdefault(_alias, _s)


def parse_severity(text: str | None) -> Severity | None:
    """The level ``text`` names (``P1``, ``p1``, ``high``, ``critical``...), or None if unknown."""
    if not text:
        return None
    return _LOOKUP.get(text.strip().lower())


def severity_of(labels: dict[str, str]) -> Severity | None:
    """The level of an alert, from its ``severity`` (or ``priority``) label."""
    return parse_severity(labels.get("severity") or labels.get("priority"))


def at_least(labels: dict[str, str], threshold: str) -> bool:
    """True when the alert is at least as severe as ``threshold``; an unknown level is not."""
    level = severity_of(labels)
    limit = parse_severity(threshold)
    if limit is None:
        raise ValueError(f"unknown severity {threshold!r}: use P0..P4 or critical/high/medium/low/info")
    return level is not None and level.rank <= limit.rank
