"""WSGI middleware: instruments any WSGI app (and Flask, which wraps ``app.wsgi_app`` with it).

Usage for a plain WSGI app::

    application = StackwatchWSGIMiddleware(application)   # after stackwatch.sdk.init()

The route template comes from ``environ["stackwatch.route"]`` when a framework hook put it
there, or from the rule Flask matched (read from the request object Flask keeps in the environ
while it starts the response); otherwise 404s are ``<unmatched>`` and id-like path segments collapse to ``{id}`` so
the label set stays bounded.

When the request is recorded depends on the response:

* with a ``Content-Length`` (every buffered Flask response, ``send_file``) or a list body,
  when the app returns: the body is complete, and sending it is the server's business;
* without one (a streamed response: a CSV export, a generator body, server-sent events), when
  the server closes the body iterable after its last chunk, which is when the response ends
  for the client. The request's time then covers the whole stream, logs written while it
  streams carry the request's ids and trace, and an exception raised half-way through it is
  the request's error (a 500 in the metrics, recorded on its span). The same holds for an app
  that starts the response lazily, from inside its body iterable.

A ``wsgi.file_wrapper`` body is never wrapped, so the server keeps its ``sendfile`` path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from stackwatch.sdk.integrations._web import (
    MiddlewareBase,
    RequestState,
    WebInstrumentation,
    rule_to_template,
    sdk_failure,
    unmatched_or_collapsed,
)
from stackwatch.sdk.metrics import UNMATCHED

__all__ = ["ROUTE_KEY", "StackwatchWSGIMiddleware"]

#: environ key a framework hook sets to the matched rule (e.g. ``/api/leads/<int:id>``).
ROUTE_KEY = "stackwatch.route"
#: environ key where werkzeug's (and so Flask's) request object stores itself.
_WERKZEUG_REQUEST = "werkzeug.request"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: WSGI status lines seen (``"200 OK"``) -> their code: a dict lookup instead of ``int()`` of a
#: slice for every response. Bounded: apps use a handful of status lines.
_status_codes: dict[str, int] = {}


class StackwatchWSGIMiddleware(MiddlewareBase):
    """Wraps a WSGI app: request id, response time, metrics, slow warnings, probes.

    ``serve_probes=False`` when the framework serves the probe paths itself (Flask registers
    them as routes); ``templates_known=True`` when the framework always says which route
    matched (Flask: see :meth:`route_for`), so a missing one means "no route matched".
    """

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Decide inside the try, act outside it: an exception from the app must never be
        # mistaken for an SDK failure and run the app twice.
        state = None
        probe = False
        try:
            web = self._web or self.web
            path = environ.get("PATH_INFO") or "/"
            if path in web.own_paths:
                method = environ.get("REQUEST_METHOD", "GET")
                probe = self.serve_probes and method in ("GET", "HEAD")
            else:
                traceparent = environ.get("HTTP_TRACEPARENT")
                state = _Request(self, web, environ, start_response)
                web.begin(environ.get("HTTP_X_REQUEST_ID"), traceparent, state)
                if self.traced:
                    web.trace(state, environ.get("REQUEST_METHOD", "GET"), path, environ.get("wsgi.url_scheme", "http"),
                              traceparent, environ.get("HTTP_TRACESTATE"), environ.get("HTTP_USER_AGENT"))
        except Exception:
            sdk_failure("WSGI request start")
            state = None
        if probe:
            return self._probe(web, method, path, environ, start_response)
        if state is None:
            return self.app(environ, start_response)
        return state.run()

    def _probe(self, web: WebInstrumentation, method: str, path: str, environ: dict[str, Any],
               start_response: StartResponse) -> Iterable[bytes]:
        status, content_type, body = web.probe(
            method, path, environ.get("QUERY_STRING", ""), environ.get("HTTP_ACCEPT", "")
        )
        reason = {200: "OK", 503: "Service Unavailable", 404: "Not Found"}.get(status, "Error")
        start_response(f"{status} {reason}", [("Content-Type", content_type),
                                               ("Content-Length", str(len(body))),
                                               ("Cache-Control", "no-store")])
        return [body]

    #: Set by a framework integration: the route rule (an object with ``.rule``) for a request
    #: whose response was never started (an exception escaped the app), or None.
    match_rule: Callable[[dict[str, Any]], Any] | None = None

    def route_for(self, environ: dict[str, Any], status: int, rule: Any = None) -> str:
        """The request's route template: from :data:`ROUTE_KEY` when a hook set it, else from
        ``rule`` (the Flask ``url_rule`` seen while the response started, see
        :meth:`_Request._start_response`), else the collapsed path."""
        key = environ.get(ROUTE_KEY)
        if key is not None:
            return rule_to_template(key)
        if rule is not None:
            return rule_to_template(rule.rule)
        if self.templates_known:
            return UNMATCHED
        return unmatched_or_collapsed(environ.get("PATH_INFO") or "/", status)


class _Request(RequestState):
    """One request through the middleware: its state (see :class:`RequestState`), its
    start_response wrapper and the finish, in one object."""

    __slots__ = ("environ", "middleware", "rule", "sized", "start_response", "status", "web")

    def __init__(self, middleware: StackwatchWSGIMiddleware, web: WebInstrumentation,
                 environ: dict[str, Any], start_response: StartResponse) -> None:
        self.finished = False
        self.middleware = middleware
        self.web = web
        self.environ = environ
        self.start_response = start_response
        self.status = 0
        self.sized = False  # the response has a Content-Length: not a stream
        self.rule: Any = None

    def run(self) -> Iterable[bytes]:
        try:
            result = self.middleware.app(self.environ, self._start_response)
        except BaseException as exc:
            self.web.unhandled(self, self.environ.get("REQUEST_METHOD", ""), self.environ.get("PATH_INFO", ""), exc)
            match_rule = self.middleware.match_rule
            if self.rule is None and match_rule is not None:
                self.rule = match_rule(self.environ)
            self.finish(500)
            raise
        if self.status:
            wrapper = self.environ.get("wsgi.file_wrapper")
            if self.sized or result.__class__ in (list, tuple) or (isinstance(wrapper, type) and isinstance(result, wrapper)):
                self.finish(self.status)  # see the module docstring
                return result
        return _ClosingIterable(result, self)

    def _start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        try:
            code = _status_codes.get(status)
            if code is None:
                code = int(status[:3])
                if len(_status_codes) < 256:
                    _status_codes[status] = code
            self.status = code
            # Flask (werkzeug) starts the response while its request context is still active,
            # with its request object in the environ: the matched rule is read here, for free.
            request = self.environ.get(_WERKZEUG_REQUEST)
            if request is not None:
                self.rule = getattr(request, "url_rule", None)
            has_id = False
            for name, _value in headers:
                lower = name.lower()
                if lower == "x-request-id":
                    has_id = True
                elif lower == "content-length":
                    self.sized = True
            state = self
            if has_id:
                headers = [*headers, ("X-Response-Time", self.web.response_time(state))]
            else:
                headers = [*headers, ("X-Response-Time", self.web.response_time(state)),
                           ("X-Request-ID", state.request_id)]
        except Exception:
            sdk_failure("WSGI response headers")
        if exc_info is not None:
            return self.start_response(status, headers, exc_info)
        return self.start_response(status, headers)

    def finish(self, status: int) -> None:
        try:
            environ = self.environ
            route = self.middleware.route_for(environ, status, self.rule)
            self.web.finish(self, environ.get("REQUEST_METHOD", "GET"), route, status)
        except Exception:
            sdk_failure("WSGI request finish")


class _ClosingIterable:
    """The app's body iterable, recording the request when the server closes it."""

    def __init__(self, result: Iterable[bytes], request: _Request) -> None:
        self.result = result
        self.request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.result
        except BaseException as exc:
            environ = self.request.environ
            self.request.web.unhandled(
                self.request, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), exc
            )
            self.request.finish(500)
            raise

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.request.finish(self.request.status or 500)
