"""RED request metrics on prometheus-client, the ``/metrics`` endpoint, and business metric helpers.

Series (all labelled by the route *template*, ``/api/leads/{id}``, never the raw path; requests
no route matched are ``<unmatched>``, so scanners cannot blow up cardinality):

- ``http_requests_total{method,route,status_class}``
- ``http_request_errors_total{method,route}`` (5xx answers and exceptions)
- ``http_request_duration_seconds{method,route}`` histogram
- ``http_requests_in_flight`` gauge
- ``http_apdex_satisfied_total{route}`` (<= T) and ``http_apdex_tolerating_total{route}``
  (<= 4T); errors count as frustrated. Apdex per route is
  ``(satisfied + tolerating / 2) / sum by (route) (http_requests_total)``.

``/metrics`` answers the Prometheus text format (OpenMetrics when the scraper asks for it);
``/metrics?format=json`` answers the summary in the CRM guide's shape.

Pre-fork servers (gunicorn, ``uvicorn --workers N``): each worker is its own process with its
own counters, so a scrape would see one random worker. Set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty, writable directory *before* the server starts (prometheus-client reads it at import):
every worker then writes its samples there and ``/metrics`` aggregates all of them with
``prometheus_client.multiprocess.MultiProcessCollector``. Wipe the directory between server
runs, and in ``gunicorn.conf.py`` add ``from stackwatch.sdk.metrics import
gunicorn_child_exit as child_exit`` so a dead worker's in-flight gauge stops counting. The SDK
does not pick a directory by itself: a hidden temporary directory would leak files and
surprise whoever reads the numbers; it warns once instead when it sees gunicorn without one.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import sys
import threading
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.values import MutexValue

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.health import utc_timestamp

__all__ = [
    "DEFAULT_BUCKETS",
    "UNMATCHED",
    "RequestMetrics",
    "counter",
    "gauge",
    "gunicorn_child_exit",
    "histogram",
    "multiprocess_dir",
]

logger = logging.getLogger("stackwatch.sdk.metrics")

#: prometheus-client's default latency buckets: what dashboards built from the guides expect.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Route label for requests no route matched (404s, scanners).
UNMATCHED = "<unmatched>"
#: Route label once ``max_routes`` distinct routes were seen (a last cardinality guard).
OTHER = "<other>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}

_registry_lock = threading.Lock()
#: registry -> name -> metric; weak so a test's throwaway registry does not pin its metrics.
_created: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()


#: Metrics this module created (not found in the registry): only these may change how they are read.
_made_here: weakref.WeakSet[Any] = weakref.WeakSet()


def multiprocess_dir() -> str | None:
    """The prometheus-client multiprocess directory, when multiprocess mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None  # noqa: SIM112 (legacy name prometheus-client still reads)


def _get_or_create(kind: type, name: str, documentation: str, labelnames: Iterable[str],
                   registry: CollectorRegistry | None, **kwargs: Any) -> Any:
    registry = REGISTRY if registry is None else registry
    with _registry_lock:
        created = _created.setdefault(registry, {})
        metric = created.get(name)
        if metric is None:
            # Also find metrics the app registered itself with prometheus_client (private map,
            # read defensively: a missing attribute only means we create it).
            known = getattr(registry, "_names_to_collectors", {})
            metric = known.get(name)
            if metric is None and kind is Counter:
                metric = known.get(name.removesuffix("_total"))
        if metric is not None:
            if not isinstance(metric, kind):
                raise ValueError(f"metric {name!r} already exists as a {type(metric).__name__}")
            created[name] = metric
            return metric
        metric = kind(name, documentation or name, labelnames=tuple(labelnames), registry=registry, **kwargs)
        created[name] = metric
        _made_here.add(metric)
        return metric


def counter(name: str, documentation: str = "", labelnames: Iterable[str] = (), *,
            registry: CollectorRegistry | None = None, **kwargs: Any) -> Counter:
    """A prometheus-client Counter, created once per name: calling again returns the same one.

    Module-level metric definitions get imported twice (tests, reloaders, Django's autoreload);
    plain prometheus-client raises "Duplicated timeseries" then, this does not.
    """
    return _get_or_create(Counter, name, documentation, labelnames, registry, **kwargs)  # type: ignore[no-any-return]


