"""OpenTelemetry tracing: a TracerProvider, the OTLP/HTTP exporter to the server, instrumentations.

:func:`setup_tracing` is what ``stackwatch.sdk.init()`` calls. It builds on the ecosystem's own
pieces (the OpenTelemetry SDK's ``TracerProvider``, ``OTLPSpanExporter`` over HTTP and the
``opentelemetry-instrumentation-*`` packages that happen to be installed), so spans look the
same as any OpenTelemetry app's and users can keep their own OpenTelemetry code. Two pieces
are the SDK's own, for the per-request cost (measured in ``bench/sdk_web_overhead.py``): the
batching span processor (:mod:`stackwatch.sdk._span_batch`, the work of ``BatchSpanProcessor``
with less of it on the request's thread) and the web middleware's server spans
(:mod:`stackwatch.sdk._request_span`, ordinary SDK spans started without the general path).

* **Without a server** a provider is still installed: spans get trace and span ids, so log
  lines carry ``trace_id``/``span_id`` and outgoing calls carry ``traceparent``; nothing is
  exported (``OTEL_TRACES_EXPORTER=console`` prints spans instead, for local debugging).
* **With a server** spans go to ``{server_url}/v1/traces`` with the ingest token as
  ``Authorization: Bearer``. A server that does not accept traces (HTTP 404: older servers) or
  that is down costs one log line, not one per batch: export pauses with a growing backoff and
  the spans of the paused period are dropped and counted (:data:`export_stats`).
* **Sampling**: parent-based, always-on for new traces (the OpenTelemetry default; override
  with ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``). ``config.traces_sample_rate`` is
  *not* applied here: it is Sentry's transaction sample rate (see :mod:`stackwatch.sdk.errors`).
  Keeping every trace by default means a log line's ``trace_id`` always leads to its trace.
* **Pre-fork servers** (gunicorn, ``uvicorn --workers``, Celery prefork): a process that forks
  after ``init()`` hands its children a batch processor whose thread is gone and an HTTP
  session whose keep-alive socket the parent still uses. The processor installed here
  rebuilds its batch processor and exporter in every child (``os.register_at_fork``), so each
  worker exports its own spans on its own connection.
* **An existing provider**: when the app already installed an SDK ``TracerProvider``, it is
  kept and the Stackwatch exporter is added to it as one more span processor.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stackwatch.sdk._config import SDKConfig

__all__ = [
    "ExportStats",
    "add_span_exporter",
    "enable_instrumentations",
    "export_stats",
    "force_flush",
    "instrument_app_tracing",
    "setup_tracing",
    "shutdown_tracing",
]

logger = logging.getLogger("stackwatch.sdk.tracing")

#: OpenTelemetry logs every failed export at ERROR from this logger; while our exporter
#: exports, those records are turned into one line of ours instead (see _ExporterLogFilter).
_OTLP_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"

#: Instrumentations enabled when both the instrumentation package and its library are
#: installed: (instrumentation module, instrumentor class, library module it patches).
INSTRUMENTATIONS: tuple[tuple[str, str, str], ...] = (
    ("opentelemetry.instrumentation.django", "DjangoInstrumentor", "django"),
    ("opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor", "sqlalchemy"),
    ("opentelemetry.instrumentation.requests", "RequestsInstrumentor", "requests"),
    ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor", "httpx"),
    ("opentelemetry.instrumentation.redis", "RedisInstrumentor", "redis"),
    ("opentelemetry.instrumentation.celery", "CeleryInstrumentor", "celery"),
    ("opentelemetry.instrumentation.logging", "LoggingInstrumentor", "logging"),
)

_PAUSE_AFTER_MISSING_ENDPOINT = 300.0  # a server without /v1/traces will not grow one soon
_PAUSE_AFTER_AUTH_FAILURE = 300.0
_PAUSE_FIRST = 5.0  # then doubling up to _PAUSE_MAX while the server stays unreachable
_PAUSE_MAX = 300.0


@dataclass
class ExportStats:
    """What the Stackwatch span exporter did in this process (for tests and self-monitoring)."""

    exported: int = 0
    failed: int = 0
    dropped_while_paused: int = 0
    last_status: int | None = None

    def reset(self) -> None:
        self.exported = self.failed = self.dropped_while_paused = 0
        self.last_status = None


#: Counters of the current process's exporter (reset in a forked child).
export_stats = ExportStats()


class _ExporterLogFilter(logging.Filter):
    """Swallows the OTLP exporter's per-batch failure records while *our* exporter runs.

    The filter is installed on the OTLP exporter's logger but only acts in a thread where
    :class:`_ServerSpanExporter` is inside ``export`` (a thread-local flag), so exporters the
    app set up itself keep their logging. It remembers the HTTP status of the failure so the
    exporter can decide how long to pause.
    """

    def __init__(self) -> None:
        super().__init__("stackwatch")
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self.local, "active", False):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 3 and (args[1] is None or isinstance(args[1], int)):
            self.local.status = args[1]
            self.local.reason = str(args[2])
        elif record.levelno >= logging.ERROR:
            self.local.reason = record.getMessage()
        return False


_log_filter = _ExporterLogFilter()
# The exporter hands this logger to its HTTP client too, so retries and failures all pass here.
logging.getLogger(_OTLP_LOGGER).addFilter(_log_filter)


class _ServerSpanExporter:
    """``OTLPSpanExporter`` to the Stackwatch server, with pauses instead of log floods.

    Implements the OpenTelemetry ``SpanExporter`` interface (export/shutdown/force_flush).
    After a failure, export is paused: 5 minutes when the endpoint is missing (404/405/501)
    or the token is refused (401/403), else from 5 s doubling to 5 minutes; spans arriving
    during a pause are dropped and counted, so a dead server never backs up the queue. One
    log line per state change, never one per batch.
    """

    def __init__(self, endpoint: str, token: str | None, timeout: float | None = 5.0) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.endpoint = endpoint
        self._inner = OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout)
        self._paused_until = 0.0
        self._backoff = _PAUSE_FIRST
        self._failing = False

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if time.monotonic() < self._paused_until:
            export_stats.dropped_while_paused += len(spans)
            return SpanExportResult.FAILURE
        local = _log_filter.local
        local.active, local.status, local.reason = True, None, None
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the batch thread
            local.reason = repr(exc)
            result = SpanExportResult.FAILURE
        finally:
            local.active = False
        if result == SpanExportResult.SUCCESS:
            export_stats.exported += len(spans)
            export_stats.last_status = 200
            if self._failing:
                logger.info("trace export to %s works again", self.endpoint)
            self._failing = False
            self._backoff = _PAUSE_FIRST
            return result
        export_stats.failed += len(spans)
        export_stats.last_status = local.status
        self._pause(local.status, local.reason)
        return result

    def _pause(self, status: int | None, reason: str | None) -> None:
        if status in (404, 405, 501):
            pause = _PAUSE_AFTER_MISSING_ENDPOINT
            why = f"the server does not accept traces (HTTP {status})"
        elif status in (401, 403):
            pause = _PAUSE_AFTER_AUTH_FAILURE
            why = f"the server refused the ingest token (HTTP {status})"
        else:
            pause = self._backoff
            self._backoff = min(self._backoff * 2, _PAUSE_MAX)
            why = f"HTTP {status}" if status else (reason or "connection failed")
        self._paused_until = time.monotonic() + pause
        if not self._failing:
            # Once per outage; INFO for a missing endpoint (expected on older servers).
            level = logging.INFO if status in (404, 405, 501) else logging.WARNING
            logger.log(level, "trace export to %s failed: %s; spans are dropped for %.0fs between retries",
                       self.endpoint, why, pause)
        self._failing = True

    def shutdown(self) -> None:
        try:
            self._inner.shutdown()
        except Exception:
            logger.debug("span exporter shutdown failed", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _ForkSafeSpanProcessor:
    """A span processor that rebuilds its batch processor and exporter after ``fork()``.

    The provider keeps this object for its whole life (tracers hold the provider, so the
    provider itself must not change); what it delegates to is replaced in each child. The
    parent's queued spans are not inherited (the parent exports them), and the inherited
    exporter's HTTP session is closed in the child only, so no socket is shared.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._inner = factory()
        self._bind()
        self._pid = os.getpid()
        self._closed = False
        ref = weakref.WeakMethod(self._after_fork_in_child)

        def after_in_child() -> None:
            method = ref()
            if method is not None:
                method()

        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=after_in_child)

    @property
    def inner(self) -> Any:
        return self._inner

    def _bind(self) -> None:
        """Point ``on_start``/``_on_ending``/``on_end`` straight at the current inner processor's
        methods: they run for every span, and a forwarding call each was measurable. The
        provider's processor list (see :func:`_span_processors`) is told to look again."""
        inner = self._inner
        self.on_start = inner.on_start  # type: ignore[method-assign]
        self.on_end = inner.on_end  # type: ignore[method-assign]
        self._on_ending = getattr(inner, "_on_ending", None) or _ignore_span  # type: ignore[method-assign]
        self.passive_hooks = getattr(inner, "passive_hooks", frozenset())
        for processors in list(_processor_lists):
            processors.refresh()

    def replace(self, factory: Callable[[], Any]) -> None:
        """Point at a new exporter (a later ``setup_tracing`` with another server)."""
        with self._lock:
            old, self._factory = self._inner, factory
            self._inner = factory()
            self._bind()
        _shutdown_quietly(old)

    def _after_fork_in_child(self) -> None:
        if self._closed:
            return
        self._lock = threading.Lock()  # the parent may have held it while forking
        old = self._inner
        export_stats.reset()
        try:
            self._inner = self._factory()
            self._bind()
        except Exception:
            logger.warning("could not rebuild the span exporter after fork", exc_info=True)
            return
        self._pid = os.getpid()
        _shutdown_quietly(old, timeout_millis=0)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self._inner.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Any) -> None:
        on_ending = getattr(self._inner, "_on_ending", None)
        if on_ending is not None:
            on_ending(span)

    def on_end(self, span: Any) -> None:
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._closed = True
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


