"""Per-request overhead of the SDK's web middleware vs no instrumentation vs the guides' hand-written
prometheus-client middleware.

    .venv/bin/python bench/sdk_web_overhead.py [--requests 2000] [--rounds 20]
    .venv/bin/python bench/run.py sdk_web [--requests 2000] [--rounds 20]

Two Stackwatch variants per framework:

* ``stackwatch middleware``: the web middleware alone (``instrument_app``: RED metrics, request
  id, log context, probes), no tracing.
* ``stackwatch full stack``: ``stackwatch.sdk.init(app, ...)`` as a user calls it: JSON logging
  on (the SDK's stdout handler, with ``sys.stdout`` pointed at ``os.devnull`` while timing),
  request metrics on, tracing on (the SDK's TracerProvider and the OpenTelemetry Flask/FastAPI
  instrumentation it enables). No server is configured, so the SDK's own span processor exports
  nothing; after ``init()`` a no-op ``SpanExporter`` (export returns SUCCESS, counting the spans)
  is added with ``stackwatch.sdk.tracing.add_span_exporter``, which batches it exactly as the
  server's exporter is batched (the SDK's ``SpanBatcher``): spans are built, queued and handed
  to an exporter as with a server, minus the network. Error capture stays at its default (on, but sentry-sdk is not initialised without a
  DSN, i.e. without a server). ``STACKWATCH_*``, ``OTEL_*``, ``LOG_LEVEL`` and ``LOG_DIR`` are
  removed from the environment first so the settings are the ones written here.

All apps are built before ``init()``: the OpenTelemetry instrumentors patch the ``Flask`` and
``FastAPI`` classes, so an app created afterwards would be traced too.

Flask: the WSGI app is called directly (a fresh copy of one environ per request, a no-op
start_response, the body consumed and closed as a server would), and through Flask's test client.
FastAPI: the ASGI app is awaited directly with a minimal scope in one event loop. The variants
alternate over ``--rounds`` rounds and each one's best round counts (CPU time of the process, all
threads, so the span processor's export thread counts and other load on the machine does not);
overhead = variant - bare, in microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.health import HealthRegistry
from stackwatch.sdk.integrations import instrument_app
from stackwatch.sdk.metrics import RequestMetrics

#: CPU time of this process: a shared machine's other load does not count against a variant
#: (wall-clock rounds swung by 2x between runs here; CPU-time rounds stay within a few %).
_clock = time.process_time

# --------------------------------------------------------------------------- Flask


def flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/api/leads/<int:lead_id>")
    def lead(lead_id: int) -> Any:
        return {"id": lead_id}

    return app


def flask_handwritten() -> Any:
    """The guides' middleware, as a Flask user writes it: before/after hooks, raw path label."""
    from flask import g, request

    registry = CollectorRegistry()
    count = Counter("http_requests_total", "Total HTTP requests", ["method", "endpoint", "status"], registry=registry)
    latency = Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "endpoint"],
                        registry=registry)
    app = flask_app()

    @app.before_request
    def start_timer() -> None:
        g.start_time = time.time()

    @app.after_request
    def record(response: Any) -> Any:
        duration = time.time() - g.start_time
        count.labels(method=request.method, endpoint=request.path, status=response.status_code).inc()
        latency.labels(method=request.method, endpoint=request.path).observe(duration)
        return response

    return app


#: init() settings of the full-stack variant (the same for both frameworks: init() runs once per process).
SDK_SETTINGS: dict[str, Any] = {
    "service": "bench", "environment": "production", "version": "1.0.0", "slow_request_seconds": 10,
}


def sdk_deps() -> tuple[SDKConfig, HealthRegistry, RequestMetrics]:
    # tracing=False: the middleware-alone variant opens no request spans even though the full
    # stack set tracing up in this process.
    config = SDKConfig(service="bench", slow_request_seconds=10, tracing=False)
    return config, HealthRegistry(config), RequestMetrics(config, CollectorRegistry())


def flask_stackwatch() -> Any:
    return instrument_app(flask_app(), *sdk_deps())


