"""The alert state machine and what evaluations write and send, driven step by step in memory."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from stackwatch.model.alerts import Alert
from stackwatch.query.promql import Engine, MemoryStorage, is_stale_nan
from stackwatch.query.promql.storage import Matcher
from stackwatch.rules import GroupEvaluator, GroupState, MemorySources, parse_groups

MIN = 60_000


class Run:
    """A group evaluated every minute over a MemoryStorage, with what was sent to notify."""

    def __init__(self, rules_yaml: str, storage: MemoryStorage | None = None, **sources: Any) -> None:
        self.storage = storage or MemoryStorage()
        self.sent: list[list[Alert]] = []
        self.ev = GroupEvaluator(MemorySources(self.storage, **sources), notify=self.sent.append,
                                 external_url="http://sw.example.com")
        [group] = parse_groups(rules_yaml)
        self.gs: GroupState = GroupEvaluator.prepare(group, MIN)

    def at(self, minute: float) -> list[Alert]:
        before = len(self.sent)
        self.ev.evaluate(self.gs, int(minute * MIN))
        return self.sent[-1] if len(self.sent) > before else []

    def states(self, rule: int = 0) -> list[tuple[str, str]]:
        return sorted((a.labels.get("instance", ""), a.state) for a in self.gs.rules[rule].active.values())

    def series(self, name: str, minute: float) -> dict[str, float]:
        out = {}
        for s in self.storage.select([Matcher("__name__", "=", name)], int(minute * MIN), int(minute * MIN)):
            if is_stale_nan(s.values[-1:]).all():
                continue
            out[",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "__name__")] = float(s.values[-1])
        return out


def _gauge(storage: MemoryStorage, labels: dict[str, str], values: list[float | None]) -> None:
    for i, v in enumerate(values):
        if v is not None:
            storage.add(labels, i * MIN, v)


DOWN = """
groups:
  - name: g
    rules:
      - alert: Down
        expr: up == 0
        for: 2m
        labels: {severity: page}
        annotations: {summary: "{{ $labels.instance }} is down ({{ $value }})"}
"""


def test_pending_then_firing_after_for_then_resolved() -> None:
    r = Run(DOWN)
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [1, 0, 0, 0, 0, 1, 1])
    assert r.at(0) == [] and r.states() == []
    assert r.at(1) == [] and r.states() == [("a", "pending")]  # pending alerts are not sent
    assert r.at(2) == [] and r.states() == [("a", "pending")]
    [fired] = r.at(3)
    assert r.states() == [("a", "firing")]
    assert fired.labels == {"alertname": "Down", "instance": "a", "severity": "page"}
    assert fired.annotations == {"summary": "a is down (0)"}
    assert fired.starts_at == datetime.fromtimestamp(180, UTC)
    assert fired.ends_at == datetime.fromtimestamp(180 + 4 * 60, UTC)  # a lease of 4 intervals
    assert fired.generator_url.startswith("http://sw.example.com/graph?g0.expr=up+%3D%3D+0")
    assert "project=" not in fired.generator_url
    assert fired.value == 0.0
    [again] = r.at(4)  # re-sent every evaluation, with the lease moved on
    assert again.starts_at == fired.starts_at and again.ends_at == datetime.fromtimestamp(240 + 240, UTC)
    [resolved] = r.at(5)
    assert r.states() == [("a", "inactive")]
    assert resolved.ends_at == datetime.fromtimestamp(300, UTC) and resolved.resolved(datetime.fromtimestamp(300, UTC))


def test_alerts_series_are_written_as_prometheus_writes_them() -> None:
    r = Run(DOWN)
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [0, 0, 0, 0, 1])
    for m in range(5):
        r.at(m)
    key = "alertname=Down,instance=a,severity=page"
    assert r.series("ALERTS", 0) == {"alertname=Down,alertstate=pending,instance=a,severity=page": 1.0}
    assert r.series("ALERTS_FOR_STATE", 1) == {key: 0.0}  # the active_at time, in seconds
    assert r.series("ALERTS", 2) == {"alertname=Down,alertstate=firing,instance=a,severity=page": 1.0}
    # The pending series went stale when the alert fired, and both series when it resolved.
    stale = r.storage.select([Matcher("__name__", "=", "ALERTS")], 2 * MIN, 2 * MIN)
    assert any(is_stale_nan(s.values).all() for s in stale)
    res = Engine(r.storage).instant('ALERTS{alertname="Down"}', 4 * MIN)
    assert res.series == []


def test_a_pending_alert_that_goes_away_is_forgotten_without_a_notification() -> None:
    r = Run(DOWN)
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [0, 1, 1])
    r.at(0)
    assert r.states() == [("a", "pending")]
    assert r.at(1) == [] and r.states() == []
    assert r.sent == []


def test_resolved_alerts_are_resent_for_15_minutes_then_dropped() -> None:
    r = Run(DOWN)
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [0, 0, 0] + [1] * 30)
    for m in range(3):
        r.at(m)
    resolved_at = datetime.fromtimestamp(180, UTC)
    for m in range(3, 19):
        [a] = r.at(m)
        assert a.ends_at == resolved_at
    assert r.at(19) == [] and r.states() == []  # 16 minutes after resolution: gone


def test_keep_firing_for_holds_a_flapping_alert() -> None:
    r = Run(DOWN.replace("for: 2m", "for: 0s\n        keep_firing_for: 3m"))
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [0, 1, 1, 0, 1, 1, 1, 1])
    r.at(0)
    assert r.states() == [("a", "firing")]
    for m in (1, 2, 3, 4, 5, 6):
        r.at(m)
        assert r.states() == [("a", "firing")], m
    r.at(7)  # three minutes after the last time it was seen (minute 3... reset, then 4,5,6)
    assert r.states() == [("a", "inactive")]


def test_recording_rules_write_results_that_later_rules_read() -> None:
    r = Run("""