def _ignore_span(span: Any) -> None:
    pass


#: Every processor list made by _span_processors (weakly: a provider may be dropped).
_processor_lists: weakref.WeakSet[Any] = weakref.WeakSet()


def _span_processors() -> Any:
    """The processor list for a provider this module creates: OpenTelemetry's
    ``SynchronousMultiSpanProcessor``, calling only the hooks that do something.

    The provider calls three hooks per span (``on_start``, ``_on_ending``, ``on_end``) on every
    processor; the Stackwatch processors do nothing in two of them (they say so in
    ``passive_hooks``). The list keeps one tuple of bound hooks per kind, rebuilt when a
    processor is added or one of ours points at a new inner processor (fork, new server).
    """
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor

    class SpanProcessors(SynchronousMultiSpanProcessor):
        def __init__(self) -> None:
            super().__init__()
            self._starts: tuple[Callable[..., None], ...] = ()
            self._endings: tuple[Callable[[Any], None], ...] = ()
            self._ends: tuple[Callable[[Any], None], ...] = ()
            _processor_lists.add(self)

        def add_span_processor(self, span_processor: Any) -> None:
            super().add_span_processor(span_processor)
            self.refresh()

        def refresh(self) -> None:
            starts, endings, ends = [], [], []
            for processor in self._span_processors:
                passive = getattr(processor, "passive_hooks", ())
                if "on_start" not in passive:
                    starts.append(processor.on_start)
                if "_on_ending" not in passive and hasattr(processor, "_on_ending"):
                    endings.append(processor._on_ending)
                if "on_end" not in passive:
                    ends.append(processor.on_end)
            self._starts, self._endings, self._ends = tuple(starts), tuple(endings), tuple(ends)

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            for hook in self._starts:
                hook(span, parent_context=parent_context)

        def _on_ending(self, span: Any) -> None:
            for hook in self._endings:
                hook(span)

        def on_end(self, span: Any) -> None:
            for hook in self._ends:
                hook(span)

    return SpanProcessors()


