"""The Go ``text/template`` subset that alerting rules use in labels and annotations.

Rule packs written for Prometheus say ``{{ $labels.instance }}``, ``{{ $value | humanize }}``,
``{{ printf "%.2f" $value }}``, ``{{ if gt $value 80.0 }}...{{ else }}...{{ end }}``,
``{{ with query "up" }}{{ . | first | value }}{{ end }}``; this module runs them with
Prometheus's variables (``$labels``, ``$value``, ``$externalLabels``, ``$externalURL``, and the
same through ``.Labels``/``.Value``...) and its function library (humanize*, printf, match,
reReplaceAll, query, first, label, value, title, toUpper...). Numbers print as Go prints them.

A template that fails to run does not fail the rule: like Prometheus, the text becomes
``<error expanding template: ...>``, so the alert still goes out and says what is wrong.
"""

from __future__ import annotations

import functools
import math
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = ["QueryFunc", "Sample", "TemplateError", "check_template", "expand", "go_str", "humanize"]


class TemplateError(ValueError):
    """A template that does not parse or fails while running."""


@dataclass(frozen=True)
class Sample:
    """What ``query`` returns per series: ``.Labels`` and ``.Value``, as in Prometheus."""

    Labels: dict[str, str]
    Value: float


QueryFunc = Callable[[str], list[Sample]]


# -- printing values as Go does --------------------------------------------------------------


def _go_float(f: float) -> str:
    """``fmt.Sprint(float64)``: shortest round-trip digits, exponent form from 1e+06 or below 1e-04."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign, digits, exp = Decimal(repr(f)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    nd = len(ds)
    dp = nd + int(exp)
    x = dp - 1
    s = "-" if sign else ""
    if x < -4 or x >= 6:  # strconv's shortest 'g' decides with precision 6
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{s}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{s}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return s + ds + "0" * (dp - nd)
    return f"{s}{ds[:dp]}.{ds[dp:]}"


def go_str(v: Any) -> str:
    """How ``{{ v }}`` prints ``v``."""
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_str(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    if isinstance(v, Sample):
        return "{" + go_str(v.Labels) + " " + go_str(v.Value) + "}"
    return str(v)


def _g4(v: float) -> str:
    """Go's ``%.4g``."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.4g}"


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise TemplateError(f"can't convert {go_str(v)} to float")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise TemplateError(f'strconv.ParseFloat: parsing "{v}": invalid syntax') from None
    raise TemplateError(f"can't convert {go_str(v)} to float")


def humanize(v: Any) -> str:
    """1234567 -> ``1.235M``; 0.0012 -> ``1.2m`` (SI prefixes, 4 significant digits)."""
    f = _to_float(v)
    if f == 0 or math.isnan(f) or math.isinf(f):
        return _g4(f)
    prefix = ""
    if abs(f) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(f) < 1000:
                break
            prefix, f = p, f / 1000
        return _g4(f) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(f) >= 1:
            break
        prefix, f = p, f * 1000
    return _g4(f) + prefix


def humanize_1024(v: Any) -> str:
    f = _to_float(v)
    if abs(f) <= 1 or math.isnan(f) or math.isinf(f):
        return _g4(f)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(f) < 1024:
            break
        prefix, f = p, f / 1024
    return _g4(f) + prefix


def humanize_duration(v: Any) -> str:
    """Seconds as ``1d 2h 3m 4s`` / ``2.5s`` / ``350ms``."""
    f = _to_float(v)
    if math.isnan(f) or math.isinf(f):
        return _g4(f)
    if f == 0:
        return _g4(f) + "s"
    if abs(f) >= 1:
        sign = "-" if f < 0 else ""
        f = abs(f)
        d = int(f)
        secs, mins, hours, days = d % 60, (d // 60) % 60, (d // 3600) % 24, d // 86400
        if days:
            return f"{sign}{days}d {hours}h {mins}m {secs}s"
        if hours:
            return f"{sign}{hours}h {mins}m {secs}s"
        if mins:
            return f"{sign}{mins}m {secs}s"
        return f"{sign}{_g4(f)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(f) >= 1:
            break
        prefix, f = p, f * 1000
    return f"{_g4(f)}{prefix}s"


def _humanize_timestamp(v: Any) -> str:
    f = _to_float(v)
    if math.isnan(f) or math.isinf(f):
        return _g4(f)
    t = datetime.fromtimestamp(f, UTC)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "") + " +0000 UTC"


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")


