"""Microsoft Teams incoming webhook: a MessageCard (classic connectors) or an Adaptive Card
(Workflows webhooks, ``card: adaptive`` or ``msteamsv2_configs``)."""

from __future__ import annotations

from typing import Any

from stackwatch.alerting.config import Integration
from stackwatch.alerting.notifiers.base import Message, post_json, render
from stackwatch.alerting.notifiers.slack import DEFAULT_TITLE

__all__ = ["notify", "payload"]

_COLORS = {"firing": "8C1A1A", "resolved": "2DC72D"}


def _body_text(message: Message) -> str:
    lines = []
    for a in message.data["Alerts"]:
        ann = a["Annotations"]
        text = ann.get("summary") or ann.get("description") or a["Labels"].get("alertname", "")
        extra = f" (value {a['Value']})" if a.get("Value") not in (None, "") else ""
        lines.append(f"- **{a['Status']}** {text}{extra}")
    return "\n".join(lines)


def _facts(message: Message) -> list[tuple[str, str]]:
    d = message.data
    facts = [(k, v) for k, v in sorted(d["CommonLabels"].items())]
    return facts[:20]


def _links(message: Message) -> list[tuple[str, str]]:
    d = message.data
    first = d["Alerts"][0] if d["Alerts"] else {}
    return [(name, url) for name, url in (("Runbook", first.get("RunbookURL")), ("Silence", d.get("SilenceURL")),
                                          ("View alert", first.get("AlertURL"))) if url]


def payload(integration: Integration, message: Message) -> dict[str, Any]:
    d = message.data
    title = render(integration, "title", message, DEFAULT_TITLE.render(d))
    text = render(integration, "text", message, _body_text(message))
    if integration.params.get("card") == "adaptive":
        body: list[dict[str, Any]] = [
            {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True,
             "color": "Attention" if d["Status"] == "firing" else "Good"},
            {"type": "TextBlock", "text": text, "wrap": True},
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in _facts(message)]},
        ]
        return {"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                        "version": "1.4", "body": body,
                        "actions": [{"type": "Action.OpenUrl", "title": n, "url": u} for n, u in _links(message)]},
        }]}
    return {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": _COLORS.get(d["Status"], "808080"),
        "summary": render(integration, "summary", message, title),
        "title": title,
        "text": text,
        "sections": [{"facts": [{"name": k, "value": v} for k, v in _facts(message)]}],
        "potentialAction": [{"@type": "OpenUri", "name": n, "targets": [{"os": "default", "uri": u}]}
                            for n, u in _links(message)],
    }


async def notify(integration: Integration, message: Message) -> int:
    return await post_json(integration, integration.params["webhook_url"], payload(integration, message))
