"""What the dispatcher tells others: a group it decided to notify, and how a delivery went.

:class:`AlertGroupEvent` is the hand-off to incidents (``Dispatcher.group_listeners``);
:class:`DeliveryResult` is one attempt chain of one notifier, recorded and shown by the API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stackwatch.model.alerts import Alert

__all__ = ["AlertGroupEvent", "DeliveryResult"]


@dataclass
class AlertGroupEvent:
    group_key: str
    receiver: str
    #: The group's labels (the values of the route's ``group_by`` labels).
    labels: dict[str, str]
    alerts: list[Alert]
    status: str  # "firing" | "resolved"
    at: datetime
    #: Alerts that share the configured correlation labels within the window share this key,
    #: across groups and routes; without correlation labels it is the group key.
    correlation_key: str = ""
    #: The route the group belongs to, as its configuration path (``route.routes[0]``).
    route: str = ""
    #: Called by a listener once it has durably recorded the event (the incident manager,
    #: after its transaction): the dispatcher then persists that listeners were told, so a
    #: restart does not tell them again. A crash before that tells them again: at least once.
    recorded: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if not a.resolved(self.at)]

    @property
    def resolved_alerts(self) -> list[Alert]:
        return [a for a in self.alerts if a.resolved(self.at)]


@dataclass
class DeliveryResult:
    receiver: str
    integration: str  # "webhook[0]"
    group_key: str
    status: str  # "success" | "failed"
    attempts: int
    at: datetime
    error: str = ""
    status_code: int | None = None
    alerts: int = 0
    notification_status: str = "firing"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_json(self) -> dict[str, Any]:
        return {
            "receiver": self.receiver,
            "integration": self.integration,
            "group_key": self.group_key,
            "status": self.status,
            "attempts": self.attempts,
            "at": self.at.isoformat(),
            "error": self.error,
            "status_code": self.status_code,
            "alerts": self.alerts,
            "notification_status": self.notification_status,
        }
