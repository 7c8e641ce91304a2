"""Fields of the log query language and the SQL each kind of field makes of a value.

A field name either names a column of the logs table (through the fixed alias table
:data:`COLUMN_FIELDS`) or is an attribute key. Only names from that table, and the fixed
column names written here, ever appear in SQL; every user value and every attribute key
goes through :class:`Params`.

Each field kind answers the same five questions (equals, pattern, exists, regex, compare),
so the tree walker in ``_logql_compile`` never looks at column types.
"""

from __future__ import annotations

from typing import Any, Final

from stackwatch.errors import QuerySyntaxError
from stackwatch.model import logs as _log_model
from stackwatch.model.logs import SEVERITIES
from stackwatch.query._logql_values import (
    ANY,
    Pattern,
    like_pattern,
    parse_number,
    parse_timestamp_ns,
    valid_regex,
    wildcard_regex,
)

# The model's table of level spellings: the one place that says which words are levels.
# Its public severity_from_text() maps unknown words to INFO, which is right for ingest
# but wrong for a search (``level:nonsense`` must find nothing, not every INFO line).
_SEVERITY_SPELLINGS: Final[dict[str, str]] = _log_model._ALIASES

__all__ = [
    "COLUMN_FIELDS",
    "FALSE",
    "TRUE",
    "Bound",
    "Field",
    "Params",
    "attribute_field",
    "message_field",
]

#: A comparison bound: operator (``>``, ``>=``, ``<``, ``<=``) and the bound's text.
Bound = tuple[str, str]

TRUE: Final = "1"
FALSE: Final = "0"


