"""The tree walker: a luqum tree in, one SQL boolean expression out.

Boolean structure maps one to one (implicit operator = AND, as in KQL); terms are handed to
the field they sit under (bare terms to the message). Constant results (``*``, an unknown
level) fold away so ``* AND level:ERROR`` is just the level condition.
"""

from __future__ import annotations

import re

from luqum.tree import (
    AndOperation,
    BaseGroup,
    Boost,
    From,
    Item,
    Not,
    OrOperation,
    Phrase,
    Plus,
    Prohibit,
    Range,
    Regex,
    SearchField,
    Term,
    To,
    UnknownOperation,
    Word,
)

from stackwatch.errors import QuerySyntaxError
from stackwatch.query._logql_fields import (
    COLUMN_FIELDS,
    FALSE,
    TRUE,
    Bound,
    Field,
    Params,
    attribute_field,
    message_field,
)
from stackwatch.query._logql_values import ANY, split_wildcards, unescape, unquote_phrase

__all__ = ["MAX_DEPTH", "MAX_TERMS", "Compiler"]

#: Nesting deeper than this is refused: ClickHouse's parser stops at depth 1000 and each
#: level here adds several, and no one writes a search nested 32 deep on purpose.
MAX_DEPTH = 32
#: More terms than this are refused, keeping the SQL far below ClickHouse's size limits.
MAX_TERMS = 512

_FIELD_NAME = re.compile(r"[A-Za-z0-9_.@-]+")
_EXISTS_FIELD = "_exists_"  # Lucene's spelling of "has this field": _exists_:user.id


def and_(parts: list[str]) -> str:
    """SQL conjunction of ``parts``, folding the constants."""
    if FALSE in parts:
        return FALSE
    parts = [p for p in parts if p != TRUE]
    if not parts:
        return TRUE
    if len(parts) == 1:
        return parts[0]
    return " AND ".join(f"({p})" for p in parts)


def or_(parts: list[str]) -> str:
    """SQL disjunction of ``parts``, folding the constants."""
    if TRUE in parts:
        return TRUE
    parts = [p for p in parts if p != FALSE]
    if not parts:
        return FALSE
    if len(parts) == 1:
        return parts[0]
    return " OR ".join(f"({p})" for p in parts)


def not_(part: str) -> str:
    if part == TRUE:
        return FALSE
    if part == FALSE:
        return TRUE
    return f"NOT ({part})"


def _pos(node: Item) -> int:
    return node.pos if node.pos is not None else 0


