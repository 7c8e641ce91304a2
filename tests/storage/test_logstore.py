"""The log store on embedded ClickHouse: insert, dedup tokens, search pages, histogram."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackwatch.query.logql import compile_query
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.logs import LogStore
from stackwatch.storage.schema import PROMPT_CLEANUP

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def record(i: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "timestamp": T0 + i * 10**9,
        "observed_timestamp": T0 + i * 10**9 + 5,
        "project": "default",
        "service": "api",
        "severity_text": "INFO",
        "severity_number": 9,
        "message": f"request {i} served",
        "trace_id": "",
        "span_id": "",
        "source": "app.py:10",
        "logger": "app",
        "function": "handle",
        "host": "web-1",
        "log_type": "application",
        "attributes": {"context.duration": i * 10, "context.route": "/api/leads/{id}", "ok": True},
        "resource": {"service.name": "api"},
    }
    base.update(kw)
    return base


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogStore]:
    ex = ChdbExecutor(tmp_path_factory.getbasetemp() / "chdb", database=f"t_{uuid.uuid4().hex[:8]}")
    s = LogStore(ex)
    s.ensure_schema()
    yield s
    ex.command(f"DROP DATABASE `{ex.database}`")
    ex.close()


def test_insert_and_search_newest_first_with_total(store: LogStore) -> None:
    store.insert([record(i) for i in range(250)])
    page = store.search("default", "1", {}, T0, T0 + 10**12, limit=100)
    assert page.total == 250
    assert [h["message"] for h in page.hits[:2]] == ["request 249 served", "request 248 served"]
    hit = page.hits[0]
    assert hit["timestamp"] == "2026-01-01T00:04:09.000000000Z"
    assert hit["attributes"] == {"context.duration": 2490, "context.route": "/api/leads/{id}", "ok": "true"}
    assert hit["level"] == "INFO"


def test_cursor_pages_cover_every_row_once(store: LogStore) -> None:
    # Equal timestamps across a page boundary must neither repeat nor vanish.
    store.insert([record(i // 3, message=f"m{i}") for i in range(90)])
    seen: list[str] = []
    cursor = None
    while True:
        page = store.search("default", "1", {}, T0, T0 + 10**12, limit=7, cursor=cursor, with_total=False)
        seen.extend(h["message"] for h in page.hits)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(f"m{i}" for i in range(90))


def test_same_dedup_token_stores_block_once(store: LogStore) -> None:
    block = [record(i) for i in range(10)]
    store.insert(block, dedup_token="logs-1-10")
    store.insert(block, dedup_token="logs-1-10")
    store.insert(block, dedup_token="logs-11-20")
    assert store.count("default", "1", {}, T0, T0 + 10**12) == 20


def test_project_and_time_range_scope(store: LogStore) -> None:
    store.insert([record(i) for i in range(10)] + [record(i, project="other") for i in range(10)])
    assert store.count("default", "1", {}, T0 + 2 * 10**9, T0 + 5 * 10**9) == 3
    assert store.count("other", "1", {}, T0, T0 + 10**12) == 10


def test_histogram_fills_empty_buckets(store: LogStore) -> None:
    store.insert([record(i) for i in (0, 1, 2, 125)])
    buckets = store.histogram("default", "1", {}, T0, T0 + 180 * 10**9, 60)
    assert buckets == [
        {"t": T0 // 10**9, "count": 3},
        {"t": T0 // 10**9 + 60, "count": 0},
        {"t": T0 // 10**9 + 120, "count": 1},
    ]


def test_parameters_are_not_sql(store: LogStore) -> None:
    store.insert([record(0, service="x'); DROP TABLE logs_hot; --")])
    page = store.search(
        "default", "service = {s:String}", {"s": "x'); DROP TABLE logs_hot; --"}, T0, T0 + 10**12
    )
    assert page.total == 1


def test_one_embedded_store_per_process(store: LogStore, tmp_path: Path) -> None:
    from stackwatch.storage.executor import StorageError

    with pytest.raises(StorageError, match="already open"):
        ChdbExecutor(tmp_path / "elsewhere")


def test_a_huge_integer_attribute_does_not_fail_the_block(store: LogStore) -> None:
    # A 19-digit snowflake id is more than float64 holds exactly; one such line must not make
    # the whole block (and so the batcher) fail.
    store.insert([record(0, attributes={"order_id": 1234567890123456789, "n": 5}), record(1)])
    hits = store.search("default", "1", {}, T0, T0 + 10**12).hits
    assert float(hits[1]["attributes"]["order_id"]) == float(1234567890123456789)
    assert len(hits) == 2


# -- one scan for a page and its total; histograms from the per-minute counts -----------------

DAY_NS = 86_400 * 10**9
#: Yesterday 00:00 UTC: per-minute counts are kept for recent lines only (LOGS_MINUTES_TTL_DAYS).
RECENT = (time.time_ns() // DAY_NS - 1) * DAY_NS
LEVELS = [("INFO", 9), ("WARN", 13), ("ERROR", 17), ("DEBUG", 5)]


def recent_lines(n: int, step_ns: int = 7_300_000_000, offset: int = 0) -> list[dict[str, object]]:
    """Lines every 7.3 s from RECENT, cycling through levels, services and log types."""
    out = []
    for i in range(offset, offset + n):
        text, number = LEVELS[i % 4]
        ts = RECENT + i * step_ns
        out.append(
            record(
                0,
                timestamp=ts,
                observed_timestamp=ts + 5,
                severity_text=text,
                severity_number=number,
                service=("api", "auth", "payment")[i % 3],
                log_type=("application", "security")[i % 5 == 0],
                message=f"line {i}",
            )
        )
    return out


def minute_total(store: LogStore) -> int:
    return int(store.ex.rows(f"SELECT sum(lines) AS n FROM `{store.db}`.logs_minutes")[0]["n"])


def test_first_page_total_comes_from_the_same_query_and_equals_the_count(store: LogStore) -> None:
    store.insert(recent_lines(700))
    calls: list[str] = []
    rows_with_total = store.ex.rows_with_total  # type: ignore[attr-defined]
    rows = store.ex.rows

    def spy_total(sql: str, params: dict[str, object]) -> object:
        calls.append("rows_with_total")
        return rows_with_total(sql, params)

    def spy_rows(sql: str, params: dict[str, object] | None = None) -> object:
        calls.append("count" if "count()" in sql else "rows")
        return rows(sql, params)

    store.ex.rows_with_total = spy_total  # type: ignore[attr-defined]
    store.ex.rows = spy_rows  # type: ignore[method-assign]
    try:
        for q in ("level:ERROR", "service:api AND NOT level:DEBUG", "line", "service:nothing"):
            c = compile_query(q)
            calls.clear()
            page = store.search("default", c.where, c.params, RECENT, RECENT + DAY_NS, limit=50)
            assert calls == ["rows_with_total"], q
            expected = store.count("default", c.where, c.params, RECENT, RECENT + DAY_NS)
            assert page.total == expected, q
            assert len(page.hits) == min(50, expected)
            if page.next_cursor:  # later pages count separately: the page's rows are not all lines
                calls.clear()
                second = store.search(
                    "default", c.where, c.params, RECENT, RECENT + DAY_NS, limit=50, cursor=page.next_cursor
                )
                assert calls == ["rows", "count"]
                assert second.total == expected
    finally:
        del store.ex.rows_with_total  # type: ignore[attr-defined]
        del store.ex.rows


def test_minute_counts_follow_inserts_and_a_replayed_block_counts_once(store: LogStore) -> None:
    lines = recent_lines(300)
    store.insert(lines[:200], dedup_token="logs-a")
    store.insert(lines[:200], dedup_token="logs-a")  # a WAL replay of the same block
    store.insert(lines[200:], dedup_token="logs-b")
    assert store.count("default", "1", {}, RECENT, RECENT + DAY_NS) == 300
    assert minute_total(store) == 300


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "table"])
@pytest.mark.parametrize("q", ["level:ERROR", "service:api AND NOT level:DEBUG", "", "level:w*", "type:security"])
def test_histograms_from_minute_counts_equal_counting_the_lines(store: LogStore, q: str, in_memory: bool) -> None:
    store.hot_horizon = lambda: 0  # everything is in the hot tier
    assert store.minute_counts is not None  # the embedded store keeps them in memory too
    if not in_memory:
        store.minute_counts = None  # what a ClickHouse server does: sum logs_minutes
    store.insert(recent_lines(900))
    c = compile_query(q)
    ranges = [
        (RECENT, RECENT + 2 * 3600 * 10**9),  # whole minutes
        (RECENT + 7_500_000_000, RECENT + 5400 * 10**9 + 1_234_567),  # partial minutes at both ends
        (RECENT - 3600 * 10**9, RECENT + 40 * 60 * 10**9 + 59 * 10**9),
    ]
    for start, end in ranges:
        for interval in (60, 300):
            for by_level in (False, True):
                assert store._minute_range("default", start, end, interval, c.columns) is not None
                fast = store.histogram(
                    "default", c.where, c.params, start, end, interval, by_level=by_level, columns=c.columns
                )
                slow = store.histogram("default", c.where, c.params, start, end, interval, by_level=by_level)
                key = (lambda b: (b["t"], b.get("level", ""))) if by_level else (lambda b: b["t"])
                assert sorted(fast, key=key) == sorted(slow, key=key), (q, start, end, interval, by_level)
                assert sum(b["count"] for b in fast) > 0 or q == "type:security"


def test_histograms_that_need_the_lines_read_the_lines(store: LogStore) -> None:
    store.hot_horizon = lambda: 0
    store.insert(recent_lines(50))
    message = compile_query("line")
    level = compile_query("level:ERROR")
    day = (RECENT, RECENT + DAY_NS)
    assert store._minute_range("default", *day, 60, message.columns) is None  # reads message
    assert store._minute_range("default", *day, 90, level.columns) is None  # buckets split minutes
    assert store._minute_range("default", RECENT, RECENT + 30 * 10**9, 60, level.columns) is None  # no whole minute
    assert store._minute_range("default", *day, 60, None) is None  # columns unknown
    store.hot_horizon = lambda: RECENT + 10**9
    assert store._minute_range("default", *day, 60, level.columns) is None  # reaches warm days
    buckets = store.histogram("default", message.where, message.params, *day, 60, columns=message.columns)
    assert sum(b["count"] for b in buckets) == 50


def test_a_store_made_before_the_minute_counts_gets_them_filled_in(store: LogStore) -> None:
    store.insert(recent_lines(120))
    store.ex.command(f"DROP VIEW `{store.db}`.logs_minutes_mv")
    store.ex.command(f"DROP TABLE `{store.db}`.logs_minutes")
    store.insert(recent_lines(80, offset=120))  # lines stored while no counts were kept
    store.ensure_schema()
    assert minute_total(store) == 200
    store.insert(recent_lines(10, offset=200))
    store.ensure_schema()  # a later start: the view exists, nothing is counted twice
    assert minute_total(store) == 210


# -- the per-minute counts held in memory ---------------------------------------------------


class QueryCounter:
    """Counts the storage queries a store runs (the in-memory path should run none)."""

    def __init__(self, store: LogStore) -> None:
        self.n = 0
        for name in ("rows", "query_arrow", "query_local"):
            real = getattr(store.ex, name)

            def spy(*args: object, _real: object = real, **kw: object) -> object:
                self.n += 1
                return _real(*args, **kw)  # type: ignore[operator]

            setattr(store.ex, name, spy)


def both_ways(store: LogStore, q: str, start: int, end: int, interval: int = 60, by_level: bool = False) -> tuple:
    c = compile_query(q)
    fast = store.histogram("default", c.where, c.params, start, end, interval, by_level=by_level, columns=c.columns)
    slow = store.histogram("default", c.where, c.params, start, end, interval, by_level=by_level)
    return fast, slow


def test_in_memory_counts_follow_inserts_made_after_they_were_filled(store: LogStore) -> None:
    store.hot_horizon = lambda: 0
    store.insert(recent_lines(300), dedup_token="logs-a")
    day = (RECENT, RECENT + DAY_NS)
    fast, slow = both_ways(store, "level:ERROR", *day)
    assert fast == slow and sum(b["count"] for b in fast) == 75
    assert store.minute_counts is not None and store.minute_counts.ready
    store.insert(recent_lines(300), dedup_token="logs-a")  # a replay of a block already counted
    store.insert(recent_lines(200, offset=300), dedup_token="logs-b")
    # a service and a log type never seen before: keys the cached matches do not know yet
    store.insert([record(0, timestamp=RECENT + 60 * 10**9 * 7, service="billing", severity_text="ERROR",
                         severity_number=17, log_type="database")], dedup_token="logs-c")
    for q in ("level:ERROR", "service:billing", "type:database OR service:api", ""):
        for by_level in (False, True):
            fast, slow = both_ways(store, q, *day, 300, by_level)
            assert fast == slow, (q, by_level)
    assert sum(b["count"] for b in both_ways(store, "", *day)[0]) == 501 == minute_total(store)


def test_a_whole_minute_histogram_runs_no_storage_query_once_its_query_was_seen(store: LogStore) -> None:
    store.hot_horizon = lambda: 0
    store.insert(recent_lines(400))
    c = compile_query("service:auth AND level:>=WARN")
    day = (RECENT, RECENT + DAY_NS)
    first = store.histogram("default", c.where, c.params, *day, 60, columns=c.columns)
    counter = QueryCounter(store)
    again = store.histogram("default", c.where, c.params, *day, 300, by_level=True, columns=c.columns)
    assert counter.n == 0
    assert sum(b["count"] for b in again) == sum(b["count"] for b in first) > 0
    partial = store.histogram("default", c.where, c.params, RECENT + 10**9, RECENT + DAY_NS, 60, columns=c.columns)
    assert counter.n == 1  # only the partial first minute is counted from the lines
    assert partial == store.histogram("default", c.where, c.params, RECENT + 10**9, RECENT + DAY_NS, 60)


def test_ranges_before_the_in_memory_window_are_summed_from_the_table(store: LogStore) -> None:
    store.hot_horizon = lambda: 0
    store.insert(recent_lines(600))
    assert store.minute_counts is not None
    store.minute_counts.keep_days = 1  # today only: yesterday's lines are not held
    c = compile_query("level:ERROR")
    counter = QueryCounter(store)
    fast = store.histogram("default", c.where, c.params, RECENT, RECENT + DAY_NS, 60, columns=c.columns)
    assert counter.n >= 2  # filled the (empty) window, then read logs_minutes
    assert fast == both_ways(store, "level:ERROR", RECENT, RECENT + DAY_NS)[1]
    assert sum(b["count"] for b in fast) == 150


def test_counts_that_would_outgrow_their_memory_limit_switch_off(store: LogStore) -> None:
    store.hot_horizon = lambda: 0
    assert store.minute_counts is not None
    store.minute_counts.max_bytes = 64 * 1440 * 4 * 3 // 2  # one day of the first 64 keys, not two
    store.insert(recent_lines(30))
    fast, slow = both_ways(store, "", RECENT, RECENT + DAY_NS)
    assert fast == slow and store.minute_counts.ready
    store.insert([record(0, timestamp=RECENT + 3 * DAY_NS // 2 + i * 10**9) for i in range(5)])  # a second day
    assert store.minute_counts.disabled and not store.minute_counts.ready
    fast, slow = both_ways(store, "", RECENT, RECENT + 2 * DAY_NS)
    assert fast == slow and sum(b["count"] for b in fast) == 35


def test_the_event_loop_path_answers_only_from_memory(store: LogStore) -> None:
    store.hot_horizon = lambda: 0
    store.insert(recent_lines(400))
    c = compile_query("service:payment AND NOT level:DEBUG")
    day = (RECENT, RECENT + DAY_NS)
    counter = QueryCounter(store)
    assert store.histogram_from_memory("default", c.where, c.params, *day, 60, columns=c.columns) is None  # not filled
    full = store.histogram("default", c.where, c.params, *day, 60, columns=c.columns)  # fills, matches the keys
    counter.n = 0
    assert store.histogram_from_memory("default", c.where, c.params, *day, 60, columns=c.columns) == full
    by_level = store.histogram_from_memory("default", c.where, c.params, *day, 300, by_level=True, columns=c.columns)
    assert by_level == store.histogram("default", c.where, c.params, *day, 300, by_level=True)
    assert store.histogram_from_memory("default", c.where, c.params, RECENT + 1, RECENT + DAY_NS, 60,
                                       columns=c.columns) is None  # a partial minute needs the lines
    other = compile_query("service:auth")
    assert store.histogram_from_memory("default", other.where, other.params, *day, 60, columns=other.columns) is None
    assert counter.n == 1  # only the by-level check above read the lines
    assert store.minute_counts is not None
    with store.minute_counts.lock:  # an insert is counting: do not wait for it
        assert store.histogram_from_memory("default", c.where, c.params, *day, 60, columns=c.columns) is None


def test_nanosecond_times_are_written_as_rfc3339_like_datetime_does() -> None:
    import datetime as dt
    import random

    from stackwatch.storage.logs import ns_to_rfc3339

    rng = random.Random(7)
    for ns in [0, 1, 999_999_999, T0, 951_782_400 * 10**9 + 5] + [rng.randrange(0, 2**62) for _ in range(2000)]:
        seconds, rem = divmod(ns, 10**9)
        expected = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem:09d}Z"
        assert ns_to_rfc3339(ns) == expected, ns


def test_parts_merged_away_leave_the_disk_within_seconds(store: LogStore) -> None:
    """After a merge the embedded store holds the data once: the old parts go in seconds (the
    engine's default was 30-40 s, up to 300 s idle, while it held the data twice on disk)."""
    for batch in range(4):
        store.insert([record(batch * 100 + i) for i in range(100)])
    ex, db = store.ex, store.db
    ex.command(f"OPTIMIZE TABLE `{db}`.logs_hot FINAL")

    def parts() -> dict[int, int]:
        rows = ex.rows("SELECT active, count() AS n FROM system.parts WHERE database = {d:String} "
                       "AND table = 'logs_hot' GROUP BY active", {"d": db})
        return {int(r["active"]): int(r["n"]) for r in rows}

    assert parts().get(0, 0) > 0  # the merged-away parts, still on disk right after the merge
    deadline = time.monotonic() + 15
    while parts().get(0, 0) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert parts() == {1: 1}
    assert store.count("default", "1", {}, T0, T0 + 10**12) == 400


def test_a_store_made_before_the_cleanup_settings_gets_them(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tables are created once; the embedded engine's own table settings still reach a store
    made by an earlier version, at its next start."""
    ex = ChdbExecutor(tmp_path_factory.getbasetemp() / "chdb", database=f"t_{uuid.uuid4().hex[:8]}")
    try:
        old = LogStore(ex)
        ex.table_settings = {}  # as an earlier version created its tables
        old.ensure_schema()
        ddl = ex.rows("SELECT create_table_query AS q FROM system.tables WHERE database = {d:String} "
                      "AND name = 'logs_hot'", {"d": ex.database})[0]["q"]
        assert "cleanup_delay_period" not in ddl
        ex.table_settings = PROMPT_CLEANUP
        LogStore(ex).ensure_schema()
        ddl = ex.rows("SELECT create_table_query AS q FROM system.tables WHERE database = {d:String} "
                      "AND name = 'logs_hot'", {"d": ex.database})[0]["q"]
        assert "cleanup_delay_period = 1" in ddl and "max_cleanup_delay_period = 5" in ddl
    finally:
        ex.command(f"DROP DATABASE IF EXISTS `{ex.database}`")
        ex.close()
