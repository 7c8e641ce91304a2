"""Framework integrations: :func:`instrument_app` picks the right one for the app it is given.

===================================  ==========================================================
app                                  what happens
===================================  ==========================================================
Flask                                hooks + probe routes on the app, ``app.wsgi_app`` wrapped;
                                     the same app object is returned
FastAPI / Starlette                  probe routes added, ASGI middleware added with
                                     ``add_middleware``; the same app object is returned
any other ASGI callable              wrapped in :class:`~.asgi.StackwatchASGIMiddleware`
Django (``None``, or a Django        nothing to wrap: add ``"stackwatch.sdk.integrations.django.
WSGI/ASGI handler)                   StackwatchMiddleware"`` to ``MIDDLEWARE``; the handler is
                                     returned unchanged (None for None)
any other WSGI callable              wrapped in :class:`~.wsgi.StackwatchWSGIMiddleware`
===================================  ==========================================================

Each framework module imports its framework lazily, so importing this package imports none.
Middlewares built without explicit dependencies (Django's, or a wrapper a user wrote by hand)
find them through :func:`active_instrumentation`: the ``init()`` client, else the last
:func:`instrument_app` call, else a stand-alone set built from ``STACKWATCH_*`` variables.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

from stackwatch.sdk._config import SDKConfig

__all__ = ["active_instrumentation", "instrument_app"]

logger = logging.getLogger("stackwatch.sdk.web")

_lock = threading.Lock()
_explicit: Any = None  # WebInstrumentation from the last instrument_app() call
_derived: tuple[tuple[int, int, int], Any] | None = None  # (ids of config/health/metrics, instrumentation)
_standalone: Any = None


def _instrumentation(config: SDKConfig, health: Any, metrics: Any) -> Any:
    from stackwatch.sdk.integrations._web import WebInstrumentation

    return WebInstrumentation(config, health, metrics)


def active_instrumentation() -> Any:
    """The :class:`~._web.WebInstrumentation` middlewares use when not handed one."""
    global _derived, _standalone
    from stackwatch.sdk import _client

    client = _client.current()
    if client is not None and client.health is not None and client.metrics is not None:
        key = (id(client.config), id(client.health), id(client.metrics))
        derived = _derived
        if derived is not None and derived[0] == key:
            return derived[1]
        with _lock:
            instrumentation = _instrumentation(client.config, client.health, client.metrics)
            _derived = (key, instrumentation)
            return instrumentation
    if _explicit is not None:
        return _explicit
    with _lock:
        if _standalone is None:
            from stackwatch.sdk._config import resolve_config
            from stackwatch.sdk.health import HealthRegistry
            from stackwatch.sdk.metrics import RequestMetrics

            config = resolve_config()
            logger.info("stackwatch.sdk.init() was not called: probes and metrics use STACKWATCH_* settings")
            _standalone = _instrumentation(config, HealthRegistry(config), RequestMetrics(config))
        return _standalone


def _is_flask(app: Any) -> bool:
    return any(cls.__module__.startswith("flask.") and cls.__name__ == "Flask" for cls in type(app).__mro__)


def _is_starlette(app: Any) -> bool:
    return any(
        cls.__module__.startswith("starlette.") and cls.__name__ == "Starlette" for cls in type(app).__mro__
    )


def _is_django_handler(app: Any) -> bool:
    return type(app).__module__.startswith("django.core.handlers.")


def _is_asgi(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    if inspect.isfunction(app) or inspect.ismethod(app):
        return False
    return inspect.iscoroutinefunction(type(app).__call__)


def instrument_app(app: object, config: SDKConfig, health: Any, metrics: Any) -> object:
    """Instrument ``app`` and return the app to serve (see the module docstring's table).

    Never instruments twice: an app already instrumented (or a Stackwatch wrapper) is returned
    as it is. ``None`` only registers the dependencies for Django's middleware.
    """
    global _explicit
    from stackwatch.sdk.integrations.asgi import StackwatchASGIMiddleware
    from stackwatch.sdk.integrations.wsgi import StackwatchWSGIMiddleware

    instrumentation = _instrumentation(config, health, metrics)
    with _lock:
        _explicit = instrumentation
    if app is None:
        return None
    if isinstance(app, StackwatchWSGIMiddleware | StackwatchASGIMiddleware):
        return app
    if _is_flask(app):
        from stackwatch.sdk.integrations.flask import instrument_flask

        return instrument_flask(app, instrumentation)
    if _is_starlette(app):
        from stackwatch.sdk.integrations.fastapi import instrument_starlette

        return instrument_starlette(app, instrumentation)
    if _is_django_handler(app):
        _warn_if_django_middleware_missing()
        return app
    if _is_asgi(app):
        return StackwatchASGIMiddleware(app, instrumentation=instrumentation)  # type: ignore[arg-type]
    if callable(app):
        return StackwatchWSGIMiddleware(app, instrumentation=instrumentation)  # type: ignore[arg-type]
    raise TypeError(f"cannot instrument {type(app).__name__}: expected a Flask, ASGI or WSGI app")


def _warn_if_django_middleware_missing() -> None:
    try:
        from django.conf import settings

        middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    except Exception:
        return
    if "stackwatch.sdk.integrations.django.StackwatchMiddleware" not in middleware:
        logger.warning(
            "Django app: add 'stackwatch.sdk.integrations.django.StackwatchMiddleware' at the top of "
            "MIDDLEWARE to get probes, request metrics and request ids"
        )
