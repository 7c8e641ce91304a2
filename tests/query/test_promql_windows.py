"""``*_over_time`` in instant queries, aggregated in ClickHouse, equal the engine's answers.

One chDB store holds :mod:`promgen`'s fleet plus series made to hit the edge cases (staleness
markers, NaN and infinite values, a sample written twice with different values, a gap); each
query runs through the same ClickHouse querier with the window aggregation and without it
(the numpy kernels, themselves held to Prometheus by the conformance corpus and the
real-Prometheus comparison), and the answers must agree within 1e-9 relative.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from promgen import generate
from sqlcompare import Answer, answer, assert_same

from stackwatch.query.promql import Engine
from stackwatch.query.promql.clickhouse import ClickHouseQuerier
from stackwatch.query.promql.storage import STALE_NAN
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.metrics import MetricBatch, MetricStore

DATA = generate(jobs=2, instances=2, routes=2, hours=3)
T0 = DATA.t0_ms
END = DATA.t_end_ms


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricStore]:
    ex = ChdbExecutor(tmp_path_factory.mktemp("windows") / "ch")
    st = MetricStore(ex)
    st.ensure_schema()
    # Unmerged parts keep a sample written twice as two rows, as a busy store does between merges.
    ex.command(f"SYSTEM STOP MERGES `{st.db}`.metric_samples")
    batch = MetricBatch()
    DATA.add_to(batch)
    odd = [("__name__", "odd"), ("kind", "edge")]
    for i in range(700):
        t = T0 + 4_321 + i * 15_000
        if 300 <= i < 340:
            continue  # a gap of 10 minutes
        v = float(i % 11) - 5.0
        if i == 299:
            v = STALE_NAN  # the target went away before the gap
        elif i % 97 == 5:
            v = math.nan
        elif i == 500:
            v = math.inf
        batch.add(odd, t, v)
    # A window whose values are all NaN; one whose sum needs compensation.
    for i in range(40):
        batch.add([("__name__", "odd"), ("kind", "nan")], T0 + 1_000 + i * 15_000, math.nan)
        batch.add([("__name__", "odd"), ("kind", "tiny")], T0 + 2_000 + i * 15_000, 1e16 if i == 0 else 1.0)
    for i, v in enumerate((1e100, 1.0, -1e100)):
        batch.add([("__name__", "odd"), ("kind", "cancel")], T0 + 3_000 + i * 15_000, v)
    for i in range(4):  # finite values whose sum overflows
        batch.add([("__name__", "odd"), ("kind", "big")], T0 + 3_500 + i * 15_000, 1e308)
    st.insert("default", batch)
    # The same sample written again with another value: the last write wins.
    again = MetricBatch()
    again.add(odd, T0 + 4_321 + 10 * 15_000, 1234.5)
    # A series whose only sample is written again as a staleness marker: nothing left of it.
    gone = [("__name__", "odd"), ("kind", "gone")]
    first = MetricBatch()
    first.add(gone, T0 + 60_000, 7.0)
    # A series written in two parts whose spans do not overlap: their shares are combined.
    split = [("__name__", "odd"), ("kind", "split")]
    for i in range(120):
        (first if i < 60 else again).add(split, T0 + 7_000 + i * 15_000, math.nan if i % 13 == 0 else float(i % 9))
    st.insert("default", first)
    again.add(gone, T0 + 60_000, STALE_NAN)
    st.insert("default", again)
    yield st
    ex.close()


FUNCS = ["count_over_time", "sum_over_time", "avg_over_time", "min_over_time", "max_over_time",
         "last_over_time", "first_over_time", "present_over_time"]
SELECTORS = ["http_requests_total", "process_resident_memory_bytes", "odd", 'odd{kind="edge"}',
             'queue_depth{job="api"}', "no_such_metric"]


def _run(store: MetricStore, windows: bool, expr: str, **kw: int) -> tuple[Answer, int]:
    return answer(store, expr, {"windows": windows}, **kw)


def _cancels(func: str, sel: str) -> bool:
    """Whether the selection may sum values that cancel (the edge series swings around zero): then
    the engine's kernel sums, exactly as Prometheus, rather than ClickHouse's Kahan sum."""
    return func in ("sum_over_time", "avg_over_time") and sel.startswith("odd")


def _assert_same(expr: str, got: Answer, want: Answer) -> None:
    assert_same(expr, got, want, ordered=True)


@pytest.mark.parametrize("func", FUNCS)
def test_instant_windows_equal_engine(store: MetricStore, func: str) -> None:
    for sel in SELECTORS:
        for rng in ("1m", "10m", "1h", "1d"):
            for t in (T0 + 61_000, T0 + 5_000_000, END - 1, END + 300_000):
                expr = f"{func}({sel}[{rng}])"
                pushed, n = _run(store, True, expr, time=t)
                plain, _ = _run(store, False, expr, time=t)
                _assert_same(f"{expr} @ {t}", pushed, plain)
                assert n == 1 or _cancels(func, sel), f"{expr} was not aggregated in ClickHouse"
    # The forms around the selector: offset, @, and an aggregation over the result.
    for expr in (f"{func}(odd[30m] offset 1h)", f"{func}(odd[30m] @ {(T0 + 7_200_000) / 1000})",
                 f"sum by (kind) ({func}(odd[2h]))", f"{func}(http_requests_total[1h]) > 0"):
        pushed, n = _run(store, True, expr, time=END - 1)
        plain, _ = _run(store, False, expr, time=END - 1)
        _assert_same(expr, pushed, plain)
        assert n == 1, expr


@pytest.mark.parametrize("func", FUNCS)
def test_range_queries_read_samples(store: MetricStore, func: str) -> None:
    """Range queries stay with the engine, even with windows that do not overlap (a step at
    least the range): a group per (series, step) made ClickHouse the slower of the two."""
    for rng, (start, end, step) in (("1m", (T0 + 60_000, END, 60_000)), ("1h", (T0 + 7_777, END, 3_600_000))):
        expr = f"{func}(odd[{rng}])"
        pushed, n = _run(store, True, expr, start=start, end=end, step=step)
        plain, _ = _run(store, False, expr, start=start, end=end, step=step)
        _assert_same(f"{expr} step {step}", pushed, plain)
        assert n == 0, f"{expr} step {step} was aggregated in ClickHouse"


def test_other_functions_read_samples(store: MetricStore) -> None:
    for expr, kw in (("rate(http_requests_total[5m])", {"time": END - 1}),
                     ("quantile_over_time(0.5, odd[1h])", {"time": END - 1}),
                     ("stddev_over_time(odd[1h])", {"time": END - 1})):
        _, n = _run(store, True, expr, **kw)
        assert n == 0, expr


def test_known_values(store: MetricStore) -> None:
    """Not only agreement: the edge series' answers are what Prometheus's rules give."""
    e = Engine(ClickHouseQuerier(store, "default"))

    def one(expr: str, t: int) -> float:
        (s,) = e.instant(expr, t).series
        return float(s.values[0])

    t = T0 + 1_000 + 39 * 15_000
    assert math.isnan(one('max_over_time(odd{kind="nan"}[1h])', t))  # all NaN: NaN
    assert one('count_over_time(odd{kind="nan"}[1h])', t) == 40
    assert math.isclose(one('sum_over_time(odd{kind="tiny"}[1h])', t + 1_000), 1e16 + 39, rel_tol=1e-15)
    # Values that cancel: Prometheus's compensated sum is exact here.
    assert one('sum_over_time(odd{kind="cancel"}[1h])', t) == 1.0
    assert one('avg_over_time(odd{kind="cancel"}[1h])', t) == 1.0 / 3
    # A sum that overflows is +Inf, and the mean is still the values' mean (Prometheus switches
    # to an incremental mean): not the NaN that a compensated sum's Inf - Inf would give.
    assert one('sum_over_time(odd{kind="big"}[1h])', t) == math.inf
    assert one('avg_over_time(odd{kind="big"}[1h])', t) == 1e308
    # The rewritten sample: last write wins.
    t = T0 + 4_321 + 10 * 15_000
    assert one('last_over_time(odd{kind="edge"}[10s])', t) == 1234.5
    assert one('sum_over_time(odd{kind="edge"}[2m])', T0 + 4_321 + 502 * 15_000) == math.inf
    assert e.instant('count_over_time(odd{kind="gone"}[1h])', T0 + 600_000).series == []
    # Written in two parts: the window's shares are combined.
    t = T0 + 7_000 + 119 * 15_000
    assert one('count_over_time(odd{kind="split"}[1d])', t) == 120
    assert one('last_over_time(odd{kind="split"}[1d])', t) == 119 % 9
    assert one('max_over_time(odd{kind="split"}[1d])', t) == 8
    assert one('min_over_time(odd{kind="split"}[1d])', t) == 0  # NaN skipped
    assert math.isnan(one('sum_over_time(odd{kind="split"}[1d])', t))  # NaN counted
    # The staleness marker is not a sample: of the three points in this window it is one.
    t = T0 + 4_321 + 299 * 15_000
    assert one('count_over_time(odd{kind="edge"}[31s])', t) == 2
    assert one('count_over_time(odd{kind="edge"}[1d])', END) == 700 - 40 - 1  # the gap, the marker
