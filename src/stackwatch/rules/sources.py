"""Where rules read their data and write their results.

The evaluator only knows :class:`Sources`: a PromQL querier per project, an appender for
recording-rule results and the ``ALERTS`` series, a log counter and an errors source. Two
implementations: :class:`MemorySources` over the engine's in-memory storage (unit tests, the
``rules test`` command) and :class:`StoreSources` over the telemetry store.

Why :class:`StoreSources` prefetches: a rule evaluation that asked ClickHouse twice per selector
(series, then samples) would spend 1,000 rules x 2 round trips per cycle. Instead, before a
group runs, every selector of its rules that names its metric is collected, and all their series
and samples are read in one query per distinct time window; selectors are then answered from
memory. Anything the prefetch cannot answer (no metric name, ``@``, a later window) falls back
to the store, cached for the cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from stackwatch.query.promql import Matcher, MemoryStorage, Querier, Series, SeriesSet
from stackwatch.query.promql._ast import (
    Aggregate,
    Binary,
    Call,
    MatrixSel,
    Node,
    Paren,
    Subquery,
    Unary,
    VectorSel,
)

__all__ = ["ErrorSource", "MemorySources", "Sources", "StoreSources", "selector_windows"]

SampleOut = tuple[dict[str, str], int, float]  # labels with __name__, timestamp ms, value


class ErrorSource(Protocol):
    """What error rules need from the errors store (its ``Runtime.errors`` implements it).

    Each method returns issues as dicts with at least ``issue_id``, ``title`` and ``level``
    (``event_rate`` adds ``count``); times are aware UTC datetimes.
    """

    def new_issues(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]: ...

    def regressed_issues(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]: ...

    def issue_event_counts(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]: ...


class Sources(Protocol):
    def querier(self, project: str, nodes: Sequence[Node], t_ms: int, lookback_ms: int) -> Querier: ...

    def append(self, project: str, samples: list[SampleOut]) -> None: ...

    def flush(self) -> None: ...

    def log_count(self, project: str, query: str, start_ms: int, end_ms: int) -> int: ...

    errors: ErrorSource | None


class MemorySources:
    """Sources over one :class:`MemoryStorage` (all projects share it): tests and ``rules test``."""

    def __init__(self, storage: MemoryStorage | None = None, errors: ErrorSource | None = None,
                 log_count: Callable[[str, str, int, int], int] | None = None) -> None:
        self.storage = storage or MemoryStorage()
        self.errors = errors
        self._log_count = log_count

    def querier(self, project: str, nodes: Sequence[Node], t_ms: int, lookback_ms: int) -> Querier:
        return self.storage

    def append(self, project: str, samples: list[SampleOut]) -> None:
        for labels, t, v in samples:
            self.storage.add(labels, t, v)

    def flush(self) -> None:
        pass

    def log_count(self, project: str, query: str, start_ms: int, end_ms: int) -> int:
        if self._log_count is None:
            raise RuntimeError("log rules need the log store, which is not available here")
        return self._log_count(project, query, start_ms, end_ms)


def selector_windows(node: Node, lookback_ms: int) -> list[tuple[VectorSel, int, int]]:
    """Every selector of ``node`` with the window it reads relative to the evaluation time:
    ``(selector, ms before t where reading starts, ms before t where it ends)``."""
    out: list[tuple[VectorSel, int, int]] = []

    def walk(n: Node, back: int, extra: int) -> None:
        if isinstance(n, VectorSel):
            out.append((n, back + n.offset_ms + extra + lookback_ms, back + n.offset_ms))
        elif isinstance(n, MatrixSel):
            out.append((n.vs, back + n.vs.offset_ms + extra + n.range_ms, back + n.vs.offset_ms))
        elif isinstance(n, Subquery):
            walk(n.expr, back + n.offset_ms, extra + n.range_ms)
        elif isinstance(n, (Paren, Unary)):
            walk(n.expr, back, extra)
        elif isinstance(n, Call):
            for a in n.args:
                walk(a, back, extra)
        elif isinstance(n, Aggregate):
            walk(n.expr, back, extra)
            if n.param is not None:
                walk(n.param, back, extra)
        elif isinstance(n, Binary):
            walk(n.lhs, back, extra)
            walk(n.rhs, back, extra)

    walk(node, 0, 0)
    return out


def _metric_name(vs: VectorSel) -> str | None:
    if vs.at is not None or vs.or_matchers:
        return None
    for m in vs.matchers:
        if m.name == "__name__" and m.op == "=":
            return m.value
    return None


@dataclass
class _Prefetched:
    start: int
    end: int
    series: list[tuple[dict[str, str], np.ndarray, np.ndarray]] = field(default_factory=list)


class _CycleQuerier:
    """A querier for one group evaluation: prefetched metrics from memory, the rest from the store."""

    def __init__(self, owner: StoreSources, project: str) -> None:
        self.owner = owner
        self.project = project
        self.prefetched: dict[str, _Prefetched] = {}
        self.cache: dict[tuple[Any, ...], SeriesSet] = {}

    def select(self, matchers: list[Matcher], start_ms: int, end_ms: int) -> SeriesSet:
        name = next((m.value for m in matchers if m.name == "__name__" and m.op == "="), None)
        if name is not None and (self.project, name) in self.owner._dirty:
            self.owner.flush()
            self.prefetched.pop(name, None)
            self.cache = {k: v for k, v in self.cache.items() if k[0] != name}
        pf = self.prefetched.get(name) if name is not None else None
        if pf is not None and pf.start <= start_ms and end_ms <= pf.end:
            others = [m for m in matchers if not (m.name == "__name__" and m.op == "=")]
            out: SeriesSet = []
            for labels, t, v in pf.series:
                if all(m.matches(labels.get(m.name, "")) for m in others):
                    lo = int(np.searchsorted(t, start_ms, side="left"))
                    hi = int(np.searchsorted(t, end_ms, side="right"))
                    if hi > lo:
                        out.append(Series(labels, t[lo:hi], v[lo:hi]))
            return out
        key = (name, tuple(str(m) for m in matchers), start_ms, end_ms)
        hit = self.cache.get(key)
        if hit is None:
            self.owner.fallback_selects += 1
            hit = self.owner._fallback(self.project).select(matchers, start_ms, end_ms)
            self.cache[key] = hit
        return hit


class StoreSources:
    """Sources over the server's metric and log stores (and the errors store once wired)."""

    def __init__(self, metrics: Any, logs: Any = None, errors: ErrorSource | None = None,
                 max_samples: int = 0) -> None:
        self.metrics = metrics
        self.logs = logs
        self.errors = errors
        self.max_samples = max_samples
        self._buffer: dict[str, list[SampleOut]] = {}
        self._dirty: set[tuple[str, str]] = set()
        #: Counters for the benchmark and the logs: how often the prefetch could not answer.
        self.fallback_selects = 0
        self.prefetch_queries = 0

    def _fallback(self, project: str) -> Querier:
        from stackwatch.query.promql.clickhouse import ClickHouseQuerier

        return ClickHouseQuerier(self.metrics, project, max_samples=self.max_samples)

    def querier(self, project: str, nodes: Sequence[Node], t_ms: int, lookback_ms: int) -> Querier:
        q = _CycleQuerier(self, project)
        windows: dict[str, tuple[int, int]] = {}
        for node in nodes:
            for vs, back_start, back_end in selector_windows(node, lookback_ms):
                name = _metric_name(vs)
                if name is None:
                    continue
                s, e = t_ms - back_start, t_ms - back_end
                if name in windows:
                    s0, e0 = windows[name]
                    windows[name] = (min(s, s0), max(e, e0))
                else:
                    windows[name] = (s, e)
        if windows:
            self._prefetch(q, project, windows)
        return q

    def _prefetch(self, q: _CycleQuerier, project: str, windows: dict[str, tuple[int, int]]) -> None:
        names = sorted(windows)
        lo = min(s for s, _ in windows.values())
        hi = max(e for _, e in windows.values())
        pattern = "|".join(re.escape(n) for n in names)
        found = self.metrics.find_series(project, [Matcher("__name__", "=~", pattern)], lo, hi)
        self.prefetch_queries += 1
        by_name: dict[str, list[tuple[int, dict[str, str]]]] = {}
        for fp, labels in found:
            by_name.setdefault(labels["__name__"], []).append((fp, labels))
        for name in names:
            q.prefetched[name] = _Prefetched(*windows[name])
        # One samples query per distinct window (rules mostly share a handful of ranges).
        groups: dict[tuple[int, int], list[str]] = {}
        for name in names:
            groups.setdefault(windows[name], []).append(name)
        for (s, e), group_names in groups.items():
            labels_of: dict[int, dict[str, str]] = {}
            for n in group_names:
                labels_of.update(dict(by_name.get(n, [])))
            if not labels_of:
                continue
            fp, ts, vals = self.metrics.fetch_samples(project, list(labels_of), s, e, max_samples=self.max_samples)
            self.prefetch_queries += 1
            if not fp.size:
                continue
            starts = np.flatnonzero(np.r_[True, fp[1:] != fp[:-1]])
            ends = np.r_[starts[1:], fp.size]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                labels = labels_of.get(int(fp[a]))
                if labels is not None:
                    q.prefetched[labels["__name__"]].series.append((labels, ts[a:b], vals[a:b]))
        for pf in q.prefetched.values():
            pf.series.sort(key=lambda s: sorted(s[0].items()))

    def append(self, project: str, samples: list[SampleOut]) -> None:
        if not samples:
            return
        self._buffer.setdefault(project, []).extend(samples)
        self._dirty.update((project, lb["__name__"]) for lb, _, _ in samples)

    def flush(self) -> None:
        from stackwatch.storage.metrics import MetricBatch

        buffered, self._buffer = self._buffer, {}
        self._dirty.clear()
        for project, samples in buffered.items():
            batch = MetricBatch()
            for labels, t, v in samples:
                batch.add(labels.items(), t, v)
            if batch.sample_count:
                self.metrics.admit(project, batch)
                self.metrics.insert(project, batch)

    def log_count(self, project: str, query: str, start_ms: int, end_ms: int) -> int:
        if self.logs is None:
            raise RuntimeError("log rules need the log store")
        from stackwatch.query.logql import compile_query

        compiled = compile_query(query)
        return int(self.logs.count(project, compiled.where, compiled.params, start_ms * 1_000_000,
                                   end_ms * 1_000_000))


