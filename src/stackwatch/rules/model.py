"""Rule groups and rules as loaded from files or the database, already validated.

A rule is one of Prometheus's two kinds (``alert`` or ``record``) plus optional Stackwatch
extensions that keep the same state machine (pending -> firing -> resolved):

* ``threshold: '> 10'`` / ``thresholds: {critical: '> 90', warning: '> 80'}``: the expression
  yields the raw value and the rule decides; with several thresholds one alert identity switches
  its ``severity`` label;
* ``no_data: 10m``: one extra alert (``nodata="true"``) when the expression returns nothing for
  that long;
* ``log: '<log query>'`` + ``window``: the value is the count of matching log lines;
* ``error: new_issue | regression | event_rate`` + ``window``: the value comes from the errors
  store;
* ``compare: {offset: 1d, below_by: 20%}``: period-over-period, compiled into PromQL.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Rule", "RuleGroup", "Threshold"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Threshold:
    """A comparison of the rule's value with a constant: ``> 10``, ``<= 0.5``."""

    op: str
    value: float

    @classmethod
    def parse(cls, text: object) -> Threshold:
        s = str(text).strip()
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if s.startswith(op):
                try:
                    return cls(op, float(s[len(op):].strip()))
                except ValueError:
                    break
        raise ValueError(f"invalid threshold {s!r}: expected an operator and a number, like '> 10'")

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        v = int(self.value) if self.value.is_integer() else self.value
        return f"{self.op} {v}"


@dataclass
class Rule:
    """One rule. ``expr`` is PromQL for metric rules, the log query for log rules."""

    kind: str  # "alert" | "record"
    name: str
    expr: str
    for_ms: int = 0
    keep_firing_for_ms: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = "promql"  # "promql" | "log" | "error"
    window_ms: int = 0
    #: (severity, threshold), most severe first; one entry without severity for ``threshold:``.
    thresholds: list[tuple[str, Threshold]] = field(default_factory=list)
    no_data_ms: int | None = None
    error_kind: str = ""
    #: The text the user wrote (``expr`` may be compiled from ``compare:``).
    written_expr: str = ""
    line: int = 0
    #: The rule as written (a mapping), for the API and for storing in the database.
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def query(self) -> str:
        """What the API shows as the rule's query."""
        if self.source == "log":
            return f"count_log({self.expr!r}[{self.window_ms // 1000}s])"
        if self.source == "error":
            return f"errors({self.error_kind}[{self.window_ms // 1000}s])"
        return self.expr


@dataclass
class RuleGroup:
    """A group: its rules run in order, at its interval, against one project's data."""

    name: str
    file: str
    rules: list[Rule]
    interval_ms: int = 0  # 0: the global evaluation interval
    limit: int = 0
    query_offset_ms: int = 0
    project: str = "default"
    line: int = 0
    #: Where the group comes from: "file" or "db".
    origin: str = "file"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The group's identity across reloads and restarts (state is stored under it)."""
        return f"{self.project}/{self.file};{self.name}"
