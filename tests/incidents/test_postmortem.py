"""The post-mortem draft: the guides' template, filled in from the incident and its timeline."""

from __future__ import annotations

from stackwatch.incidents.postmortem import draft_postmortem, human_duration

INCIDENT = {
    "number": 7, "title": "Checkout 500s", "severity": "P1", "service": "checkout", "summary": "",
    "opened_at": "2025-11-17T03:00:00Z", "acked_at": "2025-11-17T03:04:00Z", "resolved_at": "2025-11-17T05:10:30Z",
    "alerts": [{"labels": {"alertname": "HighErrorRate", "service": "checkout"},
                "starts_at": "2025-11-17T02:59:00Z", "ends_at": "2025-11-17T05:10:00Z"}],
}


def entry(at: str, kind: str, message: str, who: str = "stackwatch") -> dict[str, str]:
    return {"at": f"2025-11-17T{at}Z", "kind": kind, "who": who, "message": message}


def test_draft_follows_the_template_and_collapses_repeated_notifications() -> None:
    timeline = [
        entry("03:00:00", "opened", "Opened from alert group g (P1)"),
        entry("03:00:00", "alert_firing", "HighErrorRate {service=checkout}: 5xx | above 1%"),
        entry("03:00:00", "notification", "Alert group notified to ops: 1 firing, 0 resolved", "ops"),
        entry("03:04:00", "acknowledged", "on it", "ann@example.com"),
        entry("04:00:00", "notification", "Alert group notified to ops: 1 firing, 0 resolved", "ops"),
        entry("05:00:00", "notification", "Alert group notified to ops: 1 firing, 0 resolved", "ops"),
        entry("05:10:00", "alert_resolved", "HighErrorRate {service=checkout}"),
        entry("05:10:30", "resolved", "Rolled back release 1.42", "ann@example.com"),
    ]
    md = draft_postmortem(INCIDENT, timeline)
    lines = md.splitlines()
    assert lines[0] == "# Post-mortem: Checkout 500s"
    assert "**Duration**: 2 h 10 min (03:00 to 05:10 UTC)  " in lines
    rows = [line for line in lines if line.startswith("| 2025-")]
    assert len(rows) == 7  # the two hourly repeats became one row
    assert rows[4] == ("| 2025-11-17 04:00:00 | Notification sent | ops | Alert group notified to ops: 1 firing, "
                       "0 resolved (x2, until 05:00:00) |")
    assert "5xx \\| above 1%" in rows[1]  # table cells cannot break the table
    assert "- Time to acknowledge: 4 min" in lines
    assert "  - `HighErrorRate` (service=checkout), firing 2 h 11 min" in lines
    assert md.split("## Resolution")[1].split("##")[0].strip() == "Rolled back release 1.42"
    assert "- [ ] Update the runbook" in lines


def test_human_durations() -> None:
    assert [human_duration(x) for x in (None, 0, 59.6, 60, 3599, 3600, 7 * 86400 + 5)] == [
        "n/a", "0 s", "1 min", "1 min", "59 min 59 s", "1 h 0 min", "7 d 0 h"]