def gauge(name: str, documentation: str = "", labelnames: Iterable[str] = (), *,
          registry: CollectorRegistry | None = None, **kwargs: Any) -> Gauge:
    """A prometheus-client Gauge, created once per name (see :func:`counter`)."""
    return _get_or_create(Gauge, name, documentation, labelnames, registry, **kwargs)  # type: ignore[no-any-return]


def histogram(name: str, documentation: str = "", labelnames: Iterable[str] = (), *,
              registry: CollectorRegistry | None = None, **kwargs: Any) -> Histogram:
    """A prometheus-client Histogram, created once per name (see :func:`counter`)."""
    return _get_or_create(Histogram, name, documentation, labelnames, registry, **kwargs)  # type: ignore[no-any-return]


def _prefork_worker() -> bool:
    """True inside a gunicorn worker or a ``uvicorn --workers`` child process."""
    if "gunicorn" in sys.modules:
        return True
    if "uvicorn" in sys.modules:
        import multiprocessing

        return multiprocessing.parent_process() is not None
    return False


def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live gauges in multiprocess mode."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _incrementer(child: Any) -> Callable[[float], None]:
    """``child.inc`` without its per-call checks: the storage value's own ``inc``.

    prometheus-client validates on every ``inc``/``observe`` (observability, sign); for series
    this module created itself those checks can never fail. Falls back to the public method if
    the storage layout ever changes.
    """
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc  # type: ignore[no-any-return]


class _Tally:
    """A prometheus-client sample value counted in steps of one without a lock: the request
    counters and histogram buckets of the SDK's request metrics, bumped by every request.

    :attr:`step` is one C call (``next`` on an ``itertools.count``); prometheus-client's own
    value takes a lock on every increment, which was most of the request metrics' cost (2.2 us
    a request for four series measured around a do-nothing app). A read advances the step
    counter and the read counter by one each, so their difference is the count; the read
    counter is read first, so a step in between can only make the snapshot newer. Other
    amounts, ``set`` (``Counter.reset``) and exemplars take a lock, as prometheus-client's
    value does. Used in single-process mode only: in multiprocess mode the values are
    prometheus-client's files, which every worker must write.
    """

    __slots__ = ("_exemplar", "_lock", "_offset", "_reads", "_steps", "step")

    def __init__(self, start: float = 0.0, exemplar: Any = None) -> None:
        self._steps = itertools.count()
        self._reads = itertools.count()
        self.step: Callable[[], int] = self._steps.__next__
        self._lock = threading.Lock()
        self._offset = start
        self._exemplar = exemplar

    def _count(self) -> int:
        reads = next(self._reads)
        return next(self._steps) - reads

    def inc(self, amount: float) -> None:
        if amount == 1:
            self.step()
            return
        with self._lock:
            self._offset += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            self._offset = value - self._count()

    def get(self) -> float:
        with self._lock:
            return self._offset + self._count()

    def set_exemplar(self, exemplar: Any) -> None:
        with self._lock:
            self._exemplar = exemplar

    def get_exemplar(self) -> Any:
        with self._lock:
            return self._exemplar


def _tallied(value: Any) -> _Tally | None:
    """``value`` (a prometheus-client sample value) as a :class:`_Tally` to put in its place,
    carrying its count and exemplar over; None to keep it (multiprocess files, or a value of
    a kind this module does not know). Callers hold ``_registry_lock`` while they swap."""
    if type(value) is _Tally:
        return value
    if type(value) is not MutexValue:
        return None
    with value._lock:
        return _Tally(value._value, value._exemplar)


def _stepper(child: Any) -> Callable[[], Any]:
    """A no-argument callable adding one to a counter child (see :class:`_Tally`)."""
    with _registry_lock:
        tally = _tallied(getattr(child, "_value", None))
        if tally is not None:
            child._value = tally
            return tally.step
    inc = _incrementer(child)
    return lambda: inc(1)