groups:
  - name: g
    rules:
      - record: job:errors:sum
        expr: sum by (job) (errors)
        labels: {team: web}
      - alert: ManyErrors
        expr: job:errors:sum > 5
""")
    _gauge(r.storage, {"__name__": "errors", "job": "api", "instance": "1"}, [1, 4])
    _gauge(r.storage, {"__name__": "errors", "job": "api", "instance": "2"}, [1, 4])
    r.at(0)
    assert r.series("job:errors:sum", 0) == {"job=api,team=web": 2.0}
    [a] = r.at(1)
    assert a.labels == {"alertname": "ManyErrors", "job": "api", "team": "web"} and a.value == 8.0


def test_recording_output_that_disappears_gets_a_stale_marker() -> None:
    r = Run("groups: [{name: g, rules: [{record: x:sum, expr: 'sum by (k) (x)'}]}]")
    r.storage.add({"__name__": "x", "k": "a"}, 0, 1)
    r.at(0)
    r.at(10)  # x is more than 5m old: no result
    values = r.storage.select([Matcher("__name__", "=", "x:sum")], 0, 10 * MIN)[0].values
    assert values[0] == 1 and is_stale_nan(values[1:]).all()


def test_rule_errors_are_reported_without_stopping_the_group() -> None:
    r = Run("""
groups:
  - name: g
    rules:
      - alert: Clash
        expr: sum by (instance) (up) * 0
        labels: {instance: same}
      - alert: Fine
        expr: vector(1)
""")
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [1])
    _gauge(r.storage, {"__name__": "up", "instance": "b"}, [1])
    [fine] = r.at(0)
    clash, ok = r.gs.rules
    assert clash.health == "err" and "same labelset after applying alert labels" in clash.last_error
    assert ok.health == "ok" and fine.labels == {"alertname": "Fine"}


def test_group_limit() -> None:
    r = Run("groups: [{name: g, limit: 1, rules: [{alert: A, expr: 'up'}]}]")
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [1])
    _gauge(r.storage, {"__name__": "up", "instance": "b"}, [1])
    assert r.at(0) == []
    assert r.gs.rules[0].last_error == "exceeded limit of 1 with 2 alerts" and r.states() == []


def test_query_offset_evaluates_in_the_past() -> None:
    r = Run("groups: [{name: g, query_offset: 2m, rules: [{alert: A, expr: 'up == 0'}]}]")
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [0, 0, 1, 1, 1, 1])
    r.at(3)  # reads minute 1: still down
    assert r.states() == [("a", "firing")]
    r.at(4)
    assert r.states() == [("a", "inactive")]


def test_labels_are_templated() -> None:
    r = Run("""
