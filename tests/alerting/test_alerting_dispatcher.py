"""The dispatcher against a real HTTP receiver on loopback, with time moved by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from alerting_receivers import ManualClock, Recorder

from stackwatch.alerting.config import parse_alerting_config
from stackwatch.alerting.dispatcher import Dispatcher
from stackwatch.alerting.events import AlertGroupEvent
from stackwatch.model.alerts import Alert
from stackwatch.storage.meta import MetaStore


def config(url: str, **route: Any) -> dict[str, Any]:
    return {
        "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "30s", "group_interval": "5m",
                  "repeat_interval": "4h", **route},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": url + "/hook"}]}],
    }


def firing(clock: ManualClock, name: str = "HighCPU", **labels: str) -> Alert:
    """An alert as the evaluator re-sends it every cycle: ends_at is a lease (4 evaluation intervals) ahead."""
    return Alert({"alertname": name, **labels}, {"summary": f"{name} on {labels.get('instance', '?')}"},
                 starts_at=clock.now, ends_at=clock.now + timedelta(minutes=10), value=97.5)


def resolved(clock: ManualClock, alert: Alert) -> Alert:
    return Alert(alert.labels, alert.annotations, starts_at=alert.starts_at, ends_at=clock.now)


@pytest.fixture
def make(clock: ManualClock) -> Iterator[Any]:
    made: list[Dispatcher] = []

    def build(cfg: dict[str, Any], meta: Any = None, **kw: Any) -> Dispatcher:
        d = Dispatcher(parse_alerting_config(cfg), meta, clock=clock, retry_base=0.01, **kw)
        d.start(ticker=False)
        made.append(d)
        return d

    yield build
    for d in made:
        d.stop()


def step(d: Dispatcher, clock: ManualClock, seconds: float) -> int:
    clock.advance(seconds)
    n = d.run_due()
    assert d.wait_idle(10)
    return n


def test_group_wait_batches_alerts_into_one_webhook_in_alertmanagers_v4_shape(
        make: Any, clock: ManualClock, recorder: Recorder) -> None:
    d = make(config(recorder.url))
    d.put_alerts([firing(clock, instance="a")])
    step(d, clock, 10)
    d.put_alerts([firing(clock, instance="b"), firing(clock, "DiskFull", instance="a")])
    step(d, clock, 19)
    assert recorder.bodies() == []  # still inside group_wait
    step(d, clock, 2)
    (cpu,) = recorder.bodies()  # HighCPU a+b together; DiskFull's group_wait started 10 s later
    assert cpu["groupLabels"] == {"alertname": "HighCPU"}
    step(d, clock, 10)
    assert [b["groupLabels"] for b in recorder.bodies()][1:] == [{"alertname": "DiskFull"}]
    assert set(cpu) == {"receiver", "status", "alerts", "groupLabels", "commonLabels", "commonAnnotations",
                        "externalURL", "version", "groupKey", "truncatedAlerts"}
    assert cpu["version"] == "4" and cpu["status"] == "firing" and cpu["receiver"] == "hook"
    assert cpu["groupKey"] == '{}:{alertname="HighCPU"}'
    assert [a["labels"]["instance"] for a in cpu["alerts"]] == ["a", "b"]
    assert cpu["commonLabels"] == {"alertname": "HighCPU"}
    alert = cpu["alerts"][0]
    assert set(alert) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"


def test_no_repeat_before_repeat_interval_and_new_alerts_wait_for_group_interval(
        make: Any, clock: ManualClock, recorder: Recorder) -> None:
    d = make(config(recorder.url, group_by=[]))
    a = firing(clock, instance="a")
    d.put_alerts([a])
    step(d, clock, 31)
    assert len(recorder.bodies()) == 1
    for _ in range(5):  # the evaluator keeps re-sending; nothing new for 4 hours
        d.put_alerts([firing(clock, instance="a")])
        step(d, clock, 60)
    assert len(recorder.bodies()) == 1
    d.put_alerts([firing(clock, "Other", instance="b")])
    step(d, clock, 1)
    assert len(recorder.bodies()) == 1  # a new alert waits for the group's next interval
    for _ in range(3):  # the evaluator re-sends both every 2 minutes (their lease is 10)
        d.put_alerts([firing(clock, instance="a"), firing(clock, "Other", instance="b")])
        step(d, clock, 120)
    assert len(recorder.bodies()) == 2
    second = recorder.bodies()[1]
    assert [a["labels"]["alertname"] for a in second["alerts"]] == ["HighCPU", "Other"]
    # nothing new until the repeat interval (4 h after the second notification) has passed
    for _ in range(115):
        d.put_alerts([firing(clock, instance="a"), firing(clock, "Other", instance="b")])
        step(d, clock, 120)
    assert len(recorder.bodies()) == 2
    for _ in range(5):
        d.put_alerts([firing(clock, instance="a"), firing(clock, "Other", instance="b")])
        step(d, clock, 120)
    assert len(recorder.bodies()) == 3
    assert all(b["status"] == "firing" for b in recorder.bodies())


def test_resolved_notification_then_the_group_is_gone(make: Any, clock: ManualClock, recorder: Recorder) -> None:
    d = make(config(recorder.url))
    a = firing(clock, instance="a")
    d.put_alerts([a])
    step(d, clock, 31)
    d.put_alerts([resolved(clock, a)])
    step(d, clock, 300)
    bodies = recorder.bodies()
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    assert bodies[1]["alerts"][0]["status"] == "resolved"
    assert bodies[1]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert d.list_groups() == []
    step(d, clock, 300)
    assert len(recorder.bodies()) == 2


def test_an_alert_not_resent_resolves_after_resolve_timeout(make: Any, clock: ManualClock, recorder: Recorder) -> None:
    cfg = config(recorder.url)
    cfg["global"] = {"resolve_timeout": "2m"}
    d = make(cfg)
    d.put_alerts([Alert({"alertname": "External"}, starts_at=clock.now)])  # no endsAt, like a non-Prometheus sender
    step(d, clock, 31)
    step(d, clock, 300)
    assert [b["status"] for b in recorder.bodies()] == ["firing", "resolved"]


def test_send_resolved_false_sends_no_resolved_message(make: Any, clock: ManualClock, recorder: Recorder) -> None:
    cfg = config(recorder.url)
    cfg["receivers"][0]["webhook_configs"][0]["send_resolved"] = False
    d = make(cfg)
    a = firing(clock)
    d.put_alerts([a])
    step(d, clock, 31)
    d.put_alerts([resolved(clock, a)])
    step(d, clock, 300)
    assert [b["status"] for b in recorder.bodies()] == ["firing"]
    # and when it fires again, that is news
    d.put_alerts([firing(clock)])
    step(d, clock, 31)
    assert [b["status"] for b in recorder.bodies()] == ["firing", "firing"]


def test_silence_mutes_and_expiring_it_lets_the_alert_through(
        make: Any, clock: ManualClock, recorder: Recorder) -> None:
    d = make(config(recorder.url))
    sid = d.put_silence({"matchers": [{"name": "alertname", "value": "High.*", "isRegex": True}],
                         "startsAt": clock.now.isoformat(), "endsAt": (clock.now + timedelta(hours=1)).isoformat(),
                         "createdBy": "ops@example.com", "comment": "deploying"})
    d.put_alerts([firing(clock)])
    step(d, clock, 31)
    assert recorder.bodies() == []
    shown = d.list_alerts()
    assert shown[0]["status"] == {"state": "suppressed", "silencedBy": [sid], "inhibitedBy": [], "mutedBy": []}
    assert d.get_silence(sid)["status"]["state"] == "active"
    d.expire_silence(sid)
    assert d.get_silence(sid)["status"]["state"] == "expired"
    d.put_alerts([firing(clock)])
    step(d, clock, 300)
    assert len(recorder.bodies()) == 1


def test_inhibition_a_p1_database_alert_mutes_the_p3_slow_queries_it_explains(
        make: Any, clock: ManualClock, recorder: Recorder) -> None:
    cfg = config(recorder.url, group_by=["alertname", "cluster"])
    cfg["inhibit_rules"] = [{"source_matchers": ["severity=P1", "component=database"],
                             "target_matchers": ['severity=~"P3|low"'], "equal": ["cluster"]}]
    d = make(cfg)
    d.put_alerts([
        firing(clock, "PostgresDown", severity="P1", component="database", cluster="eu"),
        firing(clock, "SlowQueries", severity="P3", component="database", cluster="eu"),
        firing(clock, "SlowQueries", severity="P3", component="database", cluster="us"),
    ])
    step(d, clock, 31)
    sent = {(b["groupLabels"]["alertname"], b["groupLabels"]["cluster"]) for b in recorder.bodies()}
    assert sent == {("PostgresDown", "eu"), ("SlowQueries", "us")}
    inhibited = [a for a in d.list_alerts() if a["status"]["inhibitedBy"]]
    assert [a["labels"]["cluster"] for a in inhibited] == ["eu"]


def test_maintenance_window_mutes_a_p3_but_not_a_p0(make: Any, clock: ManualClock, recorder: Recorder) -> None:
    d = make(config(recorder.url))
    w = d.put_maintenance({"name": "db upgrade", "starts_at": clock.now.isoformat(),
                           "ends_at": (clock.now + timedelta(hours=2)).isoformat(),
                           "matchers": ['service="db"']}, "ops@example.com")
    assert w["state"] == "active" and w["pass_severity"] == "P0"
    d.put_alerts([firing(clock, "Replication", service="db", severity="low"),
                  firing(clock, "Down", service="db", severity="critical"),
                  firing(clock, "Lag", service="web", severity="P3")])
    step(d, clock, 31)
    assert sorted(b["groupLabels"]["alertname"] for b in recorder.bodies()) == ["Down", "Lag"]
    muted = [a["labels"]["alertname"] for a in d.list_alerts() if a["status"]["mutedBy"]]
    assert muted == ["Replication"]


def test_recurring_maintenance_window_in_a_time_zone(make: Any, clock: ManualClock, recorder: Recorder) -> None:
    d = make(config(recorder.url))
    # clock: Monday 2026-03-02 10:00 UTC = 11:00 in Berlin
    d.put_maintenance({"name": "weekly patching", "recurrence": {
        "weekdays": ["monday"], "times": [{"start_time": "11:00", "end_time": "12:00"}],
        "location": "Europe/Berlin"}})
    d.put_alerts([firing(clock, severity="P2")])
    step(d, clock, 31)
    assert recorder.bodies() == []
    step(d, clock, 3600)  # 12:00:31 Berlin: the window is over
    d.put_alerts([firing(clock, severity="P2")])
    step(d, clock, 300)
    assert len(recorder.bodies()) == 1


def test_the_notification_log_survives_a_restart(clock: ManualClock, recorder: Recorder,
                                                  meta_store: MetaStore) -> None:
    meta = meta_store
    cfg = parse_alerting_config(config(recorder.url))
    first = Dispatcher(cfg, meta, clock=clock)
    first.start(ticker=False)
    start = clock.now
    first.put_alerts([firing(clock)])
    step(first, clock, 31)
    first.stop()
    assert len(recorder.bodies()) == 1
    # after the restart Prometheus re-sends the same alert (same startsAt): no second page
    second = Dispatcher(cfg, meta, clock=clock)
    second.start(ticker=False)
    try:
        clock.advance(60)
        a = firing(clock)
        a.starts_at = start
        second.put_alerts([a])
        step(second, clock, 1)
        step(second, clock, 300)
        assert len(recorder.bodies()) == 1
        assert second.deliveries()[0]["status"] == "success"  # read back from the meta store
    finally:
        second.stop()


def test_silences_and_windows_are_persisted(clock: ManualClock, meta_store: MetaStore) -> None:
    meta = meta_store
    d = Dispatcher(None, meta, clock=clock)
    sid = d.put_silence({"matchers": [{"name": "a", "value": "1"}], "startsAt": clock.now.isoformat(),
                         "endsAt": (clock.now + timedelta(hours=1)).isoformat(), "createdBy": "me"})
    wid = d.put_maintenance({"name": "w", "recurrence": [{"weekdays": ["saturday", "sunday"]}], "pass_severity": "P1"})["id"]
    again = Dispatcher(None, meta, clock=clock)
    again.load()
    assert again.get_silence(sid)["createdBy"] == "me"
    assert again.get_maintenance(wid)["pass_severity"] == "P1"
    again.delete_maintenance(wid)
    third = Dispatcher(None, meta, clock=clock)
    third.load()
    assert third.list_maintenance() == []


def test_retries_until_a_failing_receiver_recovers_and_a_dead_one_does_not_block_others(
        make: Any, clock: ManualClock) -> None:
    flaky = Recorder(fail_first=2)
    broken = Recorder(fail_first=10**6, fail_status=400)
    good = Recorder()
    try:
        cfg = {"route": {"receiver": "team", "group_wait": "0s"},
               "receivers": [{"name": "team", "webhook_configs": [
                   {"url": broken.url}, {"url": flaky.url}, {"url": good.url}]}]}
        d = make(cfg)
        d.put_alerts([firing(clock)])
        step(d, clock, 1)
        assert len(good.bodies()) == 1
        assert len(flaky.bodies()) == 1 and flaky.attempts == 3
        assert broken.attempts == 1  # a 4xx is not retried
        results = {r["integration"]: r for r in d.deliveries()}
        assert results["webhook[1]"]["status"] == "success" and results["webhook[1]"]["attempts"] == 3
        assert results["webhook[0]"]["status"] == "failed" and results["webhook[0]"]["status_code"] == 400
        assert "answered 400" in results["webhook[0]"]["error"]
    finally:
        for r in (flaky, broken, good):
            r.close()


def test_connection_refused_is_retried_then_reported(make: Any, clock: ManualClock) -> None:
    gone = Recorder()
    url = gone.url
    gone.close()
    d = make({"route": {"receiver": "r", "group_wait": "0s"},
              "receivers": [{"name": "r", "webhook_configs": [{"url": url}]}]}, max_attempts=3)
    d.put_alerts([firing(clock)])
    step(d, clock, 1)
    (result,) = d.deliveries()
    assert result["status"] == "failed" and result["attempts"] == 3


def test_routing_tree_continue_and_group_listeners(make: Any, clock: ManualClock) -> None:
    db, web, audit = Recorder(), Recorder(), Recorder()
    try:
        cfg = {
            "route": {"receiver": "web", "group_by": ["alertname"], "group_wait": "0s", "routes": [
                {"matchers": ['severity=~"critical|P0"'], "receiver": "audit", "continue": True},
                {"match": {"team": "db"}, "receiver": "db", "group_by": ["..."]},
            ]},
            "receivers": [{"name": "web", "webhook_configs": [{"url": web.url}]},
                          {"name": "db", "webhook_configs": [{"url": db.url}]},
                          {"name": "audit", "webhook_configs": [{"url": audit.url}]}],
        }
        d = make(cfg)
        events: list[AlertGroupEvent] = []
        d.group_listeners.append(events.append)
        d.put_alerts([firing(clock, "PgDown", team="db", severity="critical"), firing(clock, "Slow5xx")])
        step(d, clock, 1)
        assert d.routes_for({"team": "db", "severity": "critical"}) == ["audit", "db"]
        assert [b["alerts"][0]["labels"]["alertname"] for b in audit.bodies()] == ["PgDown"]
        assert db.bodies()[0]["groupLabels"] == {"alertname": "PgDown", "team": "db", "severity": "critical"}
        assert db.bodies()[0]["groupKey"].startswith('{}/{team="db"}:')
        assert [b["alerts"][0]["labels"]["alertname"] for b in web.bodies()] == ["Slow5xx"]
        assert sorted(e.receiver for e in events) == ["audit", "db", "web"]
        assert all(e.status == "firing" and e.alerts for e in events)
    finally:
        for r in (db, web, audit):
            r.close()


def test_correlation_gives_alerts_sharing_labels_within_the_window_one_key(make: Any, clock: ManualClock) -> None:
    cfg = {"route": {"receiver": "null", "group_by": ["alertname", "service"], "group_wait": "0s"},
           "receivers": [{"name": "null"}], "correlation": {"labels": ["service"], "window": "10m"}}
    d = make(cfg)
    events: list[AlertGroupEvent] = []
    d.group_listeners.append(events.append)
    d.put_alerts([firing(clock, "HighLatency", service="checkout")])
    step(d, clock, 1)
    d.put_alerts([firing(clock, "ErrorRate", service="checkout"), firing(clock, "ErrorRate", service="search")])
    step(d, clock, 120)
    keys = {(e.labels["alertname"], e.labels["service"]): e.correlation_key for e in events}
    assert keys[("HighLatency", "checkout")] == keys[("ErrorRate", "checkout")]
    assert keys[("ErrorRate", "search")] != keys[("ErrorRate", "checkout")]
    assert keys[("ErrorRate", "checkout")].startswith("service=checkout#")
    # well after the window, the same service starts a new episode
    clock.advance(3600)
    d.put_alerts([firing(clock, "DiskFull", service="checkout")])
    step(d, clock, 1)
    assert events[-1].correlation_key != keys[("HighLatency", "checkout")]


def test_mute_and_active_time_intervals_on_routes(make: Any, clock: ManualClock, recorder: Recorder) -> None:
    cfg = config(recorder.url, routes=[
        {"matchers": ["team=batch"], "receiver": "hook", "mute_time_intervals": ["office"]},
        {"matchers": ["team=web"], "receiver": "hook", "active_time_intervals": ["weekend"]},
    ])
    cfg["time_intervals"] = [
        {"name": "office", "time_intervals": [{"weekdays": ["monday:friday"],
                                               "times": [{"start_time": "09:00", "end_time": "17:00"}]}]},
        {"name": "weekend", "time_intervals": [{"weekdays": ["saturday", "sunday"]}]},
    ]
    d = make(cfg)
    d.put_alerts([firing(clock, "Job", team="batch"), firing(clock, "Web", team="web"),
                  firing(clock, "Other", team="x")])
    step(d, clock, 31)  # Monday 10:00 UTC: office hours, not the weekend
    assert [b["groupLabels"]["alertname"] for b in recorder.bodies()] == ["Other"]


def test_send_to_receiver_acknowledges_on_pagerduty(make: Any, clock: ManualClock, recorder: Recorder) -> None:
    cfg = {"route": {"receiver": "pd"},
           "receivers": [{"name": "pd", "pagerduty_configs": [{"routing_key": "R1", "url": recorder.url + "/enqueue"}]}]}
    d = make(cfg)
    event = AlertGroupEvent('{}:{alertname="X"}', "pd", {"alertname": "X"}, [firing(clock, "X")], "firing", clock.now)
    (result,) = d.send_to_receiver("pd", event, {"action": "acknowledge"})
    assert result.ok
    (body,) = recorder.bodies()
    assert body["event_action"] == "acknowledge" and body["routing_key"] == "R1"
    assert len(body["dedup_key"]) == 64


def test_listeners_are_told_again_after_a_restart_only_if_they_did_not_record_it(
        clock: ManualClock, recorder: Recorder, meta_store: MetaStore) -> None:
    """A group the incident manager recorded is not handed to it again after a restart (it
    opened a second incident for an alert whose first one was resolved by hand, and paged);
    a group it never confirmed is (at least once: a crash must not lose a page)."""
    cfg = parse_alerting_config(config(recorder.url))
    seen: list[str] = []

    def confirming(event: AlertGroupEvent) -> None:
        seen.append(f"confirmed {event.status}")
        assert event.recorded is not None
        event.recorded()

    def forgetful(event: AlertGroupEvent) -> None:
        seen.append(f"unconfirmed {event.status}")

    for listener, told_again in ((confirming, False), (forgetful, True)):
        seen.clear()
        first = Dispatcher(cfg, meta_store, clock=clock)
        first.group_listeners.append(listener)
        first.start(ticker=False)
        start = clock.now
        name = f"Disk{told_again}"
        first.put_alerts([firing(clock, name)])
        step(first, clock, 31)
        first.stop()
        assert len(seen) == 1
        second = Dispatcher(cfg, meta_store, clock=clock)
        second.group_listeners.append(listener)
        second.start(ticker=False)
        try:
            clock.advance(60)
            again = firing(clock, name)
            again.starts_at = start  # Prometheus re-sends the same alert after the restart
            second.put_alerts([again])
            step(second, clock, 31)
            assert len(seen) == (2 if told_again else 1), seen
        finally:
            second.stop()
