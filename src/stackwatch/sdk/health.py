"""Health probes: ``/health``, ``/health/live`` and ``/health/ready``, framework-independent.

Every integration (WSGI, ASGI, Flask, FastAPI, Django) asks :class:`HealthRegistry` for a
``(status_code, body)`` pair and only turns it into its framework's response, so the probes
answer the same everywhere.

Readiness semantics (the issue asks for "200 when all required checks pass, 503 with
``degraded`` or ``unhealthy`` otherwise; optional checks can only degrade"):

=====================================================  ======  ===============
situation                                              code    ``status``
=====================================================  ======  ===============
every check healthy                                    200     ``healthy``
required checks pass, an optional one fails, or a      200     ``degraded``
check reports ``degraded`` itself
a required check fails (error, False, timeout)         503     ``unhealthy``
=====================================================  ======  ===============

An optional check failing keeps the instance in the load balancer (it can still serve
traffic, e.g. without e-mail sending) but says so in the body; only a failing required
dependency takes it out of rotation.

Checks run concurrently, each in a daemon thread of its own with its own timeout: a hung
check is reported as a timeout failure and never hangs the probe. A check whose previous run
is still hung is not started again (no thread pile-up on a dead database); the probe waits for
that same run instead. Results are cached for ``config.health_cache_seconds`` and concurrent
probes share one run, so a burst of probes cannot stampede a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stackwatch.sdk._config import SDKConfig

__all__ = [
    "CheckResult",
    "DiskSpaceCheck",
    "HealthRegistry",
    "HttpCheck",
    "utc_timestamp",
]

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
_STATUSES = (HEALTHY, DEGRADED, UNHEALTHY)

logger = logging.getLogger("stackwatch.sdk.health")


def utc_timestamp() -> str:
    """ISO 8601, milliseconds, UTC, ``Z`` suffix: the shape the guides' probes answer with."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome. ``details`` are extra keys a callable returned (kept in the body)."""

    status: str
    message: str
    latency_ms: float
    required: bool = True
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != UNHEALTHY

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.details)
        out.update(
            status=self.status,
            message=self.message,
            latency_ms=round(self.latency_ms, 2),
            required=self.required,
        )
        return out