class Params:
    """Collects query parameters, naming them ``{prefix}{n}`` and reusing equal ones."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, Any] = {}
        self._names: dict[tuple[str, type, Any], str] = {}

    def add(self, value: Any, ch_type: str) -> str:
        """Register ``value`` and return its placeholder, e.g. ``{q0:String}``."""
        key = (ch_type, type(value), value)
        name = self._names.get(key)
        if name is None:
            name = f"{self.prefix}{len(self.values)}"
            self._names[key] = name
            self.values[name] = value
        return f"{{{name}:{ch_type}}}"

    def string(self, value: str) -> str:
        return self.add(value, "String")

    def number(self, value: float) -> str:
        return self.add(value, "Float64")


def _numeric_bounds(bounds: list[Bound], position: int, what: str) -> list[tuple[str, float]]:
    out = []
    for op, text in bounds:
        number = parse_number(text)
        if number is None:
            raise QuerySyntaxError(f"{what} compares with numbers, not {text!r}", position)
        out.append((op, number))
    return out


def _anchored(pattern: str, position: int) -> str:
    # Lucene regexes match the whole value; RE2 searches, so anchor. The pattern is checked
    # on its own first, so an unbalanced ')' cannot escape the wrapping group, and wrapped
    # too: an unterminated \Q quotes the closing ")$" away.
    valid_regex(pattern, position)
    return valid_regex(f"^(?:{pattern})$", position)


class Field:
    """A field kind; subclasses turn values into SQL boolean expressions."""

    label: str
    #: The columns of the logs table this field's SQL reads (see ``CompiledQuery.columns``).
    columns: frozenset[str] = frozenset()

    def equals(self, text: str, params: Params, position: int) -> str:
        raise QuerySyntaxError(f"{self.label} cannot be matched by value", position)

    def pattern(self, pattern: Pattern, params: Params, position: int) -> str:
        raise QuerySyntaxError(f"{self.label} does not support wildcards", position)

    def exists(self, params: Params) -> str:
        return TRUE

    def regex(self, pattern: str, params: Params, position: int) -> str:
        raise QuerySyntaxError(f"{self.label} does not support regular expressions", position)

    def compare(self, bounds: list[Bound], params: Params, position: int) -> str:
        raise QuerySyntaxError(f"{self.label} does not support ranges or comparisons", position)


class StringColumn(Field):
    """A keyword column: exact, case-sensitive match (``service``, ``host``, ``trace_id``...)."""

    def __init__(self, column: str, *, lowercase: bool = False) -> None:
        self.column = column
        self.label = column
        self.columns = frozenset({column})
        # trace and span ids are stored as lowercase hex; users paste them in either case.
        self.lowercase = lowercase

    def _norm(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def equals(self, text: str, params: Params, position: int) -> str:
        return f"{self.column} = {params.string(self._norm(text))}"

    def pattern(self, pattern: Pattern, params: Params, position: int) -> str:
        return f"{self.column} LIKE {params.string(self._norm(like_pattern(pattern)))}"

    def exists(self, params: Params) -> str:
        return f"{self.column} != ''"

    def regex(self, pattern: str, params: Params, position: int) -> str:
        return f"match({self.column}, {params.string(_anchored(pattern, position))})"

    def compare(self, bounds: list[Bound], params: Params, position: int) -> str:
        # Keyword ranges compare lexicographically, as Elasticsearch does on keyword fields.
        return " AND ".join(f"{self.column} {op} {params.string(self._norm(t))}" for op, t in bounds)


class MessageField(Field):
    """Full text: case-insensitive substring search on ``message``.

    ASCII needles use ``lower(message) LIKE`` so a tokenbf/ngrambf skip index on
    ``lower(message)`` can prune parts. ``lower()`` folds ASCII only, so needles with other
    letters fold both sides with ``lowerUTF8()`` instead (correct, not index-accelerated).
    """

    label = "message"
    columns = frozenset({"message"})

    def _contains(self, like: str, params: Params) -> str:
        if like.isascii():
            return f"lower(message) LIKE {params.string(like.lower())}"
        return f"lowerUTF8(message) LIKE lowerUTF8({params.string(like)})"

    def equals(self, text: str, params: Params, position: int) -> str:
        if text == "":
            return "message = ''"
        return self._contains(like_pattern([ANY, text, ANY]), params)

    def pattern(self, pattern: Pattern, params: Params, position: int) -> str:
        # Wildcards refine the substring search (``fail*`` finds "failed" anywhere in the
        # message), like a wildcard on an analysed text field in Kibana.
        return self._contains(like_pattern([ANY, *pattern, ANY]), params)

    def exists(self, params: Params) -> str:
        return "message != ''"

    def regex(self, pattern: str, params: Params, position: int) -> str:
        valid_regex(pattern, position)
        return f"match(message, {params.string('(?i)' + pattern)})"


class SeverityField(Field):
    """``level``: any spelling of a level (``warning``, ``Warn``, ``W``) finds that level."""

    label = "level"
    columns = frozenset({"severity_number", "severity_text"})

    @staticmethod
    def _level(text: str) -> str | None:
        return _SEVERITY_SPELLINGS.get(text.strip().upper())

    def equals(self, text: str, params: Params, position: int) -> str:
        level = self._level(text)
        if level is None:
            return FALSE
        # The level's band of OTel numbers (WARN is 13..16): severity_number is in the sort
        # key, so this prunes granules where a comparison on severity_text could not.
        first = SEVERITIES[level]
        return f"severity_number BETWEEN {params.number(first)} AND {params.number(first + 3)}"

    def pattern(self, pattern: Pattern, params: Params, position: int) -> str:
        regex = wildcard_regex(pattern)
        levels = [name for name in SEVERITIES if regex.fullmatch(name)]
        if not levels:
            return FALSE
        return f"severity_text IN ({', '.join(params.string(name) for name in levels)})"

    def exists(self, params: Params) -> str:
        return "severity_text != ''"

    def regex(self, pattern: str, params: Params, position: int) -> str:
        return f"match(severity_text, {params.string(_anchored(pattern, position))})"

    def compare(self, bounds: list[Bound], params: Params, position: int) -> str:
        # A level is a band of four OTel numbers (WARN is 13..16): ``>WARN`` starts above the
        # band, ``<=WARN`` includes all of it. Plain numbers compare with severity_number.
        parts = []
        for op, text in bounds:
            number = parse_number(text)
            if number is None:
                level = self._level(text)
                if level is None:
                    raise QuerySyntaxError(
                        f"unknown level {text!r}; use one of {', '.join(SEVERITIES)}", position
                    )
                first = SEVERITIES[level]
                number = float(first + 3 if op in (">", "<=") else first)
            parts.append(f"severity_number {op} {params.number(number)}")
        return " AND ".join(parts)


class NumberColumn(Field):
    def __init__(self, column: str) -> None:
        self.column = column
        self.label = column
        self.columns = frozenset({column})

    def equals(self, text: str, params: Params, position: int) -> str:
        return self.compare([("=", text)], params, position)

    def exists(self, params: Params) -> str:
        return f"{self.column} != 0"

    def compare(self, bounds: list[Bound], params: Params, position: int) -> str:
        numbers = _numeric_bounds(bounds, position, self.label)
        return " AND ".join(f"{self.column} {op} {params.number(n)}" for op, n in numbers)


class TimeColumn(Field):
    """``timestamp``: ranges and comparisons with RFC 3339 times, at nanosecond precision."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.label = column
        self.columns = frozenset({column})

    def equals(self, text: str, params: Params, position: int) -> str:
        raise QuerySyntaxError(
            f"{self.label} takes a range or comparison, e.g. {self.label}:>=2024-05-01T00:00:00Z",
            position,
        )

    def compare(self, bounds: list[Bound], params: Params, position: int) -> str:
        # Comparing the column itself (not a function of it) keeps the primary key usable.
        return " AND ".join(
            f"{self.column} {op} fromUnixTimestamp64Nano({params.add(parse_timestamp_ns(t, position), 'Int64')}, 'UTC')"
            for op, t in bounds
        )


