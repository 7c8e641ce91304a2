"""SQLAlchemy: query duration histogram, slow-query warnings, queries per request, N+1 warnings.

``instrument_engine(engine, config)`` listens to the engine's ``before_cursor_execute`` and
``after_cursor_execute`` events (what the guides hand-write), so it sees every statement the
ORM or Core sends, and records:

- ``db_query_duration_seconds{operation}`` histogram and ``db_queries_total{operation}``
  (operation: SELECT, INSERT, UPDATE, DELETE, ... from the statement's first keyword);
- a WARNING ``Slow query detected`` over ``config.slow_query_seconds`` with the statement text
  (secrets and PII in literals masked by :mod:`stackwatch.redaction`) and ``duration_ms``; the
  bound parameters are never logged: they hold the data, the statement holds the shape;
- ``db_queries_per_request`` histogram, and a WARNING ``N+1 query detected`` (with the
  statement shape and ``count``) once per statement shape when one request runs the same
  shape (literals normalised) more than ``config.n_plus_one_threshold`` times.

What "one request" is: the web integrations call :func:`begin_request`/:func:`end_request`
around each request (Celery tasks get the same from :mod:`.celery`; any other unit of work can
use :func:`track_queries`). Without those calls the request is told apart by the
``request_id`` bound in the log context, which still catches N+1 inside a request.

When tracing is set up and ``opentelemetry-instrumentation-sqlalchemy`` is installed, an engine
created before tracing started gets its spans too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.health import IN_CHECK

__all__ = [
    "QUERY_BUCKETS",
    "QueryStats",
    "begin_request",
    "end_request",
    "instrument_engine",
    "instrumented",
    "normalize_statement",
    "statement_operation",
    "track_queries",
]

logger = logging.getLogger("stackwatch.sdk.db")

#: Query latency buckets (seconds): finer at the low end than request buckets, since most
#: queries take single-digit milliseconds.
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PER_REQUEST_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)
_MAX_LOGGED_STATEMENT = 2000
_MAX_SHAPES_PER_REQUEST = 1000  # a request running thousands of distinct statements is not an N+1

_OPERATIONS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "CREATE", "ALTER", "DROP",
     "TRUNCATE", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA", "SET", "SHOW",
     "EXPLAIN", "CALL", "EXEC", "VACUUM", "ANALYZE", "COPY", "GRANT", "REVOKE", "LOCK"}
)  # fmt: skip
_LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)+", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_CTE_MAIN = re.compile(r"\)\s*(SELECT|INSERT|UPDATE|DELETE|MERGE)\b", re.I)

_SHAPE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"--[^\n]*|/\*.*?\*/", re.S), " "),
    (re.compile(r"'(?:[^']|'')*'"), "?"),  # string literals
    (re.compile(r"(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b"), "?"),  # numbers, not in names
    (re.compile(r"%\(\w+\)s|%s|:\w+|\$\d+|@\w+"), "?"),  # bound parameter styles
    (re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)"), "(?)"),  # IN (?, ?, ?) -> IN (?)
    (re.compile(r"\s+"), " "),
)


def statement_operation(statement: str) -> str:
    """``SELECT``, ``INSERT``... from the statement's first keyword; ``OTHER`` when unknown.

    A ``WITH`` (CTE) statement is named by the statement after its last CTE.
    """
    text = _LEADING_COMMENTS.sub("", statement[:4096])
    match = _FIRST_WORD.match(text)
    if match is None:
        return "OTHER"
    word = match.group(0).upper()
    if word == "WITH":
        mains = _CTE_MAIN.findall(text)
        return mains[-1].upper() if mains else "SELECT"
    return word if word in _OPERATIONS else "OTHER"


def normalize_statement(statement: str) -> str:
    """The statement's *shape*: literals and parameters become ``?``, whitespace collapses.

    ``SELECT * FROM plumbers WHERE id = 7`` and ``... WHERE id = 8`` share one shape, which is
    what an N+1 loop produces.
    """
    shape = statement
    for pattern, replacement in _SHAPE_RULES:
        shape = pattern.sub(replacement, shape)
    return shape.strip()


class QueryStats:
    """Queries run by one request (or task): total count and the count per statement shape."""

    __slots__ = ("count", "key", "seconds", "shapes", "warned")

    def __init__(self, key: Any = None) -> None:
        self.key = key
        self.count = 0
        self.seconds = 0.0
        self.shapes: dict[str, int] = {}
        self.warned: set[str] = set()


#: The current request's stats. A mutable object in the variable, so a thread-pool hop that
#: copies the context (Starlette's sync endpoints) still counts into the same request.
_current: contextvars.ContextVar[QueryStats | None] = contextvars.ContextVar("stackwatch_db_queries", default=None)
#: Stats found through the log context's request_id when no begin_request() was called.
_implicit: contextvars.ContextVar[QueryStats | None] = contextvars.ContextVar("stackwatch_db_implicit", default=None)


class _Instruments:
    """The metric objects of one registry, created once (instrument_engine may run many times)."""

    def __init__(self, registry: Any) -> None:
        from stackwatch.sdk import metrics

        kw = {"registry": registry}
        self.duration = metrics.histogram("db_query_duration_seconds", "Database query duration in seconds.",
                                          ("operation",), buckets=QUERY_BUCKETS, **kw)
        self.queries = metrics.counter("db_queries_total", "Database queries by operation.", ("operation",), **kw)
        self.slow = metrics.counter("db_slow_queries_total", "Queries slower than the slow-query threshold.",
                                    ("operation",), **kw)
        self.per_request = metrics.histogram("db_queries_per_request", "Database queries run by one request.",
                                             buckets=_PER_REQUEST_BUCKETS, **kw)
        self.n_plus_one = metrics.counter("db_n_plus_one_total",
                                          "Requests that ran one statement shape more than the N+1 threshold.", **kw)


_instruments_lock = threading.Lock()
_instruments: dict[int, _Instruments] = {}
#: The instruments end_request() observes into (the last engine instrumented).
_default_instruments: _Instruments | None = None
_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def _instruments_for(metrics: Any) -> _Instruments:
    global _default_instruments
    registry = getattr(metrics, "registry", metrics)
    with _instruments_lock:
        found = _instruments.get(id(registry))
        if found is None:
            found = _instruments[id(registry)] = _Instruments(registry)
        _default_instruments = found
        return found


def instrumented() -> bool:
    """True once an engine is instrumented: the web integrations then count per request."""
    return len(_engines) > 0


def begin_request() -> contextvars.Token[QueryStats | None]:
    """Start counting queries for a new request (or task) in this context; pass the token to
    :func:`end_request`. Cheap: one object and one context variable set."""
    return _current.set(QueryStats())


def end_request(token: contextvars.Token[QueryStats | None] | None = None) -> QueryStats | None:
    """Finish the request begun with :func:`begin_request`: observe its query count; return it.

    Never raises (it runs in every request's teardown).
    """
    stats = _current.get()
    try:
        if token is not None:
            _current.reset(token)
        else:
            _current.set(None)
    except (ValueError, RuntimeError):
        _current.set(None)  # reset from another context: just forget the request here
    if stats is not None:
        _observe(stats)
    return stats


@contextlib.contextmanager
def track_queries() -> Iterator[QueryStats]:
    """``with track_queries() as stats:`` -- a unit of work outside a web request (a job, a task)
    gets the same queries-per-request count and N+1 warning."""
    token = begin_request()
    stats = _current.get()
    assert stats is not None
    try:
        yield stats
    finally:
        end_request(token)


def _observe(stats: QueryStats) -> None:
    instruments = _default_instruments
    if instruments is None:
        return
    try:
        instruments.per_request.observe(stats.count)
    except Exception:
        logger.debug("queries-per-request observation failed", exc_info=True)


def _request_stats() -> QueryStats | None:
    stats = _current.get()
    if stats is not None:
        return stats
    # No begin_request(): tell requests apart by the request id bound in the log context.
    try:
        from stackwatch.sdk.logging import get_context

        request_id = get_context().get("request_id")
    except Exception:
        return None
    if request_id is None:
        return None
    implicit = _implicit.get()
    if implicit is None or implicit.key != request_id:
        if implicit is not None:
            _observe(implicit)  # the previous request in this context is over
        implicit = QueryStats(request_id)
        _implicit.set(implicit)
    return implicit


class _EngineListener:
    """The event handlers attached to one engine."""

    def __init__(self, engine: Any, config: SDKConfig, instruments: _Instruments) -> None:
        self.config = config
        self.instruments = instruments
        self.slow_seconds = float(config.slow_query_seconds)
        self.threshold = int(config.n_plus_one_threshold)
        self.db_system = getattr(getattr(engine, "dialect", None), "name", "unknown")
        self._redactor: Any = None
        self._children: dict[str, tuple[Any, Any]] = {}

    def before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info.setdefault("stackwatch_query_start", []).append(time.perf_counter())

    def after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        starts = conn.info.get("stackwatch_query_start")
        if not starts:
            return
        duration = time.perf_counter() - starts.pop()
        try:
            self._record(statement, duration)
        except Exception:
            logger.debug("query instrumentation failed", exc_info=True)

    def error(self, exception_context: Any) -> None:
        conn = getattr(exception_context, "connection", None)
        starts = conn.info.get("stackwatch_query_start") if conn is not None else None
        if starts:
            duration = time.perf_counter() - starts.pop()
            try:
                self._record(exception_context.statement or "", duration)
            except Exception:
                logger.debug("query instrumentation failed", exc_info=True)

    def _record(self, statement: str, duration: float) -> None:
        if IN_CHECK.get():
            return  # a readiness check's query is the probe's, like the probe request itself
        operation = statement_operation(statement)
        children = self._children.get(operation)
        if children is None:
            children = (self.instruments.duration.labels(operation), self.instruments.queries.labels(operation))
            self._children[operation] = children
        children[0].observe(duration)
        children[1].inc()
        if duration > self.slow_seconds:
            self.instruments.slow.labels(operation).inc()
            logger.warning(
                "Slow query detected",
                extra={"query": self._loggable(statement), "duration_ms": round(duration * 1000, 2),
                       "operation": operation, "db_system": self.db_system},
            )
        stats = _request_stats()
        if stats is None:
            return
        stats.count += 1
        stats.seconds += duration
        shape = normalize_statement(statement)
        seen = stats.shapes.get(shape)
        if seen is None:
            if len(stats.shapes) >= _MAX_SHAPES_PER_REQUEST:
                return
            seen = 0
        seen += 1
        stats.shapes[shape] = seen
        if seen > self.threshold and shape not in stats.warned:
            stats.warned.add(shape)
            self.instruments.n_plus_one.inc()
            logger.warning(
                "N+1 query detected",  # constant, so a search for it finds every occurrence
                extra={"query": self._loggable(shape), "count": seen, "threshold": self.threshold,
                       "operation": operation, "db_system": self.db_system},
            )

    def _loggable(self, statement: str) -> str:
        text = statement if len(statement) <= _MAX_LOGGED_STATEMENT else statement[:_MAX_LOGGED_STATEMENT] + "..."
        if not self.config.redact:
            return text
        if self._redactor is None:
            from stackwatch.redaction import Redactor

            self._redactor = Redactor()
        return str(self._redactor.redact_text(text))


def instrument_engine(engine: Any, config: SDKConfig | None = None, metrics: Any = None) -> Any:
    """Instrument an SQLAlchemy ``Engine`` (or ``AsyncEngine``); return it.

    ``config`` defaults to the settings of ``stackwatch.sdk.init()`` (else ``STACKWATCH_*``
    variables). ``metrics`` is the :class:`~stackwatch.sdk.metrics.RequestMetrics` (or a
    prometheus-client ``CollectorRegistry``) whose ``/metrics`` should show the query series;
    None uses init()'s, else the global registry. Calling it again for the same engine does
    nothing. Never raises for an SDK-internal failure (it is logged): the engine works as before.
    """
    target = getattr(engine, "sync_engine", engine)  # AsyncEngine -> its Engine
    try:
        if target in _engines:
            return engine
        from sqlalchemy import event

        config, metrics = current_settings(config, metrics)

        listener = _EngineListener(target, config, _instruments_for(metrics))
        event.listen(target, "before_cursor_execute", listener.before)
        event.listen(target, "after_cursor_execute", listener.after)
        event.listen(target, "handle_error", listener.error)
        _engines.add(target)
        if config.tracing:
            _trace_engine(target)
    except Exception:
        logger.warning("could not instrument the SQLAlchemy engine; queries are not measured", exc_info=True)
    return engine


def current_settings(config: SDKConfig | None, metrics: Any) -> tuple[SDKConfig, Any]:
    """Fill in what the caller left out from ``stackwatch.sdk.init()``'s client (else env)."""
    if config is not None and metrics is not None:
        return config, metrics
    from stackwatch.sdk import _client

    client = _client.current()
    if config is None:
        if client is not None:
            config = client.config
        else:
            from stackwatch.sdk._config import resolve_config

            config = resolve_config()
    if metrics is None and client is not None and client.metrics is not None:
        metrics = client.metrics
    return config, metrics


def _trace_engine(engine: Any) -> None:
    """Give an engine created before tracing started its OpenTelemetry spans (once)."""
    import sys

    tracing = sys.modules.get("stackwatch.sdk.tracing")
    if tracing is None or getattr(tracing, "_state", None) is None:
        return
    try:
        from opentelemetry import metrics as otel_metrics
        from opentelemetry import trace
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.instrumentation.sqlalchemy.version import __version__
    except ImportError:
        return
    try:
        # EngineTracer is the instrumentation's own per-engine class (what
        # SQLAlchemyInstrumentor().instrument(engine=...) builds); its registry of listeners
        # tells whether this engine is traced already.
        for ref, _identifier, _func in list(EngineTracer._remove_event_listener_params):
            if ref() is engine:
                return
        scope = "opentelemetry.instrumentation.sqlalchemy"
        tracer = trace.get_tracer(scope, __version__)
        usage = otel_metrics.get_meter(scope, __version__).create_up_down_counter(
            name="db.client.connections.usage", unit="connections",
            description="Connections in the state described by the state attribute.",
        )
        EngineTracer(tracer, engine, usage)
    except Exception as exc:
        logger.debug("could not trace the SQLAlchemy engine: %r", exc)
