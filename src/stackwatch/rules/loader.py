"""Reading and validating rule files in Prometheus's format (plus Stackwatch's extensions).

Errors carry ``file:line`` like ``promtool check rules`` so a CI log points at the mistake;
every problem in a file is reported, not only the first. PromQL is parsed by the same parser the
query engine uses, so a rule that loads is a rule the engine can run.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stackwatch.query.logql import QuerySyntaxError, compile_query
from stackwatch.query.promql import ParseError
from stackwatch.query.promql._ast import parse as parse_promql

from ._duration import format_duration, parse_duration
from .model import Rule, RuleGroup, Threshold
from .template import TemplateError, check_template

__all__ = ["RuleError", "RuleFileError", "expand_globs", "load_files", "parse_groups", "parse_rule_file"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_GROUP_KEYS = {"name", "interval", "limit", "query_offset", "rules", "project"}
_RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations",
              "log", "error", "window", "threshold", "thresholds", "no_data", "compare"}
_ERROR_KINDS = ("new_issue", "regression", "event_rate")
_SEVERITY_ORDER = ("critical", "high", "error", "warning", "medium", "low", "info")


@dataclass(frozen=True)
class RuleError:
    """One problem in a rule file, located as precisely as the YAML allows."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class RuleFileError(ValueError):
    """A rule file (or API payload) that does not validate; ``errors`` lists every problem."""

    def __init__(self, errors: Sequence[RuleError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class _Map(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys started."""

    line = 0
    key_lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f'mapping key "{key}" already defined', key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)  # type: ignore[arg-type]


def expand_globs(patterns: Iterable[str], base: Path | None = None) -> list[Path]:
    """Files matching the ``rule_files`` globs, relative ones resolved against ``base``, sorted."""
    out: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        p = Path(pattern)
        if not p.is_absolute() and base is not None:
            p = base / p
        for match in sorted(glob.glob(str(p), recursive=True)):
            path = Path(match)
            if path.is_file() and path not in seen:
                seen.add(path)
                out.append(path)
    return out


def parse_rule_file(path: str | Path) -> list[RuleGroup]:
    """Load one rule file; raises :class:`RuleFileError` listing every problem in it."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RuleFileError([RuleError(name, 0, f"cannot read file: {exc.strerror}")]) from None
    return parse_groups(text, name)


def load_files(paths: Iterable[str | Path]) -> tuple[list[RuleGroup], list[RuleError]]:
    """Load many files, collecting the groups of the good ones and the errors of the bad ones."""
    groups: list[RuleGroup] = []
    errors: list[RuleError] = []
    for path in paths:
        try:
            groups.extend(parse_rule_file(path))
        except RuleFileError as exc:
            errors.extend(exc.errors)
    return groups, errors


def _yaml_error(file: str, exc: yaml.YAMLError) -> RuleError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return RuleError(file, mark.line + 1 if mark else 0, f"invalid YAML: {problem}")


def parse_groups(text: str, file: str = "<input>", *, default_project: str = "default",
                 origin: str = "file") -> list[RuleGroup]:
    """Parse the text of a rule file (``groups: [...]``); raises :class:`RuleFileError`."""
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise RuleFileError([_yaml_error(file, exc)]) from None
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise RuleFileError([RuleError(file, 1, "a rule file must be a mapping with a 'groups' list")])
    errors: list[RuleError] = []
    for key in doc:
        if key != "groups":
            errors.append(RuleError(file, _line(doc, key), f"field {key} not found in rule file (expected 'groups')"))
    raw_groups = doc.get("groups") or []
    if not isinstance(raw_groups, list):
        raise RuleFileError([RuleError(file, _line(doc, "groups"), "'groups' must be a list")])
    groups: list[RuleGroup] = []
    seen: set[str] = set()
    for raw in raw_groups:
        group = _parse_group(raw, file, errors, default_project, origin)
        if group is None:
            continue
        if group.name in seen:
            errors.append(RuleError(file, group.line, f'groupname: "{group.name}" is repeated in the same file'))
        seen.add(group.name)
        groups.append(group)
    if errors:
        raise RuleFileError(errors)
    return groups


def parse_group_mapping(raw: Any, file: str, *, default_project: str = "default", origin: str = "db") -> RuleGroup:
    """Validate one group given as a mapping (the API's body); raises :class:`RuleFileError`."""
    errors: list[RuleError] = []
    if isinstance(raw, dict) and not isinstance(raw, _Map):
        raw = _to_map(raw)
    group = _parse_group(raw, file, errors, default_project, origin)
    if errors or group is None:
        raise RuleFileError(errors or [RuleError(file, 0, "invalid group")])
    return group


def _to_map(value: Any) -> Any:
    if isinstance(value, dict):
        m = _Map({str(k): _to_map(v) for k, v in value.items()})
        m.line = 0
        m.key_lines = {}
        return m
    if isinstance(value, list):
        return [_to_map(v) for v in value]
    return value


def _line(m: Any, key: str | None = None) -> int:
    if isinstance(m, _Map):
        if key is not None and key in m.key_lines:
            return m.key_lines[key]
        return m.line
    return 0


def _duration(value: Any, what: str, file: str, line: int, errors: list[RuleError]) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        errors.append(RuleError(file, line, f"{what}: {exc}"))
        return 0


def _parse_group(raw: Any, file: str, errors: list[RuleError], default_project: str, origin: str) -> RuleGroup | None:
    if not isinstance(raw, dict):
        errors.append(RuleError(file, 0, "each group must be a mapping"))
        return None
    line = _line(raw)
    for key in raw:
        if key not in _GROUP_KEYS:
            errors.append(RuleError(file, _line(raw, key), f"field {key} not found in type rulefmt.RuleGroup"))
    name = raw.get("name")
    if not name or not isinstance(name, str):
        errors.append(RuleError(file, line, "groupname must not be empty"))
        name = ""
    interval = _duration(raw["interval"], f'group "{name}": interval', file, _line(raw, "interval"),
                         errors) if raw.get("interval") is not None else 0
    offset = _duration(raw["query_offset"], f'group "{name}": query_offset', file, _line(raw, "query_offset"),
                       errors) if raw.get("query_offset") is not None else 0
    limit = raw.get("limit") or 0
    if not isinstance(limit, int) or limit < 0:
        errors.append(RuleError(file, _line(raw, "limit"), f'group "{name}": limit must be a non-negative integer'))
        limit = 0
    project = raw.get("project") or default_project
    if not isinstance(project, str):
        errors.append(RuleError(file, _line(raw, "project"), f'group "{name}": project must be a string'))
        project = default_project
    raw_rules = raw.get("rules") or []
    if not isinstance(raw_rules, list):
        errors.append(RuleError(file, _line(raw, "rules"), f'group "{name}": rules must be a list'))
        raw_rules = []
    rules = []
    for i, raw_rule in enumerate(raw_rules):
        rule = _parse_rule(raw_rule, i, name, file, errors)
        if rule is not None:
            rules.append(rule)
    return RuleGroup(name, file, rules, interval, limit, offset, project, line, origin, _plain(raw))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _string_map(value: Any, what: str, where: str, file: str, line: int, errors: list[RuleError]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(RuleError(file, line, f"{where}: {what} must be a mapping"))
        return {}
    out = {}
    for k, v in value.items():
        if not _LABEL_NAME.match(str(k)):
            errors.append(RuleError(file, _line(value, k) or line, f'{where}: invalid {what[:-1]} name: "{k}"'))
            continue
        if isinstance(v, (dict, list)):
            errors.append(RuleError(file, _line(value, k) or line, f'{where}: {what[:-1]} "{k}" must be a string'))
            continue
        out[str(k)] = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return out


def _parse_rule(raw: Any, index: int, group: str, file: str, errors: list[RuleError]) -> Rule | None:
    if not isinstance(raw, dict):
        errors.append(RuleError(file, 0, f'group "{group}", rule {index + 1}: each rule must be a mapping'))
        return None
    line = _line(raw)
    alert, record = raw.get("alert"), raw.get("record")
    name = str(alert or record or "")
    where = f'group "{group}", rule {index + 1}' + (f', "{name}"' if name else "")
    n_errors = len(errors)

    def err(message: str, key: str | None = None) -> None:
        errors.append(RuleError(file, _line(raw, key) if key else line, f"{where}: {message}"))

    for key in raw:
        if key not in _RULE_KEYS:
            err(f"field {key} not found in type rulefmt.Rule", key)
    if alert is not None and record is not None:
        err("only one of 'record' and 'alert' must be set")
    if alert is None and record is None:
        err("one of 'record' or 'alert' must be set")
    kind = "record" if record is not None else "alert"
    if record is not None and not _METRIC_NAME.match(str(record)):
        err(f'invalid recording rule name: {record}', "record")
    if alert is not None and not str(alert).strip():
        err("alert name must not be empty", "alert")
    sources = [k for k in ("expr", "log", "error") if raw.get(k) not in (None, "")]
    if not sources:
        err("field 'expr' must be set in rule")
    elif len(sources) > 1:
        err(f"only one of {', '.join(sources)} may be set")
    source = {"expr": "promql", "log": "log", "error": "error"}.get(sources[0] if sources else "expr", "promql")
    if kind == "record":
        for key in ("for", "keep_firing_for", "annotations", "threshold", "thresholds", "no_data"):
            if raw.get(key) is not None:
                err(f"invalid field '{key}' in recording rule", key)
        if source != "promql":
            err("recording rules take a PromQL 'expr'")
    for_ms = _duration(raw["for"], f"{where}: for", file, _line(raw, "for"), errors) if raw.get("for") is not None else 0
    keep_ms = (_duration(raw["keep_firing_for"], f"{where}: keep_firing_for", file, _line(raw, "keep_firing_for"),
                         errors) if raw.get("keep_firing_for") is not None else 0)
    labels = _string_map(raw.get("labels"), "labels", where, file, _line(raw, "labels"), errors)
    annotations = _string_map(raw.get("annotations"), "annotations", where, file, _line(raw, "annotations"), errors)
    if "__name__" in labels:
        err('invalid label name: "__name__"', "labels")
    if kind == "alert":
        for what, mapping, key in (("label", labels, "labels"), ("annotation", annotations, "annotations")):
            for k, v in mapping.items():
                try:
                    check_template(v)
                except TemplateError as exc:
                    err(f'{what} "{k}": template: {exc}', key)
    window_ms = 0
    if raw.get("window") is not None:
        window_ms = _duration(raw["window"], f"{where}: window", file, _line(raw, "window"), errors)
    thresholds: list[tuple[str, Threshold]] = []
    if raw.get("threshold") is not None and raw.get("thresholds") is not None:
        err("use either 'threshold' or 'thresholds'", "threshold")
    if raw.get("threshold") is not None:
        try:
            thresholds.append(("", Threshold.parse(raw["threshold"])))
        except ValueError as exc:
            err(str(exc), "threshold")
    if raw.get("thresholds") is not None:
        th = raw["thresholds"]
        if not isinstance(th, dict) or not th:
            err("thresholds must map severities to conditions, like {critical: '> 90', warning: '> 80'}",
                "thresholds")
        else:
            for sev, cond in th.items():
                try:
                    thresholds.append((str(sev), Threshold.parse(cond)))
                except ValueError as exc:
                    err(f"threshold {sev}: {exc}", "thresholds")
            rank = {s: i for i, s in enumerate(_SEVERITY_ORDER)}
            thresholds.sort(key=lambda t: rank.get(t[0], len(rank)))
    no_data_ms = None
    if raw.get("no_data") is not None:
        no_data_ms = _duration(raw["no_data"], f"{where}: no_data", file, _line(raw, "no_data"), errors)
    expr = ""
    written = ""
    error_kind = ""
    if source == "promql" and sources:
        written = str(raw.get("expr"))
        expr = written
        if raw.get("compare") is not None:
            try:
                expr = compile_compare(written, raw["compare"])
            except ValueError as exc:
                err(f"compare: {exc}", "compare")
        try:
            node = parse_promql(expr)
            if node.type not in ("vector", "scalar"):
                err(f"could not parse expression: expression must be of type vector or scalar, got {node.type}",
                    "expr")
        except ParseError as exc:
            err(f"could not parse expression: {exc}", "expr")
        if raw.get("window") is not None:
            err("'window' is for log and error rules; put the range in the PromQL", "window")
    elif source == "log":
        expr = written = str(raw["log"])
        try:
            compile_query(expr)
        except QuerySyntaxError as exc:
            err(f"could not parse log query: {exc}", "log")
        if not window_ms:
            err("log rules need a 'window', like 5m", "log")
        if not thresholds:
            err("log rules need a 'threshold' (like '> 10') or 'thresholds'", "log")
    elif source == "error":
        error_kind = str(raw["error"])
        written = error_kind
        if error_kind not in _ERROR_KINDS:
            err(f"error must be one of {', '.join(_ERROR_KINDS)}", "error")
        if not window_ms:
            err("error rules need a 'window', like 10m", "error")
        if error_kind == "event_rate" and not thresholds:
            err("event_rate rules need a 'threshold' (like '> 100')", "error")
    if raw.get("compare") is not None and source != "promql":
        err("compare works on PromQL expressions only", "compare")
    if len(errors) > n_errors:
        return None
    return Rule(kind, name, expr, for_ms, keep_ms, labels, annotations, source, window_ms, thresholds, no_data_ms,
                error_kind, written, line, _plain(raw))


def _percent(value: Any) -> float:
    s = str(value).strip()
    try:
        if s.endswith("%"):
            return float(s[:-1]) / 100
        f = float(s)
    except ValueError:
        raise ValueError(f"invalid percentage {s!r}: write it like 20%") from None
    return f


def compile_compare(expr: str, spec: Any) -> str:
    """Period-over-period as PromQL: compare ``expr`` now with the same expression in the past.

    ``{offset: 1d, below_by: 20%}`` -> ``(E) < last_over_time((E)[1m:1m] offset 1d) * 0.8``: the
    value one day ago, through a subquery so that ``offset`` applies to any expression, not only
    to a selector. ``{average_over: 30d, below_by: 10%}`` compares with the average of the last
    30 days, sampled hourly (``step``). ``above_by`` flips the comparison.
    """
    if not isinstance(spec, dict):
        raise ValueError("expected a mapping like {offset: 1d, below_by: 20%}")
    unknown = set(spec) - {"offset", "average_over", "below_by", "above_by", "step"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    if ("below_by" in spec) == ("above_by" in spec):
        raise ValueError("set exactly one of below_by and above_by")
    if ("offset" in spec) == ("average_over" in spec):
        raise ValueError("set exactly one of offset (e.g. 1d, 7d) and average_over (e.g. 30d)")
    below = "below_by" in spec
    frac = _percent(spec["below_by" if below else "above_by"])
    if not 0 <= frac <= 10:
        raise ValueError("the percentage must be between 0% and 1000%")
    factor = 1 - frac if below else 1 + frac
    step = format_duration(parse_duration(spec.get("step", "1m" if "offset" in spec else "1h")))
    if "offset" in spec:
        offset = format_duration(parse_duration(spec["offset"]))
        baseline = f"last_over_time(({expr})[{step}:{step}] offset {offset})"
    else:
        window = format_duration(parse_duration(spec["average_over"]))
        baseline = f"avg_over_time(({expr})[{window}:{step}])"
    op = "<" if below else ">"
    return f"({expr}) {op} {baseline} * {factor:g}"
