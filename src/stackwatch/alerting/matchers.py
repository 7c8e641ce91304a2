"""Label matchers in every spelling Alertmanager accepts.

``severity="critical"``, ``severity=critical``, ``team=~"db|cache"``, ``env!~"dev.*"`` one per
list item or several in braces (``{a="1", b!="2"}``), plus the legacy ``match:``/``match_re:``
maps. Regular expressions are anchored at both ends, as in Prometheus and Alertmanager, so
``team=~"db"`` does not match ``team="dba"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Matcher", "matches_all", "parse_matcher", "parse_matchers"]

_OPS = ("=~", "!~", "!=", "=")
_NAME = re.compile(r"\s*([^\s=!~{},\"']+|\"(?:[^\"\\]|\\.)*\")\s*")


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, name: str, op: str, value: str) -> Matcher:
        if op not in _OPS:
            raise ValueError(f"unknown matcher operator {op!r}")
        if not name:
            raise ValueError("matcher has an empty label name")
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(f"^(?:{value})$", re.DOTALL)
            except re.error as exc:
                raise ValueError(f"bad regular expression {value!r} in matcher for {name!r}: {exc}") from None
        return cls(name, op, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies the matcher; a missing label counts as the empty string."""
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self._regex is not None
        found = self._regex.match(actual) is not None
        return found if self.op == "=~" else not found

    @property
    def is_regex(self) -> bool:
        return self.op in ("=~", "!~")

    @property
    def is_negative(self) -> bool:
        return self.op in ("!=", "!~")

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'

    def to_json(self) -> dict[str, object]:
        """Alertmanager v2 API shape."""
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex, "isEqual": not self.is_negative}


def equality_filter(labels: Mapping[str, str]) -> str:
    """``{a="1",b="x\\y"}``: matchers for exactly these labels, values escaped so that
    :func:`parse_matchers` reads them back unchanged (a backslash or quote in a value once made
    a notification's "Silence" link create a silence that matched nothing)."""
    return "{" + ",".join(str(Matcher(k, "=", v)) for k, v in sorted(labels.items())) + "}"


def _unquote(text: str) -> str:
    body = text[1:-1]
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _split_top(text: str) -> list[str]:
    """Split ``a="x,y", b=z`` on the commas outside quotes."""
    parts, buf, quoted, escape = [], [], False, False
    for ch in text:
        if escape:
            buf.append(ch)
            escape = False
            continue
        if ch == "\\" and quoted:
            buf.append(ch)
            escape = True
            continue
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if quoted:
        raise ValueError(f"unterminated quote in {text!r}")
    parts.append("".join(buf))
    return [p for p in (p.strip() for p in parts) if p]


def parse_matcher(text: str) -> Matcher:
    """One matcher: ``name op value`` with the value quoted or not."""
    source = text
    m = _NAME.match(text)
    if not m:
        raise ValueError(f"bad matcher {source!r}: expected a label name")
    name = m.group(1)
    if name.startswith('"'):
        name = _unquote(name)
    rest = text[m.end():]
    for op in _OPS:
        if rest.startswith(op):
            value = rest[len(op):].strip()
            break
    else:
        raise ValueError(f"bad matcher {source!r}: expected one of = != =~ !~ after {name!r}")
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"') or (value.endswith('\\"') and not value.endswith('\\\\"')):
            raise ValueError(f"bad matcher {source!r}: unterminated quoted value")
        value = _unquote(value)
    elif value.startswith("'") or any(c in value for c in '"{}'):
        raise ValueError(f"bad matcher {source!r}: quote the value with double quotes")
    return Matcher.create(name, op, value)


def parse_matchers(text: str) -> list[Matcher]:
    """One or more matchers: ``a="1"``, ``a=1, b!=2`` or ``{a="1", b!="2"}``."""
    body = text.strip()
    if body.startswith("{"):
        if not body.endswith("}"):
            raise ValueError(f"bad matchers {text!r}: missing closing brace")
        body = body[1:-1]
    return [parse_matcher(part) for part in _split_top(body)]


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
