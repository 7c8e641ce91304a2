"""Prometheus relabeling: ``relabel_configs`` on targets, ``metric_relabel_configs`` on samples.

Teams paste these blocks from their ``prometheus.yml``, so the semantics are Prometheus's:
the source labels' values are joined with ``separator`` (default ``;``), ``regex`` (default
``(.*)``) must match the *whole* string, ``replacement`` (default ``$1``) is expanded with Go's
``$1`` / ``${1}`` / ``${name}`` syntax, and a label set to the empty string is removed. All
actions are supported: replace, keep, drop, keepequal, dropequal, hashmod, labelmap,
labeldrop, labelkeep, lowercase, uppercase.

Rules are compiled once when the configuration loads (a bad regex or a missing
``target_label`` is a configuration error naming the rule), and applied per target or per
series; the series path is hot, so :meth:`RelabelRule.apply` does no allocation when nothing
matches.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stackwatch.errors import ConfigError

__all__ = ["ACTIONS", "RelabelRule", "compile_rules", "expand", "relabel"]

ACTIONS = frozenset(
    {"replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop", "labelkeep",
     "lowercase", "uppercase"}
)  # fmt: skip
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Go's regexp.Expand: ``$name`` takes the longest run of word characters, ``${name}`` is explicit,
# ``$$`` is a literal dollar.
_TEMPLATE = re.compile(r"\$(?:\$|\{(\w+)\}|(\w+))")


def expand(template: str, match: re.Match[str]) -> str:
    """Expand ``$1``, ``${1}``, ``${name}`` and ``$$`` in ``template`` from ``match``, like Go.

    A reference to a group that does not exist (``$9`` with two groups, or ``$1x`` which names a
    group ``1x``) expands to the empty string, as in Go; this is why ``${1}x`` is the way to
    write a group followed by letters.
    """
    if "$" not in template:
        return template

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name is None:
            return "$"
        try:
            value = match.group(int(name)) if name.isdigit() else match.group(name)
        except IndexError:  # no such group
            return ""
        return value or ""

    return _TEMPLATE.sub(one, template)



@dataclass(frozen=True)
class RelabelRule:
    action: str
    source_labels: tuple[str, ...]
    separator: str
    regex: re.Pattern[str]
    target_label: str
    replacement: str
    modulus: int

    def apply(self, labels: dict[str, str]) -> dict[str, str] | None:
        """Apply to ``labels`` (changed in place and returned); None when the set is dropped."""
        action = self.action
        if action in ("labeldrop", "labelkeep", "labelmap"):
            return self._on_names(labels)
        value = self.separator.join(labels.get(name, "") for name in self.source_labels)
        if action == "replace":
            m = self.regex.fullmatch(value)
            if m is None:
                return labels
            target = expand(self.target_label, m)
            result = expand(self.replacement, m)
            if not _LABEL_NAME.match(target):
                return labels  # Prometheus skips a rule whose expanded target is no label name
            if result:
                labels[target] = result
            else:
                labels.pop(target, None)
            return labels
        if action == "keep":
            return labels if self.regex.fullmatch(value) else None
        if action == "drop":
            return None if self.regex.fullmatch(value) else labels
        if action == "keepequal":
            return labels if value == labels.get(self.target_label, "") else None
        if action == "dropequal":
            return None if value == labels.get(self.target_label, "") else labels
        if action == "hashmod":
            # The low 8 bytes of the MD5 sum, big-endian, modulo: the same shard as Prometheus.
            digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
            labels[self.target_label] = str(int.from_bytes(digest[8:], "big") % self.modulus)
            return labels
        if action in ("lowercase", "uppercase"):
            converted = value.lower() if action == "lowercase" else value.upper()
            if converted:
                labels[self.target_label] = converted
            else:
                labels.pop(self.target_label, None)
            return labels
        raise AssertionError(action)  # compile_rules admits only known actions

    def _on_names(self, labels: dict[str, str]) -> dict[str, str]:
        if self.action == "labeldrop":
            for name in [n for n in labels if self.regex.fullmatch(n)]:
                del labels[name]
        elif self.action == "labelkeep":
            for name in [n for n in labels if not self.regex.fullmatch(n)]:
                del labels[name]
        else:  # labelmap
            for name, value in list(labels.items()):
                m = self.regex.fullmatch(name)
                if m is not None:
                    labels[expand(self.replacement, m)] = value
        return labels


def compile_rules(raw: Any, where: str) -> list[RelabelRule]:
    """Validate a ``relabel_configs`` list; errors name ``where`` and the rule's index."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list of relabel rules")
    rules = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{here}: must be a mapping")
        unknown = set(item) - {"action", "source_labels", "separator", "regex", "target_label", "replacement",
                               "modulus"}
        if unknown:
            raise ConfigError(f"{here}: unknown key(s) {', '.join(sorted(unknown))}")
        action = str(item.get("action", "replace")).lower()
        if action not in ACTIONS:
            raise ConfigError(f"{here}: unknown action {action!r} (one of {', '.join(sorted(ACTIONS))})")
        sources = item.get("source_labels") or []
        if isinstance(sources, str):
            sources = [sources]
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise ConfigError(f"{here}.source_labels: must be a list of label names")
        pattern = item.get("regex", "(.*)")
        try:
            regex = re.compile(str(pattern))
        except re.error as exc:
            raise ConfigError(f"{here}.regex: {pattern!r} is not a valid regular expression: {exc}") from None
        target = str(item.get("target_label", ""))
        needs_target = {"replace", "hashmod", "lowercase", "uppercase", "keepequal", "dropequal"}
        if action in needs_target and not target:
            raise ConfigError(f"{here}: action {action} needs target_label")
        modulus = item.get("modulus", 0)
        if action == "hashmod" and (not isinstance(modulus, int) or modulus <= 0):
            raise ConfigError(f"{here}: action hashmod needs a positive integer modulus")
        if action in ("keepequal", "dropequal", "lowercase", "uppercase") and not _LABEL_NAME.match(target):
            raise ConfigError(f"{here}.target_label: {target!r} is not a valid label name")
        if action in ("labeldrop", "labelkeep") and (sources or target):
            raise ConfigError(f"{here}: action {action} takes only regex")
        rules.append(
            RelabelRule(
                action=action,
                source_labels=tuple(sources),
                separator=str(item.get("separator", ";")),
                regex=regex,
                target_label=target,
                replacement=str(item.get("replacement", "$1")),
                modulus=int(modulus or 0),
            )
        )
    return rules


def relabel(labels: Mapping[str, str], rules: Sequence[RelabelRule]) -> dict[str, str] | None:
    """Apply ``rules`` in order to a copy of ``labels``; None when a rule drops the set."""
    out: dict[str, str] | None = dict(labels)
    for rule in rules:
        out = rule.apply(out)
        if out is None:
            return None
    return out
