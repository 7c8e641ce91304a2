"""The SDK's process-wide state: what ``init()`` set up, for the parts that need it later.

Integrations that cannot be handed their dependencies (Django builds its middleware itself
from a dotted path in ``MIDDLEWARE``) read them here: ``current()`` is the :class:`Client` made
by ``stackwatch.sdk.init()``, or None before it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from stackwatch.sdk._config import SDKConfig

__all__ = ["Client", "current"]


@dataclass
class Client:
    """One initialised SDK: its settings and the singletons the integrations share."""

    config: SDKConfig
    #: stackwatch.sdk.health.HealthRegistry, or None when it could not be created.
    health: Any = None
    #: stackwatch.sdk.metrics.RequestMetrics, or None.
    metrics: Any = None
    #: The OpenTelemetry TracerProvider in use, or None (tracing off or unavailable).
    tracer_provider: Any = None
    #: True when sentry_sdk was initialised with the Stackwatch DSN.
    errors: bool = False
    #: stackwatch.sdk._deps_report.DependencyReporter, or None (no server).
    reporter: Any = None
    #: stackwatch.sdk.logging.LoggingSetup.
    logging: Any = None
    #: id(app) -> (app, what init() returned for it): a second init(app) returns the same.
    instrumented: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    #: Steps that failed (name -> error text); the app runs without them.
    failures: dict[str, str] = field(default_factory=dict)


_current: Client | None = None
lock = threading.RLock()


def current() -> Client | None:
    """The client made by ``init()``, or None before ``init()`` (and after ``shutdown()``)."""
    return _current


def _set(client: Client | None) -> None:
    global _current
    _current = client