def _shutdown_quietly(processor: Any, timeout_millis: int = 1000) -> None:
    try:
        processor.shutdown(timeout_millis=timeout_millis) if _accepts_timeout(processor) else processor.shutdown()
    except Exception:
        logger.debug("span processor shutdown failed", exc_info=True)


def _accepts_timeout(processor: Any) -> bool:
    import inspect

    try:
        return "timeout_millis" in inspect.signature(processor.shutdown).parameters
    except (TypeError, ValueError):
        return False


class _NoopSpanProcessor:
    """Stands in when nothing is exported (no server, no console): spans still get ids."""

    passive_hooks = frozenset({"on_start", "_on_ending", "on_end"})

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class _State:
    provider: Any
    processor: _ForkSafeSpanProcessor
    owns_provider: bool
    config: SDKConfig
    web_tracer: Any = None
    #: Processors of :func:`add_span_exporter`, flushed with ours.
    extra: list[_ForkSafeSpanProcessor] = field(default_factory=list)
    #: Whether ``processor`` is one of the provider's span processors (see _register_processor).
    registered: bool = False


_state: _State | None = None
_state_lock = threading.Lock()


def traces_endpoint(config: SDKConfig) -> str | None:
    """``{server_url}/v1/traces``, or None when no server is configured."""
    if not config.server_url:
        return None
    return config.server_url.rstrip("/") + "/v1/traces"


