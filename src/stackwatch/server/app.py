"""The ASGI application: routers, error envelope, and the runtime's lifecycle."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from stackwatch import __version__
from stackwatch.collectors.scrape import Scraper, configs_from_settings
from stackwatch.errors import Overloaded, StackwatchError
from stackwatch.server.api.prometheus import store_batch
from stackwatch.server.responses import JSONResponse
from stackwatch.server.runtime import Runtime

__all__ = ["create_app"]

log = logging.getLogger("stackwatch.server")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": "error", "error": message}, status_code=status, headers=headers)


def create_app(settings: Any, runtime: Runtime | None = None, *, close_runtime: bool = False) -> FastAPI:
    """Build the app. With ``runtime`` given, the caller owns its lifecycle (tests), unless
    ``close_runtime``: then the app's shutdown closes it.

    The server needs the latter: on SIGTERM uvicorn shuts the app down and then raises the
    signal again, which ends the process at once, so code after ``uvicorn.run`` never runs;
    the runtime must be closed (the batcher flushed, the pipeline worker processes stopped)
    during the app's own shutdown, or its workers outlive the server.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None or close_runtime
        scrape_configs = configs_from_settings(settings)  # a bad config stops start-up before any state opens
        rt: Runtime = runtime or Runtime.open(settings)
        app.state.rt = rt
        syslog = None
        if settings.syslog_enabled:
            from stackwatch.ingest.syslog import SyslogServer

            async def sink(events: list[dict[str, Any]]) -> None:
                # Syslog carries no token: it writes to the default project, and is off by
                # default so that an open port is an operator's explicit choice.
                await rt.batcher.submit("logs", "default", events)

            syslog = SyslogServer(
                settings.syslog_host, settings.syslog_tcp_port or None, settings.syslog_udp_port or None, sink
            )
            await syslog.start()
            log.info("syslog listening on %s (tcp %s, udp %s)", settings.syslog_host,
                     settings.syslog_tcp_port, settings.syslog_udp_port)
        scraper = None
        if scrape_configs:
            scraper = Scraper(scrape_configs, functools.partial(store_batch, rt))
            await scraper.start()
            log.info("scraping %d job(s)", len(scrape_configs))
        app.state.scraper = scraper
        try:
            yield
        finally:
            if scraper is not None:
                await scraper.stop()
            if syslog is not None:
                await syslog.stop()
            if owned:
                rt.close()

    app = FastAPI(
        title="Stackwatch",
        version=__version__,
        lifespan=lifespan,
        default_response_class=JSONResponse,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    if runtime is not None:
        app.state.rt = runtime

    @app.exception_handler(StackwatchError)
    async def _stackwatch_error(request: Request, exc: StackwatchError) -> JSONResponse:
        headers = None
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        if exc.status_code == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="stackwatch"'}
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return error_response(exc.status_code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.get("/health", tags=["health"])
    @app.get("/-/healthy", include_in_schema=False)
    async def health(request: Request) -> dict[str, Any]:
        rt: Runtime = request.app.state.rt
        return {
            "status": "ok",
            "service": "stackwatch",
            "version": __version__,
            "uptime_seconds": round(time.time() - rt.started_at, 3),
            "ingest": {
                "buffered_bytes": rt.batcher.buffered_bytes,
                "pending_rows": rt.batcher.pending_rows,
                "stored_events": rt.batcher.stored_events,
                "quarantined_events": rt.batcher.quarantined,
                "last_error": rt.batcher.last_error,
            },
        }

    from stackwatch.server.api import admin, es, ingest, logs, prometheus
    from stackwatch.server.ui import routes as ui

    app.include_router(ingest.router)
    app.include_router(logs.router)
    app.include_router(admin.router)
    app.include_router(ui.router)
    app.include_router(prometheus.router)
    from stackwatch.server.api import traces as traces_api
    from stackwatch.server.ui import traces as traces_ui

    app.include_router(traces_api.router)
    app.include_router(traces_ui.router)
    from stackwatch.server.api import alertmanager as alertmanager_api

    app.include_router(alertmanager_api.router)
    from stackwatch.server.ui import alerts as alerts_ui
    from stackwatch.server.ui import graph as graph_ui

    app.include_router(alerts_ui.router)
    app.include_router(graph_ui.router)
    from stackwatch.server.api import issues as issues_api
    from stackwatch.server.api import sentry as sentry_api
    from stackwatch.server.ui import issues as issues_ui

    app.include_router(sentry_api.router)
    app.include_router(issues_api.router)
    app.include_router(issues_ui.router)
    from stackwatch.server.api import incidents as incidents_api

    app.include_router(incidents_api.router)
    app.include_router(incidents_api.ack_router)
    from stackwatch.server.api import rules as rules_api

    app.include_router(rules_api.router)
    app.include_router(es.router)  # last: it answers catch-all Elasticsearch paths
    return app
