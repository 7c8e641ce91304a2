"""What every web integration does per request, independent of the framework.

:class:`WebInstrumentation` holds the config, the health registry and the request metrics;
each framework module only reads its request (method, path, a few headers), calls
:meth:`~WebInstrumentation.begin` and :meth:`~WebInstrumentation.finish`, and turns
:meth:`~WebInstrumentation.probe` answers into its own responses. Per request that is:

- ``X-Request-ID`` taken from the request when it looks like an id (<= 128 safe characters,
  so nobody can forge log lines through it), else generated; echoed on the response and bound
  into :class:`stackwatch.sdk.logging.LogContext` as ``request_id``;
- a W3C ``traceparent``'s trace id bound as ``trace_id`` (when an OpenTelemetry span is active
  the log formatter prefers its ids);
- with tracing set up, the request's server span (:meth:`WebInstrumentation.trace`);
- ``X-Response-Time`` (milliseconds until the response headers);
- the RED metrics, by route template; a WARNING "Slow request detected: {route} took {s:.2f}s"
  over ``config.slow_request_seconds``.

Probe and ``/metrics`` requests are not counted in the request metrics: a scrape every 15 s and
a probe every 5 s would otherwise dominate the numbers of a quiet service.

Nothing here may break the host app: SDK failures are logged (once with a traceback, then at
DEBUG) and swallowed by the callers.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import time
from typing import Any

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.health import HealthRegistry
from stackwatch.sdk.logging import LogContext
from stackwatch.sdk.logging import _context as _logging_context
from stackwatch.sdk.metrics import UNMATCHED, RequestMetrics

_reset = LogContext.reset
_log_context = _logging_context  # the ContextVar behind LogContext

__all__ = ["RequestState", "WebInstrumentation", "collapse_path", "rule_to_template"]

logger = logging.getLogger("stackwatch.sdk.web")
slow_logger = logging.getLogger("stackwatch.sdk.requests")
error_logger = logging.getLogger("stackwatch.sdk.errors")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32

# <int:id>, <path:rest>, <string(length=2):code> (werkzeug, Django) -> {id}
_ANGLE_PARAM = re.compile(r"<(?:[^<>:]+:)?(\w+)>")
# (?P<year>[0-9]{4}) in Django re_path routes -> {year}
_REGEX_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")
# Path segments that are ids: numbers, UUIDs, long hex, long tokens mixing letters and digits.
_ID_SEGMENT = re.compile(
    r"(?<=/)(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{20,})(?=/|$)"
)

# Generated request ids: a random per-process prefix plus a counter (32 hex characters). Unique,
# not secret, and cheaper than a uuid4 per request; forked workers draw a new prefix. The
# counter starts at 2**60 so that ``hex()`` gives its 16 digits without a format spec (180
# against 325 ns a request).
_ID_COUNTER_START = 1 << 60
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(_ID_COUNTER_START)


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count(_ID_COUNTER_START)


os.register_at_fork(after_in_child=_new_id_prefix)

_templates: dict[str, str] = {}
_collapsed: dict[str, str] = {}
_CACHE_LIMIT = 10_000


def rule_to_template(rule: str) -> str:
    """A framework's route rule as a template: ``/api/leads/<int:id>`` -> ``/api/leads/{id}``.

    Also Django ``path()`` routes (no leading slash) and ``re_path()`` regexes (named groups
    become ``{name}``, anchors go). Results are cached: the set of rules is finite.
    """
    cached = _templates.get(rule)
    if cached is not None:
        return cached
    template = rule
    if "(?P<" in template:
        template = _REGEX_GROUP.sub(r"{\1}", template).lstrip("^").rstrip("$").replace("\\", "")
    if "<" in template:
        template = _ANGLE_PARAM.sub(r"{\1}", template)
    if not template.startswith("/"):
        template = "/" + template
    if len(_templates) < _CACHE_LIMIT:
        _templates[rule] = template
    return template


def collapse_path(path: str) -> str:
    """Best-effort template for apps that do not say which route matched (plain WSGI/ASGI):
    id-like segments become ``{id}`` (``/users/42/orders/9f1c...`` -> ``/users/{id}/orders/{id}``)."""
    cached = _collapsed.get(path)
    if cached is not None:
        return cached
    template = _ID_SEGMENT.sub("{id}", path) or "/"
    if len(_collapsed) < _CACHE_LIMIT:
        _collapsed[path] = template
    return template


class RequestState:
    """One request in flight; :meth:`WebInstrumentation.begin` fills it in. Integrations may
    subclass it to keep their own per-request fields in the same object."""

    __slots__ = ("db", "finished", "request_id", "span", "span_token", "start", "token")

    def __init__(self) -> None:
        self.finished = False
        self.db: Any = None
        self.span: Any = None
        self.span_token: Any = None


_failures: set[str] = set()


def sdk_failure(where: str) -> None:
    """Log an SDK-internal failure: with a traceback the first time per place, then at DEBUG."""
    try:
        if where in _failures:
            logger.debug("stackwatch %s failed", where, exc_info=True)
        else:
            _failures.add(where)
            logger.warning("stackwatch %s failed; the request goes on uninstrumented", where, exc_info=True)
    except Exception:
        pass


class WebInstrumentation:
    """The per-request work shared by the WSGI, ASGI, Flask, FastAPI and Django integrations."""

    def __init__(self, config: SDKConfig, health: HealthRegistry, metrics: RequestMetrics) -> None:
        self.config = config
        self.health = health
        self.metrics = metrics
        self.slow_seconds = float(config.slow_request_seconds)
        self.metrics_path = config.metrics_path
        self.ready_path = config.ready_path
        #: Paths answered by the SDK and left out of the request metrics.
        self.own_paths = frozenset({config.health_path, config.live_path, config.ready_path, config.metrics_path})
        self._enter = metrics.enter
        self._exit = metrics.exit
        self._record = metrics.record

    # -- probes and /metrics ------------------------------------------------------------------

    def probe(self, method: str, path: str, query_string: str = "", accept: str = "") -> tuple[int, str, bytes]:
        """(status, content type, body) for one of :attr:`own_paths`; HEAD gets an empty body.

        The readiness check blocks up to the longest check timeout: async callers run it in a
        thread (see :meth:`is_blocking`).
        """
        try:
            if path == self.metrics_path:
                status, content_type, body = self.metrics.answer(query_string, accept)
            else:
                answer = self.health.answer(path)
                if answer is None:
                    return 404, "application/json", b'{"error": "not found"}'
                status, payload = answer
                content_type, body = "application/json", json.dumps(payload).encode()
        except Exception:
            sdk_failure(f"probe {path}")
            status, content_type = 500, "application/json"
            body = b'{"status": "unhealthy", "message": "the probe itself failed; see the app log"}'
        if method == "HEAD":
            body = b""
        return status, content_type, body

    def is_blocking(self, path: str) -> bool:
        return path == self.ready_path

    # -- per request ------------------------------------------------------------------------------

    def begin(self, request_id: str | None, traceparent: str | None,
              state: RequestState | None = None) -> RequestState:
        """Start timing, count the request in flight, bind its ids to the log context.

        Fills ``state`` (a :class:`RequestState` or subclass) when given, else a new one.
        """
        start = time.perf_counter()
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = _id_prefix + hex(next(_id_counter))[2:]
        trace_id = None
        if traceparent is not None:
            match = _TRACEPARENT.fullmatch(traceparent.strip())
            if match is not None and match.group(1) != "ff" and match.group(2) != _ZERO_TRACE:
                trace_id = match.group(2)
        # LogContext.bind(request_id=...), without the keyword-argument dict and the call.
        bound = _log_context.get()
        fields = {**bound, "request_id": request_id} if bound else {"request_id": request_id}
        if trace_id is not None:
            fields["trace_id"] = trace_id
        token = _log_context.set(fields)
        self._enter()
        if state is None:
            state = RequestState()
        else:  # a subclass's own __init__ may not have set these
            state.span = state.span_token = state.db = None  # span: set by trace() when tracing is on
        state.start = start
        state.request_id = request_id
        state.token = token
        db = sys.modules.get("stackwatch.sdk.integrations.sqlalchemy")
        # Queries per request and N+1 detection count this request's queries, once an engine
        # is instrumented (no cost otherwise: the module is not even imported).
        if db is not None and db.instrumented():
            state.db = db.begin_request()
        return state

    @staticmethod
    def unhandled(state: RequestState, method: str, path: str, exc: BaseException) -> None:
        """Log an exception the app let escape, with its traceback, in the request's context.

        Frameworks that turn exceptions into a 500 themselves (Flask, Django) log them on their
        own loggers; an exception that reaches the server (Starlette/FastAPI re-raise it, plain
        WSGI apps) would only reach the server's own stderr logger (uvicorn's, gunicorn's), out
        of the JSON logs and the shipper. Client disconnects (CancelledError) are not errors.
        """
        if not isinstance(exc, Exception):
            return
        span_exception(state.span, exc)
        try:
            error_logger.error(
                "Unhandled exception in %s %s: %s: %s", method, path, type(exc).__name__, exc,
                exc_info=(type(exc), exc, exc.__traceback__),
                extra={"method": method, "path": path, "status_code": 500},
            )
        except Exception:
            sdk_failure("logging an unhandled exception")

    def trace(self, state: RequestState, method: str, path: str, scheme: str, traceparent: str | None,
              tracestate: str | None, user_agent: str | None) -> None:
        """Open the request's server span (when tracing is set up) and make it current.

        One span per request, made here rather than by the OpenTelemetry Flask/FastAPI
        instrumentations: those cost about 320 us per request on Flask (measured in
        bench/sdk_web_overhead.py) for the same trace; this span, started by
        :class:`stackwatch.sdk._request_span.RequestSpanStarter`, costs about 15 us there,
        export included. Parent context comes from ``traceparent``/``tracestate`` through the
        globally configured propagator, so traces continue across services. Its name becomes
        ``METHOD route`` when the route is known, at the end.
        """
        tracer = _web_tracer() if self.config.tracing else None
        if tracer is None:
            return
        try:
            otel = _otel_api or _otel()
            var = otel.context_var
            if var is not None:
                current_context = var.get()
                current = current_context.get(otel.span_key)
            else:
                current_context = None
                current = otel.get_current_span()
            if current is not None and current.is_recording() and getattr(current, "kind", None) is otel.SERVER:
                return  # OpenTelemetry's own instrumentation (its agent) already opened one
            parent = None
            if traceparent:
                carrier = {"traceparent": traceparent}
                if tracestate:
                    carrier["tracestate"] = tracestate
                parent = otel.extract(carrier)
            attributes = {"http.request.method": method, "url.path": path, "url.scheme": scheme}
            if user_agent:
                attributes["user_agent.original"] = user_agent
            start_server_span = getattr(tracer, "start_server_span", None)
            if start_server_span is not None:  # stackwatch.sdk._request_span.RequestSpanStarter
                parent_span = otel.get_current_span(parent) if parent is not None else current
                parent_span_context = parent_span.get_span_context() if parent_span is not None else None
                span = start_server_span(method, parent_span_context, parent, attributes)
            else:
                span = tracer.start_span(method, context=parent, kind=otel.SERVER, attributes=attributes)
            state.span = span
            if var is not None:
                base = parent if parent is not None else current_context
                state.span_token = var.set(otel.Context({**base, otel.span_key: span}))
            else:
                state.span_token = otel.attach(otel.set_span_in_context(span, parent))
        except Exception:
            sdk_failure("request span start")

    @staticmethod
    def _end_span(state: RequestState, method: str, route: str, status: int) -> None:
        span, state.span = state.span, None
        token, state.span_token = state.span_token, None
        try:
            known = bool(route) and route != UNMATCHED
            finish = getattr(span, "finish_request", None)
            if finish is not None:  # stackwatch.sdk._request_span.RequestSpan
                finish(method, route if known else None, status)
            else:
                if known:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    otel = _otel()
                    current = getattr(getattr(span, "status", None), "status_code", otel.StatusCode.UNSET)
                    if current is otel.StatusCode.UNSET:  # keep an error that says what failed
                        span.set_status(otel.Status(otel.StatusCode.ERROR))
                span.end()
        except Exception:
            sdk_failure("request span end")
        if token is not None:
            try:
                otel = _otel_api or _otel()
                if otel.context_var is not None:
                    otel.context_var.reset(token)
                else:
                    otel.detach(token)
            except Exception:
                pass  # ended in another context (a streaming body closed elsewhere): nothing to undo

    @staticmethod
    def response_time(state: RequestState) -> str:
        """The ``X-Response-Time`` value: milliseconds since :meth:`begin`."""
        return f"{(time.perf_counter() - state.start) * 1000:.2f}ms"

    def finish(self, state: RequestState, method: str, route: str, status: int, *, release: bool = True) -> None:
        """Record the request once (later calls do nothing); warn when it was slow.

        ``release=False`` keeps the log context bound (ASGI: the response is complete but
        background tasks still run as part of the request); call :meth:`release` after.
        """
        if state.finished:
            if release:
                self.release(state)
            return
        state.finished = True
        duration = time.perf_counter() - state.start
        if duration > self.slow_seconds:
            # Before the span ends: the warning is the line an on-call opens the slow trace from,
            # so it must carry the request's trace id.
            try:
                slow_logger.warning(
                    "Slow request detected: %s took %.2fs",
                    route,
                    duration,
                    extra={"route": route, "method": method, "status_code": status,
                           "duration_ms": round(duration * 1000, 2)},
                )
            except Exception:
                sdk_failure("slow request warning")
        if state.db is not None:
            db = sys.modules["stackwatch.sdk.integrations.sqlalchemy"]
            db.end_request(state.db)
            state.db = None
        if state.span is not None:
            self._end_span(state, method, route, status)
        try:
            self._exit()
            self._record(method, route, status, duration)
        finally:
            if release:
                # self.release(state), inlined: this runs for every request.
                token, state.token = state.token, None
                if token is not None:
                    try:
                        _log_context.reset(token)
                    except (ValueError, RuntimeError):
                        pass  # see release()

    @staticmethod
    def release(state: RequestState) -> None:
        """Unbind the request's log context (once)."""
        token, state.token = state.token, None
        if token is None:
            return
        try:
            _reset(token)
        except (ValueError, RuntimeError):
            # Reset from another context (a streaming body closed by the server in a
            # different context): the binding dies with that context anyway.
            pass


