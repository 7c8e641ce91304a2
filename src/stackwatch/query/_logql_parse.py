"""Parsing the log query language: luqum's Lucene grammar, with Kibana's habits on top.

luqum (PLY underneath) does the grammar; this module adapts it to what a Kibana user types
and to the error contract of :class:`~stackwatch.errors.QuerySyntaxError`:

* ``and`` / ``or`` / ``not`` / ``to`` are operators in any case, as in KQL. luqum only knows
  the upper-case spellings, so a token filter re-types those words before the grammar sees
  them. To search for the word itself, quote it (``message:"not"``).
* Every failure becomes a ``QuerySyntaxError`` with the 0-based position of the offending
  character (the query's length for "unexpected end"). luqum reports positions only inside
  its message text, so the token filter remembers where it is instead of parsing messages.
* Fuzzy and proximity searches (``word~``, ``"a b"~2``) have no SQL meaning here; they are
  refused at the token, before luqum builds nodes whose number conversion could fail.

PLY's lexer and parser keep state on shared objects, so parsing takes a lock; a query is a
few dozen tokens and parses in microseconds, so the lock costs nothing measurable.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from typing import Any

from luqum.exceptions import IllegalCharacterError, ParseError
from luqum.head_tail import TokenValue
from luqum.parser import lexer as _luqum_lexer
from luqum.parser import parser as _luqum_parser
from luqum.tree import Item, Word

from stackwatch.errors import QuerySyntaxError

__all__ = ["MAX_QUERY_CHARS", "parse"]

#: Longer queries are refused before parsing: a log search is a line, not a document, and the
#: compiled SQL must stay well below ClickHouse's max_query_size (256 KiB).
MAX_QUERY_CHARS = 8192

# KQL treats these words as operators whatever their case; luqum's lexer only upper case.
_OPERATOR_WORDS = {"AND": "AND_OP", "OR": "OR_OP", "NOT": "NOT", "TO": "TO"}

_lock = threading.Lock()
_lexer = _luqum_lexer.clone()


class _TokenFilter:
    """Sits between PLY's lexer and parser: re-types operator words, remembers positions."""

    def __init__(self, query: str) -> None:
        self.query = query
        self.last: Any = None  # the last token handed to the parser; None once input ended
        self.pending: Any = None  # a token read ahead and not yet handed over

    def _next(self) -> Any:
        if self.pending is not None:
            tok, self.pending = self.pending, None
            return tok
        try:
            return _lexer.token()
        except IllegalCharacterError:
            raise _illegal_character(self.query, _lexer.lexpos) from None

    def __call__(self) -> Any:
        before = self.last
        tok = self._next()
        if tok is not None and tok.type == "MINUS" and before is not None and before.type in _VALUE_STARTS:
            tok = self._negative_number(tok, before)
        self.last = tok
        if tok is None:
            return None
        if tok.type == "TERM" and isinstance(tok.value, Word):
            op_type = _OPERATOR_WORDS.get(tok.value.value.upper())
            if op_type is not None:
                word = tok.value
                op = TokenValue(word.value)
                op.pos, op.size, op.head, op.tail = word.pos, word.size, word.head, word.tail
                # Replace on the same token object: luqum's head/tail tracker holds the token
                # and appends the following whitespace to ``token.value.tail``.
                tok.value = op
                tok.type = op_type
        elif tok.type == "APPROX":
            raise QuerySyntaxError(
                "fuzzy and proximity searches (~) are not supported; use wildcards (fail*)",
                tok.lexpos,
            )
        elif tok.type == "BOOST" and tok.value.value is not None:
            try:
                Decimal(tok.value.value)
            except InvalidOperation:
                raise QuerySyntaxError(f"bad boost '^{tok.value.value}'", tok.lexpos) from None
        return tok


    def _negative_number(self, minus: Any, before: Any) -> Any:
        """``field:-5``, ``field:>=-5``, ``field:[-10 TO -1]``: a minus where a value starts
        is the sign of a number, as in Kibana (luqum made ``neg:-5`` mean ``NOT neg:5``, which
        matched nearly every line). Before anything but a number, right after ``:``, it is
        refused, as Lucene refuses it: the user meant one of two things, and guessing either
        answers a different question."""
        nxt = self._next()
        if (
            nxt is not None
            and nxt.type == "TERM"
            and isinstance(nxt.value, Word)
            and nxt.lexpos == minus.lexpos + 1
            and _NUMBER.fullmatch(nxt.value.value)
        ):
            word = nxt.value
            word.value = "-" + word.value
            word.pos, word.size = minus.lexpos, (word.size or len(word.value) - 1) + 1
            word.head = getattr(minus.value, "head", "") or ""
            nxt.lexpos = minus.lexpos
            return nxt
        if before.type == "COLUMN":
            raise QuerySyntaxError(
                "'-' right after ':': to exclude lines, write NOT field:value (or -field:value); "
                'to search for a value that starts with "-", quote it (field:"-value")',
                minus.lexpos,
            )
        self.pending = nxt
        return minus