@dataclass(frozen=True)
class HttpCheck:
    """An HTTP dependency: healthy when ``url`` answers ``expected_status``.

    A plain string starting with ``http://`` or ``https://`` passed to ``add_check`` becomes
    one of these. Uses urllib (no third-party client in the probe path); redirects are not
    followed, so a 301 is compared as a 301.
    """

    url: str
    expected_status: int = 200
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, timeout: float = 5.0) -> dict[str, Any]:
        request = urllib.request.Request(self.url, method=self.method, headers=dict(self.headers))
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=timeout) as response:
                code = response.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        if code != self.expected_status:
            return {"status": UNHEALTHY, "message": f"HTTP {code}, expected {self.expected_status}"}
        return {"status": HEALTHY, "message": f"HTTP {code}"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class DiskSpaceCheck:
    """Free space on the filesystem holding ``path``.

    Unhealthy below ``min_free_percent``; degraded below ``warn_free_percent`` when given (an
    instance that is filling up can still serve, but the body says so).
    """

    path: str = "/"
    min_free_percent: float = 10.0
    warn_free_percent: float | None = None

    def __call__(self) -> dict[str, Any]:
        usage = shutil.disk_usage(self.path)
        free_percent = usage.free / usage.total * 100 if usage.total else 0.0
        details = {"free_percent": round(free_percent, 2), "free_gb": round(usage.free / 1e9, 2)}
        message = f"{free_percent:.1f}% free on {self.path}"
        if free_percent < self.min_free_percent:
            status = UNHEALTHY
            message += f" (minimum {self.min_free_percent:g}%)"
        elif self.warn_free_percent is not None and free_percent < self.warn_free_percent:
            status = DEGRADED
            message += f" (warning below {self.warn_free_percent:g}%)"
        else:
            status = HEALTHY
        return {"status": status, "message": message, **details}


CheckFunction = Callable[[], Any]


def _is_sqlalchemy_engine(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("sqlalchemy") and hasattr(obj, "connect") and hasattr(obj, "dialect")


def _engine_check(engine: Any) -> CheckFunction:
    def check() -> str:
        from sqlalchemy import text

        with engine.connect() as connection:
            connection.execute(text("SELECT 1")).scalar()
        return "Database connection successful"

    return check


def _dbapi_check(connection: Any) -> CheckFunction:
    # The connection should be dedicated to the probe (checks run in a worker thread; sqlite3
    # needs check_same_thread=False). No rollback afterwards: on a shared connection it would
    # undo the app's work.
    def check() -> str:
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        finally:
            cursor.close()
        return "Database connection successful"

    return check


def _ping_check(client: Any) -> CheckFunction:
    def check() -> Any:
        result = client.ping()
        if inspect.isawaitable(result):
            result = _run_awaitable(result)
        return {"status": HEALTHY if result is not False else UNHEALTHY, "message": "PING ok" if result is not False else "PING failed"}

    return check


def _http_check(spec: HttpCheck, timeout: float) -> CheckFunction:
    return lambda: spec(timeout=timeout)


def _run_awaitable(awaitable: Any) -> Any:
    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


def _callable_check(func: Callable[[], Any]) -> CheckFunction:
    def check() -> Any:
        result = func()
        if inspect.isawaitable(result):
            result = _run_awaitable(result)
        return result

    return check


def as_check_function(check: Any, timeout: float) -> tuple[str, CheckFunction]:
    """Turn what ``add_check`` received into (kind, zero-argument function).

    Order matters: an engine and a redis client are also objects with methods, a string URL is
    not callable, and :class:`HttpCheck`/:class:`DiskSpaceCheck` are callables of their own.
    """
    if isinstance(check, str):
        if check.startswith(("http://", "https://")):
            return "http", _http_check(HttpCheck(check), timeout)
        raise TypeError(f"a string check must be an http(s) URL, got {check!r}")
    if isinstance(check, HttpCheck):
        return "http", _http_check(check, timeout)
    if isinstance(check, DiskSpaceCheck):
        return "disk", check
    if _is_sqlalchemy_engine(check):
        return "sqlalchemy", _engine_check(check)
    if callable(getattr(check, "ping", None)):
        return "ping", _ping_check(check)
    if callable(getattr(check, "cursor", None)):
        return "dbapi", _dbapi_check(check)
    if callable(check):
        return "callable", _callable_check(check)
    raise TypeError(
        f"cannot use {type(check).__name__} as a health check: pass a callable, an SQLAlchemy "
        "engine, a DB-API connection, a redis client, an http(s) URL, HttpCheck or DiskSpaceCheck"
    )


def interpret(result: Any) -> tuple[str, str, dict[str, Any]]:
    """A check function's return value -> (status, message, details).

    None/True: healthy. False: unhealthy. A string: healthy with that message. A dict: its
    ``status`` (healthy/degraded/unhealthy; or ``ok``/``healthy`` booleans) and ``message``;
    other keys are kept as details. A :class:`CheckResult`: taken as is.
    """
    if result is None or result is True:
        return HEALTHY, "ok", {}
    if result is False:
        return UNHEALTHY, "check returned False", {}
    if isinstance(result, str):
        return HEALTHY, result, {}
    if isinstance(result, CheckResult):
        return result.status, result.message, dict(result.details)
    if isinstance(result, Mapping):
        details = {k: v for k, v in result.items() if k not in ("status", "message")}
        status = result.get("status")
        if status not in _STATUSES:
            flag = result.get("ok", result.get("healthy", True))
            status = HEALTHY if flag else UNHEALTHY
        return str(status), str(result.get("message", "ok" if status == HEALTHY else status)), details
    return HEALTHY, str(result), {}


class _Check:
    __slots__ = ("function", "kind", "name", "required", "running", "timeout")

    def __init__(self, name: str, kind: str, function: CheckFunction, required: bool, timeout: float):
        self.name = name
        self.kind = kind
        self.function = function
        self.required = required
        self.timeout = timeout
        #: The run still in progress (a hung check), shared by later probes instead of a new thread.
        self.running: _Run | None = None


#: True while a readiness check runs: its queries and calls are the probe's, not the app's.
IN_CHECK: contextvars.ContextVar[bool] = contextvars.ContextVar("stackwatch_in_health_check", default=False)


@contextlib.contextmanager
def _probe_work() -> Any:
    """Run a check as part of the probe: untraced, and outside the app's query metrics.

    A database check under a probe every 10 s would otherwise make a one-span trace each
    time (``SELECT 1`` as a root span, filling trace search and pulling the service's latency
    down) and count in the query metrics, which the probes themselves are kept out of.
    """
    token = IN_CHECK.set(True)
    try:
        try:
            from opentelemetry.instrumentation.utils import suppress_instrumentation
        except ImportError:  # tracing extras not installed: nothing traces the check anyway
            yield
            return
        with suppress_instrumentation():
            yield
    finally:
        IN_CHECK.reset(token)


class _Run:
    """One execution of one check in a daemon thread; ``wait`` is bounded by the timeout."""

    __slots__ = ("done", "error", "finished_at", "result", "started_at")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_at = time.perf_counter()
        self.finished_at = 0.0

    def start(self, check: _Check) -> None:
        def target() -> None:
            try:
                with _probe_work():
                    self.result = check.function()
            except BaseException as exc:
                self.error = exc
            finally:
                self.finished_at = time.perf_counter()
                self.done.set()

        threading.Thread(target=target, name=f"stackwatch-check-{check.name}", daemon=True).start()


class HealthRegistry:
    """Registered readiness checks plus the three probe answers.

    ``health()``, ``live()`` and ``ready()`` return ``(status_code, body)``; ``answer(path)``
    routes a request path to one of them (None when the path is not a probe).
    """

    def __init__(self, config: SDKConfig | None = None) -> None:
        self.config = config or SDKConfig()
        self._checks: dict[str, _Check] = {}
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._cached: tuple[float, dict[str, CheckResult]] | None = None
        self._redactor: Any = None
        self._listeners: list[Callable[[dict[str, dict[str, Any]]], Any]] = []
        self.paths: dict[str, Callable[[], tuple[int, dict[str, Any]]]] = {
            self.config.health_path: self.health,
            self.config.live_path: self.live,
            self.config.ready_path: self.ready,
        }

    # -- registration -------------------------------------------------------------------------

    def add_check(self, name: str, check: Any, *, required: bool = True, timeout: float = 5.0) -> None:
        """Register (or replace) a readiness check.

        ``check`` may be an SQLAlchemy engine or DB-API connection (``SELECT 1``), a redis
        client (``ping()``), an http(s) URL or :class:`HttpCheck`, a :class:`DiskSpaceCheck`, or
        any callable, sync or async (fails when it raises or returns False; may return a
        message string or a dict with ``status``/``message``). ``required=False`` checks can
        only degrade readiness, never fail it.
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        kind, function = as_check_function(check, timeout)
        with self._lock:
            self._checks[name] = _Check(name, kind, function, required, timeout)
            self._cached = None

    def remove_check(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)
            self._cached = None

    def add_listener(self, listener: Callable[[dict[str, dict[str, Any]]], Any]) -> None:
        """Call ``listener({name: {status, message, latency_ms, required}})`` after every fresh
        run (not for cached answers). The dependency reporter uses it to send results to the
        server; a listener that raises is logged and ignored, and should not block."""
        self._listeners.append(listener)

    @property
    def check_names(self) -> list[str]:
        return list(self._checks)

    # -- running --------------------------------------------------------------------------------

    def run_checks(self, *, use_cache: bool = True) -> dict[str, CheckResult]:
        """Run every check (or reuse a fresh cached run) and return the results by name.

        Concurrent callers share one run: the first takes the run lock, the others wait for
        it and then find its result in the cache.
        """
        ttl = self.config.health_cache_seconds
        cached = self._cached
        if use_cache and cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        with self._run_lock:
            cached = self._cached
            if use_cache and cached is not None and time.monotonic() - cached[0] < ttl:
                return cached[1]
            results = self._run_all()
            self._cached = (time.monotonic(), results)
        if self._listeners and results:
            payload = {name: result.as_dict() for name, result in results.items()}
            for listener in list(self._listeners):
                try:
                    listener(payload)
                except Exception:
                    logger.warning("health result listener %r failed", listener, exc_info=True)
        return results

    def _run_all(self) -> dict[str, CheckResult]:
        with self._lock:
            checks = list(self._checks.values())
        runs: list[tuple[_Check, _Run, bool]] = []
        for check in checks:
            run = check.running
            reused = run is not None and not run.done.is_set()
            if not reused:
                run = _Run()
                check.running = run
                run.start(check)
            assert run is not None
            runs.append((check, run, reused))
        started = time.perf_counter()
        results: dict[str, CheckResult] = {}
        for check, run, reused in runs:
            remaining = check.timeout - (time.perf_counter() - started)
            finished = run.done.wait(max(remaining, 0.0))
            results[check.name] = self._result(check, run, finished, reused)
        return results

    def _result(self, check: _Check, run: _Run, finished: bool, reused: bool) -> CheckResult:
        if not finished:
            message = f"timed out after {check.timeout:g}s"
            if reused:
                message += " (a previous run is still hanging)"
            latency = (time.perf_counter() - run.started_at) * 1000
            return CheckResult(UNHEALTHY, message, latency, check.required)
        latency = (run.finished_at - run.started_at) * 1000
        if run.error is not None:
            message = self._redact(f"{type(run.error).__name__}: {run.error}")
            return CheckResult(UNHEALTHY, message, latency, check.required)
        try:
            status, message, details = interpret(run.result)
        except Exception as exc:  # a result whose str() raises: still an answer, never a crash
            status, message, details = UNHEALTHY, f"unreadable check result: {exc!r}", {}
        if status != HEALTHY:
            message = self._redact(message)
        return CheckResult(status, message, latency, check.required, details)

    def _redact(self, text: str) -> str:
        """Failure messages can carry connection URLs with passwords; mask them like logs."""
        if not self.config.redact:
            return text
        try:
            if self._redactor is None:
                from stackwatch.redaction import Redactor

                self._redactor = Redactor()
            return str(self._redactor.redact_text(text))
        except Exception:
            return text

    # -- probe answers ----------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/health``: the process answers; who it is. No dependency calls."""
        return 200, {
            "status": HEALTHY,
            "service": self.config.service,
            "version": self.config.version,
            "timestamp": utc_timestamp(),
        }

    def live(self) -> tuple[int, dict[str, Any]]:
        """``/health/live``: liveness only; never touches a dependency (a slow database must
        not get the process restarted)."""
        return 200, {"status": HEALTHY, "timestamp": utc_timestamp()}

    def ready(self) -> tuple[int, dict[str, Any]]:
        """``/health/ready``: every registered check; 503 only when a required one fails."""
        results = self.run_checks()
        overall = HEALTHY
        for result in results.values():
            if result.status == UNHEALTHY and result.required:
                overall = UNHEALTHY
                break
            if result.status != HEALTHY:
                overall = DEGRADED
        body = {
            "status": overall,
            "timestamp": utc_timestamp(),
            "checks": {name: result.as_dict() for name, result in results.items()},
        }
        return (503 if overall == UNHEALTHY else 200), body

    def answer(self, path: str) -> tuple[int, dict[str, Any]] | None:
        """The probe answer for ``path``, or None when ``path`` is not a probe path."""
        handler = self.paths.get(path)
        return handler() if handler is not None else None

    def is_blocking(self, path: str) -> bool:
        """True for the readiness path: async integrations run it in a thread."""
        return path == self.config.ready_path