def time_wsgi(app: Any, n: int, extra_environ: dict[str, Any] | None = None) -> float:
    """CPU microseconds per request for ``n`` requests to a WSGI app, the body consumed and closed
    as a server would; ``extra_environ`` adds to (or overrides) the request's environ."""
    environ_template = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/api/leads/42", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.input": None, "wsgi.errors": None, "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "HTTP_HOST": "bench", **(extra_environ or {}),
    }
    import io
    import sys

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    started = _clock()
    for _ in range(n):
        environ = dict(environ_template)
        environ["wsgi.input"] = io.BytesIO()
        environ["wsgi.errors"] = sys.stderr
        result = app(environ, start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (_clock() - started) / n * 1e6


def time_test_client(app: Any, n: int) -> float:
    client = app.test_client()
    started = _clock()
    for _ in range(n):
        client.get("/api/leads/42")
    return (_clock() - started) / n * 1e6


# --------------------------------------------------------------------------- FastAPI


def fastapi_app(*, untraced: bool = True) -> Any:
    """``untraced``: FastAPI >= 0.13x traces itself as soon as *any* SDK TracerProvider is global
    (its native telemetry, off while the provider is OpenTelemetry's default proxy). After the
    full-stack variant's ``init()`` that would trace the bare and hand-written apps too, so they
    are pinned to OpenTelemetry's no-op provider: exactly what they do in a process with no
    tracing set up. The full-stack app keeps FastAPI's defaults (``untraced=False``)."""
    from fastapi import FastAPI

    if untraced:
        from opentelemetry.trace import NoOpTracerProvider

        app = FastAPI(telemetry={"tracer_provider": NoOpTracerProvider()})
    else:
        app = FastAPI()

    @app.get("/api/leads/{lead_id}")
    async def lead(lead_id: int) -> dict[str, int]:
        return {"id": lead_id}

    return app


def fastapi_guide() -> Any:
    """guide-4's ``@app.middleware("http")`` (BaseHTTPMiddleware), verbatim in spirit."""
    from fastapi import Request

    registry = CollectorRegistry()
    count = Counter("http_requests_total", "Total HTTP requests", ["method", "endpoint", "status"], registry=registry)
    latency = Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "endpoint"],
                        registry=registry)
    app = fastapi_app()

    @app.middleware("http")
    async def metrics_middleware(request: Request, call_next: Any) -> Any:
        start_time = time.time()
        response = await call_next(request)
        duration = time.time() - start_time
        count.labels(method=request.method, endpoint=request.url.path, status=response.status_code).inc()
        latency.labels(method=request.method, endpoint=request.url.path).observe(duration)
        return response

    return app


def fastapi_pure_asgi() -> Any:
    """The same two metrics as a hand-written pure ASGI middleware (the fast way to hand-write it)."""
    registry = CollectorRegistry()
    count = Counter("http_requests_total", "Total HTTP requests", ["method", "endpoint", "status"], registry=registry)
    latency = Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "endpoint"],
                        registry=registry)

    class Metrics:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            start = time.perf_counter()
            status = [500]

            async def send_wrapper(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            await self.app(scope, receive, send_wrapper)
            count.labels(scope["method"], scope["path"], status[0]).inc()
            latency.labels(scope["method"], scope["path"]).observe(time.perf_counter() - start)

    app = fastapi_app()
    app.add_middleware(Metrics)
    return app


def fastapi_stackwatch() -> Any:
    return instrument_app(fastapi_app(), *sdk_deps())


def time_asgi(app: Any, n: int) -> float:
    scope_template = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/api/leads/42", "raw_path": b"/api/leads/42", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1234), "server": ("bench", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def run() -> float:
        for _ in range(200):  # warm up (builds the middleware stack)
            await app(dict(scope_template), receive, send)
        started = _clock()
        for _ in range(n):
            await app(dict(scope_template), receive, send)
        return (_clock() - started) / n * 1e6

    return asyncio.run(run())


# --------------------------------------------------------------------------- full stack (init)


def noop_exporter() -> Any:
    """An OpenTelemetry SpanExporter that drops the spans (counting them) and reports SUCCESS."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class NoopSpanExporter(SpanExporter):
        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    return NoopSpanExporter()


def init_full_stack(apps: list[Any]) -> tuple[list[Any], Any, Any]:
    """``stackwatch.sdk.init()`` each app; add a no-op exporter to the SDK's provider.

    Returns (the apps to serve, the exporter, the SDK client)."""
    for key in list(os.environ):
        if key.startswith(("STACKWATCH_", "OTEL_")) or key in ("LOG_LEVEL", "LOG_DIR"):
            del os.environ[key]
    import stackwatch.sdk
    from stackwatch.sdk import _client, tracing

    served = [stackwatch.sdk.init(app, **SDK_SETTINGS) for app in apps]
    client = _client.current()
    if client is None or client.failures or client.tracer_provider is None or client.logging is None \
            or client.metrics is None:
        raise SystemExit(f"stackwatch.sdk.init() did not set up the full stack: {client}")
    exporter = noop_exporter()
    if not tracing.add_span_exporter(exporter):
        raise SystemExit("tracing is not set up: no exporter could be added")
    return served, exporter, client


@contextlib.contextmanager
def stdout_to_devnull() -> Any:
    """The SDK's log handler writes to whatever ``sys.stdout`` is: a null stream while timing."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def wsgi_status(app: Any) -> str:
    seen: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/leads/42", "SCRIPT_NAME": "", "QUERY_STRING": "",
               "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", "wsgi.input": None, "wsgi.errors": None, "HTTP_HOST": "bench"}
    import io
    import sys

    environ["wsgi.input"], environ["wsgi.errors"] = io.BytesIO(), sys.stderr
    result = app(environ, lambda status, headers, exc_info=None: seen.append(status))
    body = b"".join(result)
    getattr(result, "close", lambda: None)()
    return f"{seen[0]} {body.decode()}"


