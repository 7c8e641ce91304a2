"""The alert as the rule evaluator hands it to the dispatcher (routing, grouping, notifying).

It is the shape Prometheus posts to Alertmanager (``POST /api/v2/alerts``): labels that give
the alert its identity, annotations that describe it, when it started, when it ends (set on
resolution; a firing alert's ``ends_at`` is a lease the evaluator keeps pushing forward, as
Prometheus does with ``4 x resend delay``), and a link back to its source. One model serves
both the in-process evaluator and alerts received from a real Prometheus over HTTP.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["Alert", "label_fingerprint"]


def label_fingerprint(labels: dict[str, str]) -> str:
    """A stable id for a label set: the same labels always give the same 16 hex digits.

    Order-independent and collision-safe for practical purposes (SHA-256 prefix); used as the
    alert's identity in the state store, the notification log and deduplication keys.
    """
    h = hashlib.sha256()
    for name in sorted(labels):
        h.update(name.encode())
        h.update(b"\xff")
        h.update(str(labels[name]).encode())
        h.update(b"\xff")
    return h.hexdigest()[:16]


@dataclass
class Alert:
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ends_at: datetime | None = None
    generator_url: str = ""
    #: The value of the expression when it was last evaluated (None for alerts from outside).
    value: float | None = None

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def fingerprint(self) -> str:
        return label_fingerprint(self.labels)

    def resolved(self, at: datetime | None = None) -> bool:
        """True once ``ends_at`` has passed (at ``at``, default now)."""
        return self.ends_at is not None and self.ends_at <= (at or datetime.now(UTC))

    def status(self, at: datetime | None = None) -> str:
        return "resolved" if self.resolved(at) else "firing"

    def to_json(self) -> dict[str, Any]:
        """Alertmanager's v2 API shape (``startsAt``/``endsAt`` in RFC 3339)."""
        out: dict[str, Any] = {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": self.starts_at.isoformat().replace("+00:00", "Z"),
            "endsAt": self.ends_at.isoformat().replace("+00:00", "Z") if self.ends_at else "0001-01-01T00:00:00Z",
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }
        return out