def _processor_factory(config: SDKConfig) -> Callable[[], Any]:
    endpoint = traces_endpoint(config)
    console = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console"

    def build() -> Any:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        from stackwatch.sdk._span_batch import SpanBatcher

        if endpoint:
            # OpenTelemetry's own timeout variables win; else 5 s, which bounds how long an
            # unreachable server can hold the export thread (and the app's exit) per batch.
            env_timeout = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get(
                "OTEL_EXPORTER_OTLP_TIMEOUT")
            timeout = None if env_timeout else 5.0
            return SpanBatcher(_ServerSpanExporter(endpoint, config.token, timeout))
        if console:
            return SpanBatcher(ConsoleSpanExporter())
        return _NoopSpanProcessor()

    return build


def build_resource(config: SDKConfig) -> Any:
    """The resource every span carries: who sent it (service, release, environment, host)."""
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, Any] = {
        "service.name": config.service,
        "service.version": config.version,
        "deployment.environment": config.environment,
        "deployment.environment.name": config.environment,
        "host.name": socket.gethostname(),
    }
    for key, value in config.tags.items():
        attributes.setdefault(str(key), str(value))
    return Resource.create(attributes)


def _register_processor(state: _State) -> None:
    """Add the exporting processor to the provider once it has something to export.

    Without a server (and without the console exporter) it would be a no-op called three
    times per span by the provider (start, ending, end), so it joins the provider only when a
    later ``setup_tracing`` points it at an exporter; from then on it stays.
    """
    if not state.registered and not isinstance(state.processor.inner, _NoopSpanProcessor):
        state.provider.add_span_processor(state.processor)
        state.registered = True


def setup_tracing(config: SDKConfig) -> Any | None:
    """Install tracing for ``config``; return the ``TracerProvider`` in use, or None.

    None when ``config.tracing`` is off or the OpenTelemetry SDK is not installed. Calling it
    again is safe: the same provider is returned and, when the server changed, the exporter
    is swapped in place. Never raises for an SDK-internal failure (it is logged).
    """
    global _state
    if not config.tracing:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        logger.info("tracing is on but opentelemetry-sdk is not installed; no spans are recorded")
        return None
    try:
        with _state_lock:
            factory = _processor_factory(config)
            if _state is not None:
                if _state.config != config:
                    _state.processor.replace(factory)
                    _state.config = config
                    _register_processor(_state)
                enable_instrumentations()
                return _state.provider
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                provider, owns = current, False  # the app's own OpenTelemetry set-up stays
            else:
                provider = TracerProvider(resource=build_resource(config), active_span_processor=_span_processors())
                owns = True
            processor = _ForkSafeSpanProcessor(factory)
            if owns:
                trace.set_tracer_provider(provider)
            _state = _State(provider, processor, owns, config)
            _register_processor(_state)
        enable_instrumentations()
        return provider
    except Exception:
        logger.warning("tracing set-up failed; the app runs without tracing", exc_info=True)
        return None


def enable_instrumentations() -> list[str]:
    """Turn on the installed instrumentations; return the libraries instrumented now.

    A library already imported is instrumented at once; one imported later is instrumented
    when it is imported (a post-import hook), so a Flask app does not pay for importing
    FastAPI, Django and Celery just because they are installed. Django is instrumented only
    when its settings are already loaded (``init()`` in ``wsgi.py``/``asgi.py`` or an
    ``AppConfig.ready``): reading them from inside ``settings.py`` would freeze a half-read
    configuration. Each instrumentation is tried on its own: a broken or version-mismatched
    one is skipped with a debug line and never stops the others or the app.
    """
    enabled = []
    for module_name, class_name, library in INSTRUMENTATIONS:
        try:
            if importlib.util.find_spec(library) is None or importlib.util.find_spec(module_name) is None:
                continue
        except (ImportError, ValueError):
            continue
        if library == "logging":
            # The SDK's formatters already put the active span's ids on every line, so the
            # record-factory injection (otelTraceID... on each LogRecord, for users' own format
            # strings) is opt-in with OpenTelemetry's own switch.
            if os.environ.get("OTEL_PYTHON_LOG_CORRELATION", "").strip().lower() == "true" and _instrument(
                module_name, class_name, library
            ):
                enabled.append(library)
            continue
        if library == "django":
            if _django_configured() and _instrument(module_name, class_name, library):
                enabled.append(library)
            continue
        if library in sys.modules:
            if _instrument(module_name, class_name, library):
                enabled.append(library)
            continue
        _when_imported(library, module_name, class_name)
    return enabled


