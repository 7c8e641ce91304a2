"""The error event model and its grouping: which issue an event belongs to, and how it is titled.

An *error event* is a Sentry event payload (a ``dict`` as ``sentry_sdk`` and the browser SDK
send it). Grouping decides its *fingerprint*, the key of its issue, in this order (the order
Sentry's default grouping uses):

1. a custom ``fingerprint`` the app set (``["payment", "{{ default }}"]``: ``{{ default }}``
   expands to the default components below);
2. the stack trace: for each exception of the chain, its type and its in-app frames as
   ``module.function`` (all frames when none is marked in-app). Line numbers and local values
   are left out on purpose: a deploy that shifts a line must not open a new issue;
3. without frames, the exception type and its message with the variable parts (numbers, hex,
   UUIDs, e-mails, IPs, URLs, timestamps) replaced, so ``Order 17 failed`` and
   ``Order 42 failed`` are one issue;
4. a message event: its template (``logentry.message``, before ``%s`` parameters are filled
   in), else the message normalised as in 3.

The fingerprint is a hash of the components, so it is the same in every process and release.
Titles and culprits follow what Sentry shows: ``ValueError: bad amount`` and
``app.payments in charge`` (or the transaction, when the event names one).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "LEVELS",
    "GroupingResult",
    "culprit",
    "event_timestamp",
    "fingerprint",
    "group",
    "main_exception",
    "normalize_level",
    "normalize_message",
    "title",
]

#: Event levels, most severe first (Sentry's names).
LEVELS: Final[tuple[str, ...]] = ("fatal", "error", "warning", "info", "debug")
_LEVEL_ALIASES: Final = {
    "critical": "fatal", "crit": "fatal", "fatal": "fatal", "error": "error", "err": "error",
    "exception": "error", "warning": "warning", "warn": "warning", "info": "info", "log": "info",
    "information": "info", "debug": "debug", "trace": "debug", "sample": "info",
}  # fmt: skip

_TITLE_MAX: Final = 200
_DEFAULT_TOKEN = re.compile(r"^\{\{\s*default\s*\}\}$")

# Variable parts of a message, most specific first: a UUID contains hex runs and digits, an
# e-mail or URL contains dots and numbers, so they must be replaced before the generic shapes.
_NORMALIZERS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+"), "<url>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"), "<date>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){3,7}[0-9a-fA-F]{1,4}\b"), "<ip>"),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"[-+]?\b\d+(?:\.\d+)?"), "<int>"),
)
# Hex runs are ids only when long and mixed (a short "cafe" or "add1" is a word, all digits a number).
_HEX_RUN = re.compile(r"\b[0-9a-fA-F]{8,}\b")
# Memory addresses in reprs ("<Foo object at 0x7f...>") differ in every process.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _hex_id(match: re.Match[str]) -> str:
    run = match.group(0)
    return "<hex>" if any(c.isdigit() for c in run) and not run.isdigit() else run


def normalize_level(value: Any, default: str = "error") -> str:
    """A Sentry level name for whatever the client sent (``WARN``, ``critical``, ``40``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        # Python logging numbers, as some integrations send them.
        for threshold, name in ((50, "fatal"), (40, "error"), (30, "warning"), (20, "info")):
            if value >= threshold:
                return name
        return "debug"
    if isinstance(value, str):
        return _LEVEL_ALIASES.get(value.strip().lower(), default)
    return default


def normalize_message(text: str) -> str:
    """``text`` with its variable parts replaced by placeholders (see the module docstring)."""
    out = _ADDRESS.sub(" at <hex>", text)
    for pattern, placeholder in _NORMALIZERS:
        out = pattern.sub(placeholder, out)
        if placeholder == "<hex>":
            out = _HEX_RUN.sub(_hex_id, out)
    return out.strip()


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        value = value.get("values")
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def exceptions(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The exception chain, oldest (innermost cause) first, as Sentry sends it."""
    return _as_list(event.get("exception"))


def main_exception(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The exception Sentry titles an event by: the last of the chain (the one raised last)."""
    chain = exceptions(event)
    return chain[-1] if chain else None


def _frames(container: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not container:
        return []
    stacktrace = container.get("stacktrace")
    if not isinstance(stacktrace, Mapping):
        return []
    frames = stacktrace.get("frames")
    return [f for f in frames if isinstance(f, Mapping)] if isinstance(frames, list) else []


def _thread_frames(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Frames of a message event sent with ``attach_stacktrace`` (the crashed/current thread)."""
    threads = _as_list(event.get("threads"))
    for thread in threads:
        if thread.get("crashed") or thread.get("current"):
            return _frames(thread)
    return _frames(threads[0]) if threads else _frames(event)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _frame_module(frame: Mapping[str, Any]) -> str:
    module = _str(frame.get("module"))
    if module:
        return module
    filename = _str(frame.get("filename") or frame.get("abs_path"))
    # Browser frames carry URLs with a cache-busting query or hash; drop both.
    filename = filename.split("?", 1)[0].split("#", 1)[0]
    return filename.rsplit("/", 1)[-1]


def _frame_function(frame: Mapping[str, Any]) -> str:
    function = _str(frame.get("function"))
    return _ADDRESS.sub("", function) or "?"


def _grouping_frames(frames: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    in_app = [f for f in frames if f.get("in_app") is True]
    return in_app or frames


def _frame_components(frames: list[Mapping[str, Any]]) -> list[str]:
    return [f"{_frame_module(f)}.{_frame_function(f)}" for f in _grouping_frames(frames)]


def _message_text(event: Mapping[str, Any]) -> tuple[str, bool]:
    """The event's message and whether it is a template (``logentry.message`` with params)."""
    logentry = event.get("logentry")
    if isinstance(logentry, Mapping):
        message = _str(logentry.get("message"))
        if message:
            params = logentry.get("params")
            return message, bool(params)
        formatted = _str(logentry.get("formatted"))
        if formatted:
            return formatted, False
    message = event.get("message")
    if isinstance(message, Mapping):  # the legacy interface: {"message": ..., "params": ...}
        text = _str(message.get("message") or message.get("formatted"))
        return text, bool(message.get("params"))
    return _str(message), False


def formatted_message(event: Mapping[str, Any]) -> str:
    """The event's message as a person reads it (parameters filled in when the SDK did)."""
    logentry = event.get("logentry")
    if isinstance(logentry, Mapping):
        formatted = _str(logentry.get("formatted"))
        if formatted:
            return formatted
        message = _str(logentry.get("message"))
        params = logentry.get("params")
        if message and isinstance(params, list | tuple) and params:
            try:
                return message % tuple(params)
            except (TypeError, ValueError):
                return message
        if message:
            return message
    message = event.get("message")
    if isinstance(message, Mapping):
        return _str(message.get("formatted") or message.get("message"))
    return _str(message)


def default_components(event: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The default grouping of an event: ``(variant, components)``.

    ``variant`` names the rule that applied: ``stacktrace``, ``exception``, ``message`` or
    ``fallback`` (an event with nothing to group by: all such events of a project are one issue).
    """
    chain = exceptions(event)
    if chain:
        components: list[str] = []
        with_frames = False
        for exc in chain:
            frames = _frames(exc)
            components.append(_str(exc.get("type")) or "Error")
            if frames:
                with_frames = True
                components.extend(_frame_components(frames))
        if with_frames:
            return "stacktrace", components
        components = []
        for exc in chain:
            components.append(_str(exc.get("type")) or "Error")
            components.append(normalize_message(_str(exc.get("value"))))
        return "exception", components
    frames = _thread_frames(event)
    if frames:
        return "stacktrace", _frame_components(frames)
    text, is_template = _message_text(event)
    if text:
        return "message", [text if is_template else normalize_message(text)]
    return "fallback", ["<no grouping information>"]


class GroupingResult(tuple[str, list[str], str]):
    """``(variant, components, hash)``; ``hash`` is the issue fingerprint (32 hex)."""

    __slots__ = ()

    @property
    def variant(self) -> str:
        return self[0]

    @property
    def components(self) -> list[str]:
        return self[1]

    @property
    def hash(self) -> str:
        return self[2]


def _hash(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def group(event: Mapping[str, Any]) -> GroupingResult:
    """How an event is grouped: the rule that applied, its components and the fingerprint."""
    custom = event.get("fingerprint")
    if isinstance(custom, list) and custom and all(isinstance(p, str | int | float) for p in custom):
        items = [str(p).strip() for p in custom]
        if not all(_DEFAULT_TOKEN.match(p) for p in items):
            parts: list[str] = []
            for item in items:
                parts.extend(default_components(event)[1] if _DEFAULT_TOKEN.match(item) else [item])
            return GroupingResult(("custom", parts, _hash(["custom", *parts])))
        # ["{{ default }}"] alone is the default grouping, spelt out.
    variant, components = default_components(event)
    return GroupingResult((variant, components, _hash(["default", *components])))


def fingerprint(event: Mapping[str, Any]) -> str:
    """The issue fingerprint of an event (see :func:`group`)."""
    return group(event).hash


def _first_line(text: str, limit: int = _TITLE_MAX) -> str:
    line = text.strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def title(event: Mapping[str, Any]) -> str:
    """The issue title Sentry would show: ``Type: value`` for errors, the message otherwise."""
    exc = main_exception(event)
    if exc is not None:
        kind = _str(exc.get("type")) or "Error"
        value = _first_line(_str(exc.get("value")))
        return _first_line(f"{kind}: {value}" if value else kind)
    message = formatted_message(event)
    if message:
        return _first_line(message)
    transaction = _str(event.get("transaction"))
    return _first_line(transaction) if transaction else "<unlabeled event>"


def culprit(event: Mapping[str, Any]) -> str:
    """Where the event happened: its transaction (``/checkout``), else ``module in function``
    of the innermost in-app frame of the main exception (or of the attached stack trace)."""
    explicit = _str(event.get("culprit"))
    if explicit:
        return _first_line(explicit)
    transaction = _str(event.get("transaction"))
    if transaction:
        return _first_line(transaction)
    exc = main_exception(event)
    frames = _frames(exc) if exc is not None else _thread_frames(event)
    if frames:
        frame = _grouping_frames(frames)[-1]  # frames are oldest first: the last one raised
        return _first_line(f"{_frame_module(frame)} in {_frame_function(frame)}")
    return ""


def event_timestamp(event: Mapping[str, Any], received: float, *, max_age_s: float = 30 * 86400) -> float:
    """The event's time in seconds since the epoch, trusted only when plausible.

    Accepts a number or an RFC 3339 string. An absent, unparsable, future (more than a minute
    ahead) or very old value becomes ``received``: a broken clock on one host must not put an
    issue's last-seen in next year.
    """
    raw = event.get("timestamp")
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str) and raw:
        value = _parse_rfc3339(raw)
    if value is None or value > received + 60 or value < received - max_age_s:
        return received
    return value


def _parse_rfc3339(text: str) -> float | None:
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def event_id(value: Any) -> str:
    """The event id as 32 lowercase hex (dashes dropped); a new one when absent or malformed."""
    if isinstance(value, str):
        compact = value.replace("-", "").lower()
        if len(compact) == 32 and all(c in "0123456789abcdef" for c in compact):
            return compact
    return uuid.uuid4().hex


def now() -> float:
    return time.time()
