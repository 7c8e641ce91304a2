"""Flask integration: probe routes on the app, the WSGI middleware around ``app.wsgi_app``.

- ``/health``, ``/health/live``, ``/health/ready`` and ``/metrics`` become ordinary routes
  (GET and HEAD; they show in ``app.url_map`` and work with ``url_for``). A path the app already
  routes is left to the app: the SDK never takes a URL away from it.
- A ``before_request`` hook, run first, stores the matched ``url_rule`` in the WSGI environ, so
  the middleware labels metrics with ``/api/leads/{id}`` rather than ``/api/leads/42``;
  requests Flask could not route are ``<unmatched>``.
- ``app.wsgi_app`` is wrapped in place, so the app object the user holds is the instrumented
  one, exceptions included: Flask's own 500 handling, or in testing/debug mode the exception
  itself, which is re-raised untouched after a 500 is recorded.
"""

from __future__ import annotations

from typing import Any

from stackwatch.sdk.integrations._web import WebInstrumentation, sdk_failure
from stackwatch.sdk.integrations.wsgi import ROUTE_KEY, StackwatchWSGIMiddleware

try:
    import flask
except ImportError:  # pragma: no cover - only reached when someone imports this without Flask
    flask = None  # type: ignore[assignment]

__all__ = ["instrument_flask"]

_EXTENSION = "stackwatch"


def _remember_route() -> None:
    try:
        request = flask.request
        rule = request.url_rule
        if rule is not None:
            request.environ[ROUTE_KEY] = rule.rule
    except Exception:
        sdk_failure("Flask route lookup")


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
    app.before_request_funcs.setdefault(None, []).insert(0, _remember_route)
    app.wsgi_app = StackwatchWSGIMiddleware(
        app.wsgi_app, serve_probes=not served_by_app, templates_known=True, instrumentation=web
    )
    app.extensions[_EXTENSION] = web
    return app