class AttributeField(Field):
    """A user attribute, stored by value type in ``attributes_string`` / ``attributes_number``.

    A missing key reads as the map's default ('' or 0), so conditions that a default would
    satisfy also require ``mapContains``: ``duration:<10`` must not find lines without one.
    """

    columns = frozenset({"attributes_string", "attributes_number"})

    def __init__(self, key: str) -> None:
        self.key = key
        self.label = key

    def equals(self, text: str, params: Params, position: int) -> str:
        key = params.string(self.key)
        as_string = f"attributes_string[{key}] = {params.string(text)}"
        if text == "":
            as_string = f"mapContains(attributes_string, {key}) AND {as_string}"
        number = parse_number(text)
        if number is None:
            return as_string
        # "500" may have been logged as a number or as a string: match either.
        as_number = f"attributes_number[{key}] = {params.number(number)}"
        if number == 0:
            as_number = f"mapContains(attributes_number, {key}) AND {as_number}"
        return f"({as_number}) OR ({as_string})"

    def pattern(self, pattern: Pattern, params: Params, position: int) -> str:
        key = params.string(self.key)
        like = params.string(like_pattern(pattern))
        # Numbers are matched in their ClickHouse text form (500 -> "500"), so status:5*
        # finds 500 whichever map the value landed in.
        return (
            f"(mapContains(attributes_string, {key}) AND attributes_string[{key}] LIKE {like})"
            f" OR (mapContains(attributes_number, {key}) AND toString(attributes_number[{key}]) LIKE {like})"
        )

    def exists(self, params: Params) -> str:
        key = params.string(self.key)
        return f"mapContains(attributes_string, {key}) OR mapContains(attributes_number, {key})"

    def regex(self, pattern: str, params: Params, position: int) -> str:
        key = params.string(self.key)
        regex = params.string(_anchored(pattern, position))
        return (
            f"(mapContains(attributes_string, {key}) AND match(attributes_string[{key}], {regex}))"
            f" OR (mapContains(attributes_number, {key}) AND match(toString(attributes_number[{key}]), {regex}))"
        )

    def compare(self, bounds: list[Bound], params: Params, position: int) -> str:
        key = params.string(self.key)
        numbers = [parse_number(text) for _, text in bounds]
        if all(n is not None for n in numbers):
            conds = [
                f"attributes_number[{key}] {op} {params.number(n)}"  # type: ignore[arg-type]
                for (op, _), n in zip(bounds, numbers, strict=True)
            ]
            return " AND ".join([f"mapContains(attributes_number, {key})", *conds])
        # Any non-numeric bound: a lexicographic range over the string values.
        conds = [f"attributes_string[{key}] {op} {params.string(text)}" for op, text in bounds]
        return " AND ".join([f"mapContains(attributes_string, {key})", *conds])


_SEVERITY = SeverityField()
_MESSAGE = MessageField()
_TIMESTAMP = TimeColumn("timestamp")
_TRACE_ID = StringColumn("trace_id", lowercase=True)
_SPAN_ID = StringColumn("span_id", lowercase=True)
_LOG_TYPE = StringColumn("log_type")
_SERVICE = StringColumn("service")
_HOST = StringColumn("host")
_LOGGER = StringColumn("logger")

#: Field names that mean a column (case-sensitive, as field names are in Kibana).
COLUMN_FIELDS: Final[dict[str, Field]] = {
    "level": _SEVERITY,
    "severity": _SEVERITY,
    "severity_text": _SEVERITY,
    "severity_number": NumberColumn("severity_number"),
    "message": _MESSAGE,
    "msg": _MESSAGE,
    "body": _MESSAGE,
    "timestamp": _TIMESTAMP,
    "@timestamp": _TIMESTAMP,
    "observed_timestamp": TimeColumn("observed_timestamp"),
    "service": _SERVICE,
    "host": _HOST,
    "logger": _LOGGER,
    "function": StringColumn("function"),
    "source": StringColumn("source"),
    "log_type": _LOG_TYPE,
    "type": _LOG_TYPE,
    "project": StringColumn("project"),
    "trace_id": _TRACE_ID,
    "traceId": _TRACE_ID,
    "span_id": _SPAN_ID,
    "spanId": _SPAN_ID,
    # The OpenTelemetry/ECS and logging names that ingest stores in these columns, as people
    # who ship from the Collector, Filebeat or Python's logging type them (`service.name:api`
    # matched nothing): such a key stays an attribute only when its event also had the
    # column's own name.
    "service.name": _SERVICE,
    "service_name": _SERVICE,
    "host.name": _HOST,
    "hostname": _HOST,
    "log.level": _SEVERITY,
    "levelname": _SEVERITY,
    "log.logger": _LOGGER,
    "trace.id": _TRACE_ID,
    "span.id": _SPAN_ID,
}


def message_field() -> Field:
    """The field of bare terms: full text on the message."""
    return _MESSAGE


def attribute_field(key: str) -> Field:
    return AttributeField(key)
