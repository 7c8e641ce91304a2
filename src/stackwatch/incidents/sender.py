"""How escalation reaches people: a sender that delivers one page to one named receiver.

The server's alert dispatcher (``Dispatcher.send_to_receiver``) is the real sender: it knows the
configured receivers (Slack, e-mail, webhooks...). :class:`WebhookSender` is a small stand-alone
one that posts JSON to URLs by receiver name: used when no dispatcher is configured
(``incidents.webhooks`` in the server config) and in tests against a recording HTTP receiver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from stackwatch.model.alerts import Alert

__all__ = ["Delivery", "GroupEvent", "PageSender", "WebhookSender", "delivery_json", "make_group_event"]


class PageSender(Protocol):
    """What the escalation engine needs from a notifier (the dispatcher's signature)."""

    def send_to_receiver(self, receiver_name: str, event: Any, extra: dict[str, Any]) -> Sequence[Any]: ...


@dataclass
class GroupEvent:
    """Same fields as the dispatcher's ``AlertGroupEvent``, used when that module is absent."""

    group_key: str
    receiver: str
    labels: dict[str, str]
    alerts: list[Alert]
    status: str
    at: datetime


def make_group_event(group_key: str, receiver: str, labels: dict[str, str], alerts: list[Alert], status: str,
                     at: datetime) -> Any:
    """An ``AlertGroupEvent`` of the alerting package when it is installed, else a :class:`GroupEvent`."""
    try:
        from stackwatch.alerting.events import AlertGroupEvent
    except ImportError:
        return GroupEvent(group_key, receiver, labels, alerts, status, at)
    return AlertGroupEvent(group_key=group_key, receiver=receiver, labels=labels, alerts=alerts, status=status,
                           at=at)


@dataclass
class Delivery:
    receiver: str
    ok: bool
    status_code: int | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def delivery_json(result: Any) -> dict[str, Any]:
    """A delivery result of any sender as JSON for the timeline (dataclass, object or dict)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        raw = dataclasses.asdict(result)
    elif isinstance(result, Mapping):
        raw = dict(result)
    else:
        raw = {k: v for k, v in vars(result).items() if not k.startswith("_")} if hasattr(result, "__dict__") else {
            "result": str(result)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str | int | float | bool) or value is None:
            out[key] = value
        elif isinstance(value, datetime):
            out[key] = value.isoformat()
        else:
            out[key] = str(value)
    return out


def delivered(result: Any) -> bool:
    """Whether a delivery result says it succeeded (``ok`` or ``success``, else no ``error``)."""
    data = delivery_json(result)
    for key in ("ok", "success", "delivered"):
        if key in data:
            return bool(data[key])
    return not data.get("error")


class WebhookSender:
    """Posts a page as JSON (Alertmanager's webhook shape plus ``incident`` and ``ackURL``)."""

    def __init__(self, urls: Mapping[str, str], timeout: float = 10.0) -> None:
        self.urls = dict(urls)
        self.timeout = timeout

    def send_to_receiver(self, receiver_name: str, event: Any, extra: dict[str, Any]) -> list[Delivery]:
        url = self.urls.get(receiver_name)
        if not url:
            return [Delivery(receiver_name, False, error=f"no webhook URL for receiver {receiver_name!r}")]
        body = {
            "version": "4",
            "receiver": receiver_name,
            "status": event.status,
            "groupKey": event.group_key,
            "groupLabels": dict(event.labels),
            "commonLabels": dict(event.labels),
            "alerts": [dict(a.to_json(), status=a.status(event.at)) for a in event.alerts],
            **{k: v for k, v in extra.items()},
        }
        try:
            resp = httpx.post(url, json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            return [Delivery(receiver_name, False, error=f"{type(exc).__name__}: {exc}")]
        ok = resp.status_code < 300
        return [Delivery(receiver_name, ok, resp.status_code, "" if ok else resp.text[:200])]
