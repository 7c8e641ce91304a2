"""Flask integration: probe routes on the app, the WSGI middleware around ``app.wsgi_app``.

- ``/health``, ``/health/live``, ``/health/ready`` and ``/metrics`` become ordinary routes
  (GET and HEAD; they show in ``app.url_map`` and work with ``url_for``). A path the app already
  routes is left to the app: the SDK never takes a URL away from it.
- The middleware labels metrics with the rule Flask matched, ``/api/leads/{id}`` rather than
  ``/api/leads/42``, read from Flask's request object (in the WSGI environ) when the response
  starts: no per-request hook (a ``before_request`` function cost about 3 us a request).
  Requests Flask could not route are ``<unmatched>``.
- ``app.wsgi_app`` is wrapped in place, so the app object the user holds is the instrumented
  one, exceptions included: Flask's own 500 handling, or in testing/debug mode the exception
  itself, which is re-raised untouched after a 500 is recorded.
"""

from __future__ import annotations

from typing import Any

from stackwatch.sdk.integrations._web import WebInstrumentation, span_exception
from stackwatch.sdk.integrations.wsgi import StackwatchWSGIMiddleware

try:
    import flask
except ImportError:  # pragma: no cover - only reached when someone imports this without Flask
    flask = None  # type: ignore[assignment]

__all__ = ["instrument_flask"]

_EXTENSION = "stackwatch"


def _rule_matcher(app: Any) -> Any:
    """Route matching after the fact, for a request whose exception escaped Flask (testing or
    ``PROPAGATE_EXCEPTIONS``): its response never started, so the middleware did not see the
    rule Flask matched. Rare, so matching again costs nothing that matters."""

    def match(environ: dict[str, Any]) -> Any:
        try:
            request = app.request_class(environ, populate_request=False)
            rule, _args = app.create_url_adapter(request).match(return_rule=True)
            return rule
        except Exception:
            return None

    return match


def _probe_view(web: WebInstrumentation, path: str) -> Any:
    def view() -> Any:
        request = flask.request
        status, content_type, body = web.probe(
            request.method, path, request.query_string.decode("latin-1"), request.headers.get("Accept", "")
        )
        response = flask.Response(body, status=status, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response

    view.__name__ = f"stackwatch_{path.strip('/').replace('/', '_') or 'root'}"
    return view


def _exception_on_span(sender: Any, exception: BaseException | None = None, **extra: Any) -> None:
    if exception is not None:
        span_exception(None, exception)


def instrument_flask(app: Any, web: WebInstrumentation) -> Any:
    """Instrument a Flask app in place and return it (a second call changes nothing)."""
    if flask is None:
        raise RuntimeError("Flask is not installed")
    if _EXTENSION in app.extensions:
        return app
    served_by_app = False
    try:
        existing = {rule.rule for rule in app.url_map.iter_rules()}
        for path in sorted(web.own_paths):
            if path in existing:
                continue
            view = _probe_view(web, path)
            app.add_url_rule(path, endpoint=view.__name__, view_func=view, methods=["GET", "HEAD"])
        served_by_app = True
    except AssertionError:
        # Flask refuses new routes once it has handled a request (init() called late): the
        # middleware answers the probe paths itself then.
        served_by_app = False
    middleware = StackwatchWSGIMiddleware(
        app.wsgi_app, serve_probes=not served_by_app, templates_known=True, instrumentation=web
    )
    middleware.match_rule = _rule_matcher(app)
    # Flask turns an exception into its 500 page itself, so it never reaches the middleware:
    # its signal hands it over, inside the request, where the request's span is current.
    flask.got_request_exception.connect(_exception_on_span, app, weak=False)
    app.wsgi_app = middleware
    app.extensions[_EXTENSION] = web
    return app
