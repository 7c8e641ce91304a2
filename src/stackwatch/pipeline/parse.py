"""Parse: turn an event whose body is a serialized line into structured fields.

An event is parsed when it is not already a canonical record (it has no ``attributes``
mapping) and its body, the first string among ``message``, ``line``, ``log``, ``msg``, is one
of these, tried in order. A canonical (OTLP) record is parsed too when it has a string body
and no severity at all: that is a line a shipper tailed from a file and sent as it was written
(the Collector's ``filelog`` receiver); its own attributes and resource are kept.

* **JSON** (the line starts with ``{``): its keys are merged into the event (they win over
  the envelope's, e.g. Docker's ``{"log": "{...}", "stream": ...}`` or a shipper's
  ``{"message": "{...}", "host": ...}``). When the JSON has no message-like key the original
  line stays the message, so full-text search still finds it.
* **Configured regexes** (``{"pattern": ..., "log_type": ...}``): named groups become fields
  (normalize then maps aliases such as ``level`` or ``ts``). A ``__`` in a group name becomes a
  dot (``http__status`` -> ``http.status``). Group values that are plain integers or decimals
  become numbers, so ``duration_ms:>500`` queries work. Without a ``message``/``msg`` group the
  whole line is the message.
* **nginx/Apache access logs** (common and combined formats, optionally followed by
  nginx's ``$request_time`` as a bare number or ``rt=``/``request_time=``), producing
  ``log_type`` "web" and these attributes:

  =======================  ==================================================
  ``client.ip``            ``$remote_addr``
  ``user.name``            ``$remote_user`` (absent when ``-``)
  ``http.method``          from the request line
  ``http.path``            the URL path, without the query string
  ``http.query``           the query string, when there is one
  ``http.protocol``        ``HTTP/1.1``...
  ``http.request``         the raw request line, only when it is not parseable
  ``http.status_code``     int
  ``http.response_size``   int bytes (0 for ``-``)
  ``http.referer``         absent when ``-``
  ``http.user_agent``      absent when ``-``
  ``http.request_time``    float seconds, when present
  =======================  ==================================================

  Severity comes from the status: 5xx ERROR, 4xx WARN, else INFO.
* **syslog** (RFC 5424, and RFC 3164 with a timestamp, with or without ``<PRI>``), by
  :func:`stackwatch.pipeline.syslog.match_syslog`, the parser the syslog listener uses too.

Events matching nothing pass through unchanged: normalize keeps their text as the message.

What the line says is merged over the event's other fields, with two exceptions that keep what
the event states explicitly: a time in the line that does not parse leaves the event's own
time, and the level an access or syslog line implies does not replace a level the event has.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

from stackwatch.model.logs import LOG_TYPES
from stackwatch.pipeline.normalize import _ALIASES, parse_timestamp
from stackwatch.pipeline.stage import BatchContext, mark_error
from stackwatch.pipeline.syslog import match_syslog

__all__ = [
    "ParseConfig",
    "Parser",
    "RegexRule",
    "parse_access_log_line",
]

_BODY_KEYS: Final = ("message", "line", "log", "msg")
_MESSAGE_KEYS: Final = frozenset({"message", "msg", "body", "@message", "log", "text", "event"})
#: The names normalize reads an event's time and level from (its aliases).
_TIME_KEYS: Final = frozenset(k for k, (slot, _) in _ALIASES.items() if slot == "timestamp")
_LEVEL_KEYS: Final = frozenset(k for k, (slot, _) in _ALIASES.items() if slot in ("level", "levelno", "severity_number"))
#: Regex groups kept as text even when they look numeric (a level "30", an id "0042").
_TEXT_GROUPS: Final = frozenset(
    {"message", "msg", "level", "lvl", "severity", "levelname", "trace_id", "span_id", "request_id",
     "host", "hostname", "service", "logger", "function", "source"}
)  # fmt: skip

_ACCESS = re.compile(
    r'(\S+) (\S+) (\S+|"[^"]*") \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+|-)'
    r'(?: "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)")?(.*)$',
    re.DOTALL,
)
#: Finds, in ``"\n" + "\n".join(bodies)``, every body that starts, after blanks, with ``{``,
#: ``<`` or a syslog time (at group 1): what JSON and syslog need. Access logs need ``] "``,
#: found with str.find. Python's own ``re``, so ``\s`` and ``\d`` mean what they mean to
#: parse_text; the leading literal lets the engine skip to each ``\n``.
_GATE = re.compile(r"\n\s*([{<]|[A-Z][a-z]{2} [ \d]\d |\d{4}-\d\d-\d\d[T ])")
_REQUEST_TIME = re.compile(r'(?:^|\s)(?:rt=|request_time=)?"?(\d+\.\d+)"?(?=\s|$)')
_REQUEST_LINE = re.compile(r"([A-Z][A-Z_-]{1,19}) (\S+)(?: (HTTP/[\d.]+))?$")
_INT = re.compile(r"-?(?:0|[1-9]\d{0,17})")
_DECIMAL = re.compile(r"-?\d{1,15}\.\d{1,15}")


@dataclass(frozen=True)
class RegexRule:
    """A user's plain-text format: a regex with named groups, and the log type of its lines."""

    pattern: re.Pattern[str]
    log_type: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegexRule:
        """Build from ``{"pattern": "...", "log_type": "..."}``; raises ValueError naming the problem."""
        if not isinstance(data, Mapping) or "pattern" not in data:
            raise ValueError(f"a regex rule needs a 'pattern', got {data!r}")
        unknown = sorted(set(data) - {"pattern", "log_type"})
        if unknown:
            raise ValueError(f"unknown regex rule setting(s) {unknown}")
        try:
            pattern = re.compile(str(data["pattern"]))
        except re.error as exc:
            raise ValueError(f"pattern {data['pattern']!r} is not a valid regex: {exc}") from None
        if not pattern.groupindex:
            raise ValueError(f"pattern {data['pattern']!r} has no named groups (?P<name>...)")
        log_type = data.get("log_type")
        if log_type is not None and log_type not in LOG_TYPES:
            raise ValueError(f"log_type {log_type!r} is not one of {list(LOG_TYPES)}")
        return cls(pattern, log_type)