def _observer(child: Any) -> Callable[[float], None]:
    """``child.observe`` without its per-call checks (see :func:`_incrementer`): the sum and the
    first bucket whose bound is >= the value, found by bisection; the same storage, the
    buckets as :class:`_Tally` values in single-process mode."""
    try:
        bounds = [float(bound) for bound in child._upper_bounds]
        with _registry_lock:
            buckets: list[Callable[[], Any]] = []
            for i, bucket in enumerate(child._buckets):
                tally = _tallied(bucket)
                if tally is None:
                    buckets.append(functools.partial(bucket.inc, 1))
                else:
                    child._buckets[i] = tally
                    buckets.append(tally.step)
        add_sum = child._sum.inc
    except (AttributeError, TypeError):
        return child.observe  # type: ignore[no-any-return]
    if len(bounds) != len(buckets) or bounds[-1] != math.inf:
        return child.observe  # type: ignore[no-any-return]

    def observe(amount: float) -> None:
        add_sum(amount)
        buckets[bisect_left(bounds, amount)]()

    return observe


class _InFlight:
    """The in-flight gauge of one process as two :class:`_Tally` counts (requests started,
    ended), read by the gauge at scrape time: a request pays one ``next()`` at each end
    instead of two locked increments of the gauge (1.0 us of the SDK's 13 us a request).

    One per gauge: every middleware in the process shares it (see :func:`_in_flight_for`)."""

    __slots__ = ("ended", "started")

    def __init__(self) -> None:
        self.started = _Tally()
        self.ended = _Tally()

    def value(self) -> float:
        # Ended first: a request that starts and ends in between cannot make it negative.
        ended = self.ended.get()
        return self.started.get() - ended


_in_flight_counters: weakref.WeakKeyDictionary[Gauge, _InFlight] = weakref.WeakKeyDictionary()


