"""Generic webhook: Alertmanager's webhook JSON (version 4), so existing receivers work unchanged."""

from __future__ import annotations

from typing import Any

from stackwatch.alerting.config import Integration
from stackwatch.alerting.notifiers.base import Message, post_json

__all__ = ["notify", "payload"]


def _alert_json(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": a["Status"],
        "labels": a["Labels"],
        "annotations": a["Annotations"],
        "startsAt": a["StartsAt"],
        "endsAt": a["EndsAt"],
        "generatorURL": a["GeneratorURL"],
        "fingerprint": a["Fingerprint"],
    }


def payload(message: Message, max_alerts: int = 0) -> dict[str, Any]:
    """The body Alertmanager posts: version, groupKey, status, receiver, labels, alerts..."""
    d = message.data
    alerts = [_alert_json(a) for a in d["Alerts"]]
    truncated = 0
    if max_alerts and len(alerts) > max_alerts:
        truncated = len(alerts) - max_alerts
        alerts = alerts[:max_alerts]
    return {
        "receiver": d["Receiver"],
        "status": d["Status"],
        "alerts": alerts,
        "groupLabels": d["GroupLabels"],
        "commonLabels": d["CommonLabels"],
        "commonAnnotations": d["CommonAnnotations"],
        "externalURL": d["ExternalURL"],
        "version": "4",
        "groupKey": d["GroupKey"],
        "truncatedAlerts": truncated,
    }


async def notify(integration: Integration, message: Message) -> int:
    body = payload(message, integration.params["max_alerts"])
    # Fields a direct send adds (escalation: incident, ackURL) ride along; Alertmanager's own
    # receivers ignore keys they do not know.
    for key, value in message.extra.items():
        body.setdefault(key, value)
    return await post_json(integration, integration.params["url"], body)