def asgi_status(app: Any) -> str:
    seen: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        seen.append(message.get("status") or message.get("body"))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/api/leads/42", "raw_path": b"/api/leads/42", "root_path": "",
             "query_string": b"", "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1234),
             "server": ("bench", 80)}
    asyncio.run(app(scope, receive, send))
    return f"{seen[0]} {seen[1].decode()}"


def spans_per_request(exporter: Any, call: Callable[[], Any]) -> float:
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    before = exporter.exported
    for _ in range(10):
        call()
    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    return (exporter.exported - before) / 10


# --------------------------------------------------------------------------- runner


def interleaved(timers: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Best (lowest) time per variant over ``rounds`` short rounds that alternate the variants:
    on a shared machine noise only ever adds time, and alternating spreads it evenly."""
    best: dict[str, float] = {name: float("inf") for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer())
    return best


def report(title: str, timings: dict[str, float], references: list[str]) -> None:
    bare = timings["bare"]
    print(f"\n{title}")
    print(f"{'variant':<28}{'us/request':>12}{'overhead us':>13}")
    for name, value in timings.items():
        print(f"{name:<28}{value:>12.1f}{value - bare:>13.1f}")
    for ours in (name for name in timings if name.startswith("stackwatch")):
        for reference in references:
            ref_overhead = timings[reference] - bare
            if ref_overhead > 0:
                print(f"{ours} overhead / {reference} overhead = {(timings[ours] - bare) / ref_overhead:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    n, rounds = args.requests, args.rounds

    # Every app first: init() makes the OpenTelemetry instrumentors patch the framework classes.
    flask_apps = {"bare": flask_app(), "hand-written": flask_handwritten(), "stackwatch middleware": flask_stackwatch()}
    fastapi_apps = {"bare": fastapi_app(), "guide (BaseHTTPMiddleware)": fastapi_guide(),
                    "hand-written pure ASGI": fastapi_pure_asgi(), "stackwatch middleware": fastapi_stackwatch()}
    (flask_full, fastapi_full), exporter, client = init_full_stack([flask_app(), fastapi_app(untraced=False)])
    flask_apps["stackwatch full stack"] = flask_full
    fastapi_apps["stackwatch full stack"] = fastapi_full
    print(f"full stack: logging {type(client.logging.handlers[0].formatter).__name__} to stdout (devnull while "
          f"timing), metrics {type(client.metrics).__name__}, tracing {type(client.tracer_provider).__name__} "
          f"+ add_span_exporter(no-op exporter), errors {'on' if client.errors else 'off (no DSN)'}")

    with stdout_to_devnull():
        statuses = {f"flask {name}": wsgi_status(app) for name, app in flask_apps.items()}
        statuses.update({f"fastapi {name}": asgi_status(app) for name, app in fastapi_apps.items()})
        spans = (spans_per_request(exporter, lambda: wsgi_status(flask_full)),
                 spans_per_request(exporter, lambda: asgi_status(fastapi_full)))
        untraced = {name: spans_per_request(exporter, lambda a=app, f=fn: f(a))  # type: ignore[misc]
                    for group, fn in ((flask_apps, wsgi_status), (fastapi_apps, asgi_status))
                    for name, app in group.items() if name != "stackwatch full stack"}
    for name, status in statuses.items():
        print(f"check {name}: {status.strip()}")
    print(f"spans exported per request: Flask full stack {spans[0]:g}, FastAPI full stack {spans[1]:g}, "
          f"the other variants {max(untraced.values()):g}")
    if any(untraced.values()):
        raise SystemExit(f"an uninstrumented variant is traced: {untraced}")
    exported_before = exporter.exported

    with stdout_to_devnull():
        for app in flask_apps.values():
            time_wsgi(app, 500)  # warm up
        wsgi = interleaved({name: lambda a=app: time_wsgi(a, n) for name, app in flask_apps.items()}, rounds)
        client_timings = interleaved(
            {name: lambda a=app: time_test_client(a, n // 2) for name, app in flask_apps.items()}, rounds)
        asgi = interleaved({name: lambda a=app: time_asgi(a, n) for name, app in fastapi_apps.items()}, rounds)
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    report("Flask, WSGI called directly", wsgi, ["hand-written"])
    report("Flask, test client", client_timings, ["hand-written"])
    report("FastAPI, ASGI awaited directly", asgi, ["guide (BaseHTTPMiddleware)", "hand-written pure ASGI"])
    expected = rounds * (n * spans[0] + n // 2 * spans[0] + (n + 200) * spans[1]) + 500 * spans[0]
    print(f"\nspans handed to the no-op exporter while timing: {exporter.exported - exported_before:,.0f} "
          f"(expected {expected:,.0f}; fewer means the span queue overflowed and dropped some)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
