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
import calendar
import functools
import itertools
import json
import operator
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import numpy as np
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


#: The times storage can hold (ClickHouse's DateTime64(9): 1900-01-01 to 2262-04-11). A time
#: outside is a time that does not parse: the line keeps its arrival time and the text as
#: ``timestamp_raw``. Let through, "9999-12-31" failed the whole block's insert, again at every
#: retry and WAL replay, and every line sent after it waited behind it for ever.
MIN_TIMESTAMP_NS: Final = -2_208_988_800 * 10**9
MAX_TIMESTAMP_NS: Final = 2**63 - 1


def parse_timestamp(value: Any, observed_ns: int) -> int | None:
    """Turn any supported timestamp into UTC ns since the epoch, or None when unparseable
    (which includes a time storage cannot hold, see :data:`MAX_TIMESTAMP_NS`).

    ``observed_ns`` is only used to pick the year of year-less syslog timestamps.
    """
    try:
        ns = _parse_timestamp(value, observed_ns)
    except (OverflowError, ValueError):  # a float beyond int, a year datetime cannot hold
        return None
    if ns is None or not MIN_TIMESTAMP_NS <= ns <= MAX_TIMESTAMP_NS:
        return None
    return ns


def _to_ns(value: Any, observed_ns: int) -> int | None:
    """:func:`parse_timestamp`, with the ISO fast path tried first (what loggers write)."""
    if value.__class__ is str:
        ns = _iso_to_ns(value)
        if ns is not None and MIN_TIMESTAMP_NS <= ns <= MAX_TIMESTAMP_NS:
            return ns
    return parse_timestamp(value, observed_ns)


def _parse_timestamp(value: Any, observed_ns: int) -> int | None:
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


_PLACEHOLDER_CHARS: Final = max(map(len, _ID_PLACEHOLDERS))


def _may_hold_placeholders(column: Sequence[str]) -> bool:
    """False when no id of the column can be a placeholder (``none``, ``-``...): all are
    longer than any placeholder and hold no blank that strip() could remove (one C-level
    pass each, where checking every distinct id costs a Python call per request id)."""
    if min(map(len, column)) <= _PLACEHOLDER_CHARS:
        return True
    joined = "\n".join(column)
    words = joined.split()  # split() and strip() agree on what a blank is
    return len(words) != len(column) or sum(map(len, words)) != len(joined) - len(column) + 1


def _has_empty_line(text: str) -> bool:
    return not text or text[0] == "\n" or text[-1] == "\n" or "\n\n" in text


def _clean_id_column(column: Sequence[Any], cls: type) -> Sequence[str]:
    """``_clean_id`` over a column of ids that are not placeholders.

    Ids are mostly distinct (one per request), so instead of calling ``_clean_id`` per value
    the column is first tested as a whole: ASCII letters and digits without capitals, at most
    64 characters, not all zeros, come out as they are.
    """
    if cls is str:
        joined = "\n".join(column)
        if (
            joined.isascii()
            and joined.count("\n") == len(column) - 1  # no id holds a newline itself
            and joined.replace("\n", "").isalnum()
            and joined.lower() == joined  # no capitals (ASCII, so lower() only maps A-Z)
            and max(map(len, column)) <= 64
            and not _has_empty_line(joined.replace("0", ""))  # no id is all zeros
        ):
            return column
    cleaned = {v: c for v in set(column) if (c := _clean_id(v)) != v or c.__class__ is not str}
    return list(map(cleaned.get, column, column)) if cleaned else column


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
    if timestamp.__class__ is not int or not 0 < timestamp <= MAX_TIMESTAMP_NS:
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
            parsed = _to_ns(value, observed_ns)
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


# ---------------------------------------------------------------- columnar (block) path
#
# A JSON formatter emits the same keys in the same order on every line, so a batch is a few
# shapes, each many events long. For each shape the decisions of the per-event path (which
# alias wins a slot, what becomes an attribute, in which order) are taken once per column
# instead of once per event, and the values are moved with comprehensions and zip(). The
# per-event path stays the definition: anything this path does not model exactly (truncation,
# resources, aliases inside nested objects, odd value types) sends those events to it, and a
# property test checks that both paths build the same records, attribute order included.

