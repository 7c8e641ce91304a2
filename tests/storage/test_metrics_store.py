"""The metric store on embedded ClickHouse: schema, dedup, matchers, last write wins, limits, and
the ClickHouse querier giving the same PromQL answers as the in-memory storage."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from stackwatch.query.promql import STALE_NAN, Engine, Matcher, MemoryStorage, TooManySamples, is_stale_nan
from stackwatch.query.promql import clickhouse as chq
from stackwatch.query.promql.clickhouse import ClickHouseQuerier
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.metrics import (
    METRIC_SAMPLES,
    METRIC_SERIES,
    MetricBatch,
    MetricStore,
    SeriesRef,
    fingerprint,
    series_ref,
)
from stackwatch.storage.schema import render_ddl

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, ms


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbExecutor]:
    ex = ChdbExecutor(tmp_path_factory.mktemp("metrics") / "ch")
    yield ex
    ex.close()


@pytest.fixture
def store(executor: ChdbExecutor, request: pytest.FixtureRequest) -> MetricStore:
    # One database per test: the embedded engine is shared by the module.
    executor.database = "m_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:50]
    executor.command(f"CREATE DATABASE IF NOT EXISTS `{executor.database}`")
    s = MetricStore(executor, max_series_per_project=1000)
    s.ensure_schema()
    return s


def batch_of(*samples: tuple[dict[str, str], int, float]) -> MetricBatch:
    b = MetricBatch()
    for labels, t, v in samples:
        assert b.add(list(labels.items()), t, v)
    return b


def test_ddl_declares_time_series_codecs_and_engines() -> None:
    (series,) = render_ddl(METRIC_SERIES, "sw")
    (samples,) = render_ddl(METRIC_SAMPLES, "sw")
    assert "ENGINE = AggregatingMergeTree()" in series
    assert "ORDER BY (project, metric, fingerprint)" in series
    assert "ENGINE = ReplacingMergeTree()" in samples
    assert "`timestamp` Int64 CODEC(Delta(8), ZSTD(1))" in samples
    assert "`value` Float64 CODEC(Gorilla, ZSTD(1))" in samples
    assert "PARTITION BY intDiv(timestamp, 86400000)" in samples
    local, distributed = render_ddl(METRIC_SAMPLES, "sw", cluster="c")
    assert "ReplicatedReplacingMergeTree(" in local and "Distributed(" in distributed


def test_fingerprint_is_stable_and_order_independent() -> None:
    a = MetricBatch()
    a.add([("__name__", "up"), ("job", "x"), ("instance", "i")], 0, 1)
    a.add([("instance", "i"), ("__name__", "up"), ("job", "x"), ("empty", "")], 1, 1)
    assert len(a.refs) == 1  # same series: order and empty labels do not matter
    # Stored with every sample: it must never change between processes or versions.
    assert a.refs[0].fingerprint == fingerprint("up", (("instance", "i"), ("job", "x"))) == 0x11355AAAB1F2DFB4


def test_invalid_series_are_rejected_with_reasons() -> None:
    b = MetricBatch()
    assert not b.add([("job", "x")], 0, 1)
    assert not b.add([("__name__", "a-b")], 0, 1)
    assert not b.add([("__name__", "a"), ("1x", "v")], 0, 1)
    assert not b.add([("__name__", "a"), ("x", "1"), ("x", "2")], 0, 1)
    assert b.rejected_samples == 4
    assert "without a metric name" in b.errors[0] and "invalid metric name" in b.errors[1]
    assert "invalid label name" in b.errors[2] and "duplicate label name" in b.errors[3]


def test_insert_select_and_matchers(store: MetricStore) -> None:
    b = MetricBatch()
    for i in range(10):
        b.add([("__name__", "http_requests_total"), ("route", "/api/a"), ("code", "200")], T0 + i * 15_000, i * 10.0)
        b.add([("__name__", "http_requests_total"), ("route", "/api/b"), ("code", "500")], T0 + i * 15_000, float(i))
        b.add([("__name__", "http_requests_total"), ("route", "/health")], T0 + i * 15_000, 1.0)
        b.add([("__name__", "temp"), ("room", "line\nbreak")], T0 + i * 15_000, 20.5)
    assert store.insert("default", b) == 40
    q = ClickHouseQuerier(store, "default")

    def names(*ms: Matcher) -> list[str]:
        return [s.labels.get("route", s.labels.get("room", "")) for s in q.select(list(ms), T0, T0 + 10**6)]

    name = Matcher("__name__", "=", "http_requests_total")
    assert names(name) == ["/api/a", "/api/b", "/health"]
    assert names(name, Matcher("code", "=", "500")) == ["/api/b"]
    assert names(name, Matcher("code", "!=", "500")) == ["/api/a", "/health"]
    assert names(name, Matcher("code", "=", "")) == ["/health"]  # absent label matches ""
    assert names(name, Matcher("code", "!=", "")) == ["/api/a", "/api/b"]
    assert names(name, Matcher("route", "=~", "/api/.*")) == ["/api/a", "/api/b"]
    assert names(name, Matcher("route", "=~", "api")) == []  # anchored, as in Prometheus
    assert names(name, Matcher("route", "!~", "/api/a|/health")) == ["/api/b"]
    assert names(Matcher("__name__", "=~", "http_.+|te.p")) == ["/api/a", "/api/b", "/health", "line\nbreak"]
    assert names(Matcher("room", "=~", "line.break")) == ["line\nbreak"]  # '.' matches a newline
    assert names(Matcher("route", "=", "x' OR 1=1 --")) == []  # values are parameters, never SQL
    series = q.select([name, Matcher("route", "=", "/api/a")], T0 + 15_000, T0 + 45_000)
    assert series[0].timestamps_ms.tolist() == [T0 + 15_000, T0 + 30_000, T0 + 45_000]
    assert series[0].values.tolist() == [10.0, 20.0, 30.0]
    assert q.select([name], T0 + 10**7, T0 + 10**8) == []


def test_same_token_stores_once_and_the_last_write_wins(store: MetricStore) -> None:
    up = {"__name__": "up", "job": "api"}
    first = batch_of((up, T0, 1.0), (up, T0 + 1000, 1.0))
    store.insert("default", first, dedup_token="metrics-1-1")
    store.insert("default", first, dedup_token="metrics-1-1")  # a WAL replay of the same block
    # A later block rewrites T0; within one block the later duplicate wins too.
    store.insert("default", batch_of((up, T0, 5.0), (up, T0 + 2000, 7.0), (up, T0 + 2000, 8.0)), dedup_token="m-2")
    (s,) = ClickHouseQuerier(store, "default").select([Matcher("__name__", "=", "up")], T0, T0 + 5000)
    assert s.timestamps_ms.tolist() == [T0, T0 + 1000, T0 + 2000]
    assert s.values.tolist() == [5.0, 1.0, 8.0]
    # Series without duplicates are read without FINAL, alongside the one that had them.
    store.insert("default", batch_of(({"__name__": "up", "job": "web"}, T0 + 500, 3.0)), dedup_token="m-3")
    both = ClickHouseQuerier(store, "default").select([Matcher("__name__", "=", "up")], T0, T0 + 5000)
    assert sorted((dict(x.labels)["job"], x.values.tolist()) for x in both) == [("api", [5.0, 1.0, 8.0]), ("web", [3.0])]


def test_stale_markers_keep_their_bits(store: MetricStore) -> None:
    g = {"__name__": "g"}
    store.insert("default", batch_of((g, T0, 1.0), (g, T0 + 1000, STALE_NAN), (g, T0 + 2000, math.nan)))
    (s,) = ClickHouseQuerier(store, "default").select([Matcher("__name__", "=", "g")], T0, T0 + 5000)
    assert is_stale_nan(s.values).tolist() == [False, True, False]
    assert math.isnan(s.values[2])


def test_projects_are_separate(store: MetricStore) -> None:
    store.insert("a", batch_of(({"__name__": "m"}, T0, 1.0)))
    store.insert("b", batch_of(({"__name__": "m"}, T0, 2.0)))
    (s,) = ClickHouseQuerier(store, "b").select([Matcher("__name__", "=", "m")], T0, T0)
    assert s.values.tolist() == [2.0]
    # One WAL block holding both projects' events keeps them apart too.
    events_a = batch_of(({"__name__": "n"}, T0, 3.0)).events()
    events_b = batch_of(({"__name__": "n"}, T0, 4.0)).events()
    store.store_events([("a", events_a), ("b", events_b)], "mixed-1")
    (s,) = ClickHouseQuerier(store, "a").select([Matcher("__name__", "=", "n")], T0, T0)
    assert s.values.tolist() == [3.0]


def test_series_limit_refuses_new_series_only(store: MetricStore) -> None:
    store.max_series = 3
    first = batch_of(*(({"__name__": f"m{i}"}, T0, 1.0) for i in range(2)))
    store.admit("lim", first)
    assert not first.errors
    store.insert("lim", first)
    second = batch_of(*(({"__name__": f"m{i}"}, T0 + 1000, 1.0) for i in range(5)))
    store.admit("lim", second)
    assert [r.name for r in second.refs] == ["m0", "m1", "m2"]  # known series and one new one
    assert second.rejected_samples == 2
    assert "series limit of 3 per project reached: 2 new series (2 samples) refused" in second.errors[0]
    # The limit survives a restart: the known series are read back from the series table.
    store.insert("lim", second)
    fresh = MetricStore(store.ex, max_series_per_project=3)
    third = batch_of(({"__name__": "m9"}, T0, 1.0))
    fresh.admit("lim", third)
    assert third.rejected_samples == 1


def test_label_apis_and_metadata(store: MetricStore) -> None:
    b = batch_of(
        ({"__name__": "http_requests_total", "route": "/a", "code": "200"}, T0, 1.0),
        ({"__name__": "http_requests_total", "route": "/b"}, T0, 1.0),
        ({"__name__": "process_cpu_seconds_total", "job": "api"}, T0 + 86_400_000, 1.0),
    )
    b.add_metadata("http_requests_total", "counter", "Requests served.")
    store.insert("default", b)
    assert store.label_names("default", [], None, None) == ["__name__", "code", "job", "route"]
    only = [[Matcher("__name__", "=", "http_requests_total")]]
    assert store.label_names("default", only, None, None) == ["__name__", "code", "route"]
    assert store.label_values("default", "route", [], None, None) == ["/a", "/b"]
    assert store.label_values("default", "__name__", [], T0 + 3_600_000, None) == ["process_cpu_seconds_total"]
    assert store.metadata("default") == {
        "http_requests_total": [{"type": "counter", "help": "Requests served.", "unit": ""}]
    }


def test_querier_refuses_to_load_too_many_samples(store: MetricStore) -> None:
    store.insert("default", batch_of(*(({"__name__": "big"}, T0 + i, 1.0) for i in range(50))))
    q = ClickHouseQuerier(store, "default", max_samples=10)
    with pytest.raises(TooManySamples):
        q.select([Matcher("__name__", "=", "big")], T0, T0 + 100)


QUERIES = [
    "sum by (route) (rate(http_requests_total[5m]))",
    "sum(rate(http_requests_total{code=~\"5..\"}[5m])) / sum(rate(http_requests_total[5m]))",
    "histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket[5m])))",
    "avg by (instance) (node_memory_bytes)",
    "topk(2, sum by (route) (increase(http_requests_total[10m])))",
    "max_over_time(node_memory_bytes[15m]) - min_over_time(node_memory_bytes[15m])",
    "absent(nonexistent_metric)",
    # One read holding a series with a staleness marker and series without: range functions
    # must skip the marker whichever way the engine windows the read.
    'sum by (__name__) (rate({__name__=~"flappy_total|http_requests_total"}[5m]))',
    "count_over_time(flappy_total[10m])",
]


def test_clickhouse_querier_answers_like_memory_storage(store: MetricStore, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    mem = MemoryStorage()
    batch = MetricBatch()

    def add(labels: dict[str, str], ts: np.ndarray, vals: np.ndarray) -> None:
        mem.add_many(labels, ts, vals)
        for t, v in zip(ts.tolist(), vals.tolist(), strict=True):
            batch.add(list(labels.items()), t, v)

    ts = T0 + np.arange(120) * 15_000 + rng.integers(0, 50, 120)
    for route in ("/a", "/b", "/c"):
        for code in ("200", "500"):
            add({"__name__": "http_requests_total", "route": route, "code": code}, ts,
                np.cumsum(rng.poisson(3 if code == "200" else 0.3, 120)).astype(float))
        counts = np.zeros(120)
        for le in ("0.1", "0.5", "1", "+Inf"):
            counts = counts + np.cumsum(rng.poisson(1, 120))
            add({"__name__": "http_request_duration_seconds_bucket", "route": route, "le": le}, ts, counts.copy())
    for inst in ("i1", "i2"):
        add({"__name__": "node_memory_bytes", "instance": inst}, ts, rng.normal(1e9, 1e7, 120).round())
    flappy = np.cumsum(rng.poisson(2, 120)).astype(float)
    flappy[60] = STALE_NAN  # the target went away for one scrape
    add({"__name__": "flappy_total", "route": "/a"}, ts, flappy)
    store.insert("default", batch)
    ref = Engine(mem)
    # As shipped (these selections are read in one part), then with every selection of two or
    # more series streamed in parts: range functions see several storage reads per selector.
    for parts, min_series in ((chq.STREAM_PARTS, chq.STREAM_MIN_SERIES), (3, 1)):
        monkeypatch.setattr(chq, "STREAM_PARTS", parts)
        monkeypatch.setattr(chq, "STREAM_MIN_SERIES", min_series)
        ch = Engine(ClickHouseQuerier(store, "default"))
        for q in QUERIES:
            a = ch.range(q, T0 + 600_000, T0 + 1_700_000, 60_000).to_prometheus_json()
            b = ref.range(q, T0 + 600_000, T0 + 1_700_000, 60_000).to_prometheus_json()
            assert a == b, (q, parts)
            a = ch.instant(q, T0 + 1_000_000).to_prometheus_json()
            b = ref.instant(q, T0 + 1_000_000).to_prometheus_json()
            assert a == b, (q, parts)


def test_samples_compress_like_a_time_series_database(store: MetricStore, tmp_path: Path) -> None:
    """Scrape-like data (counters, gauges; 15 s interval with ms jitter) stays near Prometheus's
    ~1.5 bytes/sample; the full-size figure comes from bench/metrics_bench.py."""
    rng = np.random.default_rng(3)
    b = MetricBatch()
    n = 2880  # 12 h at 15 s
    for i in range(40):
        ts = T0 + np.arange(n) * 15_000 + rng.integers(-3, 4, n)
        if i % 2:
            vals = np.cumsum(rng.poisson(20, n)).astype(float)
        else:
            vals = (1e8 + np.cumsum(rng.integers(-5, 6, n)) * 4096).astype(float)
        b.series.extend([b.index(_ref(f"m{i}"))] * n)
        b.timestamps.extend(ts.tolist())
        b.values.extend(vals.tolist())
    store.insert("default", b)
    store.ex.command(f"OPTIMIZE TABLE `{store.db}`.metric_samples FINAL")
    stats = store.storage_stats()
    assert stats["samples"] == 40 * n
    assert stats["bytes_per_sample"] < 2.5, stats  # includes per-part overhead on this small table


def _ref(name: str) -> SeriesRef:
    return series_ref([("__name__", name), ("job", "bench")])


def _series_rows(store: MetricStore) -> list[tuple[int, int]]:
    rows = store.ex.rows(f"SELECT first_seen, last_seen FROM `{store.db}`.metric_series ORDER BY first_seen, last_seen")
    return [(int(r["first_seen"]), int(r["last_seen"])) for r in rows]


def test_series_rows_are_written_once_per_hour_of_samples(store: MetricStore) -> None:
    hour = 3_600_000
    labels = {"__name__": "up", "job": "api"}
    for k in range(6):  # a steady stream, one sample per block, all in the first hour
        store.insert("p", batch_of((labels, T0 + k * 15_000, 1.0)), dedup_token=f"t{k}")
    assert _series_rows(store) == [(T0, T0 + hour - 1)]  # one upsert, widened to the whole hour
    store.insert("p", batch_of((labels, T0 + hour + 5, 1.0)), dedup_token="next-hour")
    assert _series_rows(store)[-1] == (T0, T0 + 2 * hour - 1)
    # Selectors see the series for the hours it has samples in.
    assert [fp for fp, _ in store.find_series("p", [Matcher("job", "=", "api")], T0 + 2 * hour, T0 + 3 * hour)] == []
    assert len(store.find_series("p", [Matcher("job", "=", "api")], T0 + hour, T0 + hour)) == 1


def test_wal_events_of_the_per_series_form_are_still_stored(store: MetricStore) -> None:
    """Logs written before the columnar event replay unchanged."""
    ref = series_ref([("__name__", "m"), ("a", "b")])
    bits = np.array([1.5, 2.5]).view(np.uint64).tolist()
    old = [["s", ref.fingerprint, ref.name, ref.flat, [T0, T0 + 1000], bits], ["m", "m", "gauge", "help", ""]]
    assert store.store_events([("p", old)], "old-form") == 2
    _fps, ts, vals = store.fetch_samples("p", [ref.fingerprint], T0, T0 + 1000)
    assert ts.tolist() == [T0, T0 + 1000] and vals.tolist() == [1.5, 2.5]
    assert store.metadata("p")["m"][0]["type"] == "gauge"


def test_wal_events_of_the_columnar_list_form_are_still_stored(store: MetricStore) -> None:
    """The "S" form (labels as JSON lists) of logs written before the labels became lazy."""
    a, b = series_ref([("__name__", "m"), ("i", "1")]), series_ref([("__name__", "m"), ("i", "2")])
    ts = np.array([T0, T0 + 1000, T0 + 5], dtype="<i8")
    vals = np.array([1.0, 2.0, 7.0], dtype="<f8")
    old = [["S", [a.fingerprint, b.fingerprint], [a.name, b.name], [a.flat, b.flat], [2, 1],
            base64.b64encode(ts.tobytes()).decode(), base64.b64encode(vals.tobytes()).decode()]]
    assert store.store_events([("p", old)], "S-form") == 3
    fps, got_ts, got_vals = store.fetch_samples("p", [a.fingerprint, b.fingerprint], T0, T0 + 1000)
    assert sorted(zip(fps.tolist(), got_ts.tolist(), got_vals.tolist(), strict=True)) == sorted(
        [(a.fingerprint, T0, 1.0), (a.fingerprint, T0 + 1000, 2.0), (b.fingerprint, T0 + 5, 7.0)])
    assert {fp for fp, _ in store.find_series("p", [Matcher("i", "=~", "1|2")])} == {a.fingerprint, b.fingerprint}


def test_a_block_reads_the_labels_of_series_it_does_not_write_not_at_all(store: MetricStore) -> None:
    """A steady stream's events carry every series' labels; a block whose series rows are all
    stored already must not need them (they are JSON text read only for rows it writes)."""
    labels = {"__name__": "up", "job": "api"}
    store.insert("p", batch_of((labels, T0, 1.0)), dedup_token="first")
    events = batch_of((labels, T0 + 15_000, 0.0)).events()
    assert events[0][0] == "F" and isinstance(events[0][5], str)
    events[0][5] = "not json: never parsed"
    assert store.store_events([("p", events)], "second") == 1
    _, ts, vals = store.fetch_samples("p", [series_ref(list(labels.items())).fingerprint], T0, T0 + 15_000)
    assert ts.tolist() == [T0, T0 + 15_000] and vals.tolist() == [1.0, 0.0]
    with pytest.raises(orjson.JSONDecodeError):  # a series row to write does read them
        late = batch_of((labels, T0 + 3 * 3_600_000, 1.0)).events()
        late[0][5] = "not json"
        store.store_events([("p", late)], "third")


def test_one_block_of_several_requests_and_projects_writes_each_series_row_once(store: MetricStore) -> None:
    up = {"__name__": "up", "job": "api"}
    other = {"__name__": "other", "job": "api"}
    hour = 3_600_000
    block = [
        ("a", batch_of((up, T0, 1.0), (other, T0, 5.0)).events()),
        ("b", batch_of((up, T0 + 2 * hour, 2.0)).events()),
        ("a", batch_of((up, T0 + hour + 1, 3.0)).events()),
    ]
    assert store.store_events(block, "several") == 4
    rows = store.ex.rows(
        f"SELECT project, metric, first_seen, last_seen FROM `{store.db}`.metric_series ORDER BY project, metric"
    )
    assert [(r["project"], r["metric"], int(r["first_seen"]), int(r["last_seen"])) for r in rows] == [
        ("a", "other", T0, T0 + hour - 1),
        ("a", "up", T0, T0 + 2 * hour - 1),  # both of a's requests, merged
        ("b", "up", T0 + 2 * hour, T0 + 3 * hour - 1),
    ]
    fp = series_ref(list(up.items())).fingerprint
    assert store.fetch_samples("a", [fp], T0, T0 + 3 * hour)[2].tolist() == [1.0, 3.0]
    assert store.fetch_samples("b", [fp], T0, T0 + 3 * hour)[2].tolist() == [2.0]


def test_retention_per_project_drops_whole_days(store: MetricStore) -> None:
    day = 86_400_000
    up = {"__name__": "up", "job": "api"}
    old_only = {"__name__": "gone", "job": "batch"}
    for project in ("short", "long"):
        store.insert(project, batch_of(*[(up, T0 + d * day + 1000, float(d)) for d in range(5)],
                                       (old_only, T0 + 1000, 1.0)), dedup_token=f"ret-{project}")
    now = T0 + 4 * day + 3_600_000  # an hour into day 4

    def days(project: str) -> list[int]:
        fps = [fp for fp, _ in store.find_series(project, [Matcher("__name__", "=", "up")])]
        _, ts, _ = store.fetch_samples(project, fps, T0, T0 + 10 * day)
        return sorted({int((t - T0) // day) for t in ts.tolist()})

    # "short" keeps 2 days (days 2..4 survive: day 2 holds now - 2 days), "long" keeps 10.
    done = store.apply_retention({"short": 2, "long": 10}, now)
    assert done["partitions_dropped"] == 0 and done["sample_deletes"] == 1 and done["series_deletes"] == 1
    assert days("short") == [2, 3, 4] and days("long") == [0, 1, 2, 3, 4]
    for table in ("metric_rollup_5m", "metric_rollup_1h"):  # the rollups follow the samples
        left = store.ex.rows(f"SELECT project, min(timestamp) AS t FROM `{store.db}`.{table} GROUP BY project")
        assert {r["project"]: (int(r["t"]) - T0) // day for r in left} == {"short": 2, "long": 0}
    assert store.find_series("short", [Matcher("__name__", "=", "gone")]) == []  # its series went too
    assert len(store.find_series("long", [Matcher("__name__", "=", "gone")])) == 1
    # Running again finds nothing left to delete.
    assert store.apply_retention({"short": 2, "long": 10}, now) == {
        "partitions_dropped": 0, "sample_deletes": 0, "series_deletes": 0}
    # Once every project's retention has passed a day, its partition is dropped whole.
    done = store.apply_retention({"short": 2, "long": 3}, now)
    assert done["partitions_dropped"] == 1  # day 0: older than both limits ("long" now keeps days 1..4)
    assert days("long") == [1, 2, 3, 4] and days("short") == [2, 3, 4]


def test_a_repeat_across_the_requests_of_one_block_keeps_the_later(store: MetricStore) -> None:
    """Two requests stored in one block, the second rewriting a timestamp of the first: the runs
    overlap in time, so the block goes through "last write wins" and the later value is kept."""
    s = {"__name__": "rw", "job": "x"}
    first = batch_of((s, T0, 1.0), (s, T0 + 15_000, 2.0), (s, T0 + 30_000, 3.0)).events()
    second = batch_of((s, T0 + 30_000, 30.0), (s, T0 + 45_000, 4.0)).events()
    assert store.store_events([("p", first), ("p", second)], "overlap") == 4
    _, ts, vals = store.fetch_samples("p", [series_ref(list(s.items())).fingerprint], T0, T0 + 45_000)
    assert ts.tolist() == [T0, T0 + 15_000, T0 + 30_000, T0 + 45_000]
    assert vals.tolist() == [1.0, 2.0, 30.0, 4.0]


def test_events_read_back_from_the_wal_equal_the_live_ones(store: MetricStore) -> None:
    from stackwatch.ingest.batcher import Entry
    from stackwatch.storage.metrics import wal_entry

    s = {"__name__": "live", "job": "x", "quote": 'a "b" \\ ü'}
    events = batch_of((s, T0, 1.5), (s, T0 + 1000, STALE_NAN)).events()
    entry = wal_entry("p", events)
    assert entry.live is events and entry.nbytes == len(entry.payload) + 2 * 8 + 2 * 8 + 8 + 8  # ts, values, fp, count
    replayed = Entry.decode(7, entry.payload)
    assert replayed.live is None
    decoded = replayed.body()["e"]
    # The labels are embedded as JSON in the record (not a string of JSON), parsed on replay.
    assert decoded[0][5] == [["live"], [["job", "x", "quote", 'a "b" \\ ü']]]
    assert orjson.loads(str(events[0][5])) == decoded[0][5]
    for live_field, text, dtype in zip(events[0][1:5], decoded[0][1:5], ("<u8", "<i8", "<i8", "<f8"), strict=True):
        assert np.frombuffer(base64.b64decode(text), dtype=dtype).view(np.uint64).tolist() == np.asarray(
            live_field, dtype=dtype).view(np.uint64).tolist()  # bit for bit: the stale NaN too
    assert store.store_entries([replayed], "from-wal") == 2
    _, ts, vals = store.fetch_samples("p", [series_ref(list(s.items())).fingerprint], T0, T0 + 1000)
    assert ts.tolist() == [T0, T0 + 1000] and vals[0] == 1.5 and is_stale_nan(vals[1])
