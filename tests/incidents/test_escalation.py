"""Escalation pages a real HTTP receiver on loopback, level after level, until acknowledged."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from conftest import Clock, Receiver
from stackwatch.incidents.escalation import EscalationEngine
from stackwatch.incidents.links import LinkError, LinkSigner
from stackwatch.incidents.sender import WebhookSender, make_group_event
from stackwatch.incidents.service import IncidentService
from stackwatch.model.alerts import Alert
from stackwatch.storage.meta import MetaStore

SECRET = b"0123456789abcdef0123456789abcdef"


def setup_oncall(service: IncidentService, repeat: int = 0) -> None:
    d = service.directory
    d.create_schedule({"name": "ops", "timezone": "UTC", "layers": [
        {"name": "primary", "participants": ["ann", "bob"], "handoff_time": "09:00", "start": "2025-11-10"},
        {"name": "secondary", "participants": ["cat", "dan"], "handoff_time": "09:00", "start": "2025-11-10"},
    ]})
    for user in ("ann", "bob", "cat", "dan", "eve"):
        d.put_profile(user, {"receivers": [f"{user}-hook"]})
    d.create_policy({"name": "default", "default": True, "repeat": repeat, "levels": [
        {"targets": [{"schedule": "ops", "layer": "primary"}], "delay_minutes": 5},
        {"targets": [{"schedule": "ops", "layer": "secondary"}], "delay_minutes": 10},
        {"targets": [{"receiver": "cto-hook"}], "delay_minutes": 15},
    ]})


def engine_for(service: IncidentService, receiver: Receiver, clock: Clock) -> EscalationEngine:
    urls = {f"{u}-hook": f"{receiver.url}/{u}" for u in ("ann", "bob", "cat", "dan", "eve", "cto")}
    return EscalationEngine(service, WebhookSender(urls), LinkSigner(SECRET), clock=clock,
                            base_url="http://stackwatch.test")


def open_from_alert(service: IncidentService, clock: Clock) -> int:
    a = Alert(labels={"alertname": "APIDown", "severity": "critical", "service": "api"},
              annotations={"summary": "API is down"}, starts_at=clock(), ends_at=clock() + timedelta(minutes=4))
    number = service.handle_group_event(make_group_event("g1", "ops", {"alertname": "APIDown"}, [a], "firing",
                                                         clock()))
    assert number is not None
    return number


def test_pages_each_level_after_its_delay_and_repeats(service: IncidentService, clock: Clock,
                                                      receiver: Receiver) -> None:
    setup_oncall(service, repeat=1)
    engine = engine_for(service, receiver, clock)
    open_from_alert(service, clock)
    schedule = [(0, "/ann"), (5, "/cat"), (10, "/cto"), (15, "/ann"), (5, "/cat"), (10, "/cto")]
    expected: list[str] = []
    for minutes, path in schedule:
        if minutes:
            clock.advance(minutes=minutes - 1)
            assert engine.tick() == 0  # one minute early: nothing
            clock.advance(minutes=1)
        assert engine.tick() == 1
        expected.append(path)
        assert receiver.paths() == expected
        assert engine.tick() == 0  # paging is once per level
    clock.advance(hours=2)
    assert engine.tick() == 0  # repeat=1: two passes, then it stops
    body = receiver.requests[0][1]
    assert body["incident"]["number"] == 1 and body["incident"]["severity"] == "P0"
    assert body["escalation"] == {"policy": "default", "level": 1, "cycle": 1, "user": "ann"}
    assert body["alerts"][0]["labels"]["alertname"] == "APIDown"
    assert body["ackURL"].startswith("http://stackwatch.test/ack/")
    timeline = service.get(1)["timeline"]
    escalations = [e for e in timeline if e["kind"] == "escalated"]
    assert [e["payload"]["level"] for e in escalations] == [1, 2, 3, 1, 2, 3]
    assert "paged ann" in escalations[0]["message"]
    pages = [e for e in timeline if e["kind"] == "notification" and e["payload"].get("level")]
    assert [p["payload"]["receiver"] for p in pages] == ["ann-hook", "cat-hook", "cto-hook"] * 2
    assert all(p["payload"]["ok"] for p in pages)


def test_acknowledging_through_the_signed_link_stops_escalation(service: IncidentService, clock: Clock,
                                                                receiver: Receiver) -> None:
    setup_oncall(service)
    engine = engine_for(service, receiver, clock)
    open_from_alert(service, clock)
    engine.tick()
    assert receiver.paths() == ["/ann"]
    clock.advance(minutes=3)
    token = receiver.requests[0][1]["ackURL"].rsplit("/", 1)[1]
    claim = engine.signer.verify(token, clock().timestamp())  # type: ignore[union-attr]
    assert claim.user == "ann"
    service.acknowledge(service.get_by_id(claim.incident_id)["number"], claim.user, via="signed link")
    for _ in range(6):
        clock.advance(minutes=10)
        assert engine.tick() == 0
    assert receiver.paths() == ["/ann"]
    inc = service.get(1)
    assert (inc["acked_by"], inc["tta_seconds"], inc["escalation"]["next_at"]) == ("ann", 180, None)


def test_a_restart_resumes_escalation_without_paging_twice(meta: MetaStore, clock: Clock,
                                                          receiver: Receiver) -> None:
    first = IncidentService(meta, clock=clock)
    setup_oncall(first)
    open_from_alert(first, clock)
    engine_for(first, receiver, clock).tick()
    clock.advance(minutes=2)
    # The server restarts: new objects over the same store, and the alert group is re-sent.
    second = IncidentService(meta, clock=clock)
    engine = engine_for(second, receiver, clock)
    assert open_from_alert(second, clock) == 1
    assert engine.tick() == 0
    clock.advance(minutes=3)
    assert engine.tick() == 1
    assert receiver.paths() == ["/ann", "/cat"]


def test_overrides_and_unreachable_people_are_handled(service: IncidentService, clock: Clock,
                                                      receiver: Receiver) -> None:
    setup_oncall(service)
    service.directory.add_override("ops", {"layer": "secondary", "user": "eve", "start": clock().isoformat(),
                                           "end": (clock() + timedelta(hours=8)).isoformat()})
    # The API refuses to delete a profile a policy pages through a schedule; a database edited
    # by hand (or made before that check) can still lack one, and the engine must say so.
    import sqlalchemy as sa

    from stackwatch.storage.meta.models import OncallProfile

    with service.meta.session() as s:
        s.execute(sa.delete(OncallProfile).where(OncallProfile.user == "ann"))
    receiver.fail_first = 0
    engine = engine_for(service, receiver, clock)
    open_from_alert(service, clock)
    engine.tick()
    assert receiver.paths() == []  # ann has no contact receivers...
    first = next(e for e in service.get(1)["timeline"] if e["kind"] == "escalated")
    assert "ann (primary on-call of ops) has no contact receivers" in first["message"]
    clock.advance(minutes=5)
    receiver.fail_first = 1  # ...and eve's receiver fails once
    engine.tick()
    assert receiver.paths() == ["/eve"]
    page = next(e for e in service.get(1)["timeline"] if e["kind"] == "notification" and e["payload"].get("level"))
    assert page["payload"]["ok"] is False and "delivery failed" in page["message"]
    clock.advance(minutes=10)
    engine.tick()  # a failed level does not stop the next one
    assert receiver.paths() == ["/eve", "/cto"]


def test_manual_incidents_page_too_and_the_loop_runs_on_its_own(service: IncidentService, receiver: Receiver) -> None:
    # The real clock this time: the engine's thread pages level 1 as soon as the incident opens.
    live = IncidentService(service.meta, base_url="http://stackwatch.test")
    setup_oncall(live)
    urls = {f"{u}-hook": f"{receiver.url}/{u}" for u in ("ann", "bob")}
    engine = EscalationEngine(live, WebhookSender(urls), LinkSigner(SECRET), tick_s=30)
    primary = live.directory.on_call_user("ops", "primary", live.clock())
    engine.start()
    try:
        live.create(title="Checkout broken (customer report)", severity="P1", by="support@example.com")
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        engine.stop()
    assert receiver.paths() == [f"/{primary}"]
    body: dict[str, Any] = receiver.requests[0][1]
    assert body["alerts"][0]["labels"] == {"alertname": "Incident", "incident": "1", "severity": "P1"}
    assert body["alerts"][0]["annotations"]["summary"] == "Checkout broken (customer report)"
    # "View alert" leads to the incident (there is no alert; it pointed at an empty alert list).
    assert body["alerts"][0]["generatorURL"] == body["alerts"][0]["annotations"]["incident_url"]
    assert body["alerts"][0]["generatorURL"].endswith("/api/v1/incidents/1")


def test_link_tokens_are_checked() -> None:
    signer = LinkSigner(SECRET, ttl_s=600)
    token = signer.sign(7, "ann", now=1000)
    assert signer.verify(token, now=1599).incident_id == 7
    with pytest.raises(LinkError, match="expired"):
        signer.verify(token, now=1600)
    _body, mac = token.split(".")
    forged = signer.sign(8, "ann", now=1000).split(".")[0] + "." + mac
    with pytest.raises(LinkError, match="not valid"):
        signer.verify(forged, now=1001)
    with pytest.raises(LinkError, match="not valid"):
        LinkSigner(b"another-secret-of-32-bytes-long!").verify(token, now=1001)
    for junk in ("", "abc", "a.b", "!!!.???"):
        with pytest.raises(LinkError):
            signer.verify(junk, now=1001)


def night_in_berlin(meta: MetaStore) -> tuple[Clock, Any, IncidentService]:
    """A service whose working hours are 09-18 Mon-Fri in Berlin, at 03:00 on a Tuesday."""
    from datetime import UTC, datetime

    from stackwatch.incidents.hours import WorkingHours
    from stackwatch.incidents.service import IncidentConfig

    clock = Clock(datetime(2026, 11, 24, 2, 0, tzinfo=UTC))
    hours = WorkingHours.from_config({"timezone": "Europe/Berlin", "days": ["mon", "tue", "wed", "thu", "fri"],
                                      "start": "09:00", "end": "18:00"})
    service = IncidentService(meta, clock=clock, config=IncidentConfig(working_hours=hours),
                              base_url="http://stackwatch.test")
    setup_oncall(service)
    return clock, hours, service


def test_warnings_wait_for_working_hours_and_critical_pages_at_night(meta: MetaStore, receiver: Receiver) -> None:
    """P2 (warning) does not page at night, as the severity table says: its incident opens at
    once and its escalation starts at 09:00; a P0 opened at the same moment pages at once."""
    from datetime import UTC, datetime

    from stackwatch.incidents.service import IncidentConfig

    clock, hours, service = night_in_berlin(meta)
    engine = engine_for(service, receiver, clock)
    warn = service.create(title="Queue backing up", severity="P2", by="ann")["number"]
    assert engine.tick() == 0 and receiver.paths() == []
    (held,) = [e for e in service.get(warn)["timeline"] if e["kind"] == "escalation_held"]
    assert held["payload"]["until"] == "2026-11-24T08:00:00Z"  # 09:00 in Berlin
    assert "P2 does not page outside working hours" in held["message"]
    crit = service.create(title="API down", severity="P0", by="ann")["number"]
    assert engine.tick() == 1 and receiver.paths() == ["/ann"]
    clock.advance(hours=5, minutes=59)
    engine.tick()  # the P0's later levels
    assert [p for p in receiver.paths() if p == "/ann"] == ["/ann"]
    clock.advance(minutes=1)  # 09:00 in Berlin: the warning's escalation starts
    before = len(receiver.paths())
    assert engine.tick() == 1 and len(receiver.paths()) == before + 1
    assert service.get(warn)["status"] == "triggered" and service.get(crit)["number"] == crit
    # Friday evening: held until Monday morning.
    assert hours.next_start(datetime(2026, 11, 27, 19, 0, tzinfo=UTC)) == datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    assert IncidentConfig.from_dict({"working_hours": "always"}).working_hours is None


def test_a_held_incident_raised_to_p0_pages_at_once(meta: MetaStore, receiver: Receiver) -> None:
    """A P2 waiting for working hours that becomes P0 (triaged by hand, or its alert crossing
    the critical threshold) pages now: it waited for the morning, in the middle of an outage."""
    clock, _hours, service = night_in_berlin(meta)
    engine = engine_for(service, receiver, clock)
    engine.tick_s = 3600  # only a wake-up can page within the test
    engine.start()
    try:
        warn = service.create(title="Queue backing up", severity="P2", by="ann")["number"]
        engine.tick()
        assert receiver.paths() == []
        service.change_severity(warn, "P0", by="bob", reason="orders are failing")
        _wait_for(lambda: receiver.paths() == ["/ann"])  # woken, not at the next tick
        # The same through an alert: warning opens a held P2, critical raises it.
        def event(severity: str) -> Any:
            alert = Alert(labels={"alertname": "QueueDepth", "service": "orders", "priority": severity},
                          annotations={"summary": "queue depth"}, starts_at=clock())
            return make_group_event("g-queue", "ops", {"alertname": "QueueDepth"}, [alert], "firing", clock())

        number = service.handle_group_event(event("P2"))
        assert number is not None and service.get(number)["severity"] == "P2"  # a priority label opens it
        engine.tick()
        assert receiver.paths() == ["/ann"]
        service.handle_group_event(event("P0"))
        _wait_for(lambda: receiver.paths() == ["/ann", "/ann"])
        assert service.get(number)["severity"] == "P0"
    finally:
        engine.stop()


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_acknowledging_a_correlated_incident_reaches_each_pagerduty_route_incident(
        service: IncidentService, clock: Clock) -> None:
    """With correlation, one incident holds groups that a PagerDuty route triggered under their
    own keys; the acknowledge reached only the page's key, and PagerDuty kept escalating."""
    from types import SimpleNamespace

    sent: list[tuple[str, str, str]] = []

    class Sender:
        config = SimpleNamespace(receivers={
            "pd-route": SimpleNamespace(integrations=[SimpleNamespace(kind="pagerduty")]),
            "team-chat": SimpleNamespace(integrations=[SimpleNamespace(kind="slack")]),
        })

        def send_to_receiver(self, receiver: str, event: Any, extra: dict[str, Any]) -> list[Any]:
            sent.append((receiver, event.group_key, extra.get("action", "page")))
            return []

    EscalationEngine(service, Sender(), LinkSigner(SECRET), clock=clock)  # hooks itself onto the service
    for group, name in (("g-errors", "ShipErrors"), ("g-latency", "ShipLatency")):
        a = Alert(labels={"alertname": name, "severity": "critical", "service": "ship"},
                  annotations={"summary": name}, starts_at=clock(), ends_at=clock() + timedelta(minutes=4))
        for receiver in ("pd-route", "team-chat"):
            event = make_group_event(group, receiver, {"alertname": name}, [a], "firing", clock())
            event.correlation_key = "service=ship#ep1"
            service.handle_group_event(event)
    assert service.acknowledge(1, by="ann")["status"] == "acknowledged"  # the engine hears it
    _wait_for(lambda: len(sent) == 2)
    assert sorted(sent) == [("pd-route", "g-errors", "acknowledge"), ("pd-route", "g-latency", "acknowledge")]
