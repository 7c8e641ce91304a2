"""Normalize: map any client's field names and value formats onto the canonical log record.

Raw events arrive in many vocabularies (``msg``/``message``/``@message``, ``lvl``/``levelname``,
``@timestamp``/``ts``/``time``, ``requestId``/``trace_id``...). :func:`normalize` returns a
record with exactly the keys of :data:`stackwatch.model.logs.LOG_FIELDS`:

* **timestamp**: ISO 8601 with any offset or ``Z`` (``T`` or blank separator, ``.`` or ``,``
  before the fraction, up to ns), epoch seconds/ms/us/ns as numbers or numeric strings (the
  unit is inferred from the magnitude), Apache/nginx ``10/Oct/2000:13:55:36 -0700``, syslog
  ``Oct 11 22:14:15`` (year inferred from the observed time), RFC 2822. All become UTC ns.
  Anything else: the observed time, and the original under attribute ``timestamp_raw``.
* **severity**: text levels via :func:`~stackwatch.model.logs.severity_from_text`; OTel
  ``severity_number``; numeric ``level`` as pino/bunyan (10..60) and ``levelno`` as Python
  logging (10..50).
* **trace_id**: ``trace_id``/``traceId``/``trace.id`` first, then ``request_id``/``requestId``;
  when both kinds are present the request id stays an attribute under its own key.
  Placeholders (``unknown``, ``none``, ``-``, all zeros) count as absent. Hex ids are
  lowercased; other ids (``req_123abc``) are kept as sent, since users search by them.
* **source**: ``source``, else built as ``file:line`` from ``pathname``/``filename``/``module``
  and ``lineno``/``line``.
* **attributes**: every other field, nested mappings flattened with dots
  (``{"context": {"ip": "x"}}`` -> ``context.ip``), lists JSON-encoded into a string, ``None``
  dropped, bools kept, ints and floats kept as numbers (ints beyond 64 bits become strings).
* **resource**: a ``resource`` mapping, flattened to str -> str.
* **service**: the event's, else ``resource["service.name"]``, else ``defaults["service"]``,
  else ``"unknown"``. **host**: the event's, else ``resource["host.name"]``, else
  ``defaults["host"]``.
* **log_type**: the event's ``log_type``/``type`` when it is one of LOG_TYPES, else
  ``defaults["log_type"]``, else inferred (kept minimal on purpose): ``web`` when the event
  has ``http.method`` and ``http.status_code`` (an access log), ``security`` when the logger or
  service name has a word ``auth``, ``security`` or ``audit``, else ``application``.

Sizes are bounded so that one huge event cannot bloat storage: the message is cut at
:data:`MAX_MESSAGE_CHARS` (64 Ki characters), attribute strings at :data:`MAX_ATTRIBUTE_CHARS`
(16 Ki), short fields (service, host, logger, ids...) at :data:`MAX_FIELD_CHARS`, at most
:data:`MAX_ATTRIBUTES` attributes are kept and nesting deeper than :data:`MAX_DEPTH` is
JSON-encoded. Cut events get attribute ``pipeline.truncated`` = true.

Records that are already canonical (the OTLP decoder's: int ns ``timestamp``, ``attributes``
and ``resource`` dicts, canonical names only) take a fast path that only checks types.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import orjson

from stackwatch.model.logs import LOG_FIELDS, LOG_TYPES, LogRecord, severity_from_number, severity_from_text
from stackwatch.pipeline.stage import BatchContext, mark_error

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_CHARS",
    "MAX_DEPTH",
    "MAX_FIELD_CHARS",
    "MAX_MESSAGE_CHARS",
    "Normalizer",
    "normalize",
    "parse_timestamp",
]

MAX_MESSAGE_CHARS: Final = 65_536
MAX_ATTRIBUTE_CHARS: Final = 16_384
MAX_FIELD_CHARS: Final = 1_024
MAX_ATTRIBUTES: Final = 512
MAX_DEPTH: Final = 16

_INT64_MAX: Final = 2**63 - 1
_TRUNCATED: Final = "pipeline.truncated"

# Alias -> (canonical slot, rank). Lower rank wins when an event has several aliases of one
# field; the losers stay attributes under their own names.
_ALIASES: Final[dict[str, tuple[str, int]]] = {}


def _alias(slot: str, *names: str) -> None:
    for rank, name in enumerate(names):
        _ALIASES[name] = (slot, rank)


_alias("timestamp", "timestamp", "@timestamp", "time", "ts", "datetime", "date", "time_unix_nano", "timeUnixNano", "asctime")  # fmt: skip
_alias("level", "level", "severity_text", "severityText", "levelname", "log.level", "lvl", "severity", "loglevel", "log_level", "levelName")  # fmt: skip
_alias("levelno", "levelno", "level_number")
_alias("severity_number", "severity_number", "severityNumber")
_alias("message", "message", "msg", "body", "@message", "log", "text", "event", "line")
_alias("service", "service", "service.name", "service_name", "app", "application", "app_name")
_alias("trace_id", "trace_id", "traceId", "trace.id", "traceid", "trace-id", "request_id", "requestId", "request.id", "req_id", "x-request-id", "X-Request-ID")  # fmt: skip
_alias("span_id", "span_id", "spanId", "span.id", "spanid")
_alias("source", "source")
_alias("file", "pathname", "filename", "file", "module")
_alias("lineno", "lineno", "line")
_alias("logger", "logger", "logger_name", "loggerName", "name", "log.logger")
_alias("function", "function", "funcName", "func", "function_name", "log.origin.function")
_alias("host", "host", "hostname", "host.name", "hostName")
_alias("log_type", "log_type", "type")

_ID_PLACEHOLDERS: Final = frozenset(
    {
        "",
        "unknown",
        "none",
        "null",
        "nil",
        "-",
        "undefined",
        "n/a",
        "0",
        "Unknown",
        "UNKNOWN",
        "None",
        "NONE",
        "NULL",
        "N/A",
    }
)
_CANONICAL_KEYS: Final = frozenset(LOG_FIELDS)
_LOG_TYPES: Final = frozenset(LOG_TYPES)
_HEX: Final = frozenset("0123456789abcdefABCDEF-")
_PINO_LEVELS: Final = {10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL"}
_PY_LEVELS: Final = {5: "TRACE", 10: "DEBUG", 20: "INFO", 30: "WARN", 40: "ERROR", 50: "FATAL"}
_SECURITY_WORDS: Final = frozenset({"auth", "security", "audit"})
_WORDS = re.compile(r"[^A-Za-z0-9]+")

_SCALARS: Final = frozenset({str, int, float, bool, type(None), list})
_CACHE_MAX: Final = 8_192
_iso_seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch seconds (naive = UTC)
_severity_cache: dict[str, tuple[str, int]] = {}
_inference_cache: dict[tuple[str, str], str] = {}

_MONTHS: Final = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}  # fmt: skip
_CLF = re.compile(r"(\d{1,2})/([A-Za-z]{3})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?: ([+-]\d{4}))?$")
_SYSLOG = re.compile(r"([A-Za-z]{3}) +(\d{1,2})(?: (\d{4}))? (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?$")
_NS_PER_S: Final = 1_000_000_000


def _epoch_to_ns(value: float) -> int:
    """Epoch number to ns, the unit guessed from the magnitude (valid for years 1973..5138)."""
    magnitude = abs(value)
    if magnitude < 1e11:
        scale = _NS_PER_S
    elif magnitude < 1e14:
        scale = 1_000_000
    elif magnitude < 1e17:
        scale = 1_000
    else:
        return int(value)
    whole = int(value)
    # Scale the whole and fractional parts apart: 1759752000.25 * 1e9 is not exact in a float.
    return whole * scale + round((value - whole) * scale)


def _json(value: Any) -> str:
    """Compact JSON for values stored as strings; stdlib json for what orjson refuses (huge ints)."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return json.dumps(value, default=str, separators=(",", ":"))


