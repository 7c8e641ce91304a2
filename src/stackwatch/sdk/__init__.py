"""Stackwatch SDK: instrument a Flask, FastAPI/Starlette, Django or WSGI app in one call.

::

    import stackwatch.sdk

    app = Flask(__name__)
    app = stackwatch.sdk.init(app, service="crm", environment="production", version="1.4.2",
                              server_url="http://stackwatch:8040", token="swi_...")
    stackwatch.sdk.add_check("database", engine)

Health probes, JSON logs with redaction, RED metrics at ``/metrics``, tracing, error capture and
business events; with no ``server_url`` the app still gets its probes, logs and metrics.
Settings come from keyword arguments, else ``STACKWATCH_*`` variables (see ``_config.ENV_VARS``).

Importing this package does nothing and imports no framework, no OpenTelemetry SDK, no Sentry
and no Stackwatch server code: :func:`init` brings in what it needs. The SDK never breaks the
app: a failing part (say tracing) is logged and left out, and an unreachable server only
means buffered, retried and at worst dropped log records.
"""

from __future__ import annotations

import atexit
import logging as _stdlib_logging
from typing import TYPE_CHECKING, Any

from stackwatch.sdk import _client
from stackwatch.sdk._config import SDKConfig, resolve_config
from stackwatch.sdk.logging import (
    TRACE,
    LogContext,
    log_api_call,
    log_business_event,
    log_database_query,
    log_external_service_call,
)

if TYPE_CHECKING:
    from stackwatch.sdk import metrics

__all__ = [
    "TRACE",
    "LogContext",
    "SDKConfig",
    "add_check",
    "business_event",
    "flush",
    "init",
    "log_api_call",
    "log_business_event",
    "log_database_query",
    "log_external_service_call",
    "metrics",
    "shutdown",
]

_logger = _stdlib_logging.getLogger("stackwatch.sdk")
#: Checks registered before init() (name -> (check, required, timeout)), added to the registry then.
_pending_checks: dict[str, tuple[Any, bool, float]] = {}
_atexit_registered = False


def __getattr__(name: str) -> Any:
    # ``stackwatch.sdk.metrics`` is imported on first use: it pulls in prometheus-client.
    if name == "metrics":
        import importlib

        return importlib.import_module("stackwatch.sdk.metrics")
    raise AttributeError(f"module 'stackwatch.sdk' has no attribute {name!r}")


def init(
    app: Any = None,
    *,
    service: str | None = None,
    environment: str | None = None,
    version: str | None = None,
    server_url: str | None = None,
    token: str | None = None,
    **settings: Any,
) -> Any:
    """Set up the SDK once per process and instrument ``app``; return the app to serve.

    ``app`` is a Flask app, a FastAPI/Starlette app or any ASGI callable, or a WSGI callable;
    the result is the same object (instrumented in place) or a wrapper: serve what is returned.
    For Django pass nothing and add ``"stackwatch.sdk.integrations.django.StackwatchMiddleware"``
    to ``MIDDLEWARE``. ``settings`` are any other :class:`SDKConfig` fields (``log_dir``,
    ``slow_request_seconds``...); an unknown keyword raises ``TypeError``, nothing else does.

    Idempotent: later calls keep the first settings (``shutdown()`` first to change them) and
    return what the first call returned for the same app, never instrumenting twice.
    """
    if app is not None and not callable(app):
        raise TypeError(f"cannot instrument {type(app).__name__}: expected a Flask, ASGI or WSGI app")
    config = resolve_config(
        service=service,
        environment=environment,
        version=version,
        server_url=server_url,
        token=token,
        **settings,
    )
    with _client.lock:
        client = _client.current()
        if client is None:
            client = _start(config)
        elif client.config != config:
            _logger.warning(
                "stackwatch.sdk.init() was already called; keeping its settings (call shutdown() first to change them)"
            )
        if app is None:
            return None
        return _instrument(client, app)


def _step(client: _client.Client, name: str, func: Any) -> Any:
    """Run one set-up step; a failure is logged and the app goes on without that part."""
    try:
        return func()
    except Exception as exc:
        client.failures[name] = f"{type(exc).__name__}: {exc}"
        _logger.warning("stackwatch: %s set-up failed; continuing without it", name, exc_info=True)
        return None


def _start(config: SDKConfig) -> _client.Client:
    global _atexit_registered
    client = _client.Client(config)

    def setup_logging() -> Any:
        from stackwatch.sdk.logging import configure_logging

        return configure_logging(config)

    def setup_health() -> Any:
        from stackwatch.sdk.health import HealthRegistry

        registry = HealthRegistry(config)
        for name, (check, required, timeout) in _pending_checks.items():
            try:
                registry.add_check(name, check, required=required, timeout=timeout)
            except Exception:
                _logger.warning("stackwatch: health check %r could not be added", name, exc_info=True)
        return registry

    def setup_metrics() -> Any:
        from stackwatch.sdk.metrics import RequestMetrics

        return RequestMetrics(config)

    def setup_tracing() -> Any:
        from stackwatch.sdk.tracing import setup_tracing

        return setup_tracing(config)

    def setup_errors() -> bool:
        from stackwatch.sdk.errors import setup_errors

        return bool(setup_errors(config, otel_tracing=getattr(client, "tracer_provider", None) is not None))

    def setup_reporter() -> Any:
        from stackwatch.sdk._deps_report import DependencyReporter

        reporter = DependencyReporter(config)
        if client.health is not None:
            _connect_reporter(client.health, reporter)
        return reporter

    client.logging = _step(client, "logging", setup_logging)
    client.health = _step(client, "health probes", setup_health)
    client.metrics = _step(client, "request metrics", setup_metrics)
    if config.tracing:
        client.tracer_provider = _step(client, "tracing", setup_tracing)
    if config.errors:
        client.errors = bool(_step(client, "error capture", setup_errors))
    if config.server_url:
        client.reporter = _step(client, "dependency reporting", setup_reporter)
    _client._set(client)
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True
    return client