@dataclass(frozen=True)
class ParseConfig:
    """Which formats the parse stage recognizes; all on by default."""

    json: bool = True
    access_log: bool = True
    syslog: bool = True
    regex: tuple[RegexRule, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ParseConfig:
        """Build from the ``parse`` section of the pipeline config; ValueError names the bad key."""
        if not data:
            return cls()
        unknown = sorted(set(data) - {"json", "access_log", "syslog", "regex"})
        if unknown:
            raise ValueError(f"unknown parse setting(s) {unknown}")
        for key in ("json", "access_log", "syslog"):
            if key in data and not isinstance(data[key], bool):
                raise ValueError(f"{key} must be true or false, not {data[key]!r}")
        rules = data.get("regex") or ()
        if not isinstance(rules, Iterable) or isinstance(rules, str | Mapping):
            raise ValueError(f"regex must be a list of rules, not {rules!r}")
        return cls(
            json=data.get("json", True),
            access_log=data.get("access_log", True),
            syslog=data.get("syslog", True),
            regex=tuple(r if isinstance(r, RegexRule) else RegexRule.from_dict(r) for r in rules),
        )


def _number_or_text(value: str) -> Any:
    if _INT.fullmatch(value):
        return int(value)
    if _DECIMAL.fullmatch(value):
        return float(value)
    return value


def parse_access_log_line(line: str) -> dict[str, Any] | None:
    """Parse an nginx/Apache common or combined log line into a raw event, or None."""
    match = _ACCESS.match(line)
    if match is None:
        return None
    ip, _ident, user, when, request, status, size, referer, agent, rest = match.groups()
    code = int(status)
    event: dict[str, Any] = {
        "message": line,
        "timestamp": when,
        "level": "ERROR" if code >= 500 else "WARN" if code >= 400 else "INFO",
        "log_type": "web",
        "client.ip": ip,
        "http.status_code": code,
        "http.response_size": 0 if size == "-" else int(size),
    }
    user = user.strip('"')
    if user and user != "-":
        event["user.name"] = user
    request_line = _REQUEST_LINE.match(request)
    if request_line is not None:
        method, target, protocol = request_line.groups()
        path, _, query = target.partition("?")
        event["http.method"] = method
        event["http.path"] = path
        if query:
            event["http.query"] = query
        if protocol:
            event["http.protocol"] = protocol
    elif request and request != "-":
        event["http.request"] = request
    if referer and referer != "-":
        event["http.referer"] = referer
    if agent and agent != "-":
        event["http.user_agent"] = agent
    if rest:
        timing = _REQUEST_TIME.search(rest)
        if timing is not None:
            event["http.request_time"] = float(timing.group(1))
    return event


#: Canonical fields that an OTLP record holds even when its sender set nothing.
_UNSET: Final = {"severity_number": (0, None), "severity_text": ("", None), "trace_id": ("",), "span_id": ("",)}


def _raw_line(event: dict[str, Any]) -> bool:
    """A canonical (OTLP) record that is a log line shipped as it was written.

    A log shipper that tails files (the OpenTelemetry Collector's ``filelog`` receiver without
    parsing operators, Fluent Bit's OpenTelemetry output) sends each line as a string body
    with no severity: the line's JSON, access-log or syslog fields are still to be read. A
    record with a severity was made by an SDK or a shipper that parsed it already, and is
    left as it is.
    """
    return (
        not event.get("severity_number")
        and not event.get("severity_text")
        and event.get("message").__class__ is str
        and bool(event["message"])
    )


def _loads_object(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if value.__class__ is dict else None


class Parser:
    """The parse stage (see the module docstring): raw events in, raw events out."""

    name = "parse"

    def __init__(self, config: ParseConfig | None = None) -> None:
        self.config = config or ParseConfig()
        self._json = self.config.json
        self._access = self.config.access_log
        self._syslog = self.config.syslog
        self._regex = self.config.regex

    def __call__(self, batch: list[dict[str, Any]], context: BatchContext) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        append = out.append
        parse = self.parse_event
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        message_keys = _MESSAGE_KEYS
        json_enabled = self._json
        for raw in batch:
            # Fast path for the most common event, a lone JSON line: {"message": "{...}"}.
            if json_enabled and len(raw) == 1:
                text = raw.get("message")
                if text.__class__ is str and text[:1] == "{":
                    try:
                        parsed = loads(text)
                    except decode_error:
                        parsed = None
                    if parsed.__class__ is dict and not message_keys.isdisjoint(parsed):
                        append(parsed)
                        continue
            try:
                append(parse(raw))
            except Exception as exc:  # leave the event as it came, marked
                mark_error(raw, self.name, exc)
                append(raw)
        return out

    def candidates(self, batch: Sequence[Any], groups: Mapping[tuple[str, ...], list[int]]) -> list[int]:
        """Positions of the events this stage may change, a superset found column-wise.

        ``groups`` holds the batch's positions by key tuple (``()``: events that are not
        plain dicts). Every other event either has no text body or a body that no format
        can match, which one regex pass over all bodies joined shows; those are returned
        unchanged by :meth:`parse_event`, so only the candidates need this stage.
        """
        out: list[int] = []
        bodies: list[str] = []
        where: list[int] = []
        for keys, indices in groups.items():
            if not keys:
                for i in indices:
                    event = batch[i]
                    if event.__class__ is not dict or "attributes" not in event:
                        out.append(i)
                    elif _raw_line(event):
                        bodies.append(event["message"])
                        where.append(i)
                continue
            if "attributes" in keys:
                continue  # canonical records are structured already
            remaining = indices
            for key in _BODY_KEYS:
                if key not in keys:
                    continue
                column = list(map(operator.itemgetter(key), map(batch.__getitem__, remaining)))
                if set(map(type, column)) == {str}:
                    bodies.extend(column)
                    where.extend(remaining)
                    break
                later: list[int] = []
                for i, value in zip(remaining, column, strict=True):
                    if value.__class__ is str:
                        bodies.append(value)
                        where.append(i)
                    else:
                        later.append(i)
                remaining = later
                if not remaining:
                    break
        if not bodies:
            return sorted(out)
        if self._regex:
            out.extend(where)  # users' patterns: no gate, every body is tried
            return sorted(out)
        joined = "\n" + "\n".join(bodies)
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        starts = np.cumsum(lengths + 1) - lengths  # where each body begins in ``joined``
        hits = [m.start(1) for m in _GATE.finditer(joined)]
        if self._access:
            found = joined.find('] "')
            while found >= 0:
                hits.append(found)
                found = joined.find('] "', found + 1)
        if hits:
            rows = np.unique(np.searchsorted(starts, hits, side="right") - 1)
            out.extend(where[r] for r in rows.tolist())
        return sorted(out)

    def parse_event(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Return the event with its body parsed into fields, or the event itself."""
        if "attributes" in raw:
            if not _raw_line(raw):
                return raw  # canonical records (OTLP) are structured already
            return self._parse_raw_line(raw)
        body_key = None
        text = ""
        for key in _BODY_KEYS:
            value = raw.get(key)
            if value.__class__ is str:
                body_key, text = key, value
                break
        if body_key is None or not text:
            return raw
        fields, kind = self._parse_text(text)
        if fields is None:
            return raw
        if len(raw) == 1:
            return fields
        # The event's own fields are explicit; what a line says of itself fills in around them.
        # A time in the line that does not parse (werkzeug's "[24/Nov/2026 05:54:26]", local and
        # without a zone) must not push the event's valid one out: it would land at arrival.
        # And a level an access or syslog line implies (5xx: ERROR) does not replace the level
        # the event states (a JSON line's own keys still do: Docker's envelope has none).
        if not _TIME_KEYS.isdisjoint(raw):
            for key in [k for k in fields if k in _TIME_KEYS]:
                if parse_timestamp(fields[key], time.time_ns()) is None:
                    del fields[key]
        if kind != "json" and not _LEVEL_KEYS.isdisjoint(raw):
            for key in [k for k in fields if k in _LEVEL_KEYS]:
                del fields[key]
        merged = {k: v for k, v in raw.items() if k != body_key}
        merged.update(fields)
        return merged

    def _parse_raw_line(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A canonical record that carries a shipped line: what the line says, over the record.

        The record's empty fields (no severity, no trace) are left out so that the line's own
        level and ids fill them; its attributes (``log.file.name``...) and resource stay.
        """
        fields, _kind = self._parse_text(raw["message"])
        if fields is None:
            return raw
        merged = {
            k: v for k, v in raw.items() if k != "message" and (k not in _UNSET or v not in _UNSET[k])
        }
        merged.update(fields)
        return merged

    def parse_text(self, text: str) -> dict[str, Any] | None:
        """Parse one line with the enabled formats; None when no format matches."""
        return self._parse_text(text)[0]

    def _parse_text(self, text: str) -> tuple[dict[str, Any] | None, str]:
        """(fields, the format that matched: json, regex, access or syslog)."""
        first = text[:1]
        if first.isspace():
            text = text.strip()
            first = text[:1]
        if first == "{" and self._json:
            parsed = _loads_object(text)
            if parsed is not None:
                if _MESSAGE_KEYS.isdisjoint(parsed):
                    parsed["message"] = text
                return parsed, "json"
        for rule in self._regex:
            match = rule.pattern.search(text)
            if match is not None:
                return self._from_regex(rule, match, text), "regex"
        if self._access and '] "' in text:
            event = parse_access_log_line(text)
            if event is not None:
                return event, "access"
        if self._syslog:
            event = match_syslog(text)
            if event is not None:
                body = event.get("message", "")
                if self._json and body[:1] == "{":
                    inner = _loads_object(body)
                    if inner is not None:
                        if _MESSAGE_KEYS.isdisjoint(inner):
                            inner["message"] = body
                        event.update(inner)
                return event, "syslog"
        return None, ""

    @staticmethod
    def _from_regex(rule: RegexRule, match: re.Match[str], text: str) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for name, value in match.groupdict().items():
            if value is None:
                continue
            event[name.replace("__", ".")] = value if name in _TEXT_GROUPS else _number_or_text(value)
        if "message" not in event and "msg" not in event:
            event["message"] = text
        if rule.log_type is not None:
            event.setdefault("log_type", rule.log_type)
        return event