def _in_flight_for(gauge: Gauge) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(enter, exit) callables keeping ``gauge`` at the number of requests being served.

    In multiprocess mode each worker's value must reach its file, so the gauge's own storage
    is incremented (see :func:`_incrementer`), and so is a gauge the app defined itself (its
    own increments must still count); otherwise the gauge reads :class:`_InFlight`."""
    with _registry_lock:
        counters = _in_flight_counters.get(gauge)
        if counters is None and gauge in _made_here and not multiprocess_dir():
            fresh = _InFlight()
            try:
                gauge.set_function(fresh.value)
            except (AttributeError, ValueError, TypeError):
                logger.debug("in-flight gauge kept as a plain gauge", exc_info=True)
            else:
                counters = _in_flight_counters[gauge] = fresh
    if counters is not None:
        return counters.started.step, counters.ended.step
    add = _incrementer(gauge)
    return (lambda: add(1)), (lambda: add(-1))


class _Series:
    """The labelled children of one (method, route, status) key, resolved once.

    ``Metric.labels()`` validates and locks on every call; caching the children makes a
    request's bookkeeping a handful of attribute calls.
    """

    __slots__ = ("add_error", "add_request", "add_satisfied", "add_tolerating", "is_error", "observe")

    def __init__(self, metrics: RequestMetrics, method: str, route: str, status: int) -> None:
        status_class = _STATUS_CLASSES.get(status // 100, "other")
        self.add_request = _stepper(metrics.requests.labels(method, route, status_class))
        self.observe = _observer(metrics.duration.labels(method, route))
        self.is_error = status >= 500
        self.add_error = _stepper(metrics.errors.labels(method, route))
        self.add_satisfied = _stepper(metrics.apdex_satisfied.labels(route))
        self.add_tolerating = _stepper(metrics.apdex_tolerating.labels(route))


class RequestMetrics:
    """Request RED metrics for one process, plus the ``/metrics`` answers.

    ``registry`` defaults to prometheus-client's global REGISTRY, so metrics the app defines
    with plain prometheus-client show up on the same ``/metrics``; tests pass their own.
    """

    def __init__(self, config: SDKConfig | None = None, registry: CollectorRegistry | None = None, *,
                 reservoir_size: int = 10_000, max_routes: int = 1000) -> None:
        self.config = config or SDKConfig()
        self.registry = REGISTRY if registry is None else registry
        self.apdex_t = float(self.config.apdex_t)
        self.apdex_4t = 4 * self.apdex_t
        self.max_routes = max_routes
        mp_dir = multiprocess_dir()
        if mp_dir:
            # prometheus-client opens its files on first use; a missing directory would then
            # fail inside a request instead of here.
            os.makedirs(mp_dir, exist_ok=True)
        elif _prefork_worker():
            logger.warning(
                "running in a pre-fork worker without PROMETHEUS_MULTIPROC_DIR: /metrics shows only "
                "the worker that answers the scrape (see stackwatch.sdk.metrics)"
            )
        reg = self.registry
        self.requests = counter("http_requests_total", "HTTP requests by route template and status class.",
                                ("method", "route", "status_class"), registry=reg)
        self.errors = counter("http_request_errors_total", "HTTP requests answered with a 5xx or an exception.",
                              ("method", "route"), registry=reg)
        self.duration = histogram("http_request_duration_seconds", "HTTP request duration in seconds.",
                                  ("method", "route"), registry=reg, buckets=DEFAULT_BUCKETS)
        self.in_flight = gauge("http_requests_in_flight", "HTTP requests being served now.",
                               registry=reg, multiprocess_mode="livesum")
        self.apdex_satisfied = counter("http_apdex_satisfied_total", "Requests answered within Apdex T.",
                                       ("route",), registry=reg)
        self.apdex_tolerating = counter("http_apdex_tolerating_total",
                                        "Requests answered within 4T (tolerating).", ("route",), registry=reg)
        self._series: dict[tuple[str, str, int], _Series] = {}
        #: A request starts / ends, for the middlewares (the in-flight gauge, see _in_flight_for).
        self.enter, self.exit = _in_flight_for(self.in_flight)
        self._routes: set[str] = set()
        self._durations: deque[float] = deque(maxlen=reservoir_size)
        self.started = time.time()
        self._psutil_primed = False
        try:  # cpu_percent() measures since its previous call: start the clock now, not at the first scrape
            import psutil

            psutil.cpu_percent(interval=None)
            self._psutil_primed = True
        except Exception:
            pass

    # -- recording (hot path) -------------------------------------------------------------------

    def record(self, method: str, route: str, status: int, duration: float) -> None:
        """Count one finished request. ``route`` must already be a template."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(method, route, status)
        series.add_request()
        series.observe(duration)
        if series.is_error:
            series.add_error()
        elif duration <= self.apdex_t:
            series.add_satisfied()
        elif duration <= self.apdex_4t:
            series.add_tolerating()
        self._durations.append(duration)

    def _new_series(self, method: str, route: str, status: int) -> _Series:
        if method not in _METHODS:
            method = "OTHER"
        if route not in self._routes:
            if len(self._routes) >= self.max_routes:
                route = OTHER
            else:
                self._routes.add(route)
        series = _Series(self, method, route, status)
        if len(self._series) < 50_000:  # the cache itself stays bounded too
            self._series[(method, route, status)] = series
        return series

    # -- exposition -----------------------------------------------------------------------------

    def _collect_registry(self) -> CollectorRegistry:
        """What a scrape reads: every worker's files in multiprocess mode, else our registry."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return registry
        return self.registry

    def prometheus_text(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self._collect_registry()), content_type

    def answer(self, query_string: str = "", accept: str = "") -> tuple[int, str, bytes]:
        """``/metrics``: (status, content type, body); ``?format=json`` gives :meth:`summary`."""
        if query_string and "format" in query_string:
            fmt = parse_qs(query_string).get("format", [""])[0]
            if fmt == "json":
                body = json.dumps(self.summary()).encode()
                return 200, "application/json", body
        body, content_type = self.prometheus_text(accept)
        return 200, content_type, body

    def summary(self) -> dict[str, Any]:
        """The JSON summary in the CRM guide's shape (plus ``apdex``).

        Counts and averages come from the same samples ``/metrics`` shows (all workers in
        multiprocess mode); percentiles from this process's last ``reservoir_size`` durations.
        """
        totals = _Totals()
        for family in self._families():
            totals.add_family(family)
        total = totals.requests
        durations = sorted(self._durations)
        score = None
        if total:
            score = round((totals.satisfied + totals.tolerating / 2) / total, 4)
        endpoints = {}
        for route in sorted(totals.by_route):
            stats = totals.by_route[route]
            count = stats["count"]
            endpoints[route] = {
                "requests": int(stats["requests"]),
                "errors": int(stats["errors"]),
                "avg_response_time": round(stats["sum"] / count, 6) if count else 0.0,
            }
        return {
            "timestamp": utc_timestamp(),
            "application": {
                "requests": {
                    "total": int(total),
                    "errors": int(totals.errors),
                    "error_rate": round(totals.errors / total, 6) if total else 0.0,
                },
                "response_times": {
                    "average": round(totals.duration_sum / totals.duration_count, 6)
                    if totals.duration_count else 0.0,
                    "p50": _percentile(durations, 0.50),
                    "p95": _percentile(durations, 0.95),
                    "p99": _percentile(durations, 0.99),
                    "window": len(durations),
                },
                "apdex": {"t": self.apdex_t, "score": score},
                "uptime_seconds": round(time.time() - self.started, 3),
            },
            "endpoints": endpoints,
            "system": self._system(),
        }

    def _families(self) -> Iterable[Any]:
        wanted = {"http_requests", "http_request_errors", "http_request_duration_seconds",
                  "http_apdex_satisfied", "http_apdex_tolerating"}
        if multiprocess_dir():
            return [f for f in self._collect_registry().collect() if f.name in wanted]
        families: list[Any] = []
        for metric in (self.requests, self.errors, self.duration, self.apdex_satisfied, self.apdex_tolerating):
            families.extend(metric.collect())
        return families

    def _system(self) -> dict[str, Any]:
        try:
            import psutil
        except ImportError:
            return {}
        try:
            if not self._psutil_primed:
                psutil.cpu_percent(interval=None)  # the first call only sets the baseline
                self._psutil_primed = True
            memory = psutil.virtual_memory()
            disk = psutil.disk_usage("/")
            return {
                "cpu": {"usage_percent": psutil.cpu_percent(interval=None), "count": psutil.cpu_count()},
                "memory": {
                    "total_mb": round(memory.total / 2**20, 1),
                    "available_mb": round(memory.available / 2**20, 1),
                    "used_mb": round((memory.total - memory.available) / 2**20, 1),
                    "percent": memory.percent,
                },
                "disk": {
                    "total_gb": round(disk.total / 2**30, 2),
                    "used_gb": round(disk.used / 2**30, 2),
                    "free_gb": round(disk.free / 2**30, 2),
                    "percent": disk.percent,
                },
            }
        except Exception as exc:  # containers without /proc details: the summary still answers
            logger.debug("system metrics unavailable: %r", exc)
            return {}


class _Totals:
    """Sums the collected samples into the summary's numbers."""

    def __init__(self) -> None:
        self.requests = 0.0
        self.errors = 0.0
        self.duration_sum = 0.0
        self.duration_count = 0.0
        self.satisfied = 0.0
        self.tolerating = 0.0
        self.by_route: dict[str, dict[str, float]] = {}

    def _route(self, route: str) -> dict[str, float]:
        stats = self.by_route.get(route)
        if stats is None:
            stats = self.by_route[route] = {"requests": 0.0, "errors": 0.0, "sum": 0.0, "count": 0.0}
        return stats

    def add_family(self, family: Any) -> None:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "http_requests_total":
                self.requests += value
                self._route(labels["route"])["requests"] += value
            elif name == "http_request_errors_total":
                self.errors += value
                self._route(labels["route"])["errors"] += value
            elif name == "http_request_duration_seconds_sum":
                self.duration_sum += value
                self._route(labels["route"])["sum"] += value
            elif name == "http_request_duration_seconds_count":
                self.duration_count += value
                self._route(labels["route"])["count"] += value
            elif name == "http_apdex_satisfied_total":
                self.satisfied += value
            elif name == "http_apdex_tolerating_total":
                self.tolerating += value


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return round(ordered[index], 6)
