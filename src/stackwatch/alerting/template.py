"""A small, tested subset of Go's text/template, enough for Alertmanager-style messages.

Supported (see docs/alerting-notifications.md):

* fields: ``{{ .Status }}``, ``{{ .CommonLabels.alertname }}``, ``{{ $.ExternalURL }}`` (``$`` is the
  top-level data inside ``range``), a missing map key renders as the empty string;
* ``{{ range .Alerts }}...{{ else }}...{{ end }}`` (``.`` becomes each item), ``{{ range .Alerts.Firing }}``;
* ``{{ if PIPELINE }}...{{ else if PIPELINE }}...{{ else }}...{{ end }}``;
* pipelines ``{{ .Status | toUpper }}`` and functions ``len index toUpper toLower title join eq ne
  not and or printf default``;
* whitespace trimming ``{{-`` and ``-}}`` and comments ``{{/* ... */}}``.

Templates are parsed when the configuration loads, so a bad template stops start-up with the
configuration path of the offending field instead of failing at 3 a.m. when a page is due.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Template", "TemplateError"]


class TemplateError(ValueError):
    pass


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<field>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[|()])
)""", re.VERBOSE)


def _title(s: Any) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in str(s).split(" "))


def _printf(fmt: str, *args: Any) -> str:
    try:
        return re.sub(r"%v", "%s", fmt) % args
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"printf {fmt!r}: {exc}") from None


def _truth(v: Any) -> bool:
    return bool(v) and v != 0


FUNCS: dict[str, Callable[..., Any]] = {
    "len": lambda v: len(v),
    "index": lambda v, *keys: _index(v, keys),
    "toUpper": lambda s: str(s).upper(),
    "toLower": lambda s: str(s).lower(),
    "title": _title,
    "join": lambda sep, items: str(sep).join(str(i) for i in items),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda v: not _truth(v),
    "and": lambda *vs: next((v for v in vs if not _truth(v)), vs[-1]),
    "or": lambda *vs: next((v for v in vs if _truth(v)), vs[-1]),
    "printf": _printf,
    "default": lambda d, v=None: v if _truth(v) else d,
    "safeHtml": lambda s: s,
}


def _index(value: Any, keys: Sequence[Any]) -> Any:
    for key in keys:
        if isinstance(value, Mapping):
            value = value.get(key, "")
        else:
            try:
                value = value[int(key)]
            except (IndexError, ValueError, TypeError):
                return ""
    return value


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name, "")
    attr = getattr(value, name, None)
    if attr is None:
        return ""
    return attr() if callable(attr) else attr


# --- parse tree ---------------------------------------------------------------------------------

@dataclass
class _Text:
    text: str


@dataclass
class _Pipe:
    commands: list[list[Any]]  # each command: list of args (first may be a function name)


@dataclass
class _Output:
    pipe: _Pipe


@dataclass
class _If:
    branches: list[tuple[_Pipe, list[Any]]]
    otherwise: list[Any]


@dataclass
class _Range:
    pipe: _Pipe
    body: list[Any]
    otherwise: list[Any]


@dataclass
class _Func:
    name: str


@dataclass
class _FieldRef:
    root: str  # "." or "$"
    path: tuple[str, ...]


def _parse_pipe(text: str, source: str) -> _Pipe:
    pos = 0
    commands: list[list[Any]] = [[]]
    stack: list[list[list[Any]]] = []
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot parse {text[pos:].strip()!r} in {source!r}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")
            commands[-1].append(raw[1:-1] if raw[0] == "`" else bytes(raw[1:-1], "utf-8").decode("unicode_escape"))
        elif m.group("num") is not None:
            n = m.group("num")
            commands[-1].append(float(n) if "." in n else int(n))
        elif m.group("field"):
            f = m.group("field")
            if f.startswith("$"):
                head, _, rest = f.partition(".")
                if head != "$":
                    raise TemplateError(f"variables other than $ are not supported ({head!r} in {source!r})")
                commands[-1].append(_FieldRef("$", tuple(p for p in rest.split(".") if p)))
            else:
                commands[-1].append(_FieldRef(".", tuple(p for p in f.split(".") if p)))
        elif m.group("ident") is not None:
            name = m.group("ident")
            if name in ("true", "false"):
                commands[-1].append(name == "true")
            elif name in FUNCS:
                commands[-1].append(_Func(name))
            else:
                raise TemplateError(f"unknown function {name!r} in {source!r}")
        else:
            p = m.group("punct")
            if p == "|":
                if not commands[-1]:
                    raise TemplateError(f"empty command before '|' in {source!r}")
                commands.append([])
            elif p == "(":
                stack.append(commands)
                commands = [[]]
            else:
                if not stack:
                    raise TemplateError(f"unbalanced ')' in {source!r}")
                inner = _Pipe(commands)
                commands = stack.pop()
                commands[-1].append(inner)
    if stack:
        raise TemplateError(f"unbalanced '(' in {source!r}")
    if not commands[-1]:
        raise TemplateError(f"empty pipeline in {source!r}")
    return _Pipe(commands)


