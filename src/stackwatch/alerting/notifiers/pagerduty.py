"""PagerDuty Events API v2: trigger, acknowledge and resolve with a stable ``dedup_key``.

The dedup key is the SHA-256 of the group key, so every notification of one alert group (and its
acknowledgement and resolution) lands on the same PagerDuty incident, across restarts.
"""

from __future__ import annotations

import hashlib
from typing import Any

from stackwatch.alerting.config import Integration
from stackwatch.alerting.notifiers.base import Message, NotifyError, post_json, render
from stackwatch.alerting.notifiers.slack import DEFAULT_TITLE
from stackwatch.alerting.severity import severity_of

__all__ = ["dedup_key", "notify", "payload"]

_PD_SEVERITY = {0: "critical", 1: "error", 2: "warning", 3: "info", 4: "info"}


def dedup_key(group_key: str) -> str:
    return hashlib.sha256(group_key.encode()).hexdigest()


def payload(integration: Integration, message: Message) -> dict[str, Any]:
    d = message.data
    action = str(message.extra.get("action") or ("resolve" if d["Status"] == "resolved" else "trigger"))
    if action not in ("trigger", "acknowledge", "resolve"):
        raise NotifyError(f"unknown PagerDuty event action {action!r}", retryable=False)
    out: dict[str, Any] = {
        "routing_key": integration.params["routing_key"],
        "dedup_key": dedup_key(d["GroupKey"]),
        "event_action": action,
    }
    if action != "trigger":
        return out
    level = severity_of(d["CommonLabels"])
    severity = render(integration, "severity", message, _PD_SEVERITY[level.rank] if level else "error")
    if severity not in ("critical", "error", "warning", "info"):
        severity = "error"
    details: dict[str, Any] = {
        "firing": "\n".join(_line(a) for a in d["Alerts"] if a["Status"] == "firing"),
        "resolved": "\n".join(_line(a) for a in d["Alerts"] if a["Status"] == "resolved"),
        "num_firing": str(sum(a["Status"] == "firing" for a in d["Alerts"])),
        "num_resolved": str(sum(a["Status"] == "resolved" for a in d["Alerts"])),
    }
    for key in integration.params.get("details", {}):
        details[key] = render(integration, f"details.{key}", message)
    body: dict[str, Any] = {
        "summary": render(integration, "description", message, DEFAULT_TITLE.render(d))[:1024],
        "source": render(integration, "source", message, render(integration, "client", message, "Stackwatch")),
        "severity": severity,
        "custom_details": details,
    }
    for key in ("component", "group", "class"):
        value = render(integration, key, message)
        if value:
            body[key] = value
    out["payload"] = body
    out["client"] = render(integration, "client", message, "Stackwatch")
    out["client_url"] = render(integration, "client_url", message, d["ExternalURL"])
    links = [{"href": a["RunbookURL"], "text": "Runbook"} for a in d["Alerts"][:1] if a.get("RunbookURL")]
    links += [dict(link) for link in integration.params.get("links") or []]
    if links:
        out["links"] = links
    if integration.params.get("images"):
        out["images"] = list(integration.params["images"])
    return out


def _line(a: dict[str, Any]) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(a["Labels"].items()))
    summary = a["Annotations"].get("summary", "")
    return f"{labels}{' - ' + summary if summary else ''}"


async def notify(integration: Integration, message: Message) -> int:
    # PagerDuty answers 202 Accepted; 400 is a malformed event (not retryable), 429/5xx are.
    return await post_json(integration, integration.params["url"], payload(integration, message))
