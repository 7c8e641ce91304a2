"""Per-request overhead of the SDK's web middleware vs no instrumentation vs the guides' hand-written
prometheus-client middleware.

    .venv/bin/python bench/sdk_web_overhead.py [--requests 2000] [--rounds 20]

Flask: the WSGI app is called directly (a fresh copy of one environ per request, a no-op
start_response, the body consumed and closed as a server would), and through Flask's test client.
FastAPI: the ASGI app is awaited directly with a minimal scope in one event loop. The variants
alternate over ``--rounds`` rounds and each one's best round counts (CPU time of the process, so other load on
the machine does not count); overhead = variant - bare, in microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
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


def sdk_deps() -> tuple[SDKConfig, HealthRegistry, RequestMetrics]:
    config = SDKConfig(service="bench", slow_request_seconds=10)
    return config, HealthRegistry(config), RequestMetrics(config, CollectorRegistry())


def flask_stackwatch() -> Any:
    return instrument_app(flask_app(), *sdk_deps())


def time_wsgi(app: Any, n: int) -> float:
    environ_template = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/api/leads/42", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.input": None, "wsgi.errors": None, "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "HTTP_HOST": "bench",
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


def fastapi_app() -> Any:
    from fastapi import FastAPI

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


# --------------------------------------------------------------------------- runner


def interleaved(timers: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Best (lowest) time per variant over ``rounds`` short rounds that alternate the variants:
    on a shared machine noise only ever adds time, and alternating spreads it evenly."""
    best: dict[str, float] = {name: float("inf") for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer())
    return best


def report(title: str, timings: dict[str, float], handwritten: str) -> None:
    bare = timings["bare"]
    print(f"\n{title}")
    print(f"{'variant':<28}{'us/request':>12}{'overhead us':>13}")
    for name, value in timings.items():
        print(f"{name:<28}{value:>12.1f}{value - bare:>13.1f}")
    ours = timings["stackwatch"] - bare
    reference = timings[handwritten] - bare
    if reference > 0:
        print(f"stackwatch overhead / {handwritten} overhead = {ours / reference:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    n, rounds = args.requests, args.rounds

    flask_apps = {"bare": flask_app(), "hand-written": flask_handwritten(), "stackwatch": flask_stackwatch()}
    for app in flask_apps.values():
        time_wsgi(app, 500)  # warm up
    report("Flask, WSGI called directly",
           interleaved({name: lambda a=app: time_wsgi(a, n) for name, app in flask_apps.items()}, rounds),
           "hand-written")
    report("Flask, test client",
           interleaved({name: lambda a=app: time_test_client(a, n // 2) for name, app in flask_apps.items()},
                       rounds),
           "hand-written")

    fastapi_apps = {"bare": fastapi_app(), "guide (BaseHTTPMiddleware)": fastapi_guide(),
                    "hand-written pure ASGI": fastapi_pure_asgi(), "stackwatch": fastapi_stackwatch()}
    report("FastAPI, ASGI awaited directly",
           interleaved({name: lambda a=app: time_asgi(a, n) for name, app in fastapi_apps.items()}, rounds),
           "hand-written pure ASGI")


if __name__ == "__main__":
    main()