class Template:
    """A parsed template; :meth:`render` fills it with data (a mapping or an object)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._nodes = self._parse(source)

    @staticmethod
    def _parse(source: str) -> list[Any]:
        pieces: list[Any] = []
        pos = 0
        trim_next = False
        for m in _ACTION.finditer(source):
            text = source[pos:m.start()]
            if trim_next:
                text = text.lstrip()
            if m.group(1):
                text = text.rstrip()
            pieces.append(_Text(text))
            body = m.group(2).strip()
            trim_next = bool(m.group(3))
            pos = m.end()
            pieces.append(("action", body))
        tail = source[pos:]
        if trim_next:
            tail = tail.lstrip()
        if "{{" in tail:
            raise TemplateError(f"unclosed action in template {source!r}")
        pieces.append(_Text(tail))

        root: list[Any] = []
        # stack entries: (kind, node, current list)
        stack: list[tuple[str, Any, list[Any]]] = [("root", None, root)]
        for piece in pieces:
            cur = stack[-1][2]
            if isinstance(piece, _Text):
                if piece.text:
                    cur.append(piece)
                continue
            body = piece[1]
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    raise TemplateError(f"unclosed comment in template {source!r}")
                continue
            word, _, rest = body.partition(" ")
            if word == "if":
                node = _If([(_parse_pipe(rest, body), [])], [])
                cur.append(node)
                stack.append(("if", node, node.branches[0][1]))
            elif word == "range":
                rnode = _Range(_parse_pipe(rest, body), [], [])
                cur.append(rnode)
                stack.append(("range", rnode, rnode.body))
            elif word == "else":
                kind, node, _ = stack[-1]
                if kind == "if" and rest.startswith("if "):
                    node.branches.append((_parse_pipe(rest[3:], body), []))
                    stack[-1] = ("if", node, node.branches[-1][1])
                elif kind in ("if", "range") and not rest.strip():
                    stack[-1] = (kind + "-else", node, node.otherwise)
                else:
                    raise TemplateError(f"unexpected {{{{ {body} }}}} in template {source!r}")
            elif word == "end":
                if len(stack) == 1:
                    raise TemplateError(f"unexpected {{{{ end }}}} in template {source!r}")
                stack.pop()
            elif word in ("with", "define", "template", "block"):
                raise TemplateError(f"{{{{ {word} }}}} is not supported in template {source!r}")
            else:
                cur.append(_Output(_parse_pipe(body, body)))
        if len(stack) != 1:
            raise TemplateError(f"missing {{{{ end }}}} for {{{{ {stack[-1][0].split('-')[0]} }}}} in template {source!r}")
        return root

    def render(self, data: Any) -> str:
        out: list[str] = []
        self._exec(self._nodes, data, data, out)
        return "".join(out)

    def _exec(self, nodes: list[Any], dot: Any, root: Any, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Output):
                value = self._pipe(node.pipe, dot, root)
                out.append(_render_value(value))
            elif isinstance(node, _If):
                for pipe, body in node.branches:
                    if _truth(self._pipe(pipe, dot, root)):
                        self._exec(body, dot, root, out)
                        break
                else:
                    self._exec(node.otherwise, dot, root, out)
            elif isinstance(node, _Range):
                items = self._pipe(node.pipe, dot, root)
                if isinstance(items, Mapping):
                    items = [items[k] for k in sorted(items)]
                if items:
                    for item in items:
                        self._exec(node.body, item, root, out)
                else:
                    self._exec(node.otherwise, dot, root, out)

    def _arg(self, arg: Any, dot: Any, root: Any) -> Any:
        if isinstance(arg, _FieldRef):
            value = dot if arg.root == "." else root
            for name in arg.path:
                value = _field(value, name)
            return value
        if isinstance(arg, _Pipe):
            return self._pipe(arg, dot, root)
        return arg

    def _pipe(self, pipe: _Pipe, dot: Any, root: Any) -> Any:
        result: Any = None
        for i, command in enumerate(pipe.commands):
            head = command[0]
            if isinstance(head, _Func):
                args = [self._arg(a, dot, root) for a in command[1:]]
                if i > 0:
                    args.append(result)
                try:
                    result = FUNCS[head.name](*args)
                except TemplateError:
                    raise
                except Exception as exc:
                    raise TemplateError(f"{head.name}: {exc}") from None
            else:
                if len(command) > 1 or i > 0:
                    raise TemplateError(f"cannot call a non-function in {self.source!r}")
                result = self._arg(head, dot, root)
        return result


def _render_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e21 else str(int(value))
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_render_value(v) for v in value) + "]"
    return str(value)
