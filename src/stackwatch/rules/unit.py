"""``stackwatch rules test``: rule unit tests in ``promtool test rules`` format, run in memory.

A test file names rule files and, per test, input series in the expanding notation
(``1+2x10``, ``_x3``, ``stale``), then checks firing alerts at given times
(``alert_rule_test``) and PromQL results (``promql_expr_test``). As promtool does, every rule
group is evaluated every ``evaluation_interval`` from time 0 up to the last time a test looks
at; an alert check at ``eval_time`` sees the alerts of the last evaluation at or before it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stackwatch.query.promql import STALE_NAN, Engine, MemoryStorage, PromQLError

from ._duration import parse_duration
from .evaluator import FIRING, GroupEvaluator, GroupState
from .loader import RuleFileError, parse_rule_file
from .sources import MemorySources

__all__ = ["TestFileResult", "expand_values", "parse_series_text", "run_test_file"]

_NUM = r"[-+]?(?:[iI]nf|NaN|0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_EXPAND = re.compile(rf"^({_NUM})([-+](?:[iI]nf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))x(\d+)$")
_REPEAT = re.compile(rf"^({_NUM})x(\d+)$")
_BLANKS = re.compile(r"^_x(\d+)$")


def _number(tok: str) -> float:
    low = tok.lower().lstrip("+-")
    if low.startswith("0x"):
        v = float(int(low, 16))
        return -v if tok.startswith("-") else v
    return float(tok)


def expand_values(text: str) -> list[float | None]:
    """``'1+2x3 _ stale 5x2'`` -> ``[1, 3, 5, 7, None, STALE, 5, 5, 5]`` (None: no sample)."""
    out: list[float | None] = []
    for tok in str(text).split():
        if tok == "_":
            out.append(None)
        elif tok == "stale":
            out.append(STALE_NAN)
        elif m := _BLANKS.match(tok):
            out.extend([None] * int(m.group(1)))
        elif m := _EXPAND.match(tok):
            k, inc, n = _number(m.group(1)), _number(m.group(2)), int(m.group(3))
            out.append(k)
            for _ in range(n):
                k += inc
                out.append(k)
        elif m := _REPEAT.match(tok):
            out.extend([_number(m.group(1))] * (int(m.group(2)) + 1))
        else:
            try:
                out.append(_number(tok))
            except ValueError:
                raise ValueError(f"invalid value {tok!r} in series values {text!r}") from None
    return out


_SERIES = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(.*)\})?\s*\Z", re.S)
_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|\Z)', re.S)


def parse_series_text(text: str) -> dict[str, str]:
    """``'up{job="api", instance="a"}'`` -> labels with ``__name__``; ``'{}'`` -> ``{}``."""
    m = _SERIES.match(text)
    if not m or (m.group(1) is None and m.group(2) is None):
        raise ValueError(f"invalid series {text!r}")
    labels: dict[str, str] = {}
    if m.group(1):
        labels["__name__"] = m.group(1)
    body = (m.group(2) or "").strip()
    pos = 0
    while pos < len(body):
        pm = _PAIR.match(body, pos)
        if not pm:
            raise ValueError(f"invalid series {text!r}")
        labels[pm.group(1)] = re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), pm.group(2))
        pos = pm.end()
    return labels


@dataclass
class TestFileResult:
    file: str
    failures: list[str] = field(default_factory=list)
    tests: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def _fmt_labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def run_test_file(path: str | Path) -> TestFileResult:
    """Run every test of one test file; failures are collected as readable messages."""
    path = Path(path)
    result = TestFileResult(str(path))
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        result.failures.append(f"cannot read test file: {exc}")
        return result
    if not isinstance(doc, dict):
        result.failures.append("a test file must be a mapping")
        return result
    try:
        default_interval = parse_duration(doc.get("evaluation_interval") or "1m")
    except ValueError as exc:
        result.failures.append(f"evaluation_interval: {exc}")
        return result
    rule_files = []
    for pattern in doc.get("rule_files") or []:
        matches = sorted(path.parent.glob(pattern)) if not Path(pattern).is_absolute() else [Path(pattern)]
        if not matches:
            result.failures.append(f"rule file {pattern!r}: no such file")
        rule_files.extend(matches)
    groups = []
    for rf in rule_files:
        try:
            groups.extend(parse_rule_file(rf))
        except RuleFileError as exc:
            result.failures.extend(str(e) for e in exc.errors)
    if result.failures:
        return result
    order = doc.get("group_eval_order") or []
    if order:
        rank = {name: i for i, name in enumerate(order)}
        groups.sort(key=lambda g: rank.get(g.name, len(rank)))
    for i, test in enumerate(doc.get("tests") or []):
        result.tests += 1
        name = (test or {}).get("name") or f"test {i + 1}"
        try:
            failures = _run_test(test or {}, groups, default_interval)
        except (ValueError, PromQLError) as exc:
            failures = [f"{exc}"]
        result.failures.extend(f"{name}: {f}" for f in failures)
    return result


def _run_test(test: dict[str, Any], groups: list[Any], eval_interval: int) -> list[str]:
    interval = parse_duration(test["interval"]) if test.get("interval") else eval_interval
    storage = MemoryStorage()
    for item in test.get("input_series") or []:
        labels = parse_series_text(item["series"])
        for k, v in enumerate(expand_values(item.get("values", ""))):
            if v is not None:
                storage.add(labels, k * interval, v)
    evaluator = GroupEvaluator(
        MemorySources(storage),
        external_labels={str(k): str(v) for k, v in (test.get("external_labels") or {}).items()},
        external_url=str(test.get("external_url") or ""),
    )
    states: list[GroupState] = [GroupEvaluator.prepare(g, eval_interval) for g in groups]
    alert_tests = test.get("alert_rule_test") or []
    promql_tests = test.get("promql_expr_test") or []
    checks: dict[int, list[dict[str, Any]]] = {}
    for at in alert_tests:
        checks.setdefault(parse_duration(at["eval_time"]), []).append(at)
    max_t = max([*checks, *(parse_duration(p["eval_time"]) for p in promql_tests), 0])
    failures: list[str] = []
    pending = sorted(checks)
    ts = 0
    while ts <= max_t:
        for gs in states:
            evaluator.evaluate(gs, ts)
            for rs in gs.rules:
                if rs.health == "err":
                    failures.append(f"rule {rs.rule.name!r} failed at {ts // 1000}s: {rs.last_error}")
        while pending and ts <= pending[0] < ts + eval_interval:
            t = pending.pop(0)
            for at in checks[t]:
                failures.extend(_check_alerts(at, states))
        ts += eval_interval
    engine = Engine(storage)
    for pt in promql_tests:
        failures.extend(_check_promql(pt, engine))
    return failures


def _check_alerts(at: dict[str, Any], states: list[GroupState]) -> list[str]:
    name = str(at.get("alertname", ""))
    got = []
    for gs in states:
        for rs in gs.rules:
            if rs.rule.kind == "alert" and rs.rule.name == name:
                got.extend((dict(a.labels), dict(a.annotations)) for a in rs.active.values() if a.state == FIRING)
    exp = []
    for e in at.get("exp_alerts") or []:
        labels = {str(k): str(v) for k, v in (e.get("exp_labels") or {}).items()}
        labels["alertname"] = name
        exp.append((labels, {str(k): str(v) for k, v in (e.get("exp_annotations") or {}).items()}))

    def key(item: tuple[dict[str, str], dict[str, str]]) -> str:
        return _fmt_labels(item[0]) + _fmt_labels(item[1])

    if sorted(got, key=key) == sorted(exp, key=key):
        return []
    show = lambda items: "\n".join(  # noqa: E731
        f"        labels: {_fmt_labels(lb)}\n        annotations: {_fmt_labels(an)}" for lb, an in sorted(items, key=key)
    ) or "        (none)"
    return [f"alertname: {name}, time: {at.get('eval_time')},\n      exp:\n{show(exp)}\n      got:\n{show(got)}"]


def _check_promql(pt: dict[str, Any], engine: Engine) -> list[str]:
    expr = str(pt["expr"])
    t = parse_duration(pt["eval_time"])
    try:
        res = engine.instant(expr, t)
    except PromQLError as exc:
        return [f"expr: {expr!r}, time: {pt['eval_time']}: {exc}"]
    if res.type == "scalar":
        got = [({}, res.scalar)]
    else:
        got = [(dict(s.labels), float(s.values[0])) for s in res.series]
    exp = [(parse_series_text(str(s.get("labels", "{}"))), float(s.get("value", 0))) for s in pt.get("exp_samples") or []]
    got.sort(key=lambda s: _fmt_labels(s[0]))
    exp.sort(key=lambda s: _fmt_labels(s[0]))
    same = len(got) == len(exp) and all(
        gl == el and (gv == ev or (math.isnan(gv) and math.isnan(ev)) or math.isclose(gv, ev, rel_tol=1e-9))
        for (gl, gv), (el, ev) in zip(got, exp, strict=True)
    )
    if same:
        return []
    show = lambda items: ", ".join(f"{_fmt_labels(lb)} {v}" for lb, v in items) or "(none)"  # noqa: E731
    return [f"expr: {expr!r}, time: {pt['eval_time']},\n      exp: {show(exp)}\n      got: {show(got)}"]
