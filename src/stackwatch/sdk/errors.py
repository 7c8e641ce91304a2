"""Error capture: ``sentry_sdk`` pointed at the Stackwatch server's DSN.

Stackwatch speaks the Sentry protocol instead of shipping an error client of its own, so the
app uses the real ``sentry_sdk`` (its framework integrations, breadcrumbs, local variables,
``capture_exception``) and only the DSN changes: ``{scheme}://{token}@{host}/{project_id}``
(:attr:`SDKConfig.dsn`).

* ``release`` is the service version, ``environment`` the deployment environment.
* When the SDK also traces with OpenTelemetry (:mod:`stackwatch.sdk.tracing`), that is the one
  trace of a request: Sentry's own transactions are off, and every error event carries the
  current OpenTelemetry span's trace and span ids, so the crash shows on its request's trace.
  Without it, ``traces_sample_rate`` is :attr:`SDKConfig.effective_traces_sample_rate` (1.0 in
  development, 0.1 elsewhere unless set): the share of *Sentry transactions* kept.
* ``send_default_pii=False``, and every event and transaction passes through the same
  redaction rules as logs (``stackwatch.redaction``) before it leaves the process.
* An app that already called ``sentry_sdk.init`` keeps its client and its DSN: nothing is
  re-initialised, so users keep their code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stackwatch.sdk._config import SDKConfig

__all__ = ["make_event_redactor", "setup_errors"]

logger = logging.getLogger("stackwatch.sdk.errors")

#: Subtrees of a Sentry event that hold no user data, only names and versions; redacting them
#: would only mangle package names that contain a credential word (``google-auth``).
_UNREDACTED_KEYS = frozenset({"modules", "sdk", "debug_meta", "event_id", "timestamp", "start_timestamp"})

#: The client set up by :func:`setup_errors` in this process (to tell it from the user's).
_our_client: Any = None


def make_event_redactor(enabled: bool = True) -> Callable[[dict[str, Any], Any], dict[str, Any] | None]:
    """A ``before_send`` hook that masks secrets and PII in a Sentry event.

    Exception messages, breadcrumbs, local variables, request data, tags and extra go through
    :class:`stackwatch.redaction.Redactor` (credential-named keys become ``[REDACTED]``,
    e-mails, cards, tokens in text are masked). A failure inside the hook sends the event
    with the SDK's own scrubbing rather than losing it.
    """
    from stackwatch.redaction import Redactor

    redactor = Redactor()

    def before_send(event: dict[str, Any], hint: Any) -> dict[str, Any] | None:
        if not enabled:
            return event
        try:
            redacted: dict[str, Any] = {}
            for key, value in event.items():
                if key in _UNREDACTED_KEYS:
                    redacted[key] = value
                elif isinstance(value, dict | list | str):
                    redacted[key] = redactor.redact_mapping({key: value})[key]
                else:
                    redacted[key] = value
            return redacted
        except Exception:
            logger.debug("event redaction failed; sending the SDK-scrubbed event", exc_info=True)
            return event

    return before_send


def _with_otel_trace(
    before_send: Callable[[dict[str, Any], Any], dict[str, Any] | None],
) -> Callable[[dict[str, Any], Any], dict[str, Any] | None]:
    """``before_send`` that first sets the event's trace context to the current OpenTelemetry
    span (Sentry calls it in the thread that captured the event, inside the request)."""
    from opentelemetry import trace

    def hook(event: dict[str, Any], hint: Any) -> dict[str, Any] | None:
        try:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                contexts = event.setdefault("contexts", {})
                context = dict(contexts.get("trace") or {})
                context.update(trace_id=format(span.trace_id, "032x"), span_id=format(span.span_id, "016x"))
                context.pop("parent_span_id", None)
                contexts["trace"] = context
        except Exception:
            logger.debug("could not attach the OpenTelemetry trace to an error event", exc_info=True)
        return before_send(event, hint)

    return hook


def setup_errors(config: SDKConfig, otel_tracing: bool = False) -> bool:
    """Send errors to the Stackwatch server through ``sentry_sdk``; True when capture is on.

    ``otel_tracing``: the SDK traces with OpenTelemetry in this process (see the module's
    docstring). True when this call initialised sentry_sdk, or when an active client already exists (the
    user's own, kept as it is, or ours from an earlier call). False when ``config.errors`` is
    off, sentry_sdk is not installed, or no DSN can be made (no server URL or token). Never
    raises for an SDK-internal failure.
    """
    global _our_client
    if not config.errors:
        return False
    try:
        import sentry_sdk
    except ImportError:
        logger.debug("sentry_sdk is not installed; error capture is off")
        return False
    try:
        current = sentry_sdk.get_client()
        if current.is_active():
            if current is not _our_client:
                logger.debug("sentry_sdk is already initialised by the app; keeping its client")
            return True
        dsn = config.dsn
        if not dsn:
            return False
        before_send = make_event_redactor(config.redact)
        on_error = _with_otel_trace(before_send) if otel_tracing else before_send
        sentry_sdk.init(
            dsn=dsn,
            release=config.version,
            environment=config.environment,
            # OpenTelemetry traces the requests: Sentry transactions would be second traces.
            traces_sample_rate=None if otel_tracing else config.effective_traces_sample_rate,
            send_default_pii=False,
            before_send=on_error,
            before_send_transaction=before_send,
        )
        # The global scope, so every thread's and every request's events carry them.
        scope = sentry_sdk.get_global_scope()
        for key, value in {"service": config.service, **dict(config.tags)}.items():
            scope.set_tag(str(key), str(value))
        _our_client = sentry_sdk.get_client()
        return True
    except Exception:
        logger.warning("error capture set-up failed; the app runs without it", exc_info=True)
        return False