def _printf(fmt: str, *args: Any) -> str:
    """Go's ``fmt.Sprintf`` for the verbs templates use (v s d f e g x q t and widths)."""
    out: list[str] = []
    pos = 0
    i = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.group(1), m.group(2) or "", m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if i >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[i]
        i += 1
        spec = "%" + flags + width + (f".{prec}" if prec is not None else "")
        if verb in ("v", "s"):
            text = go_str(arg)
            if prec is not None:
                text = text[: int(prec)]
            out.append((spec.split(".")[0] + "s") % text)
        elif verb == "q":
            out.append('"' + go_str(arg).replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif verb == "t":
            out.append(go_str(arg))
        elif verb in ("d", "x", "X", "o", "b"):
            if isinstance(arg, float) or not isinstance(arg, int) or isinstance(arg, bool):
                out.append(f"%!{verb}({_go_type(arg)}={go_str(arg)})")
            elif verb == "b":
                out.append(format(arg, "b"))
            else:
                out.append((spec + verb) % arg)
        elif verb in ("f", "F", "e", "E", "g", "G"):
            if isinstance(arg, bool) or not isinstance(arg, (int, float)):
                out.append(f"%!{verb}({_go_type(arg)}={go_str(arg)})")
            else:
                f = float(arg)
                if math.isnan(f) or math.isinf(f):
                    out.append(_go_float(f))
                else:
                    out.append((spec + verb) % f)
        else:
            out.append(f"%!{verb}({_go_type(arg)}={go_str(arg)})")
    out.append(fmt[pos:])
    if i < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{_go_type(a)}={go_str(a)}" for a in args[i:]) + ")")
    return "".join(out)


def _go_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


