"""Incident severities P0-P4, their aliases, and the response SLAs the guides agree on.

Alert rules label severity in many spellings: Prometheus packs say ``critical``/``warning``/
``info``, the guides say P0-P4 or critical/high/medium/low. Everything is mapped onto P0-P4 once,
here, so filters, figures and the "open an incident from P0-P2" rule speak one language.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from stackwatch.errors import BadRequest

__all__ = ["ALIASES", "SEVERITIES", "SLA", "label_severity", "normalize_severity", "parse_severity", "rank",
           "without_level"]

SEVERITIES: Final[tuple[str, ...]] = ("P0", "P1", "P2", "P3", "P4")

ALIASES: Final[dict[str, str]] = {
    "critical": "P0",
    "page": "P0",
    "high": "P1",
    "error": "P1",
    "major": "P1",
    "medium": "P2",
    "warning": "P2",
    "warn": "P2",
    "low": "P3",
    "minor": "P3",
    "info": "P4",
    "informational": "P4",
    "none": "P4",
}

#: Time to acknowledge and to resolve, in minutes (guide 3, "Response SLAs"; P4: next business day).
SLA: Final[dict[str, dict[str, int]]] = {
    "P0": {"acknowledge_minutes": 5, "resolve_minutes": 60},
    "P1": {"acknowledge_minutes": 15, "resolve_minutes": 240},
    "P2": {"acknowledge_minutes": 60, "resolve_minutes": 1440},
    "P3": {"acknowledge_minutes": 1440, "resolve_minutes": 10080},
    "P4": {"acknowledge_minutes": 2880, "resolve_minutes": 20160},
}


def normalize_severity(value: str | None) -> str | None:
    """``"p1"``, ``"P1"``, ``"high"`` → ``"P1"``; None for anything unknown or empty."""
    if not value:
        return None
    text = str(value).strip()
    if text.upper() in SEVERITIES:
        return text.upper()
    try:  # the routing tree's table, when present, so both sides read a label the same way
        from stackwatch.alerting.severity import parse_severity as routing_severity
    except ImportError:
        routing_severity = None
    if routing_severity is not None:
        level = routing_severity(text)
        if level is not None:
            return str(level.code)
    return ALIASES.get(text.lower())


def parse_severity(value: str | None, where: str = "severity") -> str:
    """Like :func:`normalize_severity`, but bad input is a 4xx that lists what is accepted."""
    severity = normalize_severity(value)
    if severity is None:
        raise BadRequest(
            f"{where}: unknown severity {value!r}: use P0-P4 or one of {', '.join(sorted(ALIASES))}"
        )
    return severity


def rank(severity: str) -> int:
    """0 for P0 (most severe) to 4 for P4."""
    return SEVERITIES.index(severity)


def severity_pages(severity: str) -> bool:
    """Whether incidents of this severity page people at any hour (P0, P1) or only in working
    hours (P2-P4), as the alerting severity table says."""
    from stackwatch.alerting.severity import parse_severity as level_of

    found = level_of(severity)
    return True if found is None else found.pages


def label_severity(labels: Mapping[str, str]) -> str | None:
    """An alert's level from its ``severity`` label, else its ``priority`` label, as routing
    reads it (a P1 labelled ``priority`` was routed and notified but opened no incident)."""
    return normalize_severity(labels.get("severity")) or normalize_severity(labels.get("priority"))


def without_level(labels: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """An alert's labels without its level: the same alert at warning and at critical (its
    severity label, so its fingerprint, changes when a threshold rule's level does)."""
    return frozenset((k, str(v)) for k, v in labels.items() if k not in ("severity", "priority"))
