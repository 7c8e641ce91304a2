"""SQLAlchemy instrumentation on a real SQLite database: durations, slow queries, N+1, per request."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")
from prometheus_client import CollectorRegistry  # noqa: E402
from sqlalchemy import event, text  # noqa: E402

from stackwatch.sdk._config import SDKConfig  # noqa: E402
from stackwatch.sdk.integrations.sqlalchemy import (  # noqa: E402
    begin_request,
    end_request,
    instrument_engine,
    normalize_statement,
    statement_operation,
    track_queries,
)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, prefix: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage().startswith(prefix)]


@pytest.fixture
def db_log() -> Iterator[Records]:
    handler = Records()
    log = logging.getLogger("stackwatch.sdk.db")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old_level)


def make_engine(tmp_path: Path) -> sqlalchemy.Engine:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'leads.db'}")

    @event.listens_for(engine, "connect")
    def add_sleep(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # A slow query on demand: SELECT sleep(0.3) blocks inside SQLite for 0.3 s.
        dbapi_connection.create_function("sleep", 1, lambda s: time.sleep(s) or 1)

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE plumbers (id INTEGER PRIMARY KEY, name TEXT, email TEXT)"))
        conn.execute(text("CREATE TABLE leads (id INTEGER PRIMARY KEY, plumber_id INTEGER, city TEXT)"))
        for i in range(1, 21):
            conn.execute(text("INSERT INTO plumbers VALUES (:id, :name, :email)"),
                         {"id": i, "name": f"Plumber {i}", "email": f"p{i}@example.com"})
            conn.execute(text("INSERT INTO leads VALUES (:id, :pid, 'Austin')"), {"id": i, "pid": i})
    return engine


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def test_queries_are_timed_and_counted_by_operation(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    registry = CollectorRegistry()
    assert instrument_engine(engine, SDKConfig(), registry) is engine
    instrument_engine(engine, SDKConfig(), registry)  # a second call must not double count
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO leads VALUES (100, 1, 'Dallas')"))
        conn.execute(text("UPDATE leads SET city = 'Houston' WHERE id = 100"))
        rows = conn.execute(text("SELECT * FROM leads WHERE city = :c"), {"c": "Houston"}).all()
        conn.execute(text("DELETE FROM leads WHERE id = 100"))
    assert len(rows) == 1
    for op in ("INSERT", "UPDATE", "SELECT", "DELETE"):
        assert value(registry, "db_queries_total", {"operation": op}) == 1, op
        assert value(registry, "db_query_duration_seconds_count", {"operation": op}) == 1
    assert value(registry, "db_query_duration_seconds_sum", {"operation": "SELECT"}) > 0


def test_slow_query_warning_has_the_redacted_statement_and_no_parameters(tmp_path: Path, db_log: Records) -> None:
    engine = make_engine(tmp_path)
    registry = CollectorRegistry()
    instrument_engine(engine, SDKConfig(slow_query_seconds=0.2), registry)
    with engine.connect() as conn:
        conn.execute(text("SELECT name FROM plumbers WHERE id = 1")).all()  # fast: no warning
        conn.execute(
            text("SELECT sleep(0.3), name FROM plumbers WHERE email = 'p1@example.com' OR name = :secret"),
            {"secret": "hunter2-parameter-value"},
        ).all()
    slow = db_log.messages("Slow query detected")
    assert len(slow) == 1
    record = slow[0]
    assert record.levelno == logging.WARNING
    assert record.duration_ms >= 300  # type: ignore[attr-defined]
    assert record.operation == "SELECT"  # type: ignore[attr-defined]
    assert record.db_system == "sqlite"  # type: ignore[attr-defined]
    assert "sleep(0.3)" in record.query  # type: ignore[attr-defined]
    assert "p1@example.com" not in record.query and "p***@example.com" in record.query  # type: ignore[attr-defined]
    assert all("hunter2-parameter-value" not in str(v) for v in vars(record).values())
    assert value(registry, "db_slow_queries_total", {"operation": "SELECT"}) == 1


def test_n_plus_one_is_warned_once_per_shape_per_request(tmp_path: Path, db_log: Records) -> None:
    engine = make_engine(tmp_path)
    registry = CollectorRegistry()
    instrument_engine(engine, SDKConfig(n_plus_one_threshold=10), registry)
    token = begin_request()
    with engine.connect() as conn:
        leads = conn.execute(text("SELECT id, plumber_id FROM leads")).all()
        for lead in leads[:15]:
            # Literal ids on purpose: the shape must still be recognised as one statement.
            conn.execute(text(f"SELECT name FROM plumbers WHERE id = {lead.plumber_id}")).all()
    stats = end_request(token)
    assert stats is not None and stats.count == 16
    warnings = db_log.messages("N+1 query detected")
    assert len(warnings) == 1
    assert warnings[0].count == 11  # type: ignore[attr-defined]
    assert warnings[0].query == "SELECT name FROM plumbers WHERE id = ?"  # type: ignore[attr-defined]

    # A request under the threshold: no warning; counts start from zero again.
    token = begin_request()
    with engine.connect() as conn:
        for i in range(1, 6):
            conn.execute(text("SELECT name FROM plumbers WHERE id = :id"), {"id": i}).all()
    assert end_request(token).count == 5  # type: ignore[union-attr]
    assert len(db_log.messages("N+1 query detected")) == 1
    assert value(registry, "db_n_plus_one_total") == 1
    assert value(registry, "db_queries_per_request_count") == 2
    assert value(registry, "db_queries_per_request_sum") == 21


def test_requests_told_apart_by_the_log_context_request_id(tmp_path: Path, db_log: Records) -> None:
    from stackwatch.sdk.logging import LogContext

    engine = make_engine(tmp_path)
    instrument_engine(engine, SDKConfig(n_plus_one_threshold=3), CollectorRegistry())

    def request(request_id: str, queries: int) -> None:
        with LogContext(request_id=request_id), engine.connect() as conn:
            for i in range(queries):
                conn.execute(text("SELECT name FROM plumbers WHERE id = :id"), {"id": i}).all()

    contextvars.copy_context().run(request, "req-a", 3)
    contextvars.copy_context().run(request, "req-b", 3)
    assert db_log.messages("N+1 query detected") == []
    contextvars.copy_context().run(request, "req-c", 4)
    assert len(db_log.messages("N+1 query detected")) == 1


def test_queries_in_a_copied_context_thread_count_for_the_request(tmp_path: Path) -> None:
    """Starlette runs sync endpoints in a thread pool with a copy of the request's context."""
    engine = make_engine(tmp_path)
    instrument_engine(engine, SDKConfig(), CollectorRegistry())

    def work() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).all()
            conn.execute(text("SELECT 2")).all()

    with track_queries() as stats:
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(work,))
        thread.start()
        thread.join()
    assert stats.count == 2


