"""Structured logging for the app: one call configures stdlib ``logging``.

Every record becomes one *event* dict, built once per record and shared by every handler (the
stdout stream, the rotating files, the shipper, ``capture_logs``), so redaction and id lookup run
once however many places the line goes::

    {"timestamp": "2025-10-06T12:00:00.000Z", "level": "INFO", "service": "crm",
     "trace_id": "4bf92f35...", "span_id": "00f067aa...", "request_id": "req-1",
     "source": "/app/routes/leads.py:45", "logger": "app.routes.leads", "function": "create_lead",
     "message": "Lead created", "context": {"lead_id": 7, "method": "POST", "path": "/api/leads"}}

plus ``"exception": {"type", "message", "stack"}`` when the record carries one. ``context`` holds
the ``extra=`` fields and the fields bound with :class:`LogContext`; a bound or extra
``request_id`` (the web middleware binds one per request) is lifted to the top level.

Secrets and personal data are masked with :class:`stackwatch.redaction.Redactor` (the same rules
as the server's pipeline) in the message, the context values and the exception text *before*
anything is written or sent. Trace and span ids come from the current OpenTelemetry span when one
is active; OpenTelemetry is never imported here (no span can be active unless someone else did).

Production writes JSON lines; development writes one colored line per record, as the CRM guide
shows::

    2025-10-06 12:00:00 [INFO] app.routes.leads: Lead created successfully | POST /api/leads

Importing this module changes nothing; :func:`configure_logging` does the work and is idempotent.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import inspect
import itertools
import logging
import logging.handlers
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stackwatch.sdk._config import SDKConfig

if TYPE_CHECKING:
    from stackwatch.redaction import Redactor
    from stackwatch.sdk._shipper import LogShipper

try:  # orjson is a dependency of the package, but a plain json fallback keeps logging alive
    import orjson

    def _dumps(event: Mapping[str, Any]) -> str:
        return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS).decode()

except ImportError:  # pragma: no cover - exercised only without orjson
    import json

    def _dumps(event: Mapping[str, Any]) -> str:
        return json.dumps(event, default=str, ensure_ascii=False, separators=(",", ":"))


__all__ = [
    "TRACE",
    "ConsoleFormatter",
    "EventBuilder",
    "JsonFormatter",
    "LogContext",
    "LoggingSetup",
    "configure_logging",
    "current_builder",
    "get_context",
    "install_trace_level",
    "log_api_call",
    "log_business_event",
    "log_database_query",
    "log_external_service_call",
    "structlog_processor",
    "unconfigure_logging",
]

#: Below DEBUG: full execution paths and variable state (the guides' TRACE level).
TRACE: Final = 5

#: Record attribute names of earlier versions, which cached the event on the record; still
#: reserved so that a record carrying them never shows them as context.
_EVENT_ATTR: Final = "_stackwatch_event"
_BUILDER_ATTR: Final = "_stackwatch_builder"
#: Record attribute the log helpers use for their fields, so that names like ``name`` or
#: ``module`` (reserved by LogRecord) can still be context fields.
CONTEXT_ATTR: Final = "_stackwatch_context"
_STANDARD: Final = tuple(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_STANDARD_COUNT: Final = len(_STANDARD)
#: Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RESERVED: Final = frozenset(
    {
        *_STANDARD,
        "message",
        "asctime",
        "taskName",
        _EVENT_ATTR,
        _BUILDER_ATTR,
        CONTEXT_ATTR,
        # opentelemetry-instrumentation-logging's record factory: the same ids as trace_id/span_id.
        "otelSpanID",
        "otelTraceID",
        "otelTraceSampled",
        "otelServiceName",
    }
)
#: Joins a record's strings for one redaction pass: newlines stop every rule's match and NUL
#: is in no rule's character set, so no mask can span two values.
_JOIN: Final = "\n\x00\n"  # no redaction rule matches across it (see stackwatch.redaction)
_PLAIN_CONTAINERS: Final = frozenset({dict, list, tuple, set, frozenset})
_CONTAINERS: Final = (Mapping, list, tuple, set, frozenset)
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
#: Values orjson writes natively and whose text cannot hold a secret worth masking.
_NATIVE_JSON: Final = frozenset({datetime.datetime, datetime.date, datetime.time, uuid.UUID})
#: Context fields that are top-level event fields instead.
_ID_FIELDS: Final = ("request_id", "trace_id", "span_id")

T = TypeVar("T")


# --------------------------------------------------------------------------- TRACE level


def _trace(self: logging.Logger, msg: object, *args: Any, **kwargs: Any) -> None:
    if self.isEnabledFor(TRACE):
        # +1: this function is not in logging's own file, so findCaller would name it as the source.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        self._log(TRACE, msg, args, **kwargs)


def _adapter_trace(self: logging.LoggerAdapter[Any], msg: object, *args: Any, **kwargs: Any) -> None:
    kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
    self.log(TRACE, msg, *args, **kwargs)


def install_trace_level() -> None:
    """Register level 5 as ``TRACE`` and add ``Logger.trace()`` (idempotent).

    stdlib logging has no TRACE; the guides use it for full execution paths. Adding a method to
    ``logging.Logger`` is the only way ``logging.getLogger(__name__).trace(...)`` can work for
    loggers created before and after this call.
    """
    logging.addLevelName(TRACE, "TRACE")
    if getattr(logging.Logger, "trace", None) is not _trace:
        logging.Logger.trace = _trace  # type: ignore[attr-defined]
        logging.LoggerAdapter.trace = _adapter_trace  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- LogContext

_EMPTY: Final[Mapping[str, Any]] = {}
#: Fields bound to every record of the current thread / asyncio task. The mapping is never
#: mutated (binding sets a new one), so contexts copied into tasks cannot see later changes.
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "stackwatch_log_context", default=_EMPTY
)


def get_context() -> dict[str, Any]:
    """The fields currently bound with :class:`LogContext` (a copy)."""
    return dict(_context.get())


class LogContext:
    """Bind fields to every log record emitted in a block, a function call or a request.

    As a context manager (``with LogContext(customer_id="12345"):``), as a decorator
    (``@LogContext(operation="import")``, sync or async: each call gets its own binding), or
    for the rest of a request (``token = LogContext.bind(request_id=rid)`` ...
    ``LogContext.reset(token)``). Contexts nest (inner fields win) and are local to the thread
    and to the asyncio task: tasks inherit the fields bound when they were created; plain
    threads start empty (run them with ``contextvars.copy_context().run`` to inherit).

    The guide's form ``LogContext(logger, customer_id=...)`` is accepted: the logger is not
    needed (the fields apply to every logger) and is ignored.
    """

    __slots__ = ("_entered", "_lock", "fields")

    def __init__(
        self, logger: logging.Logger | logging.LoggerAdapter[Any] | None = None, /, **fields: Any
    ) -> None:
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            raise TypeError(
                "LogContext() takes the fields as keyword arguments (and optionally a logger first)"
            )
        self.fields = fields
        # (mapping set, token) per active entry: one instance may be entered from several threads or
        # tasks at once; exit resets the entry whose mapping is current in *this* context.
        self._entered: list[tuple[Mapping[str, Any], contextvars.Token[Mapping[str, Any]]]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> LogContext:
        mapping = {**_context.get(), **self.fields}
        token = _context.set(mapping)
        with self._lock:
            self._entered.append((mapping, token))
        return self

    def __exit__(self, *exc: object) -> None:
        current = _context.get()
        with self._lock:
            for i in range(len(self._entered) - 1, -1, -1):
                if self._entered[i][0] is current:
                    _, token = self._entered.pop(i)
                    break
            else:
                return  # already reset (e.g. the block bound and reset by hand)
        _context.reset(token)

    async def __aenter__(self) -> LogContext:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def __call__(self, func: Callable[..., T]) -> Callable[..., T]:
        fields = self.fields
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with LogContext(**fields):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            with LogContext(**fields):
                return func(*args, **kwargs)

        return wrapper

    @staticmethod
    def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
        """Add fields to the current context until :meth:`reset` is called with the returned token."""
        return _context.set({**_context.get(), **fields})

    @staticmethod
    def reset(token: contextvars.Token[Mapping[str, Any]]) -> None:
        """Undo one :meth:`bind` (the fields bound before it are back)."""
        _context.reset(token)

    @staticmethod
    def get() -> dict[str, Any]:
        """The fields bound in the current context (a copy)."""
        return dict(_context.get())

    @staticmethod
    def clear() -> None:
        """Drop every bound field in the current context (e.g. at the start of a worker's job)."""
        _context.set(_EMPTY)


# --------------------------------------------------------------------------- trace ids

_get_current_span: Callable[[], Any] | None = None


def _otel_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active OpenTelemetry span, or None.

    Cheap when tracing is off: if ``opentelemetry.trace`` was never imported, no span can be
    active, so this is one dict lookup and no import.
    """
    global _get_current_span
    get_span = _get_current_span
    if get_span is None:
        module = sys.modules.get("opentelemetry.trace")
        if module is None:
            return None
        get_span = _get_current_span = module.get_current_span
    try:
        ctx = get_span().get_span_context()
        if not ctx.is_valid:
            return None
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    except Exception:
        return None


# --------------------------------------------------------------------------- events

_ts_cache: tuple[int, str] = (-1, "")


def _iso_utc(created: float, msecs: float) -> str:
    """ISO 8601, milliseconds, UTC, ``Z``; the seconds part is cached (records come in bursts)."""
    global _ts_cache
    second = int(created)
    cached = _ts_cache
    if cached[0] != second:
        cached = _ts_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(msecs):03d}Z"


def _exception_type(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return (
        exc_type.__qualname__ if module in ("builtins", "__main__") else f"{module}.{exc_type.__qualname__}"
    )


class EventBuilder:
    """Turns a ``LogRecord`` into the event dict (see the module docstring); one per configuration.

    The last record built in each thread is remembered with its event: ``logging`` hands one
    record to every handler in turn, in the thread that logged it, so every handler of that
    record gets the same dict. (The event used to be cached on the record itself; adding an
    attribute to a record and keeping a dict alive as long as the record cost about 3 us per
    record in a process that holds many records, in the dict's growth and the garbage
    collector's passes, more than building the event.)
    """

    def __init__(self, config: SDKConfig) -> None:
        self.config = config
        self.service = config.service
        self.redactor: Redactor | None = None
        if config.redact:
            from stackwatch.redaction import Redactor

            self.redactor = Redactor()
        self._plans: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}
        #: Per thread: the last record built and its event (see build).
        self._last = threading.local()

    def build(self, record: logging.LogRecord) -> dict[str, Any]:
        """The event for ``record``: built on first use, then reused (never raises)."""
        last = self._last
        if getattr(last, "record", None) is record:
            return last.event  # type: ignore[no-any-return]
        try:
            event = self._build(record, record.__dict__)
        except Exception as exc:  # a broken __str__ in an argument must not lose the line
            event = self._fallback(record, exc)
        last.record = record
        last.event = event
        return event

    def _build(self, record: logging.LogRecord, attrs: dict[str, Any]) -> dict[str, Any]:
        bound = _context.get()
        context: dict[str, Any] = dict(bound) if bound else {}
        if len(attrs) > _STANDARD_COUNT:
            # LogRecord.__init__ sets the standard attributes first; what follows came from
            # ``extra=`` (or from handlers, which _RESERVED names). Cheaper than a set difference.
            for key in itertools.islice(attrs, _STANDARD_COUNT, None):
                if key not in _RESERVED:
                    context[key] = attrs[key]
        helper = attrs.get(CONTEXT_ATTR)
        if helper:
            context.update(helper)
        request_id = trace_id = span_id = None
        if context:
            request_id = context.pop("request_id", None)
            trace_id = context.pop("trace_id", None)
            span_id = context.pop("span_id", None)
        ids = _otel_ids()
        if ids is not None:
            trace_id, span_id = ids
        message = record.getMessage()
        if record.stack_info:
            context["stack_info"] = record.stack_info
        redactor = self.redactor
        if redactor is not None:
            message, request_id = self._redact(redactor, message, request_id, context)
        event: dict[str, Any] = {
            "timestamp": _iso_utc(record.created, record.msecs),
            "level": record.levelname,
            "service": self.service,
            "trace_id": trace_id,
            "span_id": span_id,
            "request_id": request_id,
            "source": f"{record.pathname}:{record.lineno}",
            "logger": record.name,
            "function": record.funcName,
            "message": message,
            "context": context,
        }
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None:
            event["exception"] = self._exception(exc_info)  # type: ignore[arg-type]
        return event

    def _redact(self, redactor: Redactor, message: str, request_id: Any,
                context: dict[str, Any]) -> tuple[str, Any]:
        """Redact ``context`` in place; return the redacted message and request id.

        Same rules as ``Redactor.redact_mapping`` (credential-named keys masked whole, ``*_id``
        keys kept, strings through the text rules, containers recursively), arranged for the
        common case of a clean record: the message and every flat string value are joined with
        a separator no rule can match across, and that text and the request id go to
        :meth:`Redactor.redact_texts`, which skips what it already knows is clean and gives the
        rest one prefilter pass; only a record where something changed is split back (or, if a
        mask ate a separator, redacted value by value). The key decisions are cached per key set: one call site logs the same
        keys every time. Objects that are not JSON-native become their ``str()`` first,
        because that is what would be written and it may hold a secret.
        """
        keys = tuple(context)
        plan = self._plans.get(keys)
        if plan is None:
            plan = self._plan(redactor, keys)
        sensitive, scanned, id_keys = plan
        for key in sensitive:
            context[key] = redactor.mask_sensitive(context[key])
        texts = [message]
        text_keys: list[str] = []
        nested: list[str] = []
        for key in scanned:
            value = context[key]
            cls = value.__class__
            if cls is str:
                if value:
                    texts.append(value)
                    text_keys.append(key)
            elif cls in _SCALARS or cls in _NATIVE_JSON:
                continue
            elif cls in _PLAIN_CONTAINERS or isinstance(value, _CONTAINERS):
                nested.append(key)
            else:
                try:
                    value = str(value)
                except Exception:
                    value = f"<unprintable {cls.__name__}>"
                context[key] = value
                texts.append(value)
                text_keys.append(key)
        for key in id_keys:
            value = context[key]
            if value.__class__ not in _SCALARS and isinstance(value, _CONTAINERS):
                nested.append(key)
        # Two units: the record's texts joined (one call site's message and constant values
        # repeat, so the joined text is often known clean already) and the request id (fresh
        # per request, the same for all its lines); one prefilter pass covers both.
        joined = message if not text_keys else _JOIN.join(texts)
        units = [joined, request_id] if request_id.__class__ is str else [joined]
        redacted_units = redactor.redact_texts(units)
        if redacted_units is not None:
            if len(units) == 2:
                request_id = redacted_units[1]
            redacted = redacted_units[0]
            if redacted != joined:
                if not text_keys:
                    message = redacted
                else:
                    parts = redacted.split(_JOIN)
                    if len(parts) != len(texts):
                        parts = [redactor.redact_text(text) for text in texts]
                    message = parts[0]
                    for key, part in zip(text_keys, parts[1:], strict=True):
                        context[key] = part
        for key in nested:
            value = context[key]
            if isinstance(value, set | frozenset):
                value = list(value)
            context[key] = redactor.redact_mapping({key: value})[key]
        return message, request_id

    def _plan(self, redactor: Redactor, keys: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """(credential-named keys, keys whose strings are scanned, ``*_id`` keys) for a key set."""
        sensitive = tuple(k for k in keys if redactor.is_sensitive_key(str(k)))
        scanned = tuple(k for k in keys if k not in sensitive and redactor.is_scanned_key(str(k)))
        id_keys = tuple(k for k in keys if k not in sensitive and k not in scanned)
        plan = (sensitive, scanned, id_keys)
        if len(self._plans) >= 4096:
            self._plans.clear()
        self._plans[keys] = plan
        return plan

    def _exception(self, exc_info: tuple[type[BaseException], BaseException, Any]) -> dict[str, str]:
        exc_type, exc, tb = exc_info
        try:
            text = str(exc)
        except Exception:
            text = f"<unprintable {exc_type.__name__}>"
        parts = traceback.format_exception(exc_type, exc, tb)
        if self.redactor is not None:
            redact = self.redactor.redact_text
            text = redact(text)
            # Chunk by chunk (each ends with a newline, which no rule but a PEM key block crosses,
            # and the exception message with any key in it is one chunk, so the result is the
            # same as redacting the whole text): the frame lines of one code path recur in every
            # traceback it raises, and short clean strings are remembered by the redactor.
            parts = [redact(part) for part in parts]
        stack = "".join(parts)
        return {"type": _exception_type(exc_type), "message": text, "stack": stack}

    def _fallback(self, record: logging.LogRecord, exc: Exception) -> dict[str, Any]:
        msg = str(record.msg)
        if self.redactor is not None:
            msg = self.redactor.redact_text(msg)
        return {
            "timestamp": _iso_utc(record.created, record.msecs),
            "level": record.levelname,
            "service": self.service,
            "trace_id": None,
            "span_id": None,
            "request_id": None,
            "source": f"{record.pathname}:{record.lineno}",
            "logger": record.name,
            "function": record.funcName,
            "message": msg,
            "context": {"format_error": f"{type(exc).__name__}: {exc}"},
        }


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson when installed), the event of :class:`EventBuilder`."""

    def __init__(self, builder: EventBuilder) -> None:
        super().__init__()
        self.builder = builder

    def format(self, record: logging.LogRecord) -> str:
        return _dumps(self.builder.build(record))


_COLORS: Final = {
    "TRACE": "\x1b[2m",
    "DEBUG": "\x1b[36m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_RESET: Final = "\x1b[0m"


class ConsoleFormatter(logging.Formatter):
    """Development format, one line per record (then the traceback, if any)::

        2025-10-06 12:00:00 [INFO] app.routes.leads: Lead created successfully | POST /api/leads | lead_id=7

    Local time, like ``asctime``. The request's method and path come first after ``|``, then the
    other context fields as ``key=value``. Colors only on a terminal (``NO_COLOR`` turns them
    off, ``FORCE_COLOR`` on).
    """

    def __init__(self, builder: EventBuilder, *, color: bool = False) -> None:
        super().__init__()
        self.builder = builder
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        event = self.builder.build(record)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = event["level"]
        level_text = f"{_COLORS.get(level, '')}[{level}]{_RESET}" if self.color else f"[{level}]"
        line = f"{stamp} {level_text} {event['logger']}: {event['message']}"
        context = event["context"]
        if context:
            parts = []
            method, path = context.get("method"), context.get("path")
            rest = context
            if method and path:
                parts.append(f"{method} {path}")
                rest = {k: v for k, v in context.items() if k not in ("method", "path")}
            if rest:
                parts.append(" ".join(f"{k}={v}" for k, v in rest.items()))
            line += " | " + " | ".join(parts)
        exc = event.get("exception")
        if exc:
            line += "\n" + exc["stack"].rstrip("\n")
        return line


# --------------------------------------------------------------------------- handlers


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is *now* (test runners and daemons replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class LoggingSetup:
    """What :func:`configure_logging` installed, so it can be found, flushed and removed."""

    def __init__(self, config: SDKConfig, builder: EventBuilder) -> None:
        self.config = config
        self.builder = builder
        self.handlers: list[logging.Handler] = []
        self.shipper: LogShipper | None = None
        self.previous_level = logging.NOTSET

    def flush(self, timeout: float = 5.0) -> bool:
        ok = True
        for handler in self.handlers:
            try:
                if handler is self.shipper:
                    ok = self.shipper.flush(timeout=timeout) and ok
                else:
                    handler.flush()
            except Exception:
                ok = False
        return ok


_setup: LoggingSetup | None = None
_setup_lock = threading.Lock()
_default_builder: EventBuilder | None = None


def current_builder() -> EventBuilder:
    """The active configuration's builder, or one with default settings before ``init()``."""
    global _default_builder
    if _setup is not None:
        return _setup.builder
    if _default_builder is None:
        _default_builder = EventBuilder(SDKConfig())
    return _default_builder


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    text = str(level).strip().upper()
    if text.isdigit():
        return int(text)
    if text == "WARN":
        text = "WARNING"
    number = logging.getLevelName(text)
    if isinstance(number, int):
        return number
    logging.getLogger("stackwatch.sdk").warning("unknown log level %r; using INFO", level)
    return logging.INFO


def _use_color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return bool(sys.stdout.isatty())
    except Exception:
        return False


def configure_logging(config: SDKConfig) -> LoggingSetup:
    """Install the SDK's handlers on the root logger; idempotent.

    Adds: stdout (JSON lines, or the console format in development), ``application.log`` (all)
    and ``errors.log`` (ERROR and above) rotating in ``config.log_dir`` when set, and the
    shipper to the server when ``config.server_url`` is set. Sets the root level. A second call
    with the same settings changes nothing; with other settings it replaces the SDK's own
    handlers (never anyone else's).
    """
    global _setup
    install_trace_level()
    with _setup_lock:
        if _setup is not None:
            if _setup.config == config:
                return _setup
            _remove(_setup)
        builder = EventBuilder(config)
        setup = LoggingSetup(config, builder)
        json_formatter = JsonFormatter(builder)

        stream = _StdoutHandler()
        if config.effective_log_format == "console":
            stream.setFormatter(ConsoleFormatter(builder, color=_use_color()))
        else:
            stream.setFormatter(json_formatter)
        setup.handlers.append(stream)

        if config.log_dir:
            try:
                directory = Path(config.log_dir)
                directory.mkdir(parents=True, exist_ok=True)
                for name, level in (("application.log", logging.NOTSET), ("errors.log", logging.ERROR)):
                    handler = logging.handlers.RotatingFileHandler(
                        directory / name,
                        maxBytes=config.log_max_bytes,
                        backupCount=config.log_backup_count,
                        encoding="utf-8",
                        delay=True,
                    )
                    handler.setLevel(level)
                    handler.setFormatter(json_formatter)
                    setup.handlers.append(handler)
            except OSError as exc:
                sys.stderr.write(f"stackwatch: cannot write logs to {config.log_dir!r}: {exc}\n")

        if config.server_url and config.ship_logs:
            from stackwatch.sdk._shipper import LogShipper

            shipper = LogShipper(
                config.server_url,
                config.token,
                build_event=builder.build,
                buffer_size=config.log_buffer_size,
                resource={
                    "service.name": config.service,
                    "service.version": config.version,
                    "deployment.environment": config.environment,
                },
            )
            setup.shipper = shipper
            setup.handlers.append(shipper)

        root = logging.getLogger()
        setup.previous_level = root.level
        for handler in setup.handlers:
            handler._stackwatch = True  # type: ignore[attr-defined]
            root.addHandler(handler)
        root.setLevel(_level_number(config.log_level))
        _setup = setup
        return setup


def _remove(setup: LoggingSetup, timeout: float = 5.0) -> None:
    """Detach and close the handlers; the shipper gets at most ``timeout`` seconds to deliver."""
    root = logging.getLogger()
    for handler in setup.handlers:
        root.removeHandler(handler)
        try:
            if handler is setup.shipper:
                setup.shipper.close(timeout=timeout)
            else:
                handler.close()
        except Exception:
            pass
    root.setLevel(setup.previous_level)


def unconfigure_logging(timeout: float = 5.0) -> None:
    """Flush and remove everything :func:`configure_logging` installed (used by ``shutdown()``)."""
    global _setup
    with _setup_lock:
        setup, _setup = _setup, None
    if setup is not None:
        _remove(setup, timeout)


def current_setup() -> LoggingSetup | None:
    """What :func:`configure_logging` installed, or None."""
    return _setup


# --------------------------------------------------------------------------- helpers

_api_logger = logging.getLogger("stackwatch.api")
_db_logger = logging.getLogger("stackwatch.db")
_external_logger = logging.getLogger("stackwatch.external")
_business_logger = logging.getLogger("stackwatch.business")


def _log(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    if logger.isEnabledFor(level):
        # stacklevel=3: the source of the line is the helper's caller, not this module.
        logger.log(level, message, extra={CONTEXT_ATTR: fields}, stacklevel=3)


def log_api_call(endpoint: str, method: str, status_code: int, duration_ms: float, **fields: Any) -> None:
    """Log one API call (INFO; WARNING for 4xx, ERROR for 5xx), as the CRM guide's helper.

    Context: ``endpoint``, ``method``, ``status_code``, ``duration_ms``, ``log_type=web`` and ``fields``.
    """
    level = logging.ERROR if status_code >= 500 else logging.WARNING if status_code >= 400 else logging.INFO
    context = {
        "endpoint": endpoint,
        "method": method,
        "status_code": status_code,
        "duration_ms": duration_ms,
        "log_type": "web",
        **fields,
    }
    _log(_api_logger, level, f"{method} {endpoint} {status_code} ({duration_ms:.1f} ms)", context)


def log_database_query(query: str, duration_ms: float, rows: int | None = None, **fields: Any) -> None:
    """Log one database query: DEBUG, or WARNING when slower than the slow-query threshold.

    The statement goes through redaction like any context value (literals that look like
    secrets or personal data are masked). Context: ``query``, ``duration_ms``, ``rows``,
    ``log_type=database``.
    """
    threshold_ms = (_setup.config.slow_query_seconds if _setup else SDKConfig.slow_query_seconds) * 1000
    slow = duration_ms >= threshold_ms
    context = {"query": query, "duration_ms": duration_ms, "rows": rows, "log_type": "database", **fields}
    if slow:
        context["slow"] = True
    message = f"{'Slow query' if slow else 'Query'} ({duration_ms:.1f} ms)"
    _log(_db_logger, logging.WARNING if slow else logging.DEBUG, message, context)


def log_external_service_call(
    service: str, operation: str, success: bool, duration_ms: float, **fields: Any
) -> None:
    """Log one call to a third party (INFO; WARNING when it failed).

    Context: ``external_service`` (not ``service``, which names this app), ``operation``,
    ``success``, ``duration_ms``.
    """
    context = {
        "external_service": service,
        "operation": operation,
        "success": success,
        "duration_ms": duration_ms,
        **fields,
    }
    outcome = "ok" if success else "failed"
    message = f"{service}.{operation} {outcome} ({duration_ms:.1f} ms)"
    _log(_external_logger, logging.INFO if success else logging.WARNING, message, context)


def log_business_event(
    event_name: str, entity_id: Any = None, data: Mapping[str, Any] | None = None, **fields: Any
) -> None:
    """Log a business event at INFO (``lead_created``, ``payment_failed``...).

    Context: ``event``, ``entity_id`` (when given), the items of ``data`` and ``fields``.
    """
    context: dict[str, Any] = {"event": event_name}
    if entity_id is not None:
        context["entity_id"] = entity_id
    if data:
        context.update(data)
    context.update(fields)
    _log(_business_logger, logging.INFO, f"Business event: {event_name}", context)


# --------------------------------------------------------------------------- structlog

#: structlog keys that are not data: they must reach structlog's own processors untouched.
_STRUCTLOG_PASSTHROUGH: Final = frozenset(
    {"exc_info", "stack_info", "_record", "_from_structlog", "positional_args"}
)
_STRUCTLOG_LEVELS: Final = {"warn": "WARNING", "exception": "ERROR", "fatal": "CRITICAL", "msg": "INFO"}


def structlog_processor(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: add the SDK's fields and redact, before the renderer.

    Adds (when absent) ``timestamp`` (ISO 8601 ms UTC), ``level``, ``service``, ``trace_id``,
    ``span_id``, ``request_id`` and the fields bound with :class:`LogContext`; then masks secrets
    in every value (the event text included), like the stdlib path does. Place it before
    ``JSONRenderer`` (and after ``format_exc_info`` to have tracebacks redacted too).
    """
    builder = current_builder()
    bound = _context.get()
    if bound:
        for key, value in bound.items():
            event_dict.setdefault(key, value)
    now = time.time()
    event_dict.setdefault("timestamp", _iso_utc(now, (now - int(now)) * 1000))
    event_dict.setdefault("level", _STRUCTLOG_LEVELS.get(method_name, method_name.upper()))
    event_dict.setdefault("service", builder.service)
    ids = _otel_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    else:
        event_dict.setdefault("trace_id", None)
        event_dict.setdefault("span_id", None)
    event_dict.setdefault("request_id", None)
    redactor = builder.redactor
    if redactor is None:
        return event_dict
    data = {k: v for k, v in event_dict.items() if k not in _STRUCTLOG_PASSTHROUGH}
    redacted = redactor.redact_mapping(data)
    for key in event_dict.keys() & _STRUCTLOG_PASSTHROUGH:
        redacted[key] = event_dict[key]
    return redacted
