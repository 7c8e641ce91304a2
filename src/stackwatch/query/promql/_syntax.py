"""Where a PromQL query stops being PromQL: the position and the token, as Prometheus reports it.

``promql_parser`` says only "invalid promql query" for a grammar error, which leaves a user
with a long alert expression nothing to go on. Prometheus answers
``1:14: parse error: unexpected end of input``. This module walks the query with PromQL's
grammar (a recursive descent that checks, builds nothing) and names the first token that no
rule accepts. It runs only after the parser has refused the query, so it does not have to be
the judge of validity: when it finds nothing to blame, the parser's own message stands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["locate_syntax_error"]

_AGGREGATIONS = frozenset(
    {"sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk", "bottomk", "count_values",
     "quantile", "limitk", "limit_ratio"}
)  # fmt: skip
_SET_OPERATORS = frozenset({"and", "or", "unless"})
_BINARY_SYMBOLS = frozenset({"+", "-", "*", "/", "%", "^", "==", "!=", "<=", ">=", "<", ">"})
_MATCH_OPERATORS = frozenset({"=", "!=", "=~", "!~"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?![\w.])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w.])
  | (?P<ident>(?:[a-zA-Z_]|:[a-zA-Z_:])[a-zA-Z0-9_:]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<op>=~|!~|==|!=|<=|>=|[-+*/%^<>=,(){}\[\]:@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # ident, number, duration, string, op, end
    text: str
    pos: int

    def describe(self) -> str:
        if self.kind == "end":
            return "end of input"
        if self.kind == "op":
            return f'"{self.text}"'
        if self.kind == "ident" and self.text.lower() in _KEYWORDS:
            return f'keyword "{self.text}"'
        names = {"ident": "identifier", "number": "number", "duration": "duration", "string": "string"}
        return f'{names[self.kind]} "{self.text}"'


_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
)


class _Stop(Exception):
    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def _tokens(query: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None:
            char = query[pos]
            if char in "\"'`":
                raise _Stop(pos, "unterminated quoted string")
            raise _Stop(pos, f"unexpected character: {char!r}")
        kind = m.lastgroup or "op"
        if kind != "space":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    out.append(_Tok("end", "", len(query)))
    return out


class _Checker:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.toks = tokens
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def peek(self, ahead: int = 1) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return tok

    def is_op(self, *texts: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in texts

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "ident" and self.tok.text.lower() in words

    def fail(self, where: str = "", expected: str = "") -> _Stop:
        message = f"unexpected {self.tok.describe()}"
        if where:
            message += f" in {where}"
        if expected:
            message += f", expected {expected}"
        return _Stop(self.tok.pos, message)

    def expect_op(self, text: str, where: str, expected: str | None = None) -> None:
        if not self.is_op(text):
            raise self.fail(where, expected or f'"{text}"')
        self.take()

    # -- grammar ------------------------------------------------------------------------------

    def query(self) -> None:
        self.expr()
        if self.tok.kind != "end":
            raise self.fail()

    def expr(self) -> None:
        self.unary()
        while self.binary_operator():
            self.binary_modifiers()
            self.unary()

    def binary_operator(self) -> bool:
        if (self.tok.kind == "op" and self.tok.text in _BINARY_SYMBOLS) or self.is_word(*_SET_OPERATORS, "atan2"):
            self.take()
            return True
        return False

    def binary_modifiers(self) -> None:
        if self.is_word("bool"):
            self.take()
        if self.is_word("on", "ignoring"):
            self.take()
            self.labels("grouping opts")
        if self.is_word("group_left", "group_right"):
            self.take()
            if self.is_op("("):
                self.labels("grouping opts")
        while self.is_word("fill", "fill_left", "fill_right") and self.peek().text == "(":
            self.take()
            self.take()
            self.unary()
            self.expect_op(")", "fill modifier")

    def unary(self) -> None:
        while self.is_op("+", "-"):
            self.take()
        self.postfix()

    def postfix(self) -> None:
        self.primary()
        while True:
            if self.is_op("["):
                self.take()
                self.duration("range")
                if self.is_op(":"):
                    self.take()
                    if not self.is_op("]"):
                        self.duration("subquery")
                self.expect_op("]", "range", '"]"' if self.toks[self.i - 1].text == ":" else '":" or "]"')
            elif self.is_word("offset"):
                self.take()
                if self.is_op("-", "+"):
                    self.take()
                self.duration("offset")
            elif self.is_op("@"):
                self.take()
                if self.is_op("-", "+"):
                    self.take()
                if self.tok.kind in ("number", "duration"):
                    self.take()
                elif self.is_word("start", "end") and self.peek().text == "(":
                    self.take()
                    self.take()
                    self.expect_op(")", "@")
                else:
                    raise self.fail("@", "timestamp")
            else:
                return

    def duration(self, where: str) -> None:
        if self.tok.kind in ("duration", "number"):  # a number is seconds
            self.take()
            return
        raise self.fail(where, "duration")

    def primary(self) -> None:
        tok = self.tok
        if tok.kind in ("number", "string"):
            self.take()
        elif tok.kind == "duration":
            self.take()  # a bare duration is a number of seconds in recent PromQL
        elif self.is_op("("):
            self.take()
            self.expr()
            self.expect_op(")", "paren expression", '")"')
        elif self.is_op("{"):
            self.matchers()
        elif tok.kind == "ident":
            word = tok.text.lower()
            if word in _AGGREGATIONS and (self.peek().text in ("(",) or self.peek().text.lower() in ("by", "without")):
                self.aggregation()
            elif self.peek().kind == "op" and self.peek().text == "(" and word not in _KEYWORDS:
                self.call()
            elif word in _KEYWORDS:
                raise self.fail()
            elif word in ("inf", "nan"):
                self.take()
            else:
                self.take()
                if self.is_op("{"):
                    self.matchers()
        else:
            raise self.fail()

    def aggregation(self) -> None:
        self.take()
        grouped = False
        if self.is_word("by", "without"):
            self.take()
            self.labels("grouping opts")
            grouped = True
        self.expect_op("(", "aggregation", '"("')
        if self.is_op(")"):
            raise self.fail("aggregation", "expression")
        self.expr()
        if self.is_op(","):
            self.take()
            self.expr()
        self.expect_op(")", "aggregation", '"," or ")"')
        if not grouped and self.is_word("by", "without"):
            self.take()
            self.labels("grouping opts")

    def call(self) -> None:
        self.take()
        self.take()  # "("
        if self.is_op(")"):
            self.take()
            return
        while True:
            self.expr()
            if self.is_op(","):
                self.take()
                continue
            self.expect_op(")", "function call", '"," or ")"')
            return

    def labels(self, where: str) -> None:
        self.expect_op("(", where, '"("')
        while not self.is_op(")"):
            if self.tok.kind not in ("ident", "string"):
                raise self.fail(where, 'label name or ")"')
            self.take()
            if self.is_op(","):
                self.take()
            elif not self.is_op(")"):
                raise self.fail(where, '"," or ")"')
        self.take()

    def matchers(self) -> None:
        self.take()  # "{"
        while not self.is_op("}"):
            if self.tok.kind not in ("ident", "string"):
                raise self.fail("label matching", 'label name or "}"')
            name = self.take()
            if self.tok.kind == "op" and self.tok.text in _MATCH_OPERATORS:
                self.take()
                if self.tok.kind != "string":
                    raise self.fail("label matching", "string")
                self.take()
            elif name.kind == "ident":
                raise self.fail("label matching", "label matching operator")
            if self.is_op(","):
                self.take()
            elif not self.is_op("}"):
                raise self.fail("label matching", '"," or "}"')
        self.take()


def locate_syntax_error(query: str) -> str | None:
    """``"<line>:<column>: parse error: <what>"`` for the first token PromQL does not accept,
    or None when the walk finds nothing to blame (the parser's message then stands)."""
    try:
        _Checker(_tokens(query)).query()
    except _Stop as stop:
        before = query[: stop.pos]
        line = before.count("\n") + 1
        column = stop.pos - (before.rfind("\n") + 1) + 1
        return f"{line}:{column}: parse error: {stop.message}"
    except IndexError:
        return None
    return None