def _connect_reporter(health: Any, reporter: Any) -> None:
    """Hand readiness results to the reporter, through whichever hook the registry offers."""
    for hook in ("add_listener", "add_result_listener", "on_results"):
        register = getattr(health, hook, None)
        if callable(register):
            register(reporter.report)
            return


def _instrument(client: _client.Client, app: Any) -> Any:
    seen = client.instrumented.get(id(app))
    if seen is not None and seen[0] is app:
        return seen[1]
    for _original, result in client.instrumented.values():
        if result is app:  # the wrapper a previous init() returned
            return app
    result = app
    if client.tracer_provider is not None:

        def trace_app() -> None:
            from stackwatch.sdk.tracing import instrument_app_tracing

            instrument_app_tracing(app)

        _step(client, "app tracing", trace_app)

    def web() -> Any:
        from stackwatch.sdk.integrations import instrument_app

        return instrument_app(app, client.config, client.health, client.metrics)

    wrapped = _step(client, "app instrumentation", web)
    if wrapped is not None:
        result = wrapped
    client.instrumented[id(app)] = (app, result)
    return result


def add_check(name: str, check: Any, *, required: bool = True, timeout: float = 5.0) -> None:
    """Register a readiness check for ``/health/ready`` (before or after :func:`init`).

    ``check``: an SQLAlchemy engine or DB-API connection (``SELECT 1``), a Redis client
    (``ping``), an http(s) URL, a disk-space check, or any callable (fails when it raises or
    returns False). ``required=False`` checks can only degrade readiness, never fail it.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    with _client.lock:
        _pending_checks[name] = (check, required, timeout)
        client = _client.current()
        health = client.health if client is not None else None
    if health is not None:
        health.add_check(name, check, required=required, timeout=timeout)


def business_event(name: str, **fields: Any) -> None:
    """Log a business event (INFO, with the bound context) and count it.

    The count is ``business_events_total{event=name}`` on ``/metrics``; the log line's context
    holds ``event`` and ``fields`` (redacted like any log line).
    """
    from stackwatch.sdk.logging import _business_logger, _log

    _log(_business_logger, _stdlib_logging.INFO, f"Business event: {name}", {"event": name, **fields})
    try:
        from stackwatch.sdk import metrics as _metrics

        _metrics.counter("business_events_total", "Business events by name", ["event"]).labels(
            event=name
        ).inc()
    except Exception:
        _logger.debug("business event counter unavailable", exc_info=True)


def flush(timeout: float = 5.0) -> bool:
    """Send what is buffered (logs, spans, errors) now; True when everything went out in time."""
    import sys

    ok = True
    client = _client.current()
    if client is None:
        return True
    if client.logging is not None:
        ok = client.logging.flush(timeout=timeout) and ok
    tracing = sys.modules.get("stackwatch.sdk.tracing")
    if tracing is not None and client.tracer_provider is not None:
        try:
            ok = bool(tracing.force_flush(int(timeout * 1000))) and ok
        except Exception:
            ok = False
    if client.errors:
        sentry = sys.modules.get("sentry_sdk")
        if sentry is not None:
            try:
                sentry.flush(timeout=timeout)
            except Exception:
                ok = False
    return ok


def shutdown(timeout: float = 5.0) -> None:
    """Flush everything and undo :func:`init` (registered with ``atexit``); ``init()`` may follow.

    Each exporter gets at most ``timeout`` seconds: an unreachable server delays exit by that
    much at worst, never more.
    """
    import sys

    with _client.lock:
        client = _client.current()
        if client is None:
            return
        _client._set(None)
        _pending_checks.clear()
    tracing = sys.modules.get("stackwatch.sdk.tracing")
    if tracing is not None and client.tracer_provider is not None:
        try:
            tracing.shutdown_tracing(int(timeout * 1000))
        except Exception:
            _logger.debug("tracing shutdown failed", exc_info=True)
    if client.errors:
        _close_errors(timeout)
    reporter = client.reporter
    for method in ("close", "flush"):
        if reporter is not None and callable(getattr(reporter, method, None)):
            try:
                getattr(reporter, method)()
            except Exception:
                pass
            break
    if client.logging is not None:
        from stackwatch.sdk.logging import unconfigure_logging

        try:
            unconfigure_logging(timeout)
        except Exception:
            pass


def _close_errors(timeout: float) -> None:
    """Flush and close the sentry_sdk client *we* made (an app's own client is left alone): a
    closed SDK must not keep sending, or retrying, in the background."""
    import sys

    sentry = sys.modules.get("sentry_sdk")
    errors = sys.modules.get("stackwatch.sdk.errors")
    if sentry is None:
        return
    try:
        ours = getattr(errors, "_our_client", None)
        current = sentry.get_client()
        if ours is not None and current is ours:
            current.close(timeout=timeout)
        else:
            sentry.flush(timeout=timeout)
    except Exception:
        _logger.debug("error capture shutdown failed", exc_info=True)
