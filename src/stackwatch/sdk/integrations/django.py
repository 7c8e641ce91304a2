"""Django integration: one middleware class, first in ``MIDDLEWARE``.

::

    MIDDLEWARE = [
        "stackwatch.sdk.integrations.django.StackwatchMiddleware",
        ...
    ]

and ``stackwatch.sdk.init(service=..., ...)`` once, in ``settings.py`` or ``wsgi.py``/``asgi.py``
(without an app). Django builds the middleware itself, so the middleware finds the SDK's
health registry and metrics through :func:`stackwatch.sdk.integrations.active_instrumentation`
on each request; before ``init()`` it works stand-alone from ``STACKWATCH_*`` variables.

- The probe and ``/metrics`` paths are answered here, by path, before URL resolution (so they
  need no ``urls.py`` entry, and authentication middleware further down does not block them).
- The route template is ``request.resolver_match.route`` (``api/leads/<int:lead_id>`` becomes
  ``/api/leads/{lead_id}``); unresolved requests are ``<unmatched>``.
- Sync and async: under ASGI with an async chain the middleware is async (readiness checks then
  run in a thread), else sync.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stackwatch.sdk.integrations._web import RequestState, WebInstrumentation, rule_to_template, sdk_failure
from stackwatch.sdk.metrics import UNMATCHED

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.http import HttpResponse
except ImportError:  # pragma: no cover - only reached when someone imports this without Django
    HttpResponse = None  # type: ignore[assignment,misc]
    iscoroutinefunction = asyncio.iscoroutinefunction  # type: ignore[assignment]

    def markcoroutinefunction(func: Any) -> Any:  # type: ignore[misc]
        return func


__all__ = ["StackwatchMiddleware"]


def _route(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED
    route = getattr(match, "route", None)
    if not route:
        return UNMATCHED
    return rule_to_template(route)


def _response(web: WebInstrumentation, answer: tuple[int, str, bytes]) -> Any:
    status, content_type, body = answer
    response = HttpResponse(body, status=status, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


class StackwatchMiddleware:
    """Request id, response time, RED metrics, slow-request warnings and probes for Django."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        try:
            from stackwatch.sdk.integrations import active_instrumentation

            web: WebInstrumentation = active_instrumentation()
            path = request.path_info
            if path in web.own_paths and request.method in ("GET", "HEAD"):
                return _response(web, web.probe(request.method, path, request.META.get("QUERY_STRING", ""),
                                                request.META.get("HTTP_ACCEPT", "")))
            state = None
            if path not in web.own_paths:
                state = web.begin(request.META.get("HTTP_X_REQUEST_ID"), request.META.get("HTTP_TRACEPARENT"))
        except Exception:
            sdk_failure("Django request start")
            return self.get_response(request)
        if state is None:
            return self.get_response(request)
        try:
            response = self.get_response(request)
        except BaseException:
            self._finish(web, state, request, 500)
            raise
        self._decorate(web, state, response)
        self._finish(web, state, request, response.status_code)
        return response

    async def __acall__(self, request: Any) -> Any:
        try:
            from stackwatch.sdk.integrations import active_instrumentation

            web: WebInstrumentation = active_instrumentation()
            path = request.path_info
            if path in web.own_paths and request.method in ("GET", "HEAD"):
                args = (request.method, path, request.META.get("QUERY_STRING", ""), request.META.get("HTTP_ACCEPT", ""))
                if web.is_blocking(path):
                    answer = await asyncio.to_thread(web.probe, *args)
                else:
                    answer = web.probe(*args)
                return _response(web, answer)
            state = None
            if path not in web.own_paths:
                state = web.begin(request.META.get("HTTP_X_REQUEST_ID"), request.META.get("HTTP_TRACEPARENT"))
        except Exception:
            sdk_failure("Django request start")
            return await self.get_response(request)
        if state is None:
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
        except BaseException:
            self._finish(web, state, request, 500)
            raise
        self._decorate(web, state, response)
        self._finish(web, state, request, response.status_code)
        return response

    @staticmethod
    def _decorate(web: WebInstrumentation, state: RequestState, response: Any) -> None:
        try:
            response["X-Response-Time"] = web.response_time(state)
            if not response.has_header("X-Request-ID"):
                response["X-Request-ID"] = state.request_id
        except Exception:
            sdk_failure("Django response headers")

    @staticmethod
    def _finish(web: WebInstrumentation, state: RequestState, request: Any, status: int) -> None:
        try:
            web.finish(state, request.method, _route(request), status)
        except Exception:
            sdk_failure("Django request finish")