class Compiler:
    """Compiles one query; holds the parameters and the term budget while walking."""

    def __init__(self, param_prefix: str) -> None:
        self.params = Params(param_prefix)
        self.terms = 0
        #: Columns read by the SQL made so far (a term folded away still counts: harmless).
        self.columns: set[str] = set()

    def _use(self, field: Field) -> Field:
        self.columns |= field.columns
        return field

    def compile(self, node: Item, field: Field | None = None, depth: int = 0) -> str:
        """SQL for ``node``; ``field`` is the field of an enclosing ``name:(...)``."""
        if depth > MAX_DEPTH:
            raise QuerySyntaxError(f"query nested deeper than {MAX_DEPTH} levels", _pos(node))
        deeper = depth + 1
        if isinstance(node, (AndOperation, UnknownOperation)):
            return and_([self.compile(child, field, deeper) for child in node.children])
        if isinstance(node, OrOperation):
            return or_([self.compile(child, field, deeper) for child in node.children])
        if isinstance(node, (Not, Prohibit)):
            return not_(self.compile(node.a, field, deeper))
        if isinstance(node, Plus):
            return self.compile(node.a, field, deeper)
        if isinstance(node, BaseGroup):  # (..) and field groups name:(..)
            return self.compile(node.expr, field, deeper)
        if isinstance(node, Boost):  # relevance only; a filter has none
            return self.compile(node.expr, field, deeper)
        if isinstance(node, SearchField):
            return self._search_field(node, field, deeper)
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise QuerySyntaxError(f"query has more than {MAX_TERMS} terms", _pos(node))
        if isinstance(node, Term):
            return self._term(node, field)
        if isinstance(node, (Range, From, To)):
            if field is None:
                raise QuerySyntaxError(
                    "a range or comparison needs a field, e.g. status:[500 TO 599] or duration:>500",
                    _pos(node),
                )
            return self._range(node, field)
        raise QuerySyntaxError(f"unsupported syntax {str(node).strip()!r}", _pos(node))

    def _search_field(self, node: SearchField, outer: Field | None, depth: int) -> str:
        pos = _pos(node)
        if outer is not None:
            raise QuerySyntaxError(
                f"field {node.name!r} inside another field's value; quote values containing ':'",
                pos,
            )
        if node.name == _EXISTS_FIELD:
            target = node.expr
            if not isinstance(target, Word) or split_wildcards(target.value) != [unescape(target.value)]:
                raise QuerySyntaxError("_exists_ takes one field name, e.g. _exists_:user.id", pos)
            return self._use(resolve_field(unescape(target.value), _pos(target))).exists(self.params)
        return self.compile(node.expr, resolve_field(node.name, pos), depth)

    def _term(self, node: Term, field: Field | None) -> str:
        pos = _pos(node)
        if node.value == "*" and field is None and not isinstance(node, (Regex, Phrase)):
            return TRUE  # a bare * is "everything"; name:* is "name is set"
        field = self._use(field or message_field())
        if isinstance(node, Regex):
            return field.regex(node.value[1:-1], self.params, pos)
        if isinstance(node, Phrase):  # wildcards inside quotes are literal, as in Lucene
            return field.equals(unquote_phrase(node.value), self.params, pos)
        if node.value == "*":
            return field.exists(self.params)
        pieces = split_wildcards(node.value)
        if all(isinstance(piece, str) for piece in pieces):
            return field.equals("".join(pieces), self.params, pos)  # type: ignore[arg-type]
        if all(piece is ANY for piece in pieces):
            return field.exists(self.params)
        return field.pattern(pieces, self.params, pos)

    def _range(self, node: Range | From | To, field: Field) -> str:
        self._use(field)
        bounds: list[Bound] = []
        if isinstance(node, Range):
            low, high = _bound_text(node.low), _bound_text(node.high)
            if low is not None:
                bounds.append((">=" if node.include_low else ">", low))
            if high is not None:
                bounds.append(("<=" if node.include_high else "<", high))
        else:
            text = _bound_text(node.a)
            if text is not None:
                op = ">" if isinstance(node, From) else "<"
                bounds.append((op + "=" if node.include else op, text))
        if not bounds:  # [* TO *]
            return field.exists(self.params)
        return field.compare(bounds, self.params, _pos(node))


def _bound_text(node: Item) -> str | None:
    """The text of a range bound, None for an open ``*`` bound."""
    if isinstance(node, Prohibit):  # luqum reads [-5 TO 5] as a "prohibited" 5
        inner = _bound_text(node.a)
        if inner is None:
            raise QuerySyntaxError("'-*' is not a range bound", _pos(node))
        return "-" + inner
    if isinstance(node, Phrase):
        return unquote_phrase(node.value)
    if isinstance(node, Word):
        if node.value == "*":
            return None
        pieces = split_wildcards(node.value)
        if not all(isinstance(piece, str) for piece in pieces):
            raise QuerySyntaxError("wildcards are not allowed in a range bound", _pos(node))
        return "".join(pieces)  # type: ignore[arg-type]
    raise QuerySyntaxError(f"unsupported range bound {str(node).strip()!r}", _pos(node))


def resolve_field(name: str, position: int) -> Field:
    """The field a name means: a column through the alias table, else an attribute key."""
    column = COLUMN_FIELDS.get(name)
    if column is not None:
        return column
    if not _FIELD_NAME.fullmatch(name):
        raise QuerySyntaxError(f"invalid field name {name!r}: use letters, digits and _ . @ -", position)
    return attribute_field(name)
