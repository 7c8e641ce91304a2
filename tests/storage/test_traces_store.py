"""The span store on embedded ClickHouse: schema per deployment, retention, dedup, fetch, search, map."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from stackwatch.errors import BadRequest
from stackwatch.model.spans import make_span
from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.schema import SPANS, TRACE_INDEX, render_ddl
from stackwatch.storage.traces import SpanFilter, TraceStore, parse_span_query

MS = 1_000_000
NOW = time.time_ns() // MS * MS


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbExecutor]:
    ex = ChdbExecutor(tmp_path_factory.mktemp("traces") / "ch")
    yield ex
    ex.close()


@pytest.fixture
def store(executor: ChdbExecutor, request: pytest.FixtureRequest) -> TraceStore:
    executor.database = "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:50]
    executor.command(f"CREATE DATABASE IF NOT EXISTS `{executor.database}`")
    s = TraceStore(executor, retention_days=7)
    s.ensure_schema()
    return s


def tid(n: int) -> str:
    return f"{n:032x}"


def sid(n: int) -> str:
    return f"{n:016x}"


def checkout(n: int, start: int, *, slow: bool = False, error: bool = False) -> list[dict]:
    """A frontend -> checkout trace: root, client call, server span, db call."""
    t = tid(n)
    pay_ms = 300 if slow else 30
    return [
        make_span(t, sid(n * 10 + 1), "GET /checkout", start, start + (pay_ms + 20) * MS, kind="server",
                  service="frontend", attributes={"http.route": "/checkout", "http.status_code": 500 if error else 200}),
        make_span(t, sid(n * 10 + 2), "POST /pay", start + 5 * MS, start + (pay_ms + 10) * MS, kind="client",
                  service="frontend", parent_span_id=sid(n * 10 + 1)),
        make_span(t, sid(n * 10 + 3), "POST /pay", start + 6 * MS, start + (pay_ms + 9) * MS, kind="server",
                  service="checkout", parent_span_id=sid(n * 10 + 2), status_code="error" if error else "ok",
                  attributes={"payment.vip": n % 2 == 0, "order.id": 10**17 + n}),
        make_span(t, sid(n * 10 + 4), "SELECT orders", start + 7 * MS, start + 9 * MS, kind="client",
                  service="checkout", parent_span_id=sid(n * 10 + 3), attributes={"db.system": "postgresql"}),
    ]


def test_ddl_for_each_deployment() -> None:
    (spans,) = render_ddl(SPANS, "sw")
    assert "ORDER BY (project, toStartOfHour(start), trace_id, start)" in spans
    assert "TTL toDateTime(start) + toIntervalDay(7)" in spans
    assert "INDEX `idx_duration` duration_ns TYPE minmax" in spans
    assert "`duration_ns` Int64 CODEC(T64, ZSTD(1))" in spans
    assert "ttl_only_drop_parts = 1" in spans
    local, distributed = render_ddl(TRACE_INDEX, "sw", cluster="prod")
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/sw/trace_index_local', '{replica}')" in local
    assert "TTL day + toIntervalDay(7)" in local
    assert "ENGINE = Distributed(`prod`, `sw`, `trace_index_local`, rand())" in distributed


def test_retention_setting_changes_an_existing_tables_ttl(store: TraceStore) -> None:
    TraceStore(store.ex, retention_days=30).ensure_schema()
    rows = store.ex.rows(
        "SELECT name, engine_full FROM system.tables WHERE database = {db:String} ORDER BY name", {"db": store.db}
    )
    assert all("toIntervalDay(30)" in r["engine_full"] for r in rows) and len(rows) == 2
    with pytest.raises(ValueError):
        TraceStore(store.ex, retention_days=0)


def test_fetch_a_trace_replay_stores_nothing_twice(store: TraceStore) -> None:
    spans = checkout(1, NOW)
    assert store.insert([("default", spans)], dedup_token="spans-1-1") == 4
    store.insert([("default", spans)], dedup_token="spans-1-1")  # WAL replay of the same block
    store.insert([("default", spans[:1])], dedup_token="spans-2-2")  # a client retrying one span
    store.insert([("other", checkout(1, NOW))], dedup_token="spans-3-3")
    got = store.get_trace("default", tid(1))
    assert [s["span_id"] for s in got] == [sid(11), sid(12), sid(13), sid(14)]
    assert got[2] == spans[2] | {"attributes": {"payment.vip": False, "order.id": str(10**17 + 1)}}
    assert got[0]["attributes"] == {"http.route": "/checkout", "http.status_code": 200}
    assert store.trace_bounds("default", tid(1)) == (NOW, NOW + 50 * MS, 5)
    assert store.get_trace("default", tid(2)) == []
    assert store.get_trace("nobody", tid(1)) == []


def test_events_links_and_long_traces_across_days(store: TraceStore) -> None:
    t = tid(7)
    day = 86_400 * 10**9
    first = make_span(t, sid(1), "nightly", NOW - day, NOW, service="batch",
                      events=[{"time_ns": NOW - day + 5, "name": "checkpoint", "attributes": {"rows": 10}}],
                      links=[{"trace_id": tid(8), "span_id": sid(9), "attributes": {}}])
    second = make_span(t, sid(2), "step", NOW - 10 * MS, NOW - MS, service="batch", parent_span_id=sid(1))
    store.insert([("default", [first])], dedup_token="a")
    store.insert([("default", [second])], dedup_token="b")
    got = store.get_trace("default", t)
    assert [s["name"] for s in got] == ["nightly", "step"]
    assert got[0]["events"] == first["events"] and got[0]["links"] == first["links"]


def search(store: TraceStore, **kw: object) -> list[str]:
    found = store.search("default", SpanFilter(**kw), NOW - 3600 * 10**9, NOW + 3600 * 10**9)  # type: ignore[arg-type]
    return [t["trace_id"] for t in found]


def test_search_filters(store: TraceStore) -> None:
    spans = checkout(1, NOW) + checkout(2, NOW + 100 * MS, slow=True) + checkout(3, NOW + 200 * MS, error=True)
    store.insert([("default", spans)], dedup_token="x")
    assert search(store) == [tid(3), tid(2), tid(1)]  # newest first
    assert search(store, service="checkout", status="error") == [tid(3)]
    assert search(store, operation="POST /pay", min_duration_ns=200 * MS) == [tid(2)]
    assert search(store, operation="POST /pay", max_duration_ns=100 * MS) == [tid(3), tid(1)]
    assert search(store, kind="server", service="checkout", min_duration_ns=300 * MS) == [tid(2)]
    assert search(store, q="http.status_code>=500") == [tid(3)]
    assert search(store, q="http.status_code=200 http.route=/checkout") == [tid(2), tid(1)]
    assert search(store, q="payment.vip=true") == [tid(2)]
    assert search(store, q="db.system=*") == [tid(3), tid(2), tid(1)]
    assert search(store, q="db.system!=postgresql service.missing=*") == []
    assert search(store, q="select") == [tid(3), tid(2), tid(1)]  # a word of the span name
    assert search(store, q=f"order.id={10**17 + 2}") == [tid(2)]
    assert search(store, service="nothing") == []
    [summary] = store.search("default", SpanFilter(status="error"), NOW - 10**12, NOW + 10**12)
    assert summary == {
        "trace_id": tid(3), "root_name": "GET /checkout", "root_service": "frontend", "start_ns": NOW + 200 * MS,
        "duration_ms": 50.0, "span_count": 4, "error_count": 1, "services": ["checkout", "frontend"],
    }
    assert len(store.search("default", SpanFilter(), NOW - 10**12, NOW + 10**12, limit=2)) == 2


def test_search_time_range_and_project(store: TraceStore) -> None:
    store.insert([("default", checkout(1, NOW)), ("other", checkout(2, NOW))], dedup_token="y")
    # A trace is found by any of its spans that started in the range; none did after NOW + 7 ms.
    assert store.search("default", SpanFilter(), NOW + 8 * MS, NOW + 10**12) == []
    assert len(store.search("default", SpanFilter(), NOW + 7 * MS, NOW + 10**12)) == 1
    assert [t["trace_id"] for t in store.search("other", SpanFilter(), NOW - 1, NOW + 1)] == [tid(2)]


@pytest.mark.parametrize(
    ("q", "message"),
    [('a="unclosed', "invalid q"), ("=x", "expected key=value"), ("a>fast", "needs a number"),
     ("a<inf", "finite number")],
)
def test_bad_span_queries(q: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_span_query(q, {})


def test_query_values_are_parameters_never_sql(store: TraceStore) -> None:
    store.insert([("default", checkout(1, NOW))], dedup_token="q")
    hostile = "x'); DROP TABLE spans; --"
    params: dict[str, object] = {}
    conds = parse_span_query(f'"{hostile}=1" "{hostile}"', params)
    assert "DROP" not in " ".join(conds) and hostile in params.values()
    assert search(store, q=f'"{hostile}=1" "{hostile}"') == []
    assert search(store) == [tid(1)]  # the table is still there


def test_service_map(store: TraceStore) -> None:
    store.insert([("default", checkout(1, NOW) + checkout(2, NOW + MS, slow=True) + checkout(3, NOW + 2 * MS, error=True))],
                 dedup_token="z")
    data = store.service_map("default", NOW - 10**12, NOW + 10**12)
    assert data["edges"] == [
        {"source": "frontend", "target": "checkout", "calls": 3, "errors": 1, "error_rate": pytest.approx(1 / 3),
         "p50_ms": 33.0, "p95_ms": 303.0},
    ]
    nodes = {n["service"]: n for n in data["nodes"]}
    assert set(nodes) == {"frontend", "checkout"}
    assert nodes["frontend"]["calls"] == 3 and nodes["frontend"]["p50_ms"] == 50.0
    assert nodes["checkout"]["calls"] == 3 and nodes["checkout"]["errors"] == 1
    assert store.service_map("default", NOW + 10**12, NOW + 2 * 10**12) == {"nodes": [], "edges": []}


def test_fetching_a_trace_reads_only_its_granules(store: TraceStore) -> None:
    """The layout's point: the trace's hours come from the index, its rows are contiguous."""
    many = [span for n in range(1, 2600) for span in checkout(n, NOW + n * 3 * MS)]  # 5 granules
    store.insert([("default", many)], dedup_token="many")
    plan = "\n".join(r["explain"] for r in store.ex.rows(
        f"EXPLAIN indexes = 1 WITH (SELECT (min(start_ns), max(end_ns)) FROM `{store.db}`.trace_index "
        "WHERE trace_id = {t:String}) AS b "
        f"SELECT span_id FROM `{store.db}`.spans WHERE project = 'default' AND trace_id = {{t:String}} "
        "AND start >= fromUnixTimestamp64Nano(b.1) AND start <= fromUnixTimestamp64Nano(b.2)",
        {"t": tid(200)},
    ))
    primary = plan[plan.index("PrimaryKey"):]
    assert "trace_id" in primary.split("Condition")[1].split("\n")[0]
    read, total = next(line for line in primary.splitlines() if "Granules:" in line).split(":")[1].split("/")
    assert int(read) <= 2 and int(total) >= 5, plan
    assert [s["span_id"] for s in store.get_trace("default", tid(200))] == [sid(2001), sid(2002), sid(2003), sid(2004)]