def _offset_seconds(sign: str, hours: str, minutes: str) -> int | None:
    if not (hours.isdigit() and minutes.isdigit()):
        return None
    seconds = int(hours) * 3600 + int(minutes) * 60
    return -seconds if sign == "-" else seconds


def _iso_base(head: str) -> int | None:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` (naive = UTC), cached: a batch shares few seconds."""
    if head[4] != "-" or head[7] != "-" or head[10] not in "Tt " or head[13] != ":" or head[16] != ":":
        return None
    try:
        moment = datetime(
            int(head[0:4]),
            int(head[5:7]),
            int(head[8:10]),
            int(head[11:13]),
            int(head[14:16]),
            int(head[17:19]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    base = int(moment.timestamp())
    if len(_iso_seconds) >= _CACHE_MAX:
        _iso_seconds.clear()
    _iso_seconds[head] = base
    return base


_FRACTION_SCALE: Final = (0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)


def _iso_to_ns(text: str) -> int | None:
    """Fast ISO 8601 parser for the shapes loggers emit; None sends the caller to the slow path."""
    base = _iso_seconds.get(text[:19])
    if base is None:
        if len(text) < 19:
            return None
        base = _iso_base(text[:19])
        if base is None:
            return None
    if text[-1] == "Z" and text[19:20] == ".":  # the most common shape: ...SS.fffZ
        fraction = text[20:-1]
        if 0 < len(fraction) <= 9 and fraction.isdecimal():
            return base * _NS_PER_S + int(fraction) * _FRACTION_SCALE[len(fraction)]
    rest = text[19:]
    if not rest:
        return base * _NS_PER_S
    offset = 0
    last = rest[-1]
    if last == "Z" or last == "z":
        rest = rest[:-1]
    elif len(rest) >= 6 and rest[-3] == ":" and rest[-6] in "+-":
        parsed = _offset_seconds(rest[-6], rest[-5:-3], rest[-2:])
        if parsed is None:
            return None
        offset, rest = parsed, rest[:-6]
    elif len(rest) >= 5 and rest[-5] in "+-" and rest[-4:].isdecimal():
        offset, rest = _offset_seconds(rest[-5], rest[-4:-2], rest[-2:]) or 0, rest[:-5]
    elif len(rest) >= 3 and rest[-3] in "+-" and rest[-2:].isdecimal():
        offset, rest = _offset_seconds(rest[-3], rest[-2:], "00") or 0, rest[:-3]
    elif rest.endswith((" UTC", " GMT")):
        rest = rest[:-4]
    if not rest:
        return (base - offset) * _NS_PER_S
    digits = rest[1:10]
    if (rest[0] != "." and rest[0] != ",") or not rest[1:].isdecimal():
        return None
    return (base - offset) * _NS_PER_S + int(digits) * _FRACTION_SCALE[len(digits)]


def _syslog_to_ns(match: re.Match[str], observed_ns: int) -> int | None:
    month = _MONTHS.get(match.group(1).lower())
    if month is None:
        return None
    observed_year = datetime.fromtimestamp(observed_ns / _NS_PER_S, UTC).year
    year = int(match.group(3)) if match.group(3) else observed_year
    try:
        moment = datetime(
            year,
            month,
            int(match.group(2)),
            int(match.group(4)),
            int(match.group(5)),
            int(match.group(6)),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    ns = int(moment.timestamp()) * _NS_PER_S + int((match.group(7) or "0").ljust(9, "0")[:9])
    # RFC 3164 has no year: a December line read in January belongs to last year.
    if not match.group(3) and ns - observed_ns > 2 * 86_400 * _NS_PER_S:
        try:
            ns = int(moment.replace(year=year - 1).timestamp()) * _NS_PER_S + ns % _NS_PER_S
        except ValueError:
            return None
    return ns


def parse_timestamp(value: Any, observed_ns: int) -> int | None:
    """Turn any supported timestamp into UTC ns since the epoch, or None when unparseable.

    ``observed_ns`` is only used to pick the year of year-less syslog timestamps.
    """
    cls = value.__class__
    if cls is int or cls is float:
        if value != value or value in (float("inf"), float("-inf")):  # NaN / inf
            return None
        return _epoch_to_ns(value)
    if cls is not str:
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            return int(moment.timestamp()) * _NS_PER_S + moment.microsecond * 1000
        return None
    text = value.strip()
    if not text:
        return None
    ns = _iso_to_ns(text)
    if ns is not None:
        return ns
    if text[0] in "0123456789-" and text.replace(".", "", 1).lstrip("-").isdigit():
        if "." in text:
            whole, _, frac = text.partition(".")
            if len(whole.lstrip("-")) <= 10:  # seconds with a fraction: keep ns exactly
                sign = -1 if whole.startswith("-") else 1
                return sign * (abs(int(whole)) * _NS_PER_S + int(frac[:9].ljust(9, "0")))
            return _epoch_to_ns(float(text))
        return _epoch_to_ns(int(text))
    match = _CLF.match(text)
    if match is not None:
        month = _MONTHS.get(match.group(2).lower())
        if month is None:
            return None
        try:
            moment = datetime(
                int(match.group(3)),
                month,
                int(match.group(1)),
                int(match.group(4)),
                int(match.group(5)),
                int(match.group(6)),
                tzinfo=UTC,
            )
        except ValueError:
            return None
        zone = match.group(8) or "+0000"
        offset = _offset_seconds(zone[0], zone[1:3], zone[3:5]) or 0
        return (int(moment.timestamp()) - offset) * _NS_PER_S + int((match.group(7) or "0").ljust(9, "0")[:9])
    match = _SYSLOG.match(text)
    if match is not None:
        return _syslog_to_ns(match, observed_ns)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * _NS_PER_S + moment.microsecond * 1000


def _severity(level: Any, levelno: Any, number: Any) -> tuple[str, int]:
    if number.__class__ is int and 1 <= number <= 24:
        return severity_from_number(number)
    if level.__class__ is str:
        cached = _severity_cache.get(level)
        if cached is None:
            cached = severity_from_text(level)
            if len(_severity_cache) < _CACHE_MAX:
                _severity_cache[level] = cached
        return cached
    if level.__class__ is int:
        return severity_from_text(_PINO_LEVELS.get(level, "INFO"))
    if levelno.__class__ is int:
        return severity_from_text(_PY_LEVELS.get(levelno, "INFO"))
    return "INFO", 9


def _cut(text: str, limit: int, attributes: dict[str, Any]) -> str:
    if len(text) > limit:
        attributes[_TRUNCATED] = True
        return text[:limit]
    return text


def _short(value: Any, attributes: dict[str, Any]) -> str:
    text = value if value.__class__ is str else str(value)
    return _cut(text, MAX_FIELD_CHARS, attributes) if len(text) > MAX_FIELD_CHARS else text


def _attribute_value(value: Any, attributes: dict[str, Any]) -> Any:
    """A scalar storable attribute value, or None to drop it."""
    cls = value.__class__
    if cls is str:
        return value if len(value) <= MAX_ATTRIBUTE_CHARS else _cut(value, MAX_ATTRIBUTE_CHARS, attributes)
    if cls is bool or cls is float:
        return value
    if cls is int:
        return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else str(value)
    if value is None:
        return None
    if cls is list or cls is tuple:
        encoded = _json(value)
        return _cut(encoded, MAX_ATTRIBUTE_CHARS, attributes)
    if cls is bytes:
        return base64.b64encode(value).decode()
    return _cut(str(value), MAX_ATTRIBUTE_CHARS, attributes)


def _flatten_into(prefix: str, value: Mapping[Any, Any], out: list[tuple[str, Any]], depth: int) -> None:
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if item.__class__ is dict or (item.__class__ not in _SCALARS and isinstance(item, Mapping)):
            if depth >= MAX_DEPTH:
                out.append((name, _json(item)))
            else:
                _flatten_into(name, item, out, depth + 1)
        else:
            out.append((name, item))


def _flat_resource(resource: Mapping[Any, Any]) -> dict[str, str]:
    flat: list[tuple[str, Any]] = []
    _flatten_into("", resource, flat, 0)
    return {key[:MAX_FIELD_CHARS]: (v if v.__class__ is str else _json(v)) for key, v in flat if v is not None}  # fmt: skip


def _clean_id(value: Any) -> str:
    if (
        value.__class__ is str
        and len(value) <= 64
        and value.isalnum()
        and value.islower()
        and value not in _ID_PLACEHOLDERS
    ):
        return value  # the common case: already lowercase hex (or a lowercase token id)
    text = str(value).strip()
    if text.lower() in _ID_PLACEHOLDERS or not text.strip("0-"):
        return ""
    if len(text) > MAX_FIELD_CHARS:
        text = text[:MAX_FIELD_CHARS]
    return text.lower() if _HEX.issuperset(text) else text


def _infer_log_type(logger: str, service: str, attributes: Mapping[str, Any]) -> str:
    if "http.status_code" in attributes and "http.method" in attributes:
        return "web"
    key = (logger, service)
    cached = _inference_cache.get(key)
    if cached is None:
        words = set(_WORDS.split(f"{logger} {service}".lower()))
        cached = "security" if words & _SECURITY_WORDS else "application"
        if len(_inference_cache) >= _CACHE_MAX:
            _inference_cache.clear()
        _inference_cache[key] = cached
    return cached


_CANONICAL_TEXT: Final = (
    "service",
    "severity_text",
    "trace_id",
    "span_id",
    "source",
    "logger",
    "function",
    "host",
    "log_type",
)


def _is_canonical(raw: Mapping[str, Any]) -> bool:
    """Canonical names only, with canonical types (anything else takes the general path)."""
    if raw.get("attributes").__class__ is not dict or not raw.keys() <= _CANONICAL_KEYS:
        return False
    for name in _CANONICAL_TEXT:
        value = raw.get(name)
        if value is not None and value.__class__ is not str:
            return False
    number = raw.get("severity_number")
    resource = raw.get("resource")
    return (number is None or number.__class__ is int) and (resource is None or resource.__class__ is dict)


def _normalize_canonical(
    raw: Mapping[str, Any], project: str, observed_ns: int, defaults: Mapping[str, Any]
) -> LogRecord:
    """Fast path for records that already use canonical names (the OTLP decoder's)."""
    attributes: dict[str, Any] = raw["attributes"]
    if (
        any(v.__class__ not in (str, int, float, bool) for v in attributes.values())
        or len(attributes) > MAX_ATTRIBUTES
    ):
        flat: dict[str, Any] = {}
        _add_attributes(flat, "", attributes)
        attributes = flat
    else:
        attributes = dict(attributes)
    resource_in = raw.get("resource")
    resource: dict[str, str] = {}
    if resource_in:
        if all(v.__class__ is str for v in resource_in.values()):
            resource = dict(resource_in)
        else:
            resource = _flat_resource(resource_in)
    timestamp = raw.get("timestamp")
    if timestamp.__class__ is not int or timestamp <= 0:
        parsed = parse_timestamp(timestamp, observed_ns) if timestamp is not None else None
        if parsed is None and timestamp is not None:
            attributes["timestamp_raw"] = str(timestamp)[:MAX_FIELD_CHARS]
        timestamp = parsed if parsed is not None else observed_ns
    number = raw.get("severity_number")
    text = raw.get("severity_text")
    severity_text, severity_number = _severity(text if text else None, None, number)
    message = raw.get("message", "")
    if message.__class__ is not str:
        message = "" if message is None else _json(message)
    service = raw.get("service") or resource.get("service.name") or defaults.get("service") or "unknown"
    host = raw.get("host") or resource.get("host.name") or defaults.get("host") or ""
    logger = raw.get("logger") or ""
    log_type = raw.get("log_type")
    if log_type not in _LOG_TYPES:
        log_type = defaults.get("log_type")
        if log_type not in _LOG_TYPES:
            log_type = _infer_log_type(logger, service, attributes)
    return {
        "timestamp": timestamp,
        "observed_timestamp": observed_ns,
        "project": project,
        "service": _short(service, attributes),
        "severity_text": severity_text,
        "severity_number": severity_number,
        "message": _cut(message, MAX_MESSAGE_CHARS, attributes),
        "trace_id": _clean_id(raw.get("trace_id") or ""),
        "span_id": _clean_id(raw.get("span_id") or ""),
        "source": _short(raw.get("source") or "", attributes),
        "logger": _short(logger, attributes),
        "function": _short(raw.get("function") or "", attributes),
        "host": _short(host, attributes),
        "log_type": log_type,
        "attributes": attributes,
        "resource": resource,
    }


def _add_attributes(attributes: dict[str, Any], prefix: str, value: Mapping[Any, Any]) -> None:
    flat: list[tuple[str, Any]] = []
    _flatten_into(prefix, value, flat, 0)
    for key, item in flat:
        _put(attributes, key, item)


def _put(attributes: dict[str, Any], key: str, value: Any) -> None:
    converted = _attribute_value(value, attributes)
    if converted is None:
        return
    if len(attributes) >= MAX_ATTRIBUTES and key not in attributes:
        attributes[_TRUNCATED] = True
        return
    attributes[key if len(key) <= 256 else key[:256]] = converted


def _check_slot(slot: str, cls: type, value: Any) -> str | None:
    """Whether an alias's value fits its slot: the slot, "" to drop it, None to keep it as attribute."""
    if slot == "trace_id" or slot == "span_id":
        if cls is str:
            return "" if value in _ID_PLACEHOLDERS or value.strip().lower() in _ID_PLACEHOLDERS else slot
        return slot if cls is int else None
    if slot == "lineno":
        if cls is int:
            return slot
        if cls is str:
            return slot if value.isdigit() else "message"  # a raw 'line' of text, not a number
        return None
    if slot == "log_type":
        return slot if cls is str and value in _LOG_TYPES else None
    if slot == "level":
        return slot if cls is str or cls is int else None
    if slot == "levelno" or slot == "severity_number":
        return slot if cls is int else None
    return slot if cls is str else None  # e.g. "name": 42 is not a logger name


#: Slots whose values need _check_slot; the others take any value (FREE) or any string (TEXT).
_FREE_SLOTS: Final = frozenset({"message", "timestamp"})
#: Message aliases whose mapping value is a structured body (OTel style), not nested fields
#: ("log" and "event" objects are ECS field groups: log.level, event.dataset).
_STRUCTURED_BODY_KEYS: Final = frozenset({"message", "msg", "body"})
_TEXT_SLOTS: Final = frozenset({"service", "source", "file", "logger", "function", "host"})


def _take(best: dict[str, tuple[int, str, Any]], attributes: dict[str, Any], key: str, value: Any) -> None:
    """Slow path of the alias loop, for pairs that come out of nested mappings."""
    alias = _ALIASES.get(key)
    if alias is None or value is None:
        _put(attributes, key, value)
        return
    slot, rank = alias
    if slot not in _FREE_SLOTS:
        checked = _check_slot(slot, value.__class__, value)
        if checked is None:
            _put(attributes, key, value)
            return
        if not checked:
            return
        if checked != slot:
            slot, rank = checked, 99
    previous = best.get(slot)
    if previous is None:
        best[slot] = (rank, key, value)
    elif rank < previous[0]:
        best[slot] = (rank, key, value)
        _put(attributes, previous[1], previous[2])
    else:
        _put(attributes, key, value)


def _template(project: str, observed_ns: int, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The record an event with no recognizable field becomes; built once per batch."""
    log_type = defaults.get("log_type")
    return {
        "timestamp": observed_ns,
        "observed_timestamp": observed_ns,
        "project": project,
        "service": str(defaults.get("service") or "unknown"),
        "severity_text": "INFO",
        "severity_number": 9,
        "message": "",
        "trace_id": "",
        "span_id": "",
        "source": "",
        "logger": "",
        "function": "",
        "host": str(defaults.get("host") or ""),
        "log_type": log_type if log_type in _LOG_TYPES else "",
        "attributes": None,
        "resource": None,
    }


def normalize(
    raw: Mapping[str, Any], *, project: str, observed_ns: int, defaults: Mapping[str, Any]
) -> LogRecord:
    """Map one raw event onto a canonical log record (see the module docstring for the rules).

    Never raises for odd field values: what cannot be mapped stays an attribute.
    """
    return _normalize(raw, _template(project, observed_ns, defaults), defaults)


def _normalize(raw: Mapping[str, Any], template: dict[str, Any], defaults: Mapping[str, Any]) -> LogRecord:
    observed_ns: int = template["observed_timestamp"]
    if "attributes" in raw and _is_canonical(raw):
        return _normalize_canonical(raw, template["project"], observed_ns, defaults)
    attributes: dict[str, Any] = {}
    # slot -> (rank, key, value); ranks come from _ALIASES, lower wins.
    best: dict[str, tuple[int, str, Any]] = {}
    aliases_get = _ALIASES.get
    best_get = best.get
    nested: list[tuple[str, Any]] | None = None
    # The hot loop: most keys are plain attributes with scalar values.
    for key, value in raw.items():
        alias = aliases_get(key)
        cls = value.__class__
        if cls is dict and key in _STRUCTURED_BODY_KEYS:
            cls = str  # a structured body: JSON-encoded below, not flattened
        if alias is None:
            if cls is str:
                attributes[key] = (
                    value
                    if len(value) <= MAX_ATTRIBUTE_CHARS
                    else _cut(value, MAX_ATTRIBUTE_CHARS, attributes)
                )
            elif cls is int:
                attributes[key] = value if -_INT64_MAX - 1 <= value <= _INT64_MAX else str(value)
            elif cls is float or cls is bool:
                attributes[key] = value
            elif cls is dict:
                if nested is None:
                    nested = []
                nested.append((key, value))
            elif value is not None:
                _put(attributes, key, value)
            continue
        if cls is dict:
            if nested is None:
                nested = []
            nested.append((key, value))
            continue
        if value is None:
            continue
        slot, rank = alias
        if slot in _TEXT_SLOTS:
            if cls is not str:
                _put(attributes, key, value)
                continue
        elif slot not in _FREE_SLOTS:
            checked = _check_slot(slot, cls, value)
            if checked is None:
                _put(attributes, key, value)
                continue
            if not checked:
                continue
            if checked != slot:
                slot, rank = checked, 99
        previous = best_get(slot)
        if previous is None:
            best[slot] = (rank, key, value)
        elif rank < previous[0]:
            best[slot] = (rank, key, value)
            _put(attributes, previous[1], previous[2])
        else:
            _put(attributes, key, value)

    resource: dict[str, str] = {}
    if nested is not None:
        for key, value in nested:
            if key == "resource":
                resource.update(_flat_resource(value))
            elif key == "attributes":
                _add_attributes(attributes, "", value)
            else:
                # Nested mappings may hold aliases under dotted names (ECS: log.level,
                # service.name, host.name), so their flattened pairs are matched too.
                flat: list[tuple[str, Any]] = []
                _flatten_into(key, value, flat, 1)
                for flat_key, flat_value in flat:
                    if flat_key in _ALIASES:
                        _take(best, attributes, flat_key, flat_value)
                    elif flat_value.__class__ is str and len(flat_value) <= MAX_ATTRIBUTE_CHARS:
                        attributes[flat_key] = flat_value
                    else:
                        _put(attributes, flat_key, flat_value)
    if len(attributes) > MAX_ATTRIBUTES:
        attributes = dict(list(attributes.items())[:MAX_ATTRIBUTES])
        attributes[_TRUNCATED] = True

    record = template.copy()
    record["attributes"] = attributes
    record["resource"] = resource
    if resource:
        if "service" not in best and resource.get("service.name"):
            record["service"] = resource["service.name"]
        if "host" not in best and resource.get("host.name"):
            record["host"] = resource["host.name"]
    level = levelno = number = None
    file_pick = line_pick = None
    for slot, picked in best.items():
        value = picked[2]
        if slot == "message":
            if value.__class__ is not str:
                value = _json(value)
            elif len(value) > MAX_MESSAGE_CHARS:
                value = _cut(value, MAX_MESSAGE_CHARS, attributes)
            record["message"] = value
        elif slot == "timestamp":
            parsed = _iso_to_ns(value) if value.__class__ is str else None
            if parsed is None:
                parsed = parse_timestamp(value, observed_ns)
            if parsed is None:
                attributes["timestamp_raw"] = str(value)[:MAX_FIELD_CHARS]
            else:
                record["timestamp"] = parsed
        elif slot == "level":
            level = value
        elif slot == "trace_id" or slot == "span_id":
            # With both a trace id and a request id, rank order made the trace id win and
            # left the request id in attributes under its own key.
            record[slot] = _clean_id(value)
        elif slot == "file":
            file_pick = picked
        elif slot == "lineno":
            line_pick = picked
        elif slot == "levelno":
            levelno = value
        elif slot == "severity_number":
            number = value
        elif len(value) <= MAX_FIELD_CHARS:  # service, source, logger, function, host, log_type
            record[slot] = value
        else:
            record[slot] = _short(value, attributes)
    if level is not None and number is None and (cached := _severity_cache.get(level)) is not None:
        record["severity_text"], record["severity_number"] = cached
    elif level is not None or levelno is not None or number is not None:
        record["severity_text"], record["severity_number"] = _severity(level, levelno, number)
    if file_pick is not None or line_pick is not None:
        if "source" in best or file_pick is None:
            for extra in (file_pick, line_pick):
                if extra is not None:
                    _put(attributes, extra[1], extra[2])
        else:
            source = f"{file_pick[2]}:{line_pick[2]}" if line_pick is not None else file_pick[2]
            record["source"] = source if len(source) <= MAX_FIELD_CHARS else _short(source, attributes)
    if not record["log_type"]:
        record["log_type"] = _infer_log_type(record["logger"], record["service"], attributes)
    return record


def _fallback_record(raw: Any, context: BatchContext) -> LogRecord:
    """A record for an event normalize could not handle: its text is kept, nothing else guessed."""
    message = raw.get("message") if isinstance(raw, Mapping) else None
    if not isinstance(message, str):
        message = _json(raw) if isinstance(raw, Mapping) else str(raw)
    return {
        "timestamp": context.observed_ns,
        "observed_timestamp": context.observed_ns,
        "project": context.project,
        "service": str(context.defaults.get("service") or "unknown"),
        "severity_text": "INFO",
        "severity_number": 9,
        "message": message[:MAX_MESSAGE_CHARS],
        "trace_id": "",
        "span_id": "",
        "source": "",
        "logger": "",
        "function": "",
        "host": str(context.defaults.get("host") or ""),
        "log_type": "application",
        "attributes": {},
        "resource": {},
    }


_FIELD_ORDER: Final = tuple(LOG_FIELDS)
_COLUMNAR_MIN_GROUP: Final = 8
_SCALAR_CLASSES: Final = (str, int, float, bool)


def _column_class(column: Sequence[Any]) -> type | None:
    classes = set(map(type, column))
    return classes.pop() if len(classes) == 1 else None


def _attribute_column_ok(cls: type, column: Sequence[Any]) -> bool:
    """Whether a column can be stored as attributes as is (what _put would do unchanged)."""
    if cls is str:
        return max(map(len, column)) <= MAX_ATTRIBUTE_CHARS
    if cls is int:
        return min(column) >= -_INT64_MAX - 1 and max(column) <= _INT64_MAX
    return cls is float or cls is bool


def _normalize_group(
    rows: list[Any], keys: tuple[str, ...], template: dict[str, Any]
) -> list[LogRecord] | None:
    """Normalize events that share one key tuple column by column, or None to go event by event.

    A JSON formatter emits the same keys in the same order on every line, so a batch is a few
    such groups. Working on columns moves the per-event Python work into comprehensions and
    ``dict(zip(...))``. Only the common shapes are handled here (homogeneous scalar columns,
    one level of nesting, no resource); anything else returns None and takes the per-event
    path, which defines the semantics (a property test checks both agree).
    """
    n = len(rows)
    columns = list(zip(*[row.values() for row in rows], strict=True))
    attr_keys: list[str] = []
    attr_cols: list[Sequence[Any]] = []
    nested_keys: list[str] = []
    nested_cols: list[Sequence[Any]] = []
    slots: dict[str, tuple[int, str, Sequence[Any]]] = {}
    for key, column in zip(keys, columns, strict=True):
        cls = _column_class(column)
        if cls is None:
            return None
        if cls is type(None):
            continue
        if cls is dict:
            if key in ("resource", "attributes") or key in _STRUCTURED_BODY_KEYS:
                return None
            inner_shapes = set(map(tuple, column))
            if len(inner_shapes) != 1:
                return None
            inner_keys = inner_shapes.pop()
            inner_cols = list(zip(*[d.values() for d in column], strict=True)) if inner_keys else []
            for inner_key, inner_col in zip(inner_keys, inner_cols, strict=True):
                inner_cls = _column_class(inner_col)
                flat_key = f"{key}.{inner_key}"
                if (
                    inner_key.__class__ is not str
                    or inner_cls not in _SCALAR_CLASSES
                    or flat_key in _ALIASES
                    or not _attribute_column_ok(inner_cls, inner_col)
                ):
                    return None
                nested_keys.append(flat_key)
                nested_cols.append(inner_col)
            continue
        if cls not in _SCALAR_CLASSES:
            return None
        alias = _ALIASES.get(key)
        if alias is None:
            if not _attribute_column_ok(cls, column):
                return None
            attr_keys.append(key)
            attr_cols.append(column)
            continue
        slot, rank = alias
        if slot in _TEXT_SLOTS or slot == "message":
            valid = cls is str
        elif slot == "timestamp":
            valid = cls is not bool
        elif slot == "level":
            valid = cls is str or cls is int
        elif slot == "levelno" or slot == "severity_number" or slot == "lineno":
            valid = cls is int
        elif slot == "trace_id" or slot == "span_id":
            if cls is not str or any(v.strip().lower() in _ID_PLACEHOLDERS for v in column):
                return None
            valid = True
        elif slot == "log_type":
            valid = cls is str and _LOG_TYPES.issuperset(column)
        else:
            return None
        if not valid:
            if slot in ("message", "timestamp", "lineno", "log_type") or not _attribute_column_ok(
                cls, column
            ):
                return None
            attr_keys.append(key)
            attr_cols.append(column)
            continue
        previous = slots.get(slot)
        if previous is None or rank < previous[0]:
            slots[slot] = (rank, key, column)
        if previous is not None:
            loser_key, loser_col = (previous[1], previous[2]) if rank < previous[0] else (key, column)
            if not _attribute_column_ok(_column_class(loser_col) or object, loser_col):
                return None
            attr_keys.append(loser_key)
            attr_cols.append(loser_col)

    observed_ns: int = template["observed_timestamp"]
    repeat = itertools.repeat
    timestamps: list[Any] = [observed_ns] * n
    failed: list[int] = []
    raw_timestamps: Sequence[Any] = ()
    picked = slots.get("timestamp")
    if picked is not None:
        raw_timestamps = picked[2]
        timestamps = [
            (_iso_to_ns(v) if v.__class__ is str else None) or parse_timestamp(v, observed_ns)
            for v in raw_timestamps
        ]
        failed = [i for i, ts in enumerate(timestamps) if ts is None]
        for i in failed:
            timestamps[i] = observed_ns
    level, levelno, number = slots.get("level"), slots.get("levelno"), slots.get("severity_number")
    if level is None and levelno is None and number is None:
        severities: Sequence[tuple[str, int]] = [("INFO", 9)] * n
    elif levelno is None and number is None and level is not None:
        cache_get = _severity_cache.get
        severities = [cache_get(v) or _severity(v, None, None) for v in level[2]]
    else:
        severities = [
            _severity(lv, ln, nb)
            for lv, ln, nb in zip(
                level[2] if level else repeat(None, n),
                levelno[2] if levelno else repeat(None, n),
                number[2] if number else repeat(None, n),
                strict=True,
            )
        ]

    def text_column(slot: str, default: str) -> Iterable[str]:
        found = slots.get(slot)
        if found is None:
            return repeat(default, n)
        column = found[2]
        if max(map(len, column)) > (MAX_MESSAGE_CHARS if slot == "message" else MAX_FIELD_CHARS):
            raise _NotColumnar
        return column

    messages = text_column("message", "")
    services = text_column("service", template["service"])
    hosts = text_column("host", template["host"])
    loggers = text_column("logger", "")
    functions = text_column("function", "")
    picked = slots.get("trace_id")
    traces: Iterable[str] = [_clean_id(v) for v in picked[2]] if picked else repeat("", n)
    picked = slots.get("span_id")
    spans: Iterable[str] = [_clean_id(v) for v in picked[2]] if picked else repeat("", n)
    file_pick, line_pick = slots.get("file"), slots.get("lineno")
    if "source" in slots or (file_pick is None and line_pick is not None):
        sources = text_column("source", "")
        for extra in (file_pick, line_pick):
            if extra is not None:
                attr_keys.append(extra[1])
                attr_cols.append(extra[2])
    elif file_pick is not None:
        if line_pick is not None:
            sources = [f"{f}:{ln}" for f, ln in zip(file_pick[2], line_pick[2], strict=True)]
        else:
            sources = list(file_pick[2])
        if max(map(len, sources)) > MAX_FIELD_CHARS:
            return None
    else:
        sources = repeat("", n)
    attr_keys += nested_keys
    attr_cols += nested_cols
    if len(attr_keys) > MAX_ATTRIBUTES:
        return None
    if attr_keys:
        attributes = [dict(zip(attr_keys, row, strict=True)) for row in zip(*attr_cols, strict=True)]
    else:
        attributes = [{} for _ in range(n)]
    picked = slots.get("log_type")
    if picked is not None:
        log_types: Iterable[str] = picked[2]
    elif template["log_type"]:
        log_types = repeat(template["log_type"], n)
    elif "http.status_code" in attr_keys and "http.method" in attr_keys:
        log_types = repeat("web", n)
    else:
        services = list(services)
        loggers = list(loggers)
        pairs = list(zip(loggers, services, strict=True))
        inferred = {pair: _infer_log_type(pair[0], pair[1], {}) for pair in set(pairs)}
        log_types = [inferred[pair] for pair in pairs]
    project = template["project"]
    # A dict display builds a record faster than dict(zip(names, row)).
    records = [
        {
            "timestamp": timestamp,
            "observed_timestamp": observed_ns,
            "project": project,
            "service": service,
            "severity_text": severity[0],
            "severity_number": severity[1],
            "message": message,
            "trace_id": trace_id,
            "span_id": span_id,
            "source": source,
            "logger": logger,
            "function": function,
            "host": host,
            "log_type": log_type,
            "attributes": attrs,
            "resource": {},
        }
        for timestamp, service, severity, message, trace_id, span_id, source, logger, function, host, log_type, attrs in zip(
            timestamps,
            services,
            severities,
            messages,
            traces,
            spans,
            sources,
            loggers,
            functions,
            hosts,
            log_types,
            attributes,
            strict=True,
        )
    ]
    for i in failed:
        records[i]["attributes"]["timestamp_raw"] = str(raw_timestamps[i])[:MAX_FIELD_CHARS]
    return records


class _NotColumnar(Exception):
    """A group turned out not to fit the columnar path halfway through."""


class Normalizer:
    """The normalize stage: raw events in, canonical log records out, one for one."""

    name = "normalize"

    def __call__(self, batch: list[dict[str, Any]], context: BatchContext) -> list[dict[str, Any]]:
        defaults = context.defaults
        template = _template(context.project, context.observed_ns, defaults)
        out: list[Any] = [None] * len(batch)
        groups: dict[tuple[str, ...], list[int]] = {}
        for index, raw in enumerate(batch):
            keys = tuple(raw) if raw.__class__ is dict and "attributes" not in raw else ()
            groups.setdefault(keys, []).append(index)
        for keys, indices in groups.items():
            if keys and len(indices) >= _COLUMNAR_MIN_GROUP:
                try:
                    records = _normalize_group([batch[i] for i in indices], keys, template)
                except (_NotColumnar, TypeError, ValueError, AttributeError):
                    records = None  # the per-event path below handles (and marks) anything odd
                if records is not None:
                    for i, record in zip(indices, records, strict=True):
                        out[i] = record
                    continue
            for i in indices:
                raw = batch[i]
                try:
                    out[i] = _normalize(raw, template, defaults)
                except Exception as exc:  # one bad event must not cost the batch
                    record = _fallback_record(raw, context)
                    mark_error(record, self.name, exc)
                    out[i] = record
        return out
