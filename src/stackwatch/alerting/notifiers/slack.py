"""Slack incoming webhook with a Block Kit message: severity, value, runbook and silence links.

``title`` and ``text`` templates replace the header and the body; without them each alert gets a
section with its summary, value and links, and the message buttons open the runbook, a silence
for the group and the alert itself.
"""

from __future__ import annotations

from typing import Any

from stackwatch.alerting.config import Integration
from stackwatch.alerting.notifiers.base import Message, post_json, render
from stackwatch.alerting.template import Template

__all__ = ["DEFAULT_TITLE", "notify", "payload"]

DEFAULT_TITLE = Template(
    '[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] '
    "{{ .CommonLabels.alertname }}{{ if .CommonLabels.severity }} ({{ .CommonLabels.severity }}){{ end }}"
)
_COLORS = {"firing": "#d62728", "resolved": "#2ca02c"}
_MAX_ALERT_BLOCKS = 10  # Slack caps a message at 50 blocks; keep it readable


def _alert_text(a: dict[str, Any]) -> str:
    ann = a["Annotations"]
    head = ann.get("summary") or ann.get("description") or a["Labels"].get("alertname", "")
    lines = [f"*{a['Status'].upper()}* {head}"]
    if ann.get("description") and ann.get("summary"):
        lines.append(ann["description"])
    facts = []
    if a.get("Severity"):
        facts.append(f"*Severity:* {a['Severity']}")
    if a.get("Value") not in (None, ""):
        facts.append(f"*Value:* {a['Value']}")
    labels = ", ".join(f"{k}={v}" for k, v in sorted(a["Labels"].items()) if k not in ("alertname", "severity"))
    if labels:
        facts.append(f"*Labels:* {labels}")
    if facts:
        lines.append("  ".join(facts))
    links = []
    if a.get("RunbookURL"):
        links.append(f"<{a['RunbookURL']}|Runbook>")
    if a.get("AlertURL"):
        links.append(f"<{a['AlertURL']}|Alert>")
    if a.get("SilenceURL"):
        links.append(f"<{a['SilenceURL']}|Silence>")
    if links:
        lines.append(" | ".join(links))
    return "\n".join(lines)[:3000]


def payload(integration: Integration, message: Message) -> dict[str, Any]:
    d = message.data
    title = render(integration, "title", message, DEFAULT_TITLE.render(d))
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    text = render(integration, "text", message)
    if text:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    else:
        for a in d["Alerts"][:_MAX_ALERT_BLOCKS]:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _alert_text(a)}})
        if len(d["Alerts"]) > _MAX_ALERT_BLOCKS:
            more = len(d["Alerts"]) - _MAX_ALERT_BLOCKS
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"and {more} more"}]})
    buttons = []
    first = d["Alerts"][0] if d["Alerts"] else {}
    for label, url in (("Runbook", first.get("RunbookURL")), ("Silence", d.get("SilenceURL")),
                       ("View alert", first.get("AlertURL"))):
        if url:
            buttons.append({"type": "button", "text": {"type": "plain_text", "text": label}, "url": url})
    ack = message.extra.get("ackURL")
    if isinstance(ack, str) and ack:
        buttons.insert(0, {"type": "button", "text": {"type": "plain_text", "text": "Acknowledge"}, "url": ack,
                           "style": "primary"})
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    out: dict[str, Any] = {
        "text": render(integration, "fallback", message, title),
        "blocks": blocks,
        "attachments": [{"color": render(integration, "color", message, _COLORS.get(d["Status"], "#999999")),
                         "blocks": []}],
    }
    for key in ("channel", "username"):
        value = render(integration, key, message)
        if value:
            out[key] = value
    for key in ("icon_emoji", "icon_url"):
        if integration.params.get(key):
            out[key] = integration.params[key]
    return out


async def notify(integration: Integration, message: Message) -> int:
    return await post_json(integration, integration.params["api_url"], payload(integration, message))