groups:
  - name: g
    rules:
      - alert: Disk
        expr: disk_used_ratio > 0.8
        labels:
          severity: '{{ if gt $value 0.95 }}critical{{ else }}warning{{ end }}'
          host: '{{ reReplaceAll ":.*" "" $labels.instance }}'
""")
    _gauge(r.storage, {"__name__": "disk_used_ratio", "instance": "db1:9100"}, [0.97])
    [a] = r.at(0)
    assert a.labels == {"alertname": "Disk", "instance": "db1:9100", "severity": "critical", "host": "db1"}


# -- extensions ------------------------------------------------------------------------------


def test_warning_and_critical_thresholds_share_one_alert_identity() -> None:
    r = Run("""
groups:
  - name: g
    rules:
      - alert: CPU
        expr: cpu_percent
        for: 1m
        thresholds: {warning: '> 80', critical: '> 90'}
        annotations: {summary: "CPU {{ $value }}%"}
""")
    _gauge(r.storage, {"__name__": "cpu_percent", "instance": "a"}, [50, 85, 85, 95, 95, 85, 50])
    r.at(0)
    assert r.states() == []
    r.at(1)
    [pending] = r.gs.rules[0].active.values()
    assert pending.state == "pending" and pending.labels["severity"] == "warning"
    [w] = r.at(2)
    assert w.labels["severity"] == "warning" and w.annotations == {"summary": "CPU 85%"}
    old, crit = r.at(3)  # severity switch: the warning is resolved, the same alert continues as critical
    assert (old.labels["severity"], old.ends_at) == ("warning", datetime.fromtimestamp(180, UTC))
    assert crit.labels["severity"] == "critical" and crit.starts_at == w.starts_at  # still the same alert
    assert len(r.gs.rules[0].active) == 1
    r.at(4)
    old, warn = r.at(5)
    assert old.labels["severity"] == "critical" and warn.labels["severity"] == "warning"
    [resolved] = r.at(6)
    assert resolved.labels["severity"] == "warning" and resolved.ends_at == datetime.fromtimestamp(360, UTC)


def test_no_data_alert_after_its_grace_period() -> None:
    r = Run("""
groups:
  - name: g
    rules:
      - alert: CheckoutsSilent
        expr: sum(rate(checkouts_total[5m]))
        threshold: '< 0.1'
        no_data: 10m
        annotations: {summary: "no checkouts data"}
""")
    # Data for 5 minutes, then nothing: visible until minute 9 (5m lookback), no data from 10 on.
    _gauge(r.storage, {"__name__": "checkouts_total"}, [0, 60, 120, 180, 240, 300])
    for m in range(0, 20):
        r.at(m)
        if m < 19:
            assert not [a for a in r.gs.rules[0].active.values() if a.state == "firing"], m
    [a] = r.gs.rules[0].active.values()
    assert a.state == "firing" and a.labels == {"alertname": "CheckoutsSilent", "nodata": "true"}
    assert a.active_at == 9 * MIN  # the grace period counts from the first empty evaluation
    r.storage.add({"__name__": "checkouts_total"}, 20 * MIN, 400)
    r.storage.add({"__name__": "checkouts_total"}, int(20.5 * MIN), 500)
    r.at(21)
    assert [x.state for x in r.gs.rules[0].active.values()] == ["inactive"]


def test_log_rule_counts_lines_over_its_window() -> None:
    calls: list[tuple[str, str, int, int]] = []
    counts = iter([3, 12, 12, 4])

    def log_count(project: str, query: str, start_ms: int, end_ms: int) -> int:
        calls.append((project, query, start_ms, end_ms))
        return next(counts)

    r = Run("""
