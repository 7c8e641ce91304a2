"""The incident lifecycle driven by alert-group events and people, with a hand-moved clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from conftest import Clock
from stackwatch.errors import BadRequest, NotFound
from stackwatch.incidents.directory import Conflict
from stackwatch.incidents.reports import mtta_mttr, weekly_review
from stackwatch.incidents.sender import make_group_event
from stackwatch.incidents.service import IncidentConfig, IncidentService
from stackwatch.model.alerts import Alert
from stackwatch.storage.meta import MetaStore


def alert(name: str, severity: str, start: datetime, *, end: datetime | None = None, **labels: str) -> Alert:
    return Alert(
        labels={"alertname": name, "severity": severity, **labels},
        annotations={"summary": f"{name} on {labels.get('instance', 'api')}"},
        starts_at=start,
        ends_at=end,
        value=97.5,
    )


def firing(clock: Clock, *alerts: Alert, key: str = "{}:{alertname=\"HighErrorRate\"}", receiver: str = "ops") -> Any:
    lease = clock() + timedelta(minutes=4)
    for a in alerts:
        if a.ends_at is None or a.ends_at > clock():
            a.ends_at = lease  # the evaluator's lease, as Prometheus sends it
    status = "firing" if any(not a.resolved(clock()) for a in alerts) else "resolved"
    return make_group_event(key, receiver, {"alertname": alerts[0].name}, list(alerts), status, clock())


def kinds(incident: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in incident["timeline"]]


def test_a_firing_p1_group_opens_an_incident_with_its_timeline(service: IncidentService, clock: Clock) -> None:
    a = alert("HighErrorRate", "high", clock(), service="checkout", instance="api-1")
    number = service.handle_group_event(firing(clock, a))
    assert number == 1
    inc = service.get(1)
    assert (inc["severity"], inc["status"], inc["service"], inc["opened_by"]) == ("P1", "triggered", "checkout",
                                                                                   "stackwatch")
    assert inc["title"] == "HighErrorRate on api-1"
    assert kinds(inc) == ["opened", "alert_firing", "notification"]
    assert "instance=api-1" in inc["timeline"][1]["message"] and "97.5" in inc["timeline"][1]["message"]
    assert [x["labels"]["alertname"] for x in inc["alerts"]] == ["HighErrorRate"]


def test_groups_below_the_incident_severities_open_nothing(service: IncidentService, clock: Clock,
                                                           meta: MetaStore) -> None:
    assert service.handle_group_event(firing(clock, alert("DiskFilling", "low", clock()))) is None
    assert service.handle_group_event(firing(clock, alert("Deploy", "info", clock()), key="g2")) is None
    assert service.list() == []
    # ...but a team that wants P3 incidents can have them.
    wide = IncidentService(meta, clock=clock, config=IncidentConfig(open_severities=frozenset({"P0", "P1", "P2",
                                                                                                "P3"})))
    assert wide.handle_group_event(firing(clock, alert("DiskFilling", "low", clock()), key="g3")) == 1


def test_repeats_update_the_open_incident_and_a_restart_does_not_duplicate_it(
    service: IncidentService, clock: Clock, meta: MetaStore
) -> None:
    a = alert("HighErrorRate", "warning", clock(), instance="api-1")
    service.handle_group_event(firing(clock, a))
    clock.advance(minutes=1)
    service.handle_group_event(firing(clock, a))  # the same alert re-sent: no new alert entry
    b = alert("HighErrorRate", "critical", clock(), instance="api-2")
    clock.advance(minutes=1)
    service.handle_group_event(firing(clock, a, b))  # a second, worse alert joins the group
    # A restarted server (a new service over the same store) gets the group again.
    restarted = IncidentService(meta, clock=clock)
    clock.advance(minutes=1)
    assert restarted.handle_group_event(firing(clock, a, b)) == 1
    assert [i["number"] for i in restarted.list()] == [1]
    inc = restarted.get(1)
    assert kinds(inc) == ["opened", "alert_firing", "notification", "notification", "alert_firing",
                          "severity_changed", "notification", "notification"]
    assert inc["severity"] == "P0"
    assert len(inc["alerts"]) == 2


def test_resolution_resolves_and_drafts_the_postmortem(service: IncidentService, clock: Clock) -> None:
    start = clock()
    a = alert("HighErrorRate", "P1", start, service="checkout", instance="api-1")
    service.handle_group_event(firing(clock, a))
    clock.advance(minutes=4)
    service.acknowledge(1, "ann@example.com", "looking")
    clock.advance(minutes=3)
    service.status_update(1, "ann@example.com", "rolled back the 02:50 deploy")
    clock.advance(minutes=20)
    a.ends_at = clock()
    service.handle_group_event(firing(clock, a))
    inc = service.get(1)
    assert inc["status"] == "resolved" and inc["resolved_by"] == "stackwatch"
    assert kinds(inc)[-3:] == ["alert_resolved", "notification", "resolved"]
    assert inc["tta_seconds"] == 240 and inc["ttr_seconds"] == 27 * 60
    pm = service.postmortem(1)
    assert pm["stored"] is True
    md = pm["markdown"]
    assert md.startswith("# Post-mortem: HighErrorRate on api-1")
    assert "**Severity**: P1" in md and "**Duration**: 27 min" in md and "**Date**: 2025-11-17" in md
    for heading in ("## What Happened", "## Root Cause", "## Impact", "## Resolution", "## Action Items"):
        assert heading in md
    # The timeline, in order, with who did what.
    rows = [line for line in md.splitlines() if line.startswith("| 2025-")]
    assert [r.split(" | ")[1] for r in rows] == ["Incident opened", "Alert firing", "Notification sent",
                                                 "Acknowledged", "Status update", "Alert resolved",
                                                 "Notification sent", "Resolved"]
    assert "| 2025-11-17 03:07:00 | Status update | ann@example.com | rolled back the 02:50 deploy |" in md
    assert "- Time to acknowledge: 4 min" in md
    assert "`HighErrorRate` (instance=api-1, service=checkout, severity=P1), firing 27 min" in md


def test_without_auto_resolve_the_incident_waits_for_a_person(meta: MetaStore, clock: Clock) -> None:
    service = IncidentService(meta, clock=clock, config=IncidentConfig(auto_resolve=False))
    a = alert("HighErrorRate", "P0", clock())
    service.handle_group_event(firing(clock, a))
    clock.advance(minutes=5)
    a.ends_at = clock()
    service.handle_group_event(firing(clock, a))
    inc = service.get(1)
    assert inc["status"] == "triggered" and kinds(inc)[-2:] == ["alert_resolved", "notification"]
    assert service.postmortem(1)["stored"] is False


def test_firing_again_after_resolution_opens_a_new_incident(service: IncidentService, clock: Clock) -> None:
    a = alert("HighErrorRate", "P1", clock())
    service.handle_group_event(firing(clock, a))
    clock.advance(minutes=5)
    a.ends_at = clock()
    service.handle_group_event(firing(clock, a))
    clock.advance(minutes=30)
    again = alert("HighErrorRate", "P1", clock())
    assert service.handle_group_event(firing(clock, again)) == 2
    assert [i["status"] for i in service.list()] == ["triggered", "resolved"]


def test_another_route_with_the_same_alerts_joins_the_incident(service: IncidentService, clock: Clock) -> None:
    a = alert("HighErrorRate", "P1", clock())
    service.handle_group_event(firing(clock, a, key="route-a"))
    assert service.handle_group_event(firing(clock, a, key="route-b", receiver="team-slack")) == 1
    assert len(service.list()) == 1


def test_manual_incident_lifecycle_and_conflicts(service: IncidentService, clock: Clock) -> None:
    inc = service.create(title="Customers report failed payments", severity="high", by="ann@example.com",
                         service="payments")
    assert (inc["number"], inc["severity"], inc["status"]) == (1, "P1", "triggered")
    clock.advance(minutes=2)
    service.change_severity(1, "P0", "ann@example.com", "all card payments fail")
    with pytest.raises(Conflict):
        service.change_severity(1, "critical", "ann@example.com")
    service.acknowledge(1, "bob@example.com")
    with pytest.raises(Conflict, match="already acknowledged"):
        service.acknowledge(1, "ann@example.com")
    service.comment(1, "bob@example.com", "PSP status page shows an outage")
    clock.advance(minutes=30)
    done = service.resolve(1, "bob@example.com", "PSP recovered; retried the failed payments")
    assert done["assignee"] == "bob@example.com" and done["ttr_seconds"] == 32 * 60
    with pytest.raises(Conflict, match="already resolved"):
        service.resolve(1, "bob@example.com")
    with pytest.raises(Conflict):
        service.acknowledge(1, "bob@example.com")
    timeline = service.get(1)["timeline"]
    assert [(e["kind"], e["who"]) for e in timeline] == [
        ("opened", "ann@example.com"), ("severity_changed", "ann@example.com"), ("acknowledged", "bob@example.com"),
        ("comment", "bob@example.com"), ("resolved", "bob@example.com")]
    md = service.postmortem(1)["markdown"]
    assert "PSP recovered; retried the failed payments" in md.split("## Resolution")[1]
    assert "Affected alerts: none (opened by hand)" in md
    # Edited by people, and never overwritten by the server afterwards.
    service.set_postmortem(1, "# Payments outage\n\nRoot cause: PSP.\n", "ann@example.com")
    pm = service.postmortem(1)
    assert (pm["markdown"], pm["updated_by"]) == ("# Payments outage\n\nRoot cause: PSP.\n", "ann@example.com")
    with pytest.raises(BadRequest):
        service.set_postmortem(1, "  ", "ann@example.com")


def test_bad_input_is_a_clear_error(service: IncidentService) -> None:
    with pytest.raises(BadRequest, match="unknown severity"):
        service.create(title="x", severity="P9", by="a")
    with pytest.raises(BadRequest, match="title"):
        service.create(title=" ", severity="P1", by="a")
    with pytest.raises(NotFound, match="#42"):
        service.acknowledge(42, "a")
    with pytest.raises(BadRequest, match="escalation policy"):
        service.create(title="x", severity="P1", by="a", escalation_policy="nope")
    with pytest.raises(BadRequest, match="status"):
        service.list(status=["sleeping"])


def test_list_filters(service: IncidentService, clock: Clock) -> None:
    service.create(title="one", severity="P1", by="a", service="api")
    clock.advance(hours=1)
    service.create(title="two", severity="P3", by="a", service="db")
    service.acknowledge(2, "a")
    clock.advance(hours=1)
    service.create(title="three", severity="P1", by="a", service="api")
    service.resolve(3, "a")
    titles = lambda **kw: [i["title"] for i in service.list(**kw)]  # noqa: E731
    assert titles() == ["three", "two", "one"]
    assert titles(status=["open"]) == ["two", "one"]
    assert titles(status=["resolved", "acknowledged"]) == ["three", "two"]
    assert titles(severity=["high"]) == ["three", "one"]
    assert titles(service="db") == ["two"]
    assert titles(since=clock() - timedelta(minutes=90)) == ["three", "two"]
    assert titles(limit=1) == ["three"]


def test_mtta_and_mttr_per_severity_and_service(service: IncidentService, clock: Clock, meta: MetaStore) -> None:
    start = clock()
    for minutes_to_ack, minutes_to_resolve, sev, svc in ((2, 10, "P0", "api"), (7, 90, "P0", "db"),
                                                        (30, 240, "P2", "api"), (None, 60, "P2", "api")):
        inc = service.create(title="x", severity=sev, by="a", service=svc)
        opened = clock()
        if minutes_to_ack is not None:
            clock.now = opened + timedelta(minutes=minutes_to_ack)
            service.acknowledge(inc["number"], "a")
        clock.now = opened + timedelta(minutes=minutes_to_resolve)
        service.resolve(inc["number"], "a")
        clock.now = opened + timedelta(hours=5)
    service.create(title="still open", severity="P1", by="a", service="api")
    report = mtta_mttr(meta, start, clock() + timedelta(seconds=1))
    assert report["overall"]["incidents"] == 5
    assert report["by_severity"]["P0"]["mtta"]["mean_seconds"] == 270
    assert report["by_severity"]["P0"]["mttr"]["mean_seconds"] == 50 * 60
    assert report["by_severity"]["P2"]["mtta"] == {"count": 1, "mean_seconds": 1800, "median_seconds": 1800,
                                                   "p90_seconds": 1800}
    assert report["by_severity"]["P2"]["mttr"]["mean_seconds"] == 150 * 60
    assert report["by_severity"]["P1"]["mttr"]["count"] == 0
    assert report["by_service"]["api"]["incidents"] == 4
    assert report["by_service"]["api"]["mttr"]["median_seconds"] == 60 * 60
    assert report["by_service"]["db"]["mtta"]["mean_seconds"] == 420
    # P0 SLA: acknowledge in 5 min, resolve in 1 h; P2: 1 h and 24 h.
    assert report["by_severity"]["P0"]["sla_met"] == {"acknowledge": 0.5, "resolve": 0.5}  # db: 7 min, 90 min
    assert report["by_severity"]["P2"]["sla_met"] == {"acknowledge": 1.0, "resolve": 1.0}
    assert report["by_severity"]["P1"]["sla_met"] == {"acknowledge": None, "resolve": None}
    assert mtta_mttr(meta, start - timedelta(days=2), start)["overall"]["incidents"] == 0


def test_weekly_review_names_noisy_ignored_and_flapping_alerts(service: IncidentService, clock: Clock,
                                                               meta: MetaStore) -> None:
    # A flapping P3 disk alert: fires and clears 4 times, a few minutes each, never an incident.
    for i in range(4):
        d = alert("DiskIOHigh", "low", clock(), instance="db-1")
        service.handle_group_event(firing(clock, d, key="disk"))
        clock.advance(minutes=3)
        d.ends_at = clock()
        service.handle_group_event(firing(clock, d, key="disk"))
        clock.advance(minutes=30 + i)
    # A P1 that opened an incident someone acknowledged: acted on.
    e = alert("HighErrorRate", "P1", clock())
    service.handle_group_event(firing(clock, e, key="errors"))
    service.acknowledge(1, "ann@example.com")
    # A P2 that opened an incident nobody touched; it resolved itself: missed, never acted on.
    clock.advance(hours=1)
    c = alert("HighCPU", "warning", clock(), instance="web-1")
    service.handle_group_event(firing(clock, c, key="cpu"))
    clock.advance(minutes=40)
    # It turned critical half-way (a new severity label, a new occurrence): still one firing.
    clock.advance(minutes=20)
    critical = alert("HighCPU", "critical", clock(), instance="web-1")
    c.ends_at = None  # still firing: re-sent with a new lease
    service.handle_group_event(firing(clock, c, critical, key="cpu"))
    clock.advance(minutes=20)
    c.ends_at = critical.ends_at = clock()
    service.handle_group_event(firing(clock, c, critical, key="cpu"))
    review = weekly_review(meta, clock() + timedelta(minutes=1))
    assert review["alert_firings"] == 6 and review["incidents_opened"] == 2
    assert [(n["alertname"], n["firings"]) for n in review["noisiest_alerts"]] == [
        ("DiskIOHigh", 4), ("HighCPU", 1), ("HighErrorRate", 1)]
    assert [n["alertname"] for n in review["alerts_never_acted_on"]] == ["DiskIOHigh", "HighCPU"]
    assert [(f["alertname"], f["firings"], f["short_firings"]) for f in review["flapping_rules"]] == [
        ("DiskIOHigh", 4, 4)]
    assert [m["number"] for m in review["missed_incidents"]] == [2]
    # A week later, none of this is in the window.
    assert weekly_review(meta, clock() + timedelta(days=8))["alert_firings"] == 0


def test_alert_history_is_pruned_but_incident_alerts_stay(service: IncidentService, clock: Clock,
                                                          meta: MetaStore) -> None:
    service.handle_group_event(firing(clock, alert("DiskFilling", "low", clock()), key="disk"))
    service.handle_group_event(firing(clock, alert("APIDown", "critical", clock()), key="api"))
    assert service.prune_alert_history(clock() + timedelta(days=89)) == 0
    assert service.prune_alert_history(clock() + timedelta(days=91)) == 1  # the P3 that opened nothing
    review = weekly_review(meta, clock() + timedelta(days=1))
    assert [n["alertname"] for n in review["noisiest_alerts"]] == ["APIDown"]


def test_config_section_is_validated() -> None:
    from stackwatch.errors import ConfigError

    config = IncidentConfig.from_dict({"open_severities": ["critical", "P1"], "ack_link_ttl": "2h",
                                       "escalation_policies_by_receiver": {"db-team": "dba"}})
    assert config.open_severities == {"P0", "P1"} and config.ack_link_ttl_s == 7200
    for bad, message in (({"open_severities": ["urgent"]}, "open_severities"), ({"ack_link_ttl": "soon"},
                         "ack_link_ttl"), ({"auto_resolv": True}, "unknown key"), ({"alert_history_days": 0},
                         "alert_history_days"), ([], "mapping")):
        with pytest.raises(ConfigError, match=message):
            IncidentConfig.from_dict(bad)


def test_the_listener_queues_events_in_order_and_never_raises(service: IncidentService, clock: Clock,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    service.start()
    try:
        a = alert("HighErrorRate", "P1", clock())
        service.on_group_event(firing(clock, a))
        service.on_group_event(object())  # type: ignore[arg-type]  # a broken event is logged, not raised
        clock.advance(minutes=2)
        a.ends_at = clock()
        service.on_group_event(firing(clock, a))
        service.wait_idle()
    finally:
        service.stop()
    assert service.get(1)["status"] == "resolved"
    assert "could not record alert group" in caplog.text


def test_a_group_is_confirmed_to_the_dispatcher_once_recorded(service: IncidentService, clock: Clock) -> None:
    """Only a recorded group is confirmed (the dispatcher then persists that incidents know);
    one that failed to record is not, so a restart hands it over again."""
    confirmed: list[str] = []
    event = firing(clock, alert("HighErrorRate", "critical", clock()))
    event.recorded = lambda: confirmed.append("ok")
    service.on_group_event(event)
    assert confirmed == ["ok"] and service.get(1)["status"] == "triggered"
    broken = firing(clock, alert("HighErrorRate", "critical", clock()))
    broken.recorded = lambda: confirmed.append("broken")
    broken.alerts = None  # recording it fails
    service.on_group_event(broken)
    assert confirmed == ["ok"]


def test_a_warning_that_turns_critical_on_another_route_joins_its_incident(
        service: IncidentService, clock: Clock) -> None:
    """A threshold rule's warning opened #1 through the db route; at critical, its severity label
    (so its fingerprint) changed, and the pager route (continue: true) flushed first: it opened
    #2 for the same problem and paged again after #1 was acknowledged."""
    warning = alert("DiskFull", "warning", clock(), instance="db-1", team="db")
    first = service.handle_group_event(firing(clock, warning, key="db-route", receiver="db"))
    assert first is not None
    service.acknowledge(first, by="ann")
    critical = alert("DiskFull", "critical", clock(), instance="db-1", team="db")
    assert service.handle_group_event(firing(clock, critical, key="pager-route", receiver="pager")) == first
    assert service.handle_group_event(firing(clock, critical, key="db-route", receiver="db")) == first
    incident = service.get(first)
    assert incident["status"] == "acknowledged" and incident["severity"] == "P0"
    # Another instance is another alert: its own incident.
    other = alert("DiskFull", "critical", clock(), instance="db-2", team="db")
    assert service.handle_group_event(firing(clock, other, key="pager-route-2", receiver="pager")) != first


def test_a_correlated_alert_after_a_restart_joins_the_open_incident(service: IncidentService, clock: Clock) -> None:
    """The dispatcher keeps correlation episodes in memory: after a restart, an alert of the same
    service got a new episode key and opened (and paged) a second incident."""
    errors = firing(clock, alert("ShipErrors", "critical", clock(), service="ship"), key="g-errors")
    errors.correlation_key = "service=ship#0123456789abcdef"
    first = service.handle_group_event(errors)
    latency = firing(clock, alert("ShipLatency", "critical", clock(), service="ship"), key="g-latency")
    latency.correlation_key = "service=ship#fedcba9876543210"  # the new episode after the restart
    assert service.handle_group_event(latency) == first
    other = firing(clock, alert("CartLatency", "critical", clock(), service="cart"), key="g-cart")
    other.correlation_key = "service=cart#fedcba9876543210"
    assert service.handle_group_event(other) != first
    # A group key with a '#' in a label value is not a correlation key.
    hashed = firing(clock, alert("Odd", "critical", clock()), key='{}:{alertname="a#0123456789abcdef"}')
    assert service.handle_group_event(hashed) not in (first, None)
