"""The post-mortem draft written when an incident resolves.

It follows the template of the monitoring guides (Incident, Date, Duration, Severity; What
Happened; Root Cause; Impact; Resolution; Action Items) and fills in what the server knows:
the timeline, the duration, time to acknowledge, the alerts that fired. What only people
know (root cause, users affected, action items) is left as prompts to edit; the draft is
stored with the incident and replaced through the API once written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["draft_postmortem", "human_duration"]

_KIND_TEXT = {
    "opened": "Incident opened",
    "alert_firing": "Alert firing",
    "alert_resolved": "Alert resolved",
    "notification": "Notification sent",
    "acknowledged": "Acknowledged",
    "status_update": "Status update",
    "severity_changed": "Severity changed",
    "escalated": "Escalated",
    "resolved": "Resolved",
    "comment": "Comment",
}


def human_duration(seconds: float | None) -> str:
    """Seconds as people read them in a report: "45 s", "12 min 5 s", "3 h 20 min"."""
    if seconds is None:
        return "n/a"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {sec} s" if sec else "")
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _collapse(timeline: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int, datetime | None]]:
    """Runs of identical repeated notifications (a group re-sent every repeat interval during a
    long incident) become one row with a count, so the table stays a story, not a log."""
    out: list[tuple[dict[str, Any], int, datetime | None]] = []
    for entry in timeline:
        if out:
            first, count, _ = out[-1]
            same = (first["kind"], first.get("who"), first.get("message")) == (
                entry["kind"], entry.get("who"), entry.get("message"))
            if same and entry["kind"] == "notification":
                out[-1] = (first, count + 1, _dt(entry["at"]))
                continue
        out.append((entry, 1, _dt(entry["at"])))
    return out


def draft_postmortem(incident: dict[str, Any], timeline: list[dict[str, Any]]) -> str:
    """Markdown for ``incident`` (its JSON, as the API shows it) and its timeline entries."""
    opened = _dt(incident["opened_at"])
    resolved = _dt(incident.get("resolved_at"))
    acked = _dt(incident.get("acked_at"))
    assert opened is not None
    end = resolved or datetime.now(UTC)
    duration = (end - opened).total_seconds()
    lines = [
        f"# Post-mortem: {incident['title']}",
        "",
        f"**Incident**: #{incident['number']} {incident['title']}  ",
        f"**Date**: {opened.date().isoformat()}  ",
        f"**Duration**: {human_duration(duration)}"
        f" ({opened.strftime('%H:%M')} to {end.strftime('%H:%M')} UTC)  ",
        f"**Severity**: {incident['severity']}  ",
    ]
    if incident.get("service"):
        lines.append(f"**Service**: {incident['service']}  ")
    lines += ["", "## What Happened", ""]
    if incident.get("summary"):
        lines += [incident["summary"], ""]
    lines += ["| Time (UTC) | Event | Who | Details |", "|---|---|---|---|"]
    for entry, repeats, last in _collapse(timeline):
        at = _dt(entry["at"])
        when = at.strftime("%Y-%m-%d %H:%M:%S") if at else ""
        details = _cell(entry.get("message") or "")
        if repeats > 1 and last is not None:
            details += f" (x{repeats}, until {last.strftime('%H:%M:%S')})"
        lines.append(
            f"| {when} | {_KIND_TEXT.get(entry['kind'], entry['kind'])} | {_cell(entry.get('who') or '')} "
            f"| {details} |"
        )
    lines += [
        "",
        "## Root Cause",
        "",
        "_Technical explanation: what failed, and why. Blameless: systems and decisions, not people._",
        "",
        "## Impact",
        "",
        f"- Duration: {human_duration(duration)}",
        f"- Time to acknowledge: {human_duration((acked - opened).total_seconds()) if acked else 'not acknowledged'}",
    ]
    alerts = incident.get("alerts") or []
    if alerts:
        lines.append("- Affected alerts:")
        for alert in alerts:
            labels = alert.get("labels", {})
            detail = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
            start = _dt(alert.get("starts_at"))
            stop = _dt(alert.get("ends_at"))
            span = f", firing {human_duration((stop - start).total_seconds())}" if start and stop else ""
            lines.append(f"  - `{labels.get('alertname', '?')}` ({detail}){span}")
    else:
        lines.append("- Affected alerts: none (opened by hand)")
    lines += [
        "- Users affected: _X_",
        "- Revenue impact: _$Y_",
        f"- Downtime: _Z minutes_ (incident open for {human_duration(duration)})",
        "",
        "## Resolution",
        "",
    ]
    notes = [e for e in timeline if e["kind"] == "resolved"]
    note = notes[-1].get("message") if notes else ""
    lines.append(note or "_What fixed it._")
    lines += [
        "",
        "## Action Items",
        "",
        "- [ ] Fix the root cause (owner: @person, deadline: date)",
        "- [ ] Add or tune monitoring so this is caught earlier (owner: @person)",
        "- [ ] Update the runbook",
        "",
    ]
    return "\n".join(lines)
