"""Values of the log query language: what a term means before any field gives it SQL.

A term's text is user text; this module turns it into Python values (literal text, a
wildcard pattern, a number, a nanosecond timestamp, a checked regular expression) so the
SQL side only ever places them in query parameters.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import re2

from stackwatch.errors import QuerySyntaxError

__all__ = [
    "ANY",
    "ONE",
    "Pattern",
    "like_pattern",
    "parse_number",
    "parse_timestamp_ns",
    "split_wildcards",
    "unescape",
    "unquote_phrase",
    "valid_regex",
    "wildcard_regex",
]

#: Wildcard pieces of a :data:`Pattern`; every other piece is literal text.
ANY = object()  # ``*``: any run of characters
ONE = object()  # ``?``: exactly one character

Pattern = list[str | object]

_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
# A strict number syntax: Python's float() also takes "inf", "nan", "1_000" and spaces,
# none of which a user means as a number in a log search.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FRACTION = re.compile(r"(?P<head>.*?\d{2}:\d{2}:\d{2})[.,](?P<frac>\d+)(?P<tail>.*)", re.DOTALL)
_INT64_MAX = 2**63 - 1

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a user's bad pattern is a 400, not a line in the server log


def unescape(text: str) -> str:
    """Drop Lucene's backslash escapes: ``\\:`` is ``:``, ``\\\\`` is ``\\``."""
    return _ESCAPED.sub(r"\1", text)


def unquote_phrase(text: str) -> str:
    """The text between a phrase's double quotes, escapes resolved."""
    return unescape(text[1:-1])


def split_wildcards(raw: str) -> Pattern:
    """Split a raw (still escaped) word into literal text and :data:`ANY`/:data:`ONE` pieces.

    Escaped ``\\*`` and ``\\?`` are literal; adjacent literal characters are merged.
    """
    pieces: Pattern = []
    literal: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char == "\\":
            literal.append(next(chars, ""))
        elif char in "*?":
            if literal:
                pieces.append("".join(literal))
                literal = []
            pieces.append(ANY if char == "*" else ONE)
        else:
            literal.append(char)
    if literal:
        pieces.append("".join(literal))
    return pieces


def like_pattern(pattern: Pattern) -> str:
    """A ClickHouse LIKE pattern for ``pattern``, user text escaped.

    ClickHouse LIKE escapes with backslash; ``%`` and ``_`` in the user's text must not act
    as wildcards, and a backslash must not escape what follows it.
    """
    out: list[str] = []
    previous: object = None
    for piece in pattern:
        if piece is ANY:
            if previous is not ANY:  # "**" is "*"
                out.append("%")
        elif piece is ONE:
            out.append("_")
        else:
            assert isinstance(piece, str)
            out.append(piece.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"))
        previous = piece
    return "".join(out)


def wildcard_regex(pattern: Pattern) -> re.Pattern[str]:
    """A Python regex for ``pattern``, to match it against our own closed lists (levels)."""
    parts = [".*" if piece is ANY else "." if piece is ONE else re.escape(str(piece)) for piece in pattern]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def parse_number(text: str) -> float | None:
    """``text`` as a finite float, or None when it is not written as a plain number."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_timestamp_ns(text: str, position: int) -> int:
    """An RFC 3339 / ISO 8601 time as ns since the epoch; no zone means UTC.

    ``datetime`` keeps microseconds only, so a longer fraction is read separately to keep
    the nanoseconds that the logs table stores.
    """
    text = text.strip()
    nanos = 0
    match = _FRACTION.fullmatch(text)
    if match:
        frac = match["frac"]
        if len(frac) > 9:
            raise QuerySyntaxError(f"more than 9 fractional digits in time {text!r}", position)
        nanos = int(frac.ljust(9, "0"))
        text = match["head"] + match["tail"]
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise QuerySyntaxError(
            f"expected an RFC 3339 time such as 2024-05-01T12:00:00Z, got {text!r}", position
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    total = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000 + nanos
    if not -_INT64_MAX <= total <= _INT64_MAX:
        raise QuerySyntaxError(f"time {text!r} is outside 1677..2262", position)
    return total


def valid_regex(pattern: str, position: int) -> str:
    """Check ``pattern`` with RE2, the engine ClickHouse's ``match()`` uses, and return it.

    Python's ``re`` accepts things RE2 refuses (look-arounds, back-references, ``(?x)``);
    those would only fail when ClickHouse runs the query, as a server error.
    """
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise QuerySyntaxError(f"invalid regular expression: {reason}", position) from None
    return pattern