_hooked: set[str] = set()


def _when_imported(library: str, module_name: str, class_name: str) -> None:
    if library in _hooked:
        return
    try:
        from wrapt import register_post_import_hook  # a dependency of opentelemetry-instrumentation
    except ImportError:
        return
    _hooked.add(library)
    register_post_import_hook(lambda _module: _instrument(module_name, class_name, library), library)


def _instrument(module_name: str, class_name: str, library: str) -> bool:
    try:
        instrumentor = getattr(importlib.import_module(module_name), class_name)()
        if instrumentor.is_instrumented_by_opentelemetry:
            return True
        kwargs: dict[str, Any] = {"raise_exception_on_conflict": True}
        if library == "logging":
            # Never a second, OpenTelemetry log handler: the SDK's shipper owns delivery.
            kwargs.update(set_logging_format=False, inject_trace_context=True, enable_log_auto_instrumentation=False)
        instrumentor.instrument(**kwargs)
        return True
    except Exception as exc:
        logger.debug("instrumentation %s not enabled: %r", class_name, exc)
        return False


def _django_configured() -> bool:
    if "django.conf" not in sys.modules:
        return False  # not even imported: not configured, and not worth importing to ask
    try:
        from django.conf import settings

        return bool(settings.configured)
    except Exception:
        return False


def instrument_app_tracing(app: Any) -> bool:
    """Whether ``init(app)`` traces ``app``: True once tracing is set up.

    Flask, FastAPI/Starlette and plain WSGI/ASGI apps get their server span from the SDK's web
    middleware (see :meth:`WebInstrumentation.trace`), which ``init(app)`` installs anyway; the
    OpenTelemetry Flask/FastAPI instrumentations are not used for them because they cost ten
    times more per request for the same span. Django keeps OpenTelemetry's instrumentation.
    """
    return _state is not None


def web_tracer() -> Any:
    """The tracer the web middleware opens request spans with, or None without tracing.

    A :class:`RequestSpanStarter` when the provider is the OpenTelemetry SDK's with its default
    sampler and id generator (the usual case), else the provider's own tracer; both have
    ``start_span(name, context=..., kind=..., attributes=...)``.
    """
    state = _state
    if state is None:
        return None
    tracer = state.web_tracer
    if tracer is None:
        from stackwatch import __version__

        tracer = state.provider.get_tracer("stackwatch.sdk.web", __version__)
        try:
            from stackwatch.sdk._request_span import RequestSpanStarter

            tracer = RequestSpanStarter.for_tracer(tracer) or tracer
        except Exception:
            logger.debug("request spans use the general OpenTelemetry path", exc_info=True)
        state.web_tracer = tracer
    return tracer


def add_span_exporter(exporter: Any) -> bool:
    """Export spans to ``exporter`` too: any OpenTelemetry ``SpanExporter`` (a second backend,
    a file, a test double), batched the way the server's exporter is. Needs tracing set up
    (``init()`` with tracing on); returns False otherwise. :func:`force_flush` and
    ``stackwatch.sdk.shutdown()`` flush it with the server's."""
    state = _state
    if state is None:
        return False
    from stackwatch.sdk._span_batch import SpanBatcher

    processor = _ForkSafeSpanProcessor(lambda: SpanBatcher(exporter))
    state.provider.add_span_processor(processor)  # type: ignore[arg-type]
    state.extra.append(processor)
    return True


def shutdown_tracing(timeout_millis: int = 5000) -> None:
    """Export what is queued, then stop exporting (``stackwatch.sdk.shutdown()``).

    The global provider stays installed (OpenTelemetry allows setting it only once per
    process) but drops spans; a later :func:`setup_tracing` points it at an exporter again.
    """
    state = _state
    if state is None:
        return
    try:
        for extra in state.extra:
            extra.force_flush(timeout_millis)
        state.processor.force_flush(timeout_millis)
        state.processor.replace(_NoopSpanProcessor)
        state.config = SDKConfig(service="\x00stopped")  # differs from any real config: rebuild next time
    except Exception:
        logger.debug("tracing shutdown failed", exc_info=True)


def force_flush(timeout_millis: int = 5000) -> bool:
    """Export what is queued now; True when it was handed to the exporter in time."""
    state = _state
    if state is None:
        return True
    try:
        flushed = [extra.force_flush(timeout_millis) for extra in state.extra]
        return state.processor.force_flush(timeout_millis) and all(flushed)
    except Exception:
        return False
