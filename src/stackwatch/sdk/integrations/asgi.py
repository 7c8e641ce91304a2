"""Pure ASGI middleware: instruments Starlette, FastAPI or any ASGI app.

Usage for an ASGI app the SDK does not know::

    app = StackwatchASGIMiddleware(app)   # after stackwatch.sdk.init()

The route template is read after the app ran: Starlette's router stores the matched route in
``scope["route"]`` (the scope dict it gets is the one this middleware passed down), and its
``path_format`` is the template (``/api/leads/{lead_id}``); routes under a ``Mount`` get the
mount's prefix. A request no route matched is ``<unmatched>``; for non-Starlette apps 404s are
``<unmatched>`` and id-like segments collapse to ``{id}``.

Only ``http`` scopes are instrumented; ``websocket`` and ``lifespan`` pass through untouched.
A plain ASGI class (not ``BaseHTTPMiddleware``): no extra task per request, streaming and
background tasks keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from stackwatch.sdk.integrations._web import (
    MiddlewareBase,
    RequestState,
    WebInstrumentation,
    sdk_failure,
    unmatched_or_collapsed,
)
from stackwatch.sdk.metrics import UNMATCHED

__all__ = ["StackwatchASGIMiddleware", "route_template"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: id(route) -> (route, mount prefix, template). Keyed by id: Starlette routes define __eq__
#: and so are unhashable; the route itself is kept in the value so its id cannot be reused.
_templates: dict[int, tuple[Any, str, str | None]] = {}


def route_template(scope: Scope, root_path: str) -> str | None:
    """The matched Starlette route's template, or None when no route was recorded."""
    route = scope.get("route")
    if route is None:
        return None
    prefix = scope.get("root_path", "") or ""
    cached = _templates.get(id(route))
    if cached is not None and cached[0] is route and cached[1] == prefix:
        return cached[2]
    template = _route_template(route, scope, root_path)
    if prefix == root_path and len(_templates) < 10_000:  # mount-relative results vary: not cached
        _templates[id(route)] = (route, prefix, template)
    return template


def _route_template(route: Any, scope: Scope, root_path: str) -> str | None:
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    if hasattr(route, "routes") or type(route).__name__ == "Mount":
        return template  # a Mount that matched last: its own path_format ends in /{path}
    prefix = scope.get("root_path", "") or ""
    if prefix != root_path and prefix.startswith(root_path):
        # under a Mount: its router matched a route relative to the mount point
        template = prefix[len(root_path):] + template
    return template


class StackwatchASGIMiddleware(MiddlewareBase):
    """Wraps an ASGI app: request id, response time, metrics, slow warnings, probes.

    ``serve_probes=False`` when the app serves the probe paths itself (the FastAPI/Starlette
    integration adds them as routes); ``templates_known=True`` for Starlette apps, whose router
    always records the matched route.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Decide inside the try, act outside it: an exception from the app (or from the
        # server's send) must never be mistaken for an SDK failure and run the app twice.
        request = None
        probe = False
        try:
            web = self.web
            root_path = scope.get("root_path", "") or ""
            path = scope["path"]
            if root_path and path.startswith(root_path):
                path = path[len(root_path):] or "/"
            method = scope["method"]
            if path in web.own_paths:
                probe = self.serve_probes and method in ("GET", "HEAD")
            else:
                request_id = traceparent = tracestate = user_agent = None
                for name, value in scope["headers"]:
                    if name == b"x-request-id":
                        request_id = value.decode("latin-1")
                    elif name == b"traceparent":
                        traceparent = value.decode("latin-1")
                    elif name == b"tracestate":
                        tracestate = value.decode("latin-1")
                    elif name == b"user-agent":
                        user_agent = value.decode("latin-1")
                request = _Request(self, web, scope, method, path, root_path, send)
                web.begin(request_id, traceparent, request)
                if self.traced:
                    web.trace(request, method, path, scope.get("scheme", "http"), traceparent, tracestate, user_agent)
        except Exception:
            sdk_failure("ASGI request start")
            request = None
        if probe:
            await self._probe(web, scope, method, path, send)
            return
        if request is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, request.send)
        except BaseException as exc:
            web.unhandled(request, method, path, exc)
            request.finish(500)
            raise
        else:
            request.finish(request.status or 500)
        finally:
            web.release(request)

    async def _probe(self, web: WebInstrumentation, scope: Scope, method: str, path: str, send: Send) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        accept = ""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
        if web.is_blocking(path):
            status, content_type, body = await asyncio.to_thread(web.probe, method, path, query, accept)
        else:
            status, content_type, body = web.probe(method, path, query, accept)
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store")],
        })
        await send({"type": "http.response.body", "body": body})


class _Request(RequestState):
    """One request through the middleware: its state, its send wrapper and the finish."""

    __slots__ = ("method", "middleware", "path", "root_path", "scope", "status", "upstream", "web")

    def __init__(self, middleware: StackwatchASGIMiddleware, web: WebInstrumentation, scope: Scope,
                 method: str, path: str, root_path: str, upstream: Send) -> None:
        self.finished = False
        self.middleware = middleware
        self.web = web
        self.scope = scope
        self.method = method
        self.path = path
        self.root_path = root_path
        self.upstream = upstream
        self.status = 0

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            try:
                self.status = int(message["status"])
                headers = message.get("headers") or ()
                timing = (b"x-response-time", b"%.2fms" % ((perf_counter() - self.start) * 1000))
                for name, _value in headers:
                    if name.lower() == b"x-request-id":  # the app set its own: keep it
                        headers = [*headers, timing]
                        break
                else:
                    headers = [*headers, timing, (b"x-request-id", self.request_id.encode("latin-1"))]
                # A new list (the app's may be shared with a reused Response object); the
                # message itself is built per response.
                message["headers"] = headers
            except Exception:
                sdk_failure("ASGI response headers")
        elif kind == "http.response.body" and not message.get("more_body", False):
            # Recorded before the last chunk goes out: once a client has its answer, /metrics
            # already counts it (a scrape right after a request never misses it).
            self.finish(self.status, release=False)
        await self.upstream(message)

    def finish(self, status: int, *, release: bool = True) -> None:
        if self.finished:
            return
        try:
            route = route_template(self.scope, self.root_path)
            if route is None:
                if self.middleware.templates_known:
                    route = UNMATCHED
                else:
                    route = unmatched_or_collapsed(self.path, status)
            self.web.finish(self, self.method, route, status, release=release)
        except Exception:
            sdk_failure("ASGI request finish")