def span_exception(span: Any, exc: BaseException) -> None:
    """Record ``exc`` on the request's server span (``span``, else the current one).

    The server span may be the framework's own (FastAPI opens one natively), and a framework
    that turns an exception into its 500 page itself (Flask) reports it from inside the
    request, where the request's span is current: the exception belongs on it all the same,
    so the trace shows what failed, not only that something did.
    """
    if span is None and _web_tracer() is not None:
        from opentelemetry import trace as otel_trace

        span = otel_trace.get_current_span()
    if span is None:
        return
    try:
        if span.is_recording():
            span.record_exception(exc)
            otel = _otel()
            span.set_status(otel.Status(otel.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
    except Exception:
        sdk_failure("request span exception")


class _OTel:
    """The OpenTelemetry API pieces the request span needs, looked up once: importing them
    inside every request cost more than some of the calls themselves.

    With OpenTelemetry's default runtime context (a ``ContextVar`` holding the current
    ``Context``), :attr:`context_var` is that variable and :attr:`span_key` the context key of
    the current span: reading, setting and resetting them directly is exactly what
    ``get_current_span``/``set_span_in_context``/``attach``/``detach`` do, minus four Python
    calls each. With another runtime context configured (``OTEL_PYTHON_CONTEXT``) they are
    None and the public functions are used.
    """

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace

        self.get_current_span = trace.get_current_span
        self.set_span_in_context = trace.set_span_in_context
        self.SERVER = trace.SpanKind.SERVER
        self.Status = trace.Status
        self.StatusCode = trace.StatusCode
        self.extract = propagate.extract
        self.attach = context.attach
        self.detach = context.detach
        self.context_var: Any = None
        self.span_key: Any = None
        self.Context: Any = None
        try:
            from contextvars import ContextVar

            from opentelemetry.context.context import Context
            from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
            from opentelemetry.trace.propagation import _SPAN_KEY

            runtime = context._RUNTIME_CONTEXT
            var = getattr(runtime, "_current_context", None)
            if type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar) and _SPAN_KEY:
                self.context_var, self.span_key, self.Context = var, _SPAN_KEY, Context
        except (ImportError, AttributeError):
            pass


_otel_api: _OTel | None = None


def _otel() -> _OTel:
    global _otel_api
    if _otel_api is None:
        _otel_api = _OTel()
    return _otel_api


_tracer: Any = None


def _web_tracer() -> Any:
    """The tracer for request spans, or None when tracing is not set up (no import cost then).

    Once there is one it stays: tracing, once set up, is never torn down in a process
    (``shutdown()`` only stops its export), so the lookup is made once."""
    global _tracer
    tracer = _tracer
    if tracer is None:
        tracing = sys.modules.get("stackwatch.sdk.tracing")
        tracer = _tracer = None if tracing is None else tracing.web_tracer()
    return tracer


def unmatched_or_collapsed(path: str, status: int) -> str:
    """Route for a request whose template is unknown: 404s are ``<unmatched>`` (scanners), the
    rest get id-like segments collapsed."""
    if status == 404:
        return UNMATCHED
    return collapse_path(path)


class MiddlewareBase:
    """What the WSGI and ASGI middlewares share: their options and where the instrumentation
    comes from (given, built from its parts, or found lazily from ``init()``'s state, so a
    middleware added before ``init()`` runs still works)."""

    def __init__(self, app: Any, config: Any = None, health: Any = None, metrics: Any = None, *,
                 serve_probes: bool = True, templates_known: bool = False,
                 instrumentation: WebInstrumentation | None = None) -> None:
        self.app = app
        self.serve_probes = serve_probes
        self.templates_known = templates_known
        #: Whether this middleware opens the request's server span (when tracing is set up).
        self.traced = True
        self._web = instrumentation
        if self._web is None and config is not None and health is not None and metrics is not None:
            self._web = WebInstrumentation(config, health, metrics)

    @property
    def web(self) -> WebInstrumentation:
        if self._web is None:
            from stackwatch.sdk.integrations import active_instrumentation

            self._web = active_instrumentation()
        return self._web
