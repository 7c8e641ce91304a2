"""Rule files: what loads, and how problems are reported (file:line, every problem at once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackwatch.query.promql import Engine, MemoryStorage
from stackwatch.rules import RuleFileError, parse_groups, parse_rule_file
from stackwatch.rules.loader import compile_compare, expand_globs
from stackwatch.rules.model import Threshold

GOOD = """
groups:
  - name: api
    interval: 30s
    limit: 10
    query_offset: 1m
    rules:
      - alert: HighErrorRate
        expr: sum by (route) (rate(http_requests_total{status=~"5.."}[5m])) > 1
        for: 5m
        keep_firing_for: 2m
        labels: {severity: critical, team: web}
        annotations:
          summary: "{{ $labels.route }} fails {{ $value | humanize }}/s"
      - record: route:http_requests:rate5m
        expr: sum by (route) (rate(http_requests_total[5m]))
        labels: {source: rules}
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as info:
        parse_groups(text, "rules.yml")
    return [str(e) for e in info.value.errors]


def test_a_prometheus_rule_file_loads_with_every_field() -> None:
    [g] = parse_groups(GOOD, "rules.yml")
    assert (g.name, g.interval_ms, g.limit, g.query_offset_ms, g.project) == ("api", 30_000, 10, 60_000, "default")
    alert, record = g.rules
    assert (alert.kind, alert.name, alert.for_ms, alert.keep_firing_for_ms) == ("alert", "HighErrorRate", 300_000,
                                                                                120_000)
    assert alert.labels == {"severity": "critical", "team": "web"}
    assert alert.line == 8 and record.line == 15
    assert (record.kind, record.name, record.labels) == ("record", "route:http_requests:rate5m", {"source": "rules"})


def test_empty_file_has_no_groups() -> None:
    assert parse_groups("", "empty.yml") == []
    assert parse_groups("groups: []", "empty.yml") == []


def test_every_problem_is_reported_with_its_line() -> None:
    errors = _errors("""groups:
  - name: g
    rules:
      - alert: A
        expr: sum(rate(x[5m])
      - record: "not a metric name"
        expr: up
      - alert: B
        expr: up
        for: 5 minutes
        labels: {"bad-name": x}
      - alert: C
        record: D
        expr: up
      - expr: up
      - alert: E
        expr: up
        annotations: {summary: "{{ nosuchfunc }}"}
        unknown_field: 1
  - name: g
""")
    text = "\n".join(errors)
    assert 'rules.yml:5: group "g", rule 1, "A": could not parse expression' in text
    assert 'rules.yml:6: group "g", rule 2, "not a metric name": invalid recording rule name' in text
    assert 'rules.yml:10: group "g", rule 3, "B": for: not a valid duration string: "5 minutes"' in text
    assert 'invalid label name: "bad-name"' in text
    assert "only one of 'record' and 'alert' must be set" in text
    assert 'rule 5: one of \'record\' or \'alert\' must be set' in text
    assert 'function "nosuchfunc" not defined' in text
    assert "rules.yml:19:" in text and "field unknown_field not found" in text
    assert 'rules.yml:20: groupname: "g" is repeated in the same file' in text


def test_recording_rules_refuse_alert_only_fields() -> None:
    errors = _errors("groups: [{name: g, rules: [{record: x, expr: up, for: 1m, annotations: {a: b}}]}]")
    assert any("invalid field 'for' in recording rule" in e for e in errors)
    assert any("invalid field 'annotations' in recording rule" in e for e in errors)


def test_yaml_errors_and_duplicate_keys_name_the_line() -> None:
    assert _errors("groups:\n  - name: g\n    rules: [\n")[0].startswith("rules.yml:")
    errors = _errors("groups:\n  - name: g\n    name: h\n    rules: []\n")
    assert errors == ['rules.yml:3: invalid YAML: mapping key "name" already defined'] or "already defined" in errors[0]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match="cannot read file"):
        parse_rule_file(tmp_path / "missing.yml")


