"""Dashboard shapes evaluated in ClickHouse (query.promql.pushdown) equal the numpy engine's answers.

One chDB store holds :mod:`promgen`'s fleet plus series with staleness markers; every query runs
twice through the same ClickHouse querier, once with pushdown and once without, as instant
queries and as range queries at several steps (finer than the scrape interval, one not
dividing the range, offsets), and the results must agree within 1e-9 relative. The numpy path
is itself held to Prometheus by test_promql_vs_prometheus.py and the conformance corpus.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from promgen import generate
from sqlcompare import Answer, answer, assert_same

from stackwatch.query.promql import Engine
from stackwatch.query.promql.clickhouse import ClickHouseQuerier
from stackwatch.query.promql.pushdown import plan
from stackwatch.query.promql.storage import STALE_NAN
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.metrics import MetricBatch, MetricStore

DATA = generate(jobs=2, instances=2, routes=3, hours=2)
T0 = DATA.t0_ms
END = DATA.t_end_ms


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricStore]:
    ex = ChdbExecutor(tmp_path_factory.mktemp("pushdown") / "ch")
    st = MetricStore(ex)
    st.ensure_schema()
    batch = MetricBatch()
    DATA.add_to(batch)
    # Staleness: a counter and a gauge whose target goes away (marker) and comes back later.
    for name, base in (("stale_requests_total", 1000.0), ("stale_gauge", 5.0)):
        for i in range(480):
            t = T0 + 5_123 + i * 15_000
            if 200 <= i < 240:
                continue
            v = STALE_NAN if i == 199 else (base + 3 * i if name.endswith("_total") else base + (i % 7))
            batch.add([("__name__", name), ("job", "gone"), ("route", "/a")], t, v)
    # Counters whose resets a difference of running sums gets wrong: a +Inf glitch, and a 2^64
    # wrap beside small restarts (the engine must answer these).
    for i in range(480):
        t = T0 + 7_777 + i * 15_000
        batch.add([("__name__", "glitch_total"), ("queue", "a")], t, math.inf if i == 40 else float(i))
        batch.add([("__name__", "wrap_octets_total"), ("if", "eth0")], t, 2.0**64 - 4096 + 1024 * (i % 9))
        batch.add([("__name__", "wrap_octets_total"), ("if", "lo")], t, float(i % 50))
    st.insert("default", batch)
    yield st
    ex.close()


QUERIES = [
    "sum by (route) (rate(http_requests_total[5m]))",
    "sum by (job) (increase(http_requests_total[10m]))",
    "sum(rate(http_requests_total[1m]))",
    'sum by (route) (rate(http_requests_total{code=~"5.."}[5m])) / sum by (route) (rate(http_requests_total[5m]))',
    "histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket[5m])))",
    "topk(3, sum by (instance, route) (rate(http_requests_total[5m])))",
    "avg by (instance) (process_resident_memory_bytes)",
    "avg by (job) (queue_depth)",
    "count by (job) (queue_depth)",
    "sum(queue_depth offset 10m)",
    "sum by (job) (rate(http_requests_total[5m] offset 7m))",
    "count(up)",
    "avg by (route) (rate(http_request_duration_seconds_count[2m]))",
    "count by (code) (rate(http_requests_total[5m]))",
    "sum by (route) (rate(stale_requests_total[5m]))",
    "sum by (job) (stale_gauge)",
    "avg(rate(stale_requests_total[1m]))",
    "sum by (nope) (rate(http_requests_total[5m]))",
    "sum(rate(no_such_metric[5m]))",
]


def _run(store: MetricStore, pushdown: bool, expr: str, **kw: int) -> tuple[Answer, int]:
    return answer(store, expr, {"pushdown": pushdown}, **kw)


@pytest.mark.parametrize("expr", QUERIES)
def test_range_queries_pushed_down_equal_engine(store: MetricStore, expr: str) -> None:
    for start, end, step in ((T0 + 7_000, END, 60_000), (T0 + 600_000, T0 + 1_500_000, 10_000),
                             (T0 + 1_000, T0 + 3_600_000, 97_000)):
        pushed, n = _run(store, True, expr, start=start, end=end, step=step)
        plain, _ = _run(store, False, expr, start=start, end=end, step=step)
        assert_same(f"{expr} step {step}", pushed, plain)
        if "no_such" not in expr:
            assert n >= 1, "the shape was not pushed down"
            assert pushed, "nothing to compare"


@pytest.mark.parametrize("expr", QUERIES[:8])
def test_instant_queries_pushed_down_equal_engine(store: MetricStore, expr: str) -> None:
    for t in (T0 + 60_000, END - 1):
        pushed, n = _run(store, True, expr, time=t)
        plain, _ = _run(store, False, expr, time=t)
        assert_same(f"{expr} @ {t}", pushed, plain)
        assert n >= 1


def test_other_shapes_are_not_pushed_down() -> None:
    for expr in ("max by (job) (queue_depth)", "sum without (instance) (queue_depth)",
                 "sum(rate(http_requests_total[5m] @ 100))", "sum(irate(http_requests_total[5m]))",
                 "rate(http_requests_total[5m])", "sum by (__name__) (up)", "sum(up or queue_depth)"):
        assert plan(Engine.parse(expr)) is None, expr
    assert plan(Engine.parse("sum by (b, a, a) (rate(x[5m]))")).grouping == ("a", "b")  # type: ignore[union-attr]


@pytest.mark.parametrize("expr", ["sum by (queue) (rate(glitch_total[5m]))",
                                  "sum by (if) (increase(wrap_octets_total[5m]))"])
def test_resets_the_running_sums_cannot_subtract_are_left_to_the_engine(store: MetricStore, expr: str) -> None:
    """A +Inf once made every later window of its series NaN in SQL; a 2^64 wrap lost the
    digits of small restarts. Such a query is answered by the engine, and rightly."""
    start, end, step = T0 + 7_000, END, 60_000
    pushed, n = _run(store, True, expr, start=start, end=end, step=step)
    plain, _ = _run(store, False, expr, start=start, end=end, step=step)
    assert n == 0, "pushed down despite resets it cannot sum exactly"
    assert_same(expr, pushed, plain)
    res = Engine(ClickHouseQuerier(store, "default", pushdown=True)).range(expr, END - 600_000, END, 60_000)
    for series in res.series:  # windows long after the glitch: finite, as in Prometheus
        assert np.isfinite(series.values).all(), (series.labels, series.values)


def test_pushdown_values_at_a_known_point(store: MetricStore) -> None:
    """Not only agreement: a constant-rate counter gives its exact rate (3 per 15 s)."""
    res = Engine(ClickHouseQuerier(store, "default", pushdown=True)).range(
        "sum(rate(stale_requests_total[5m]))", T0 + 1_800_000, T0 + 1_800_000, 60_000)
    assert np.allclose(res.series[0].values, [0.2])