groups:
  - name: g
    project: shop
    rules:
      - alert: FailedLogins
        log: 'level:ERROR AND message:"Failed login attempt"'
        window: 5m
        threshold: '> 10'
        for: 1m
        annotations: {summary: "{{ $value }} failed logins in 5 minutes"}
""", log_count=log_count)
    r.at(10)
    r.at(11)
    [a] = r.at(12)
    assert a.annotations == {"summary": "12 failed logins in 5 minutes"} and a.labels == {"alertname": "FailedLogins"}
    # The alert's link opens the log explorer on the rule's query, over three of its windows.
    assert a.generator_url == ("http://sw.example.com/?q=level%3AERROR+AND+message%3A%22Failed+login+attempt%22"
                               "&start=-15m")
    [resolved] = r.at(13)
    assert resolved.ends_at == datetime.fromtimestamp(13 * 60, UTC)
    assert calls[0] == ("shop", 'level:ERROR AND message:"Failed login attempt"', 5 * MIN, 10 * MIN)


class FakeErrors:
    """A stand-in for the errors store that implements only the ErrorSource protocol."""

    def __init__(self) -> None:
        self.new: list[dict[str, Any]] = []
        self.counts: list[dict[str, Any]] = []

    def new_issues(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        return self.new

    def regressed_issues(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        return []

    def issue_event_counts(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        return self.counts


def test_error_rules_through_the_error_source_protocol() -> None:
    errors = FakeErrors()
    r = Run("""
groups:
  - name: g
    rules:
      - alert: NewIssue
        error: new_issue
        window: 10m
        annotations: {summary: "New issue: {{ $labels.title }}"}
      - alert: IssueSpike
        error: event_rate
        window: 5m
        threshold: '> 100'
""", errors=errors)
    assert r.at(0) == []
    errors.new = [{"issue_id": 7, "title": "ZeroDivisionError: division by zero", "level": "error"}]
    errors.counts = [{"issue_id": 7, "title": "ZeroDivisionError", "level": "error", "count": 250},
                     {"issue_id": 8, "title": "KeyError", "level": "error", "count": 3}]
    new, spike = r.at(1)
    assert new.labels == {"alertname": "NewIssue", "issue_id": "7", "title": "ZeroDivisionError: division by zero",
                          "level": "error"}
    assert new.annotations == {"summary": "New issue: ZeroDivisionError: division by zero"}
    assert spike.labels["issue_id"] == "7" and spike.value == 250.0
    assert new.generator_url == spike.generator_url == "http://sw.example.com/issues/7"  # the issue's page


def test_error_rules_without_an_errors_store_report_it() -> None:
    r = Run("groups: [{name: g, rules: [{alert: N, error: new_issue, window: 5m}]}]")
    r.at(0)
    assert r.gs.rules[0].health == "err" and "errors store" in r.gs.rules[0].last_error


def test_a_failing_notify_does_not_break_evaluation() -> None:
    r = Run(DOWN.replace("for: 2m", "for: 0s"))

    def boom(alerts: list[Alert]) -> None:
        raise RuntimeError("dispatcher down")

    r.ev.notify = boom
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [0])
    r.at(0)
    assert r.states() == [("a", "firing")] and r.gs.rules[0].health == "ok"
    assert math.isclose(r.gs.rules[0].active[next(iter(r.gs.rules[0].active))].value, 0.0)


def test_the_alert_link_of_another_projects_rule_shows_that_project() -> None:
    """"View alert" of a rule group with ``project: shop`` opened the default project's graph,
    where the series that fired does not exist: the on-call saw "no data" mid-incident."""
    r = Run(DOWN.replace("  - name: g\n", "  - name: g\n    project: shop\n"))
    _gauge(r.storage, {"__name__": "up", "instance": "a"}, [0, 0, 0, 0])
    fired = [a for m in range(4) for a in r.at(m)]
    assert fired and fired[-1].generator_url.endswith("&g0.tab=1&project=shop")
