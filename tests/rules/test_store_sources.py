"""Rules over the real (embedded) metric store: the prefetch, the shared-aggregation memo and the
batched writes give exactly the answers of a plain evaluation, including a rule that reads what
a recording rule wrote earlier in the same tick."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stackwatch.model.alerts import Alert
from stackwatch.query.promql import MemoryStorage
from stackwatch.rules import MemorySources, RuleManager, StoreSources
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.metrics import MetricBatch, MetricStore

MIN = 60_000
T0 = 1_700_000_000_000 // MIN * MIN

RULES = """
groups:
  - name: record
    rules:
      - record: job:requests:rate5m
        expr: sum by (job) (rate(requests_total[5m]))
      - alert: JobBusyFromRecording        # reads what the rule above just wrote
        expr: job:requests:rate5m > 1
  - name: alerts
    rules:
      - alert: ErrorsWarning
        expr: sum by (instance) (rate(requests_total{code="500"}[5m])) > 0.1
        labels: {severity: warning}
      - alert: ErrorsCritical              # same left side, another threshold
        expr: sum by (instance) (rate(requests_total{code="500"}[5m])) > 0.5
        labels: {severity: critical}
      - alert: ErrorRatio                  # shares its denominator aggregation
        expr: sum by (instance) (rate(requests_total{code="500"}[5m])) / sum by (instance) (rate(requests_total[5m])) > 0.2
      - alert: AnyDown                     # no metric name: read from the store, not the prefetch
        expr: '{__name__=~"up|health", job="api"} == 0'
      - alert: LongWindow
        expr: max_over_time(queue_depth[30m]) > 90
      - alert: Offset
        expr: queue_depth offset 10m > 50
      - alert: RecordedAcrossGroups
        expr: job:requests:rate5m > 2
"""


def _series() -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    out = []
    for inst in ("a", "b", "c"):
        for code, per_min in (("200", 120.0), ("500", {"a": 6.0, "b": 60.0, "c": 0.0}[inst])):
            labels = {"__name__": "requests_total", "job": "api", "instance": inst, "code": code}
            out.append((labels, [(T0 + i * 15_000, per_min / 4 * i) for i in range(200)]))
    out.append(({"__name__": "up", "job": "api", "instance": "a"}, [(T0 + i * 15_000, 1.0) for i in range(200)]))
    out.append(({"__name__": "health", "job": "api", "instance": "b"}, [(T0 + i * 15_000, 0.0) for i in range(200)]))
    out.append(({"__name__": "queue_depth", "job": "worker"},
                [(T0 + i * 15_000, 95.0 if 40 <= i < 44 else 10.0 + i / 2) for i in range(200)]))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricStore]:
    ex = ChdbExecutor(tmp_path_factory.mktemp("rules-store") / "ch")
    s = MetricStore(ex)
    s.ensure_schema()
    batch = MetricBatch()
    for labels, points in _series():
        for t, v in points:
            batch.add(list(labels.items()), t, v)
    s.insert("default", batch)
    yield s
    ex.close()


def _run(sources: object, tmp_path: Path, times: list[int]) -> list[list[tuple[str, dict[str, str], float | None]]]:
    (tmp_path / "rules.yml").write_text(RULES)
    sent: list[Alert] = []
    m = RuleManager(sources, notify=sent.extend, rule_files=["rules.yml"], base_dir=tmp_path)  # type: ignore[arg-type]
    assert m.reload() == []
    out = []
    for t in times:
        sent.clear()
        m.tick(t)
        bad = [(rs.rule.name, rs.last_error) for gs in m.snapshot() for rs in gs.rules if rs.health != "ok"]
        assert not bad
        out.append(sorted(((a.status(), a.labels, a.value) for a in sent), key=lambda x: (x[0], sorted(x[1].items()))))
    return out


def test_store_evaluation_matches_plain_evaluation(store: MetricStore, tmp_path: Path) -> None:
    memory = MemoryStorage()
    for labels, points in _series():
        memory.add_many(labels, [t for t, _ in points], [v for _, v in points])
    times = [T0 + 20 * MIN + i * MIN for i in range(8)]
    sources = StoreSources(store)
    (tmp_path / "store").mkdir()
    (tmp_path / "mem").mkdir()
    got = _run(sources, tmp_path / "store", times)
    want = _run(MemorySources(memory), tmp_path / "mem", times)
    assert got == want
    names = {lb["alertname"] for cycle in got for _, lb, _ in cycle}
    assert {"ErrorsWarning", "ErrorsCritical", "ErrorRatio", "AnyDown", "LongWindow", "JobBusyFromRecording",
            "RecordedAcrossGroups"} <= names
    # The batching did its job: per tick, one series query and one samples query per distinct
    # window (5m, 30m, 10m ago, the recorded metric) for all 9 rules; shared work was reused.
    assert sources.memo_hits > 0
    assert sources.prefetch_queries <= 5 * len(times)


def test_recorded_series_are_stored(store: MetricStore, tmp_path: Path) -> None:
    from stackwatch.query.promql import Engine
    from stackwatch.query.promql.clickhouse import ClickHouseQuerier

    _run(StoreSources(store), tmp_path, [T0 + 30 * MIN])
    res = Engine(ClickHouseQuerier(store, "default")).instant("job:requests:rate5m", T0 + 30 * MIN)
    [s] = res.series
    assert s.labels == {"__name__": "job:requests:rate5m", "job": "api"}
    assert np.isclose(float(s.values[0]), (120 * 3 + 6 + 60) / 60)
    alerts = Engine(ClickHouseQuerier(store, "default")).instant('ALERTS{alertname="ErrorsCritical"}', T0 + 30 * MIN)
    assert [x.labels["instance"] for x in alerts.series] == ["b"]