#: Where a value starts: after ``field:``, a comparison, ``[`` / ``{`` of a range, or ``TO``.
_VALUE_STARTS = frozenset({"COLUMN", "GREATERTHAN", "LESSTHAN", "LBRACKET", "TO"})
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _illegal_character(query: str, pos: int) -> QuerySyntaxError:
    char = query[pos] if pos < len(query) else ""
    if char == '"':
        return QuerySyntaxError("unbalanced double quote", pos)
    if char == "/":
        return QuerySyntaxError(
            "unbalanced '/': regular expressions are written /.../; quote paths such as \"/api/users\"",
            pos,
        )
    if char == "'":
        return QuerySyntaxError("single quotes do not delimit phrases; use double quotes", pos)
    if char == "\\":
        return QuerySyntaxError("a backslash must escape a character", pos)
    return QuerySyntaxError(f"unexpected character {char!r}", pos)


def _unexpected(token: Any, query: str) -> QuerySyntaxError:
    if token is None:
        return QuerySyntaxError(
            "unexpected end of query (an unclosed parenthesis or bracket, "
            "or an operator or field with nothing after it?)",
            len(query),
        )
    pos = token.lexpos
    text = query[pos : pos + (getattr(token.value, "size", None) or 1)]
    if token.type in ("AND_OP", "OR_OP"):
        return QuerySyntaxError(f"'{text}' needs a term on both sides", pos)
    if token.type == "RPAREN":
        return QuerySyntaxError("unbalanced ')'", pos)
    if token.type == "COLUMN":
        return QuerySyntaxError(
            "unexpected ':' (a field name comes before ':'; quote values containing ':')", pos
        )
    return QuerySyntaxError(f"unexpected '{text}'", pos)


def parse(query: str) -> Item | None:
    """Parse ``query`` into a luqum tree, or ``None`` when it is blank.

    Raises :class:`QuerySyntaxError` (with the 0-based position) for anything that does not
    parse; no other exception escapes.
    """
    for pos, char in enumerate(query):
        # Lone surrogates (from a lenient JSON decoder) cannot be encoded to send as SQL
        # parameters; find them here rather than as a UnicodeEncodeError in the executor.
        if "\ud800" <= char <= "\udfff":
            raise QuerySyntaxError("invalid character (lone surrogate)", pos)
    if len(query) > MAX_QUERY_CHARS:
        raise QuerySyntaxError(f"query longer than {MAX_QUERY_CHARS} characters", MAX_QUERY_CHARS)
    if not query.strip():
        return None
    tokens = _TokenFilter(query)
    with _lock:
        try:
            tree: Item = _luqum_parser.parse(input=query, lexer=_lexer, tokenfunc=tokens)
        except QuerySyntaxError:
            raise
        except ParseError:
            raise _unexpected(tokens.last, query) from None
        except Exception as exc:
            # luqum converts some token texts while building nodes; anything it raises there
            # is still a query the user must fix, not a server error.
            pos = tokens.last.lexpos if tokens.last is not None else len(query)
            raise QuerySyntaxError(f"could not parse query ({type(exc).__name__})", pos) from None
    return tree
