"""The SDK's settings: ``init()`` keyword arguments, else ``STACKWATCH_*`` variables, else defaults.

Every variable is declared once here, with what it means; docs/sdk.md is checked against this
table by the test suite. Importing this module does nothing and pulls in no server code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["ENV_VARS", "SDKConfig", "resolve_config"]


@dataclass(frozen=True)
class SDKConfig:
    """Resolved SDK settings. Frozen: components read it, nothing changes it after ``init()``."""

    service: str = "app"
    environment: str = "development"
    version: str = "0.0.0"
    #: Stackwatch server, e.g. http://127.0.0.1:8040. None: stand-alone (probes, logs, /metrics only).
    server_url: str | None = None
    #: The project's ingest token (also the public key of the Sentry DSN).
    token: str | None = None
    #: Project id used in the Sentry DSN path.
    project_id: int = 1
    log_level: str = "INFO"
    #: Directory for application.log and errors.log; None: no files.
    log_dir: str | None = None
    #: "json" (production default) or "console" (development default).
    log_format: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backup_count: int = 10
    #: Ship log records to the server (when server_url is set).
    ship_logs: bool = True
    #: Largest number of log records held in memory when the server is unreachable.
    log_buffer_size: int = 10_000
    redact: bool = True
    health_path: str = "/health"
    live_path: str = "/health/live"
    ready_path: str = "/health/ready"
    metrics_path: str = "/metrics"
    #: Seconds a readiness result is reused, so probes cannot stampede a database.
    health_cache_seconds: float = 2.0
    slow_request_seconds: float = 1.0
    slow_query_seconds: float = 0.5
    #: Same statement shape more than this many times in one request -> N+1 warning.
    n_plus_one_threshold: int = 10
    #: Apdex T (seconds): satisfied <= T, tolerating <= 4T.
    apdex_t: float = 0.5
    tracing: bool = True
    #: Transactions sampled for Sentry-style performance data; None: 1.0 in development, 0.1 otherwise.
    traces_sample_rate: float | None = None
    errors: bool = True
    #: Extra resource/tag values attached to everything.
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def effective_log_format(self) -> str:
        if self.log_format:
            return self.log_format
        return "console" if self.environment in ("development", "dev", "local") else "json"

    @property
    def effective_traces_sample_rate(self) -> float:
        if self.traces_sample_rate is not None:
            return self.traces_sample_rate
        return 1.0 if self.environment in ("development", "dev", "local", "test") else 0.1

    @property
    def dsn(self) -> str | None:
        """The Sentry DSN that points sentry_sdk at the Stackwatch server."""
        if not self.server_url or not self.token:
            return None
        scheme, _, rest = self.server_url.rstrip("/").partition("://")
        return f"{scheme}://{self.token}@{rest}/{self.project_id}"


#: Environment variables, each with the setting it fills and why it exists.
ENV_VARS: dict[str, tuple[str, str]] = {
    "STACKWATCH_SERVICE": ("service", "Service name on every log line, metric and span."),
    "STACKWATCH_ENVIRONMENT": ("environment", "development, staging, production..."),
    "STACKWATCH_VERSION": ("version", "Release of the app (health, errors, traces)."),
    "STACKWATCH_URL": ("server_url", "Stackwatch server URL; unset: the SDK runs stand-alone."),
    "STACKWATCH_INGEST_TOKEN": ("token", "The project's ingest token."),
    "STACKWATCH_PROJECT_ID": ("project_id", "Project id for the Sentry DSN (default 1)."),
    "LOG_LEVEL": ("log_level", "Root log level, as the guides set it."),
    "STACKWATCH_LOG_LEVEL": ("log_level", "Same as LOG_LEVEL; wins over it."),
    "LOG_DIR": ("log_dir", "Where application.log and errors.log rotate, as the guides set it."),
    "STACKWATCH_LOG_DIR": ("log_dir", "Same as LOG_DIR; wins over it."),
    "STACKWATCH_LOG_FORMAT": ("log_format", "json or console."),
    "STACKWATCH_LOG_MAX_BYTES": ("log_max_bytes", "Size at which a log file rotates (default 10 MB)."),
    "STACKWATCH_LOG_BACKUP_COUNT": ("log_backup_count", "Rotated files kept per log file (default 10)."),
    "STACKWATCH_SHIP_LOGS": ("ship_logs", "Send log records to the server when one is configured."),
    "STACKWATCH_LOG_BUFFER_SIZE": ("log_buffer_size", "Records held while the server is down; oldest dropped past it."),
    "STACKWATCH_REDACT": ("redact", "Mask secrets and personal data before logs are written or sent."),
    "STACKWATCH_SLOW_REQUEST_SECONDS": ("slow_request_seconds", "Slow-request warning threshold."),
    "STACKWATCH_SLOW_QUERY_SECONDS": ("slow_query_seconds", "Slow-query warning threshold."),
    "STACKWATCH_APDEX_T": ("apdex_t", "Apdex T in seconds."),
    "STACKWATCH_TRACING": ("tracing", "Set up OpenTelemetry tracing."),
    "STACKWATCH_TRACES_SAMPLE_RATE": ("traces_sample_rate", "Share of transactions kept (0..1)."),
    "STACKWATCH_ERRORS": ("errors", "Set up sentry_sdk error capture."),
}

_TYPES = {f.name: f.type for f in fields(SDKConfig)}


def _coerce(name: str, value: str) -> Any:
    kind = _TYPES[name]
    if kind in ("bool",):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if kind in ("int",):
        return int(value)
    if kind in ("float", "float | None"):
        return float(value)
    return value


def resolve_config(env: Mapping[str, str] | None = None, **kwargs: Any) -> SDKConfig:
    """Keyword arguments win, then environment variables, then defaults.

    A malformed variable is ignored with a warning rather than raised: the SDK never stops the
    app from starting.
    """
    import logging

    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var, (name, _doc) in ENV_VARS.items():
        if var in env and env[var] != "":
            try:
                values[name] = _coerce(name, env[var])
            except ValueError:
                logging.getLogger("stackwatch.sdk").warning("ignoring %s=%r: not a valid value", var, env[var])
    for name, value in kwargs.items():
        if name not in _TYPES:
            raise TypeError(f"stackwatch.sdk.init() got an unexpected keyword argument {name!r}")
        if value is not None:
            values[name] = value
    return SDKConfig(**values)
