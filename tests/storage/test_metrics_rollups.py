"""Rollups: the last sample per series and 5 min / 1 h bucket, kept by views and read by range
queries whose step is long enough; raw samples otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from stackwatch.query.promql import Engine
from stackwatch.query.promql._ast import parse
from stackwatch.query.promql.clickhouse import ClickHouseQuerier
from stackwatch.query.promql.engine import choose_resolution
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.metrics import ROLLUPS, MetricBatch, MetricStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, an hour boundary
MIN5, HOUR, DAY = 300_000, 3_600_000, 86_400_000


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbExecutor]:
    ex = ChdbExecutor(tmp_path_factory.mktemp("rollups") / "ch")
    yield ex
    ex.close()


@pytest.fixture
def store(executor: ChdbExecutor, request: pytest.FixtureRequest) -> MetricStore:
    executor.database = "r_" + request.node.name[:50]
    executor.command(f"CREATE DATABASE IF NOT EXISTS `{executor.database}`")
    s = MetricStore(executor)
    s.ensure_schema()
    return s


def day_of_scrapes(store: MetricStore, blocks: int = 4) -> None:
    """A gauge and a counter (with a reset) scraped every 15 s for a day, in several blocks."""
    t = np.arange(T0, T0 + DAY, 15_000, dtype=np.int64)
    gauge = 100 + 10 * np.sin(np.arange(t.size) / 50.0)
    counter = np.cumsum(np.full(t.size, 3.0))
    counter[t.size // 2 :] -= counter[t.size // 2 - 1]  # a restart: the counter starts again
    for k, part in enumerate(np.array_split(np.arange(t.size), blocks)):
        b = MetricBatch()
        for i in part.tolist():
            b.add([("__name__", "mem_bytes"), ("job", "api")], int(t[i]), float(gauge[i]))
            b.add([("__name__", "reqs_total"), ("job", "api")], int(t[i]), float(counter[i]))
        store.insert("p", b, dedup_token=f"day-{k}")


def rollup_rows(store: MetricStore, res: int) -> list[tuple[int, int, float]]:
    rows = store.ex.rows(
        f"SELECT bucket, timestamp, value FROM `{store.db}`.`{ROLLUPS[res]}` FINAL ORDER BY fingerprint, bucket"
    )
    return [(int(r["bucket"]), int(r["timestamp"]), float(r["value"])) for r in rows]


def test_views_keep_the_last_sample_of_each_bucket(store: MetricStore) -> None:
    b = MetricBatch()
    for t, v in [(T0 + 1, 1.0), (T0 + MIN5, 2.0), (T0 + MIN5 + 1, 3.0), (T0 + 2 * MIN5 - 1, 4.0)]:
        b.add([("__name__", "g")], t, v)
    store.insert("p", b, dedup_token="a")
    late = MetricBatch()  # a later block: an earlier sample does not replace the bucket's last
    late.add([("__name__", "g")], T0 + 2, 9.0)
    late.add([("__name__", "g")], T0 + 2 * MIN5, 5.0)  # a sample on the bucket's end belongs to it
    store.insert("p", late, dedup_token="b")
    assert rollup_rows(store, MIN5) == [(T0, T0 + MIN5, 2.0), (T0 + MIN5, T0 + 2 * MIN5, 5.0)]
    assert rollup_rows(store, HOUR) == [(T0, T0 + 2 * MIN5, 5.0)]


def test_a_store_made_before_the_rollups_gets_them_filled(store: MetricStore) -> None:
    day_of_scrapes(store, blocks=1)
    for name in ROLLUPS.values():  # as a store from before the rollups: no views, no rows
        store.ex.command(f"DROP VIEW `{store.db}`.`{name}_mv`")
        store.ex.command(f"TRUNCATE TABLE `{store.db}`.`{name}`")
    MetricStore(store.ex).ensure_schema()
    # Two series; the first sample, at T0, closes the bucket (T0 - 5m, T0].
    assert len(rollup_rows(store, MIN5)) == 2 * (DAY // MIN5 + 1)
    assert len(rollup_rows(store, HOUR)) == 2 * (24 + 1)


def test_choice_of_resolution() -> None:
    both = tuple(sorted(ROLLUPS))

    def pick(expr: str, step: int, limit: int | None = None, start: int = T0, end: int | None = None) -> int:
        return choose_resolution(parse(expr), step, both, limit, start_ms=start, end_ms=end)

    # By default only instant selectors at bucket ends, where the rollup answer is exact.
    assert pick("avg(mem)", 2 * HOUR) == HOUR
    assert pick("sum by (job) (mem) / ignoring(x) sum(mem)", 10 * 60_000) == MIN5
    assert pick("avg(mem)", 7 * 60_000) == 0 and pick("avg(mem)", HOUR, start=T0 + 60_000) == 0  # off bucket ends
    assert pick("avg(mem)", HOUR, start=T0 + MIN5) == MIN5
    assert pick("sum(rate(x[10m]))", 10 * 60_000) == 0  # a range function: samples
    assert pick("avg_over_time(x[2h])", HOUR) == 0 and pick("last_over_time(x[2h])", HOUR) == 0
    # offset and @ move the times a selector is read at: they must be bucket ends too.
    assert pick("mem offset 2m", 10 * 60_000) == 0 and pick("mem offset -2m", 10 * 60_000) == 0
    assert pick("mem offset 1d", HOUR) == HOUR and pick("mem offset 15m", HOUR) == MIN5
    assert pick(f"mem @ {(T0 + 123_000) / 1000}", HOUR) == 0 and pick(f"mem @ {(T0 + HOUR) / 1000}", HOUR) == HOUR
    assert pick("mem @ end()", HOUR, end=T0 + 5 * HOUR + 60_000) == 0
    assert pick("mem @ end()", HOUR, end=T0 + 5 * HOUR) == HOUR and pick("mem @ start()", HOUR) == HOUR
    assert pick("sum(rate(x[5m]))", 60_000) == 0  # dashboards at a minute step read samples
    # Asking for downsampled data (max_source_resolution=5m/1h) accepts close answers.
    assert pick("sum(rate(x[10m]))", 10 * 60_000, limit=HOUR) == MIN5
    assert pick("sum(rate(x[2h]))", HOUR, limit=HOUR) == HOUR
    assert pick("sum(rate(x[30m]))", HOUR, limit=HOUR) == MIN5  # a range must span two buckets
    assert pick("rate(x[30m] offset 2m)", HOUR, limit=HOUR) == 0
    assert pick("avg(mem)", 2 * HOUR, limit=MIN5) == MIN5 and pick("avg(mem)", 2 * HOUR, limit=0) == 0
    assert pick("max_over_time(x[1h])", 10 * 60_000, limit=HOUR) == 0  # extremes are not kept
    assert pick("count_over_time(x[1h])", 10 * 60_000, limit=HOUR) == 0  # counts samples
    assert pick("max_over_time(rate(x[5m])[1h:])", HOUR, limit=HOUR) == 0  # subqueries read samples
    assert choose_resolution(parse("avg(mem)"), HOUR, ()) == 0  # no rollups kept (a cluster)


def test_long_range_queries_read_the_rollups_with_exact_or_asked_for_answers(store: MetricStore) -> None:
    day_of_scrapes(store)

    def run(expr: str, step: int, max_res: int | None = None) -> dict[str, np.ndarray]:
        engine = Engine(ClickHouseQuerier(store, "p"))  # one querier per query, as the API does
        r = engine.range(expr, T0 + HOUR, T0 + DAY, step, max_resolution_ms=max_res)
        return {s.labels.get("__name__", "") + str(s.timestamps_ms.size): s.values for s in r.series}

    # A gauge at bucket ends: the bucket's last sample is exactly what the raw lookback finds.
    rolled, raw = run("mem_bytes", 10 * 60_000), run("mem_bytes", 10 * 60_000, max_res=0)
    assert rolled.keys() == raw.keys()
    for k in raw:
        assert np.array_equal(rolled[k], raw[k])
    # A series that stopped 10 min into an hour, without a staleness marker: at the next hour's
    # end the 1 h rollup holds its last sample, 50 min old, which the 5 min lookback does not
    # reach, in the rollup as in the samples.
    b = MetricBatch()
    for t in range(T0, T0 + HOUR + 10 * 60_000 + 1, 15_000):
        b.add([("__name__", "stopped")], t, 1.0)
    store.insert("p", b, dedup_token="stopped")
    rolled, raw = run("stopped", HOUR), run("stopped", HOUR, max_res=0)
    assert rolled.keys() == raw.keys() == {"stopped1"}  # only at T0 + 1h, the first step
    asked = run("stopped", HOUR, max_res=HOUR)  # downsampled: the hour's last sample stays visible
    assert asked.keys() == {"stopped2"}
    # Range functions read samples unless downsampled data is asked for: the same answers.
    for expr in ("rate(reqs_total[30m])", "avg_over_time(mem_bytes[1h])", "deriv(mem_bytes[30m])",
                 "delta(mem_bytes[2h])", "mem_bytes offset 2m"):
        rolled, raw = run(expr, 10 * 60_000), run(expr, 10 * 60_000, max_res=0)
        assert rolled.keys() == raw.keys() and all(np.array_equal(rolled[k], raw[k], equal_nan=True) for k in raw)
    # Asked for (max_source_resolution=5m), rate over ranges of several buckets is close to the
    # raw answer. Where the counter reset, the rollup loses what it counted between the bucket's
    # previous last sample and the restart: at most one bucket's increase (5 min at 3 per 15 s)
    # over the 30 min range.
    rolled = run("rate(reqs_total[30m])", 10 * 60_000, max_res=MIN5)
    raw = run("rate(reqs_total[30m])", 10 * 60_000, max_res=0)
    (a,), (b,) = rolled.values(), raw.values()
    assert a.shape == b.shape
    off = ~np.isclose(a, b, rtol=1e-9)
    assert 0 < off.sum() <= 3  # the windows holding the reset
    assert np.all((b[off] - a[off] >= 0) & (b[off] - a[off] <= 60 * 3 / 1800 + 1e-9))
    # The rollups really are what was read: without the samples, only the rollup answer remains.
    store.ex.command(f"TRUNCATE TABLE `{store.db}`.metric_samples")
    assert run("mem_bytes", 10 * 60_000) and run("mem_bytes", 10 * 60_000, max_res=0) == {}
    assert run("rate(reqs_total[30m])", 10 * 60_000) == {}  # read samples: none left
