"""The log store on embedded ClickHouse: insert, dedup tokens, search pages, histogram."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.logs import LogStore

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
