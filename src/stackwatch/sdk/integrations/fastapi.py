"""FastAPI / Starlette integration: probe routes plus the pure ASGI middleware.

- The probe and ``/metrics`` paths are appended to the app's routes (GET and HEAD, hidden from
  the OpenAPI schema). Appended, so a path the app already routes keeps the app's handler.
  The readiness route runs the checks in a worker thread: the event loop never waits on a
  database.
- :class:`~.asgi.StackwatchASGIMiddleware` is added with ``app.add_middleware``: it sits
  inside Starlette's ``ServerErrorMiddleware`` and outside the app's own middleware, so it sees
  the exception of a failing endpoint (recorded as a 500, re-raised untouched for Starlette to
  answer) and times everything the app does.

The same app object is returned. Starlette refuses new middleware once the app has started; if
``init()`` comes that late, the app is returned wrapped instead and must be served as returned.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stackwatch.sdk.integrations._web import WebInstrumentation
from stackwatch.sdk.integrations.asgi import StackwatchASGIMiddleware

try:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError:  # pragma: no cover - only reached when someone imports this without Starlette
    Request = Response = Route = None  # type: ignore[assignment,misc]

__all__ = ["instrument_fastapi", "instrument_starlette"]


def _probe_endpoint(web: WebInstrumentation, path: str) -> Any:
    blocking = web.is_blocking(path)

    async def endpoint(request: Request) -> Response:
        method = request.method
        query = request.url.query
        accept = request.headers.get("accept", "")
        if blocking:
            status, content_type, body = await asyncio.to_thread(web.probe, method, path, query, accept)
        else:
            status, content_type, body = web.probe(method, path, query, accept)
        return Response(body, status_code=status, media_type=content_type, headers={"Cache-Control": "no-store"})

    endpoint.__name__ = f"stackwatch_{path.strip('/').replace('/', '_') or 'root'}"
    return endpoint


def _already_instrumented(app: Any) -> bool:
    return any(getattr(m, "cls", None) is StackwatchASGIMiddleware for m in getattr(app, "user_middleware", ()))


def instrument_starlette(app: Any, web: WebInstrumentation) -> Any:
    """Instrument a Starlette or FastAPI app; return the app to serve (normally ``app`` itself)."""
    if Route is None:
        raise RuntimeError("Starlette is not installed")
    if _already_instrumented(app):
        return app
    existing = {getattr(route, "path", None) for route in app.router.routes}
    for path in sorted(web.own_paths):
        if path not in existing:
            app.router.routes.append(
                Route(path, _probe_endpoint(web, path), methods=["GET", "HEAD"], include_in_schema=False)
            )
    try:
        app.add_middleware(StackwatchASGIMiddleware, serve_probes=False, templates_known=True, instrumentation=web)
    except RuntimeError:
        return StackwatchASGIMiddleware(app, serve_probes=False, templates_known=True, instrumentation=web)
    return app


#: FastAPI apps are Starlette apps: one implementation.
instrument_fastapi = instrument_starlette
