"""Our own small PromQL AST, converted from ``promql_parser``'s.

Why not evaluate the parser's objects directly: they are Rust objects whose
attribute access can panic (an ``@`` timestamp before 1970 raises a pyo3
``PanicException``, a ``BaseException``), durations come as ``timedelta``, and the
value type of each node is implicit. Converting once gives the evaluator plain,
typed dataclasses with milliseconds everywhere, and keeps the parser dependency to
this one module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import promql_parser as pp

from ._syntax import locate_syntax_error
from .errors import ParseError
from .storage import Matcher

__all__ = [
    "Aggregate",
    "AtSpec",
    "Binary",
    "Call",
    "MatrixSel",
    "Node",
    "NumberLit",
    "Paren",
    "StringLit",
    "Subquery",
    "Unary",
    "VectorSel",
    "parse",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class AtSpec:
    """An ``@`` modifier: a fixed time, or the query's ``start()`` / ``end()``."""

    kind: str  # "at" | "start" | "end"
    ms: int = 0


@dataclass
class Node:
    """Base of every node; ``type`` is the PromQL value type it evaluates to."""

    type: str = field(default="vector", init=False)


@dataclass
class NumberLit(Node):
    value: float

    def __post_init__(self) -> None:
        self.type = "scalar"


@dataclass
class StringLit(Node):
    value: str

    def __post_init__(self) -> None:
        self.type = "string"


@dataclass
class VectorSel(Node):
    name: str | None
    matchers: list[Matcher]
    or_matchers: list[list[Matcher]]
    offset_ms: int
    at: AtSpec | None

    def __post_init__(self) -> None:
        self.type = "vector"


@dataclass
class MatrixSel(Node):
    vs: VectorSel
    range_ms: int

    def __post_init__(self) -> None:
        self.type = "matrix"


@dataclass
class Subquery(Node):
    expr: Node
    range_ms: int
    step_ms: int | None
    offset_ms: int
    at: AtSpec | None

    def __post_init__(self) -> None:
        self.type = "matrix"


@dataclass
class Call(Node):
    func: str
    args: list[Node]
    return_type: str

    def __post_init__(self) -> None:
        self.type = self.return_type


@dataclass
class Aggregate(Node):
    op: str
    expr: Node
    param: Node | None
    grouping: list[str]
    without: bool

    def __post_init__(self) -> None:
        self.type = "vector"


@dataclass
class Binary(Node):
    op: str
    lhs: Node
    rhs: Node
    card: str  # "one-to-one" | "many-to-one" | "one-to-many" | "many-to-many"
    on: bool  # True: on(...), False: ignoring(...) (or no clause)
    matching_labels: list[str]
    include: list[str]
    return_bool: bool

    def __post_init__(self) -> None:
        self.type = "vector" if "vector" in (self.lhs.type, self.rhs.type) else "scalar"


@dataclass
class Unary(Node):
    expr: Node

    def __post_init__(self) -> None:
        self.type = self.expr.type


@dataclass
class Paren(Node):
    expr: Node

    def __post_init__(self) -> None:
        self.type = self.expr.type


#: Aggregations the parser knows and Prometheus keeps behind a feature flag; the engine has none.
_EXPERIMENTAL_AGGREGATIONS = frozenset({"limitk", "limit_ratio"})