#: Shapes with fewer events than this take the per-event path: analysing a shape costs about
#: as much as normalizing a few events one by one.
MIN_BLOCK: Final = 8
_CHUNK_ROWS: Final = 2048
_NONE_TYPE: Final = type(None)
_MAX_KEY_CHARS: Final = 256
#: A block's text columns: the record fields that hold one string per event.
_BLOCK_TEXT: Final = (
    "service",
    "message",
    "trace_id",
    "span_id",
    "source",
    "logger",
    "function",
    "host",
    "log_type",
)


class _Split(Exception):
    """The events of a shape differ in a way one block cannot express; ``labels`` sorts them."""

    def __init__(self, labels: Sequence[Any]) -> None:
        super().__init__()
        self.labels = labels


class _PerEvent(Exception):
    """The shape holds something only the per-event path handles (a cut, a resource...)."""


@dataclass(eq=False)
class Block:
    """Normalized events of one shape, as columns: what the columnar stages work on.

    ``positions`` says where each row sits in the batch. ``attributes`` maps each attribute
    key, in the order the per-event path would insert it, to its column and the one class of
    its values (str, int, float or bool), so the storage block can be built per column.
    ``timestamp`` is a list or an int64 ndarray, or :class:`PendingIso` until
    :func:`resolve_timestamps` has parsed it.
    """

    positions: list[int]
    timestamp: Sequence[int] | PendingIso
    severity_text: Sequence[str]
    severity_number: Sequence[int]
    text: dict[str, Sequence[str]]
    attributes: dict[str, tuple[Sequence[Any], type]]
    #: Set by the redact step: attribute keys whose strings, and whether the messages, still
    #: go through the text rules (done for the whole batch at once, when the block is built).
    pending_text: frozenset[str] = frozenset()
    pending_message: bool = False

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, rows: Sequence[int]) -> Block:
        """The block restricted to ``rows`` (indices into this block), e.g. one part of a split."""
        timestamp = self.timestamp
        return Block(
            [self.positions[i] for i in rows],
            PendingIso(_pick(timestamp.column, rows))
            if isinstance(timestamp, PendingIso)
            else _pick(timestamp, rows),
            _pick(self.severity_text, rows),
            _pick(self.severity_number, rows),
            {name: _pick(column, rows) for name, column in self.text.items()},
            {key: (_pick(column, rows), cls) for key, (column, cls) in self.attributes.items()},
            self.pending_text,
            self.pending_message,
        )

    def split(self, labels: Sequence[Any]) -> list[Block]:
        """One block per distinct label, rows in order (e.g. by the class a column's values got)."""
        parts: dict[Any, list[int]] = {}
        for row, label in enumerate(labels):
            parts.setdefault(label, []).append(row)
        if len(parts) == 1:
            return [self]
        return [self.take(rows) for rows in parts.values()]

    def to_records(self, project: str, observed_ns: int) -> list[LogRecord]:
        """The records the per-event path would have built for these events."""
        n = len(self.positions)
        assert not isinstance(self.timestamp, PendingIso), "resolve_timestamps first"
        timestamps = self.timestamp.tolist() if isinstance(self.timestamp, np.ndarray) else self.timestamp
        keys = list(self.attributes)
        if keys:
            columns = [column for column, _ in self.attributes.values()]
            attributes = [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
        else:
            attributes = [{} for _ in range(n)]
        text = self.text
        # A dict display builds a record faster than dict(zip(names, row)).
        return [
            {
                "timestamp": timestamp,
                "observed_timestamp": observed_ns,
                "project": project,
                "service": service,
                "severity_text": severity_text,
                "severity_number": severity_number,
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
            for timestamp, severity_text, severity_number, service, message, trace_id, span_id, source, logger, function, host, log_type, attrs in zip(
                timestamps,
                self.severity_text,
                self.severity_number,
                *(text[name] for name in _BLOCK_TEXT),
                attributes,
                strict=True,
            )
        ]


class PendingIso:
    """A block's timestamps as sent, ISO 8601 strings: parsed for all blocks at once.

    Parsing a column with numpy costs a fixed ~0.3 ms however short it is, so each block
    only keeps its strings and :func:`resolve_timestamps` parses every block's together.
    """

    __slots__ = ("column",)

    def __init__(self, column: Sequence[str]) -> None:
        self.column = column


def resolve_timestamps(blocks: list[Block], observed_ns: int) -> tuple[list[Block], list[int]]:
    """Parse the blocks' pending timestamps in one pass per layout.

    Returns the blocks (rows whose timestamp does not parse removed: the per-event path
    records the original under ``timestamp_raw``) and the positions of those rows.
    """
    by_layout: dict[Any, list[Block]] = {}
    for block in blocks:
        if isinstance(block.timestamp, PendingIso):
            first = block.timestamp.column[0]
            by_layout.setdefault((len(first), _iso_layout(first)), []).append(block)
    if not by_layout:
        return blocks, []
    slow: list[int] = []
    replaced: dict[int, Block | None] = {}
    for group in by_layout.values():
        column = list(itertools.chain.from_iterable(b.timestamp.column for b in group))  # type: ignore[union-attr]
        values, failed = _timestamp_column(column, str, observed_ns)
        bad = np.zeros(len(column), dtype=bool)
        bad[failed] = True
        start = 0
        for block in group:
            size = len(block)
            block.timestamp = values[start : start + size]
            if failed:
                rows = np.flatnonzero(bad[start : start + size]).tolist()
                if rows:
                    slow.extend(block.positions[r] for r in rows)
                    keep = np.flatnonzero(~bad[start : start + size]).tolist()
                    replaced[id(block)] = block.take(keep) if keep else None
            start += size
    if not replaced:
        return blocks, slow
    kept = [replaced.get(id(b), b) for b in blocks]
    return [b for b in kept if b is not None], slow


def _pick(column: Sequence[Any], rows: Sequence[int]) -> Sequence[Any]:
    if isinstance(column, np.ndarray):
        return column[np.asarray(rows, dtype=np.intp)]
    return [column[i] for i in rows]


def normalize_rows(
    rows: list[dict[str, Any]], positions: list[int], template: dict[str, Any], slow: list[int]
) -> Iterator[Block]:
    """Normalize events that share one key tuple into blocks, yielded as they are made, and
    append to ``slow`` the positions left for the per-event path.

    Events whose values differ in class, or whose nested objects differ in shape, are split
    into several blocks; events this path does not model exactly are left over. Large groups
    are cut into blocks of at most ``_CHUNK_ROWS`` events, so that a caller that finishes
    each block before asking for the next works on data that is still in the CPU cache.
    """
    # (rows, positions, whether their nested objects are known to share their keys)
    pending = [(rows, positions, False)]
    while pending:
        rows, positions, same_shape = pending.pop()
        if len(rows) < MIN_BLOCK:
            slow.extend(positions)
            continue
        try:
            if not same_shape:
                _split_on_shapes(rows)
            if len(rows) > _CHUNK_ROWS:
                # Work on cache-sized pieces: each block makes several passes over its values,
                # and a piece's values stay in cache between them (a third faster than one
                # block of 10,000 events).
                pending.extend(
                    (rows[i : i + _CHUNK_ROWS], positions[i : i + _CHUNK_ROWS], True)
                    for i in range(0, len(rows), _CHUNK_ROWS)
                )
                continue
            block, odd = _block_of(rows, positions, template)
        except _Split as split:
            pending.extend(
                (part_rows, part_positions, False)
                for part_rows, part_positions in _partition(rows, positions, split.labels)
            )
            continue
        except Exception:  # _PerEvent, or anything odd: the per-event path defines what happens
            slow.extend(positions)
            continue
        if odd:
            slow.extend(positions[i] for i in odd)
            keep = [i for i in range(len(rows)) if i not in odd]
            pending.append(([rows[i] for i in keep], [positions[i] for i in keep], True))
            continue
        yield block  # type: ignore[misc]


def _one_class(column: Sequence[Any]) -> type:
    """The class every value of the column has; raises _Split when there are several."""
    classes = set(map(type, column))
    if len(classes) == 1:
        return classes.pop()
    raise _Split(list(map(type, column)))


def _storable(column: Sequence[Any], cls: type, odd: set[int]) -> bool:
    """Whether ``_put`` keeps the column's values as they are (False: it drops them, None).

    Rows whose value ``_put`` would change (a string to cut, an int beyond 64 bits) go to
    ``odd``; classes it converts (lists, bytes...) send the whole shape to the per-event path.
    """
    if cls is str:
        if max(map(len, column)) > MAX_ATTRIBUTE_CHARS:
            odd.update(i for i, v in enumerate(column) if len(v) > MAX_ATTRIBUTE_CHARS)
        return True
    if cls is int:
        if min(column) < -_INT64_MAX - 1 or max(column) > _INT64_MAX:
            odd.update(i for i, v in enumerate(column) if not -_INT64_MAX - 1 <= v <= _INT64_MAX)
        return True
    if cls is float or cls is bool:
        return True
    if cls is _NONE_TYPE:
        return False
    raise _PerEvent


def _flatten_column(
    prefix: str,
    column: Sequence[Any],
    depth: int,
    out: list[tuple[str, Sequence[Any], type]],
    same_shape: bool = False,
) -> None:
    """Column-wise ``_flatten_into`` for a column of dicts; raises _Split when their keys
    differ (unless the caller knows they do not: ``same_shape``)."""
    if same_shape:
        first = tuple(column[0])
    else:
        shapes = list(map(tuple, column))
        first = shapes[0]
        if shapes.count(first) != len(shapes):
            raise _Split(shapes)
    if not first:
        return
    for key, inner in zip(first, _columns(column, first), strict=True):
        name = f"{prefix}.{key}" if prefix else str(key)
        cls = _one_class(inner)
        if cls is dict:
            if depth >= MAX_DEPTH:
                raise _PerEvent
            _flatten_column(name, inner, depth + 1, out)
        elif cls not in _SCALARS and isinstance(inner[0], Mapping):
            raise _PerEvent
        else:
            out.append((name, inner, cls))


def _columns(rows: Sequence[dict[Any, Any]], keys: tuple[Any, ...]) -> list[Sequence[Any]]:
    """The rows' values as one sequence per key (every row has exactly ``keys``, in order)."""
    if len(keys) == 1:
        return [list(map(operator.itemgetter(keys[0]), rows))]
    # One visit per row (itemgetter of all keys), then a transpose of the tuples: faster than
    # a pass per key over dicts scattered in memory.
    return list(zip(*map(operator.itemgetter(*keys), rows), strict=True))


def _partition(
    rows: list[dict[str, Any]], positions: list[int], labels: Sequence[Any]
) -> list[tuple[list[dict[str, Any]], list[int]]]:
    """The rows (and positions) grouped by label, each group in order.

    Labels become small ints (one C-level map over a dict of the distinct labels) and a
    stable argsort orders rows by group, so no Python code runs per row.
    """
    ids = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    codes = np.fromiter(map(ids.__getitem__, labels), dtype=np.int64, count=len(labels))
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    parts = []
    start = 0
    for size in counts.tolist():
        picked = order[start : start + size].tolist()
        start += size
        if size == 1:
            parts.append(([rows[picked[0]]], [positions[picked[0]]]))
        else:
            take = operator.itemgetter(*picked)
            parts.append((list(take(rows)), list(take(positions))))
    return parts


def _split_on_shapes(rows: Sequence[dict[str, Any]]) -> None:
    """Raise _Split when the rows' nested objects differ in keys (or are not all objects).

    Nested objects are where the events of one key tuple differ (a "context" per message
    kind), so this runs before the other columns are taken apart.
    """
    shapes = [_nested_shapes(rows, key) for key, value in rows[0].items() if value.__class__ is dict]
    if shapes:
        labels = shapes[0] if len(shapes) == 1 else list(zip(*shapes, strict=True))
        if labels.count(labels[0]) != len(labels):
            raise _Split(labels)


def _nested_shapes(rows: Sequence[dict[str, Any]], key: str) -> list[Any]:
    """Per row, the key tuple of ``row[key]`` when it is a dict, else its class."""
    column = list(map(operator.itemgetter(key), rows))
    if set(map(type, column)) == {dict}:
        return list(map(tuple, column))
    return list(map(type, column))


def _flags_or_split(flags: list[bool]) -> bool:
    """The one value of ``flags``; raises _Split when rows disagree."""
    if all(flags):
        return True
    if any(flags):
        raise _Split(flags)
    return False


def _block_of(
    rows: list[dict[str, Any]], positions: list[int], template: dict[str, Any]
) -> tuple[Block | None, set[int]]:
    """One shape (same keys, classes and nested keys in every row) as a block, mirroring
    ``_normalize`` step by step. Returns (None, rows) when some rows need the per-event path.
    """
    n = len(rows)
    keys = tuple(rows[0])
    columns = _columns(rows, keys)
    attrs: dict[str, tuple[Sequence[Any], type]] = {}
    best: dict[str, tuple[int, str, Sequence[Any], type]] = {}
    nested: list[tuple[str, Sequence[Any]]] = []
    odd: set[int] = set()

    def put(key: str, column: Sequence[Any], cls: type) -> None:
        if _storable(column, cls, odd):
            if len(key) > _MAX_KEY_CHARS:
                raise _PerEvent
            attrs[key] = (column, cls)

    for key, column in zip(keys, columns, strict=True):
        cls = _one_class(column)
        alias = _ALIASES.get(key)
        if cls is dict:
            if key in ("resource", "attributes") or (alias is not None and key in _STRUCTURED_BODY_KEYS):
                raise _PerEvent
            nested.append((key, column))
            continue
        if cls is _NONE_TYPE:
            continue
        if alias is None:
            put(key, column, cls)
            continue
        slot, rank = alias
        if slot in _TEXT_SLOTS:
            valid = cls is str
        elif slot == "message":
            if cls is not str:
                raise _PerEvent
            valid = True
        elif slot == "timestamp":
            valid = True
        elif slot == "trace_id" or slot == "span_id":
            if cls is str:
                if _may_hold_placeholders(column):
                    blank = {
                        v
                        for v in set(column)
                        if v in _ID_PLACEHOLDERS or v.strip().lower() in _ID_PLACEHOLDERS
                    }
                    if blank and _flags_or_split([v in blank for v in column]):
                        continue  # a placeholder: the per-event path drops it
                valid = True
            else:
                valid = cls is int
        elif slot == "lineno":
            if cls is str:
                if not _flags_or_split([v.isdigit() for v in column]):
                    raise _PerEvent  # text under "line": a message candidate, per event
                valid = True
            else:
                valid = cls is int
        elif slot == "log_type":
            valid = cls is str and _flags_or_split([v in _LOG_TYPES for v in column])
        elif slot == "level":
            valid = cls is str or cls is int
        else:  # levelno, severity_number
            valid = cls is int
        if not valid:
            put(key, column, cls)
            continue
        previous = best.get(slot)
        if previous is None:
            best[slot] = (rank, key, column, cls)
        elif rank < previous[0]:
            best[slot] = (rank, key, column, cls)
            put(previous[1], previous[2], previous[3])
        else:
            put(key, column, cls)

    for key, column in nested:
        flat: list[tuple[str, Sequence[Any], type]] = []
        _flatten_column(key, column, 1, flat, same_shape=True)  # normalize_rows split on shapes
        for name, inner, cls in flat:
            if name in _ALIASES:
                if cls is _NONE_TYPE:
                    continue
                raise _PerEvent  # ECS-style log.level, service.name...: per event
            put(name, inner, cls)
    if len(attrs) > MAX_ATTRIBUTES:
        raise _PerEvent

    observed_ns: int = template["observed_timestamp"]
    text: dict[str, Sequence[str]] = {}
    for slot in _BLOCK_TEXT:
        picked = best.get(slot)
        if picked is None:
            text[slot] = [template[slot]] * n
        elif slot == "trace_id" or slot == "span_id":
            text[slot] = _clean_id_column(picked[2], picked[3])
        else:
            column = picked[2]
            limit = MAX_MESSAGE_CHARS if slot == "message" else MAX_FIELD_CHARS
            if max(map(len, column)) > limit:
                odd.update(i for i, v in enumerate(column) if len(v) > limit)
            text[slot] = column

    picked = best.get("timestamp")
    timestamps: Sequence[int] | PendingIso
    if picked is None:
        timestamps = [observed_ns] * n
    elif picked[3] is str and _looks_iso(picked[2][0]):
        timestamps = PendingIso(picked[2])  # parsed with every block's, see resolve_timestamps
    else:
        timestamps, failed = _timestamp_column(picked[2], picked[3], observed_ns)
        odd.update(failed)

    level, levelno, number = best.get("level"), best.get("levelno"), best.get("severity_number")
    if level is None and levelno is None and number is None:
        severity_text: Sequence[str] = [template["severity_text"]] * n
        severity_number: Sequence[int] = [template["severity_number"]] * n
    else:
        if levelno is None and number is None and level is not None:
            combos: Sequence[Any] = level[2]
            known = {v: _severity(v, None, None) for v in set(combos)}
        else:
            nothing = (None,) * n
            combos = list(
                zip(
                    level[2] if level else nothing,
                    levelno[2] if levelno else nothing,
                    number[2] if number else nothing,
                    strict=True,
                )
            )
            known = {combo: _severity(*combo) for combo in set(combos)}
        names = {v: pair[0] for v, pair in known.items()}
        numbers = {v: pair[1] for v, pair in known.items()}
        severity_text = list(map(names.__getitem__, combos))
        severity_number = list(map(numbers.__getitem__, combos))

    file_pick, line_pick = best.get("file"), best.get("lineno")
    if file_pick is not None or line_pick is not None:
        if "source" in best or file_pick is None:
            for extra in (file_pick, line_pick):
                if extra is not None:
                    if len(attrs) >= MAX_ATTRIBUTES and extra[1] not in attrs:
                        raise _PerEvent
                    put(extra[1], extra[2], extra[3])
        else:
            if line_pick is not None:
                sources = [f"{f}:{line}" for f, line in zip(file_pick[2], line_pick[2], strict=True)]
            else:
                sources = list(file_pick[2])
            if max(map(len, sources)) > MAX_FIELD_CHARS:
                odd.update(i for i, v in enumerate(sources) if len(v) > MAX_FIELD_CHARS)
            text["source"] = sources

    if "log_type" not in best and not template["log_type"]:
        if "http.status_code" in attrs and "http.method" in attrs:
            text["log_type"] = ["web"] * n
        else:
            loggers, services = text["logger"], text["service"]
            if loggers.count(loggers[0]) == n and services.count(services[0]) == n:
                text["log_type"] = [_infer_log_type(loggers[0], services[0], {})] * n
            else:
                pairs = list(zip(loggers, services, strict=True))
                inferred = {pair: _infer_log_type(pair[0], pair[1], {}) for pair in set(pairs)}
                text["log_type"] = list(map(inferred.__getitem__, pairs))
    if odd:
        return None, odd
    return Block(positions, timestamps, severity_text, severity_number, text, attrs), odd


# ---------------------------------------------------------------- timestamps, column-wise

#: Years whose ns since the epoch fit in int64 with any offset; others take the exact path.
_FAST_YEARS: Final = (1900, 2261)
#: Ranges of the fields _iso_fixed_layout reads (year, month, day, hour, minute, second,
#: fraction in ns, offset hours, offset minutes): datetime's, and int64 ns for the year.
_FIELD_LOW: Final = np.array([_FAST_YEARS[0], 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64)
_FIELD_HIGH: Final = np.array(
    [_FAST_YEARS[1], 12, 31, 23, 59, 59, 999_999_999, 99, 99, 86_399, 99 * 3_600 + 99 * 60], dtype=np.int64
)
#: Seconds per unit of the fields that the sums (second of day, offset) count.
_SECONDS: Final = {3: 3_600, 4: 60, 5: 1, 7: 3_600, 8: 60}


def _timestamp_column(column: Sequence[Any], cls: type, observed_ns: int) -> tuple[Sequence[int], list[int]]:
    """Parse a timestamp column as the per-event path does; also return the rows that failed.

    ISO 8601 columns with one fixed layout (what a JSON formatter writes) are parsed with
    numpy in one pass; other rows are parsed once per distinct value.
    """
    n = len(column)
    out: list[Any]
    if cls is str:
        fast = _iso_fixed_layout(column)
        if fast is None and _looks_iso(column[0]):
            fast = _iso_fixed_layout_mostly(column)
        if fast is not None:
            values, ok = fast
            if ok.all():
                return values, []
            out = values.tolist()
            rows = np.flatnonzero(~ok).tolist()
        else:
            out = [None] * n
            rows = range(n)  # type: ignore[assignment]
    elif cls is int or cls is float:
        out = [None] * n
        rows = range(n)  # type: ignore[assignment]
    else:
        return [observed_ns] * n, list(range(n))
    known: dict[Any, int | None] = {}
    failed: list[int] = []
    for i in rows:
        value = column[i]
        if value in known:
            parsed = known[value]
        else:
            try:
                parsed = _to_ns(value, observed_ns)
            except Exception:  # e.g. int("²") on an odd offset: the event path marks it
                parsed = None
            known[value] = parsed
        if parsed is None:
            failed.append(i)
            out[i] = observed_ns
        else:
            out[i] = parsed
    return out, failed


def _looks_iso(text: str) -> bool:
    """Whether ``text`` has a layout _iso_fixed_layout parses (its characters unchecked)."""
    return 19 <= len(text) <= 35 and _iso_layout(text) is not None


def _iso_fixed_layout_mostly(column: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """_iso_fixed_layout over the rows as long as the first (a few others, not ok)."""
    lengths = np.fromiter(map(len, column), dtype=np.int64, count=len(column))
    same = np.flatnonzero(lengths == lengths[0])
    if len(same) < len(column) // 2:
        return None
    fast = _iso_fixed_layout([column[i] for i in same.tolist()])
    if fast is None:
        return None
    values = np.zeros(len(column), dtype=np.int64)
    ok = np.zeros(len(column), dtype=bool)
    values[same], ok[same] = fast
    return values, ok


def _iso_layout(text: str) -> tuple[int, int, str] | None:
    """(fraction digits, zone length, zone kind) of ``YYYY-MM-DDTHH:MM:SS[.f][zone]``, or None."""
    tail = text[19:]
    digits = 0
    if tail[:1] in (".", ","):
        while digits < len(tail) - 1 and tail[1 + digits].isdigit():
            digits += 1
        if not 1 <= digits <= 9:
            return None
        tail = tail[1 + digits :]
    if tail in ("", "Z", "z"):
        return digits, len(tail), tail.upper()
    if len(tail) == 6 and tail[0] in "+-" and tail[3] == ":":
        return digits, 6, "+HH:MM"
    if len(tail) == 5 and tail[0] in "+-":
        return digits, 5, "+HHMM"
    return None


_ISO_SLICE: Final = 2048  # rows per numpy pass: the working arrays stay in the CPU cache


def _iso_fixed_layout(column: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorized ``_iso_to_ns`` for a column whose strings all have one length and layout.

    Returns (ns, ok): rows where ``ok`` is False (another layout, a bad date, a year whose ns
    do not fit in int64) must take ``_iso_to_ns``; on the others the result is the same.
    """
    if len(column) <= _ISO_SLICE:
        return _iso_fixed_layout_slice(column)
    parts = []
    for start in range(0, len(column), _ISO_SLICE):
        part = _iso_fixed_layout_slice(column[start : start + _ISO_SLICE])
        if part is None or (parts and part[0].dtype != parts[0][0].dtype):
            return None
        parts.append(part)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _iso_fixed_layout_slice(column: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    first = column[0]
    size = len(first)
    if not 19 <= size <= 35:
        return None
    layout = _iso_layout(first)
    if layout is None:
        return None
    # NUL after each string: the grid's last column must be all NUL, which (as no layout
    # allows a NUL elsewhere) proves every string has exactly ``size`` characters.
    joined = "\x00".join(column) + "\x00"
    n = len(column)
    if len(joined) != n * (size + 1) or not joined.isascii():
        return None
    low, high, choices, weights, sign_at = _iso_plan(size, *layout)
    grid = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(n, size + 1)
    if grid[:, size].any():
        return None
    grid = grid[:, :size]
    ok = ((grid >= low) & (grid <= high)).all(axis=1)  # digits and fixed characters in place
    for position, table in choices:  # "T" or "t" or " "; "." or ","; "Z" or "z"; "+" or "-"
        ok &= table[grid[:, position]]
    # year, month, day, hour, minute, second, fraction (ns), offset hours, offset minutes,
    # second of the day, offset seconds: each a weighted sum of digits (exact in float64).
    digit_columns, weights = weights
    fields = ((grid[:, digit_columns].astype(np.float64) - 48.0) @ weights).astype(np.int64)
    ok &= ((fields >= _FIELD_LOW) & (fields <= _FIELD_HIGH)).all(axis=1)
    year, month, day = fields[:, 0], fields[:, 1], fields[:, 2]
    # Day number and length of each month of the years whose ns fit in int64, from a table.
    month_index = np.clip((year - _FAST_YEARS[0]) * 12 + month - 1, 0, len(_MONTH_FIRST_DAY) - 1)
    ok &= day <= _MONTH_DAYS[month_index]
    seconds = (_MONTH_FIRST_DAY[month_index] + day - 1) * 86_400 + fields[:, 9]
    if sign_at >= 0:
        seconds -= np.where(grid[:, sign_at] == 45, -fields[:, 10], fields[:, 10])  # 45: "-"
    ns = seconds * _NS_PER_S + fields[:, 6]
    ok &= ns >= MIN_TIMESTAMP_NS  # before 1900 (an offset can take 1900-01-01 there): the slow path refuses it
    return ns, ok


def _month_tables() -> tuple[np.ndarray, np.ndarray]:
    """Days since the epoch of the first of each month of _FAST_YEARS, and each month's length."""
    first, lengths = [], []
    epoch = date(1970, 1, 1).toordinal()
    for year in range(_FAST_YEARS[0], _FAST_YEARS[1] + 1):
        for month in range(1, 13):
            first.append(date(year, month, 1).toordinal() - epoch)
            lengths.append(calendar.monthrange(year, month)[1])
    return np.array(first, dtype=np.int64), np.array(lengths, dtype=np.int64)


_MONTH_FIRST_DAY, _MONTH_DAYS = _month_tables()


@functools.lru_cache(maxsize=64)
def _iso_plan(
    size: int, fraction_digits: int, zone_size: int, zone: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]], tuple[np.ndarray, np.ndarray], int]:
    """For one layout: the byte range each position allows, lookup tables for positions
    that allow a choice, the digit positions and their weight in each field (the fraction
    already scaled to ns), and where the offset's sign is (-1: no offset)."""
    low = np.zeros(size, dtype=np.uint8)
    high = np.full(size, 255, dtype=np.uint8)
    choices: list[tuple[int, np.ndarray]] = []
    weights = np.zeros((size, 11), dtype=np.float64)

    def digits(positions: Sequence[int], field: int, scale: int = 1, total: int = -1) -> None:
        for i, position in enumerate(positions):
            low[position], high[position] = 48, 57
            weights[position, field] = 10 ** (len(positions) - 1 - i) * scale
            if total >= 0:  # also counted, in seconds, in a sum field (second of day, offset)
                weights[position, total] = 10 ** (len(positions) - 1 - i) * _SECONDS[field]

    def choice(position: int, chars: bytes) -> None:
        table = np.zeros(256, dtype=bool)
        table[list(chars)] = True
        choices.append((position, table))

    for field, positions in enumerate(((0, 1, 2, 3), (5, 6), (8, 9), (11, 12), (14, 15), (17, 18))):
        digits(positions, field, total=9 if field >= 3 else -1)
    for position, char in ((4, b"-"), (7, b"-"), (13, b":"), (16, b":")):
        low[position] = high[position] = char[0]
    choice(10, b"Tt ")
    if fraction_digits:
        choice(19, b".,")
        digits(range(20, 20 + fraction_digits), 6, _FRACTION_SCALE[fraction_digits])
    sign_at = -1
    if zone == "Z":
        choice(size - 1, b"Zz")
    elif zone in ("+HH:MM", "+HHMM"):
        sign_at = size - zone_size
        choice(sign_at, b"+-")
        if zone == "+HH:MM":
            low[sign_at + 3] = high[sign_at + 3] = ord(":")
        digits((sign_at + 1, sign_at + 2), 7, total=10)
        digits((size - 2, size - 1), 8, total=10)
    digit_columns = np.flatnonzero(weights.any(axis=1))
    return low, high, choices, (digit_columns, weights[digit_columns]), sign_at


class Normalizer:
    """The normalize stage: raw events in, canonical log records out, one for one."""

    name = "normalize"

    def __call__(self, batch: list[dict[str, Any]], context: BatchContext) -> list[dict[str, Any]]:
        defaults = context.defaults
        template = _template(context.project, context.observed_ns, defaults)
        out: list[Any] = [None] * len(batch)
        blocks: list[Block] = []
        slow: list[int] = []
        for keys, indices in group_by_keys(batch).items():
            if keys and len(indices) >= MIN_BLOCK:
                blocks.extend(normalize_rows([batch[i] for i in indices], indices, template, slow))
            else:
                slow.extend(indices)
        blocks, failed = resolve_timestamps(blocks, context.observed_ns)
        for block in blocks:
            records = block.to_records(context.project, context.observed_ns)
            for i, record in zip(block.positions, records, strict=True):
                out[i] = record
        for i in itertools.chain(slow, failed):
            out[i] = self.normalize_event(batch[i], template, context)
        return out

    def normalize_event(self, raw: Any, template: dict[str, Any], context: BatchContext) -> LogRecord:
        """The per-event path, with the stage's error handling: never raises."""
        try:
            return _normalize(raw, template, context.defaults)
        except Exception as exc:  # one bad event must not cost the batch
            record = _fallback_record(raw, context)
            mark_error(record, self.name, exc)
            return record


def group_by_keys(batch: Sequence[Any]) -> dict[tuple[str, ...], list[int]]:
    """Positions of the events, by key tuple; ``()`` gathers what must go event by event
    (canonical records with ``attributes``, and anything that is not a dict).
    """
    if batch and set(map(type, batch)) == {dict}:
        shapes = list(map(tuple, batch))
        if shapes.count(shapes[0]) == len(shapes) and "attributes" not in shapes[0]:
            return {shapes[0]: list(range(len(batch)))}  # one formatter's lines: one shape
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, raw in enumerate(batch):
        keys = tuple(raw) if raw.__class__ is dict and "attributes" not in raw else ()
        groups.setdefault(keys, []).append(index)
    return groups