def test_globs_expand_relative_to_a_base(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    for name in ("b.yml", "a.yml", "c.txt"):
        (tmp_path / "rules" / name).write_text("groups: []")
    assert [p.name for p in expand_globs(["rules/*.yml"], tmp_path)] == ["a.yml", "b.yml"]


# -- Stackwatch's extensions -------------------------------------------------------------------


def test_extension_rules_load() -> None:
    [g] = parse_groups("""
groups:
  - name: ext
    project: shop
    rules:
      - alert: CPU
        expr: avg by (host) (avg_over_time(system_cpu_user[5m]))
        thresholds: {warning: '> 70', critical: '> 90'}
        no_data: 10m
      - alert: FailedLogins
        log: 'level:ERROR AND message:"Failed login attempt"'
        window: 5m
        threshold: '> 10'
      - alert: NewIssue
        error: new_issue
        window: 10m
      - alert: SignupsDown
        expr: sum(increase(signups_total[1h]))
        compare: {offset: 1d, below_by: 20%}
""")
    cpu, logs, errors, signups = g.rules
    assert g.project == "shop"
    assert cpu.thresholds == [("critical", Threshold(">", 90)), ("warning", Threshold(">", 70))]
    assert cpu.no_data_ms == 600_000
    assert (logs.source, logs.window_ms, logs.thresholds) == ("log", 300_000, [("", Threshold(">", 10))])
    assert (errors.source, errors.error_kind) == ("error", "new_issue")
    assert signups.expr == ("(sum(increase(signups_total[1h]))) < last_over_time((sum(increase(signups_total[1h])))"
                            "[1m:1m] offset 1d) * 0.8")
    assert signups.written_expr == "sum(increase(signups_total[1h]))"


def test_extension_mistakes_are_reported() -> None:
    errors = "\n".join(_errors("""
groups:
  - name: ext
    rules:
      - alert: L1
        log: 'level:(ERROR'
        window: 5m
        threshold: '> 1'
      - alert: L2
        log: 'level:ERROR'
      - alert: E1
        error: everything
        window: 5m
      - alert: E2
        error: event_rate
        window: 5m
      - alert: T
        expr: up
        threshold: 'above 5'
      - alert: C
        expr: up
        compare: {offset: 1d}
      - alert: W
        expr: up
        window: 5m
"""))
    assert "could not parse log query" in errors
    assert "log rules need a 'window'" in errors and "log rules need a 'threshold'" in errors
    assert "error must be one of new_issue, regression, event_rate" in errors
    assert "event_rate rules need a 'threshold'" in errors
    assert "invalid threshold 'above 5'" in errors
    assert "compare: set exactly one of below_by and above_by" in errors
    assert "'window' is for log and error rules" in errors


@pytest.mark.parametrize("text,ok", [("> 5", [6.0]), (">= 5", [5.0, 6.0]), ("< 5", [4.0]), ("<= 5", [4.0, 5.0]),
                                     ("== 5", [5.0]), ("!= 5", [4.0, 6.0])])
def test_thresholds(text: str, ok: list[float]) -> None:
    th = Threshold.parse(text)
    assert [v for v in (4.0, 5.0, 6.0, float("nan")) if th.holds(v)] == ok


def test_period_over_period_compiles_to_promql_that_compares_with_the_past() -> None:
    store = MemoryStorage()
    day = 86_400_000
    # Orders per hour: 100 yesterday at this hour, 70 now (30% down), 95 at another site (5% down).
    for site, now_value in (("eu", 70.0), ("us", 95.0)):
        store.add({"__name__": "orders", "site": site}, 0, 100.0)
        store.add({"__name__": "orders", "site": site}, day, now_value)
    expr = compile_compare("orders", {"offset": "1d", "below_by": "20%"})
    res = Engine(store).instant(expr, day)
    assert [(s.labels["site"], float(s.values[0])) for s in res.series] == [("eu", 70.0)]
    above = compile_compare("orders", {"offset": "1d", "above_by": "10%"})
    assert Engine(store).instant(above, day).series == []


def test_below_last_months_average() -> None:
    store = MemoryStorage()
    hour = 3_600_000
    for h in range(24 * 30):
        store.add({"__name__": "revenue"}, h * hour, 100.0)
    store.add({"__name__": "revenue"}, 24 * 30 * hour, 85.0)
    expr = compile_compare("revenue", {"average_over": "30d", "below_by": "10%"})
    res = Engine(store).instant(expr, 24 * 30 * hour)
    assert [float(s.values[0]) for s in res.series] == [85.0]
    store.add({"__name__": "revenue"}, 24 * 30 * hour, 95.0)
    assert Engine(store).instant(expr, 24 * 30 * hour).series == []