def parse(query: str) -> Node:
    """Parse PromQL text into our AST; any failure is a :class:`ParseError`."""
    try:
        raw = pp.parse(query)
    except ValueError as exc:
        message = str(exc)
        if message == "invalid promql query":  # the parser's word for any grammar error
            message = locate_syntax_error(query) or message
        raise ParseError(message) from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:  # pyo3 panics are BaseException
        raise ParseError(f"could not parse query: {_short(exc)}") from None
    try:
        return _convert(raw)
    except ParseError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:
        raise ParseError(f"unsupported query: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


_VALUE_TYPES = {"Vector": "vector", "Scalar": "scalar", "Matrix": "matrix", "String": "string"}
_MATCH_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def _enum_name(value: object) -> str:
    # promql_parser's enums are Rust classes without ``.name``; str() is "Type.Variant".
    return str(value).rsplit(".", 1)[-1]


def _ms(td: timedelta | None) -> int:
    return 0 if td is None else td // _MS


def _matcher(m: pp.Matcher) -> Matcher:
    op = _MATCH_OPS[_enum_name(m.op)]
    try:
        return Matcher(m.name, op, m.value)
    except Exception as exc:  # RE2 rejects a few patterns the Rust parser accepted
        raise ParseError(f"invalid regular expression {m.value!r}: {exc}") from None


_SYSTIME = re.compile(r"at: Some\(\s*At\(\s*SystemTime \{\s*tv_sec: (-?\d+),\s*tv_nsec: (\d+),?\s*\}")


def _at(owner: object) -> AtSpec | None:
    at = owner.at  # type: ignore[attr-defined]
    if at is None:
        return None
    kind = _enum_name(at.type)
    if kind == "Start":
        return AtSpec("start")
    if kind == "End":
        return AtSpec("end")
    # Reading a pre-1970 ``at.at`` panics inside pyo3, so take the time from the node's
    # Debug repr, where a subquery prints its own @ after its inner expression's.
    found = _SYSTIME.findall(repr(owner))
    if found:
        sec, nsec = found[-1]
        ms = int(sec) * 1000 + int(nsec) // 1_000_000
    else:
        when = at.at
        if when is None:
            raise ParseError("could not read @ modifier")
        ms = (when - _EPOCH) // _MS
    # Times are int64 milliseconds, and ranges and offsets are added to them: the same bound
    # as the API's time parameters (1e13 s from 1970), with Prometheus's message.
    if abs(ms) > _MAX_AT_MS:
        raise ParseError("timestamp out of bounds for @ modifier")
    return AtSpec("at", ms)


_MAX_AT_MS = 10**16


def _vector_selector(vs: pp.VectorSelector) -> VectorSel:
    matchers = [_matcher(m) for m in vs.matchers.matchers]
    or_matchers = [[_matcher(m) for m in group] for group in vs.matchers.or_matchers]
    if vs.name is not None:
        name_m = Matcher("__name__", "=", vs.name)
        matchers = [name_m, *matchers]
        or_matchers = [[name_m, *g] for g in or_matchers]
    return VectorSel(vs.name, matchers, or_matchers, _ms(vs.offset), _at(vs))


def _unparen(node: Node) -> Node:
    while isinstance(node, Paren):
        node = node.expr
    return node


def _convert(e: object) -> Node:
    if isinstance(e, pp.NumberLiteral):
        return NumberLit(float(e.val))
    if isinstance(e, pp.StringLiteral):
        return StringLit(e.val)
    if isinstance(e, pp.VectorSelector):
        return _vector_selector(e)
    if isinstance(e, pp.MatrixSelector):
        return MatrixSel(_vector_selector(e.vector_selector), _ms(e.range))
    if isinstance(e, pp.SubqueryExpr):
        step = None if e.step is None else _ms(e.step)
        return Subquery(_convert(e.expr), _ms(e.range), step, _ms(e.offset), _at(e))
    if isinstance(e, pp.ParenExpr):
        return Paren(_convert(e.expr))
    if isinstance(e, pp.UnaryExpr):
        return Unary(_convert(e.expr))
    if isinstance(e, pp.Call):
        func = e.func
        args = [_unparen(_convert(a)) for a in e.args]
        return Call(func.name, args, _VALUE_TYPES[_enum_name(func.return_type)])
    if isinstance(e, pp.AggregateExpr):
        op = str(e.op).lower()
        if op in _EXPERIMENTAL_AGGREGATIONS:  # a bad query (400), as Prometheus says without its flag
            raise ParseError(f"{op}() is experimental and not supported")
        param = None if e.param is None else _unparen(_convert(e.param))
        grouping: list[str] = []
        without = False
        if e.modifier is not None:
            grouping = list(e.modifier.labels)
            without = _enum_name(e.modifier.type) == "Without"
        return Aggregate(op, _unparen(_convert(e.expr)), param, grouping, without)
    if isinstance(e, pp.BinaryExpr):
        op = str(e.op).lower()
        lhs, rhs = _convert(e.lhs), _convert(e.rhs)
        card, on, labels, include, return_bool = "one-to-one", False, [], [], False
        mod = e.modifier
        if mod is not None:
            card = {
                "OneToOne": "one-to-one",
                "ManyToOne": "many-to-one",
                "OneToMany": "one-to-many",
                "ManyToMany": "many-to-many",
            }[_enum_name(mod.card)]
            if mod.matching is not None:
                on = _enum_name(mod.matching.type) == "Include"
                labels = list(mod.matching.labels)
            include = list(mod.group_labels or [])
            return_bool = bool(mod.return_bool)
            fill = mod.fill_values
            if fill is not None and (fill.lhs is not None or fill.rhs is not None):
                raise ParseError("fill modifiers are not supported")
        if op in ("and", "or", "unless"):
            card = "many-to-many"
        return Binary(op, lhs, rhs, card, on, labels, include, return_bool)
    raise ParseError(f"unsupported expression node {type(e).__name__}")