# -- lexing and parsing ------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<var>\$[A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z_0-9]*)+|\.)
  | (?P<op>:=|=|\||\(|\)|,)
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
    )""",
    re.X | re.S,
)


@dataclass
class _Tok:
    kind: str
    text: str


def _lex(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"unexpected {src[pos:].strip()[:20]!r} in command")
        kind = m.lastgroup or ""
        toks.append(_Tok(kind, m.group(kind)))
        pos = m.end()
        # A field directly after ")" or a variable is a field access on it, not a new operand.
    return toks


# Nodes: ("text", s) ("out", pipe) ("if", [(pipe, body)...], else_body) ("with", pipe, body, else)
# ("range", vars, pipe, body, else) ("set", pipe)
Node = tuple[Any, ...]


def _go_unquote(s: str) -> str:
    if s.startswith("`"):
        return s[1:-1]
    body = s[1:-1]
    return re.sub(
        r"\\(.)",
        lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}.get(m.group(1), m.group(0)),
        body,
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.items: list[tuple[str, Any]] = []
        pos = 0
        trim_next = False
        for m in _ACTION.finditer(text):
            chunk = text[pos:m.start()]
            if trim_next:
                chunk = chunk.lstrip()
            if m.group(1):
                chunk = chunk.rstrip()
            if chunk:
                self.items.append(("text", chunk))
            inner = m.group(2).strip()
            if inner.startswith("/*"):
                if not inner.endswith("*/"):
                    raise TemplateError("unclosed comment")
            else:
                self.items.append(("action", inner))
            trim_next = bool(m.group(3))
            pos = m.end()
        rest = text[pos:]
        if "{{" in rest:
            raise TemplateError("unclosed action")
        if trim_next:
            rest = rest.lstrip()
        if rest:
            self.items.append(("text", rest))
        self.i = 0

    def parse(self) -> list[Node]:
        body, end = self._list()
        if end is not None:
            raise TemplateError(f"unexpected {{{{{end}}}}}")
        return body

    def _list(self) -> tuple[list[Node], str | None]:
        """Nodes until ``end``/``else``; returns (nodes, the terminating keyword action or None)."""
        out: list[Node] = []
        while self.i < len(self.items):
            kind, val = self.items[self.i]
            self.i += 1
            if kind == "text":
                out.append(("text", val))
                continue
            word = val.split(None, 1)[0] if val else ""
            if word in ("end", "else"):
                return out, val
            if word in ("if", "with"):
                out.append(self._branch(word, val[len(word):]))
            elif word == "range":
                out.append(self._range(val[5:]))
            elif word in ("define", "template", "block", "break", "continue"):
                raise TemplateError(f'"{word}" is not supported in alert templates')
            elif not val:
                raise TemplateError("missing value for command")
            else:
                pipe = _parse_pipeline(_lex(val))
                out.append(("set" if pipe[0] else "out", pipe))
        return out, None

    def _branch(self, word: str, rest: str) -> Node:
        arms: list[tuple[Any, list[Node]]] = []
        pipe = _parse_pipeline(_lex(rest))
        while True:
            body, end = self._list()
            arms.append((pipe, body))
            if end is None:
                raise TemplateError(f"unexpected EOF: missing {{{{end}}}} for {word}")
            if end == "end":
                return (word, arms, [])
            rest_else = end[4:].strip()
            if rest_else.startswith(word + " ") or (word == "if" and rest_else.startswith("if")):
                pipe = _parse_pipeline(_lex(rest_else[len(word):]))
                continue
            if rest_else:
                raise TemplateError(f"unexpected {rest_else!r} after else")
            else_body, end2 = self._list()
            if end2 != "end":
                raise TemplateError(f"unexpected EOF: missing {{{{end}}}} for {word}")
            return (word, arms, else_body)

    def _range(self, rest: str) -> Node:
        toks = _lex(rest)
        names: list[str] = []
        if ":=" in [t.text for t in toks]:
            k = [t.text for t in toks].index(":=")
            names = [t.text for t in toks[:k] if t.kind == "var"]
            toks = toks[k + 1:]
        pipe = _parse_pipeline(toks)
        body, end = self._list()
        else_body: list[Node] = []
        if end is None:
            raise TemplateError("unexpected EOF: missing {{end}} for range")
        if end.startswith("else"):
            else_body, end = self._list()
            if end != "end":
                raise TemplateError("unexpected EOF: missing {{end}} for range")
        return ("range", names, pipe, body, else_body)


def _parse_pipeline(toks: list[_Tok]) -> tuple[str | None, list[list[Any]]]:
    """(variable assigned or None, commands); a command is a list of operands."""
    var = None
    if len(toks) >= 2 and toks[0].kind == "var" and toks[1].text in (":=", "="):
        var = toks[0].text
        toks = toks[2:]
    cmds: list[list[Any]] = []
    cur: list[Any] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.text == "|":
            if not cur:
                raise TemplateError("missing command before '|'")
            cmds.append(cur)
            cur = []
            i += 1
            continue
        if t.text == "(":
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"(": 1, ")": -1}.get(toks[j].text, 0) if toks[j].kind == "op" else 0
                j += 1
            if depth:
                raise TemplateError("unclosed left paren")
            operand: Any = ("pipe", _parse_pipeline(toks[i + 1:j - 1]))
            i = j
            if i < len(toks) and toks[i].kind == "field" and toks[i].text != ".":
                operand = ("chain", operand, toks[i].text.split(".")[1:])
                i += 1
            cur.append(operand)
            continue
        if t.text == ")":
            raise TemplateError("unexpected right paren")
        if t.kind == "op":
            raise TemplateError(f"unexpected {t.text!r} in operand")
        cur.append(_operand(t))
        i += 1
    if cur:
        cmds.append(cur)
    if not cmds:
        raise TemplateError("missing value for command")
    return (var, cmds)


def _operand(t: _Tok) -> Any:
    if t.kind in ("str", "raw"):
        return ("lit", _go_unquote(t.text))
    if t.kind == "num":
        text = t.text
        if re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", text):
            return ("lit", int(text, 0))
        return ("lit", float(text))
    if t.kind == "var":
        parts = t.text.split(".")
        return ("var", parts[0], parts[1:])
    if t.kind == "field":
        return ("field", [p for p in t.text.split(".") if p])
    if t.text in ("true", "false"):
        return ("lit", t.text == "true")
    if t.text == "nil":
        return ("lit", None)
    return ("func", t.text)


@functools.lru_cache(maxsize=4096)
def _compile(text: str) -> list[Node]:
    return _Parser(text).parse()


def check_template(text: str) -> None:
    """Raise :class:`TemplateError` if ``text`` does not parse (``rules check`` uses this)."""
    if "{{" not in text:
        return
    nodes = _compile(text)
    _check_funcs(nodes)


def _check_funcs(nodes: Sequence[Any]) -> None:
    for n in nodes:
        if isinstance(n, tuple):
            if len(n) == 2 and n[0] == "func" and n[1] not in _FUNCS:
                raise TemplateError(f'function "{n[1]}" not defined')
            _check_funcs([x for x in n if isinstance(x, (tuple, list))])
        elif isinstance(n, list):
            _check_funcs(n)


# -- execution -----------------------------------------------------------------------------------


def _truth(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, dict)):
        return bool(v)
    return True


def _field(v: Any, name: str) -> Any:
    if isinstance(v, dict):
        return v.get(name, "")
    if v is None:
        raise TemplateError(f"nil pointer evaluating .{name}")
    if hasattr(v, name) and name[:1].isupper():
        return getattr(v, name)
    raise TemplateError(f"can't evaluate field {name} in type {_go_type(v)}")


def _cmp_args(a: Any, b: Any) -> tuple[Any, Any]:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a), float(b)
    if type(a) is not type(b):
        raise TemplateError(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
    return a, b


def _eq(a: Any, *bs: Any) -> bool:
    for b in bs:
        x, y = _cmp_args(a, b)
        if x == y:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    x, y = _cmp_args(a, b)
    return bool(x < y)


def _first(v: Any) -> Any:
    if not v:
        raise TemplateError("first() called on vector with no elements")
    return v[0]


def _re_replace_all(pattern: str, repl: str, text: str) -> str:
    py_repl = re.sub(r"\$\{?(\w+)\}?", lambda m: f"\\g<{m.group(1)}>", repl.replace("\\", "\\\\"))
    try:
        return re.sub(pattern, py_repl, text)
    except re.error as exc:
        raise TemplateError(f"error parsing regexp: {exc}") from None


def _match(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error as exc:
        raise TemplateError(f"error parsing regexp: {exc}") from None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _strip_domain(host: str) -> str:
    if host.startswith("[") or host.replace(".", "").isdigit():
        return host
    name, colon, port = host.partition(":")
    return name.split(".", 1)[0] + (colon + port)


def _parse_duration(s: str) -> float:
    from ._duration import parse_duration

    try:
        return parse_duration(s) / 1000
    except ValueError as exc:
        raise TemplateError(str(exc)) from None


def _title(s: str) -> str:
    return re.sub(r"(^|[^\w])(\w)", lambda m: m.group(1) + m.group(2).upper(), s)


_FUNCS: dict[str, Callable[..., Any]] = {
    "humanize": humanize,
    "humanize1024": humanize_1024,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": lambda v: _g4(_to_float(v) * 100) + "%",
    "humanizeTimestamp": _humanize_timestamp,
    "toTime": lambda v: datetime.fromtimestamp(_to_float(v), UTC),
    "printf": _printf,
    "print": lambda *a: "".join(go_str(x) for x in a),
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "toUpper": lambda s: str(s).upper(),
    "toLower": lambda s: str(s).lower(),
    "title": lambda s: _title(str(s)),
    "match": _match,
    "reReplaceAll": _re_replace_all,
    "safeHtml": lambda s: str(s),
    "html": lambda s: str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    .replace('"', "&#34;").replace("'", "&#39;"),
    "urlquery": lambda *a: urllib.parse.quote_plus("".join(go_str(x) for x in a)),
    "len": lambda v: len(v),
    "index": lambda v, *keys: functools.reduce(lambda acc, k: acc.get(k, "") if isinstance(acc, dict) else acc[k],
                                               keys, v),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": lambda a, b: _lt(a, b) or _eq(a, b),
    "gt": lambda a, b: _lt(b, a),
    "ge": lambda a, b: _lt(b, a) or _eq(a, b),
    "not": lambda v: not _truth(v),
    "first": _first,
    "label": lambda name, s: _field(s, "Labels").get(name, ""),
    "value": lambda s: _field(s, "Value"),
    "strvalue": lambda s: _field(s, "Labels").get("__value__", ""),
    "sortByLabel": lambda name, v: sorted(v, key=lambda s: s.Labels.get(name, "")),
    "stripPort": lambda s: _strip_port(str(s)),
    "stripDomain": lambda s: _strip_domain(str(s)),
    "parseDuration": lambda s: _parse_duration(str(s)),
    "args": lambda *a: {f"arg{i}": v for i, v in enumerate(a)},
    "tableLink": lambda expr: "/graph?g0.expr=" + urllib.parse.quote_plus(str(expr)) + "&g0.tab=1",
    "graphLink": lambda expr: "/graph?g0.expr=" + urllib.parse.quote_plus(str(expr)) + "&g0.tab=0",
    # query, pathPrefix and externalURL are bound per expansion (see _Exec).
    "query": lambda q: [],
    "pathPrefix": lambda: "",
    "externalURL": lambda: "",
    "and": lambda *a: a[-1],
    "or": lambda *a: a[-1],
}


class _Exec:
    def __init__(self, dot: dict[str, Any], query: QueryFunc | None, external_url: str) -> None:
        self.vars: list[dict[str, Any]] = [{"$": dot}]
        self.query = query
        self.external_url = external_url
        self.out: list[str] = []

    def var(self, name: str) -> Any:
        for scope in reversed(self.vars):
            if name in scope:
                return scope[name]
        raise TemplateError(f'undefined variable "{name}"')

    def run(self, nodes: list[Node], dot: Any) -> None:
        for n in nodes:
            kind = n[0]
            if kind == "text":
                self.out.append(n[1])
            elif kind == "out":
                self.out.append(go_str(self.pipe(n[1], dot)))
            elif kind == "set":
                value = self.pipe(n[1], dot)
                name = n[1][0]
                for scope in reversed(self.vars):
                    if name in scope:
                        scope[name] = value
                        break
                else:
                    self.vars[-1][name] = value
            elif kind in ("if", "with"):
                for pipe, body in n[1]:
                    value = self.pipe(pipe, dot)
                    if _truth(value):
                        self.vars.append({})
                        self.run(body, value if kind == "with" else dot)
                        self.vars.pop()
                        break
                else:
                    self.vars.append({})
                    self.run(n[2], dot)
                    self.vars.pop()
            elif kind == "range":
                _, names, pipe, body, else_body = n
                seq = self.pipe(pipe, dot)
                items = sorted(seq.items()) if isinstance(seq, dict) else list(enumerate(seq or []))
                if not items:
                    self.run(else_body, dot)
                for k, v in items:
                    scope: dict[str, Any] = {}
                    if len(names) == 1:
                        scope[names[0]] = v
                    elif len(names) == 2:
                        scope[names[0]], scope[names[1]] = k, v
                    self.vars.append(scope)
                    self.run(body, v)
                    self.vars.pop()

    def pipe(self, pipe: tuple[str | None, list[list[Any]]], dot: Any) -> Any:
        _, cmds = pipe
        value: Any = _NOTHING
        for cmd in cmds:
            value = self.command(cmd, dot, value)
        return value

    def command(self, cmd: list[Any], dot: Any, prev: Any) -> Any:
        head = cmd[0]
        if head[0] == "func":
            args = [self.operand(a, dot) for a in cmd[1:]]
            if prev is not _NOTHING:
                args.append(prev)
            return self.call(head[1], args)
        if len(cmd) > 1 or prev is not _NOTHING:
            raise TemplateError(f"can't give argument to non-function {self._describe(head)}")
        return self.operand(head, dot)

    @staticmethod
    def _describe(op: Any) -> str:
        if op[0] == "var":
            return ".".join([op[1], *op[2]])
        if op[0] == "lit":
            return go_str(op[1])
        return op[0]

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "query":
            if self.query is None:
                raise TemplateError("query is not available here")
            if len(args) != 1:
                raise TemplateError("wrong number of args for query: want 1")
            return self.query(str(args[0]))
        if name == "externalURL":
            return self.external_url
        if name == "pathPrefix":
            return urllib.parse.urlparse(self.external_url).path
        if name in ("and", "or"):
            for a in args:
                if _truth(a) != (name == "and"):
                    return a
            return args[-1] if args else None
        fn = _FUNCS.get(name)
        if fn is None:
            raise TemplateError(f'function "{name}" not defined')
        try:
            return fn(*args)
        except TemplateError:
            raise
        except TypeError:
            raise TemplateError(f"wrong number or type of args for {name}") from None
        except (ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            raise TemplateError(f"error calling {name}: {exc}") from None

    def operand(self, op: Any, dot: Any) -> Any:
        kind = op[0]
        if kind == "lit":
            return op[1]
        if kind == "var":
            value = self.var(op[1])
            for f in op[2]:
                value = _field(value, f)
            return value
        if kind == "field":
            value = dot
            for f in op[1]:
                value = _field(value, f)
            return value
        if kind == "pipe":
            return self.pipe(op[1], dot)
        if kind == "chain":
            value = self.operand(op[1], dot)
            for f in op[2]:
                value = _field(value, f)
            return value
        if kind == "func":
            return self.call(op[1], [])
        raise TemplateError(f"unexpected operand {kind}")


_NOTHING = object()


def expand(
    text: str,
    *,
    labels: dict[str, str],
    value: float,
    external_labels: dict[str, str] | None = None,
    external_url: str = "",
    query: QueryFunc | None = None,
) -> str:
    """Run the template ``text`` for one alert; never raises (errors become the text)."""
    if "{{" not in text:
        return text
    dot = {"Labels": labels, "ExternalLabels": external_labels or {}, "ExternalURL": external_url, "Value": value}
    try:
        nodes = _compile(text)
        ex = _Exec(dot, query, external_url)
        ex.vars[0].update({"$labels": labels, "$externalLabels": external_labels or {},
                           "$externalURL": external_url, "$value": value})
        ex.run(nodes, dot)
        return "".join(ex.out)
    except TemplateError as exc:
        return f"<error expanding template: {exc}>"
    except RecursionError:
        return "<error expanding template: template too deeply nested>"