def test_a_failing_query_is_still_measured(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    registry = CollectorRegistry()
    instrument_engine(engine, SDKConfig(), registry)
    with pytest.raises(sqlalchemy.exc.OperationalError), engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table")).all()
    assert value(registry, "db_queries_total", {"operation": "SELECT"}) == 1
    # The engine still works and the start-time stack did not leak.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM leads")).scalar() == 20
        assert conn.connection.driver_connection is not None


def test_queries_outside_any_request_are_only_measured(tmp_path: Path, db_log: Records) -> None:
    engine = make_engine(tmp_path)
    instrument_engine(engine, SDKConfig(n_plus_one_threshold=2), CollectorRegistry())
    with engine.connect() as conn:
        for i in range(5):
            conn.execute(text("SELECT name FROM plumbers WHERE id = :id"), {"id": i}).all()
    assert db_log.messages("N+1 query detected") == []


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("SELECT 1", "SELECT"),
        ("  select * from t", "SELECT"),
        ("/* app:leads */ INSERT INTO t VALUES (1)", "INSERT"),
        ("-- comment\nUPDATE t SET a = 1", "UPDATE"),
        ("WITH x AS (SELECT 1) DELETE FROM t WHERE id IN (SELECT * FROM x)", "DELETE"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "SELECT"),
        ("PRAGMA journal_mode", "PRAGMA"),
        ("frobnicate", "OTHER"),
        ("", "OTHER"),
    ],
)
def test_statement_operation(statement: str, operation: str) -> None:
    assert statement_operation(statement) == operation


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 22"),
        ("SELECT * FROM t WHERE name = 'bob'", "SELECT * FROM t WHERE name = 'o''brien'"),
        ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (4)"),
        ("SELECT * FROM t WHERE id = %(id_1)s", "SELECT * FROM t WHERE id = :id"),
        ("SELECT *\n  FROM t WHERE id = ?", "SELECT * FROM t WHERE id = $1"),
    ],
)
def test_same_shape(a: str, b: str) -> None:
    assert normalize_statement(a) == normalize_statement(b)


def test_different_shapes_and_names_with_digits_kept() -> None:
    assert normalize_statement("SELECT * FROM t WHERE id = 1") != normalize_statement("SELECT * FROM u WHERE id = 1")
    assert normalize_statement("SELECT col1 FROM table2 WHERE x = 3") == "SELECT col1 FROM table2 WHERE x = ?"
