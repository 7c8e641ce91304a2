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
    """One metric's series over a window, kept flat (all samples in one array, series after
    series) so that a selector's window is cut for all series with a few numpy calls."""

    start: int
    end: int
    series: list[tuple[dict[str, str], np.ndarray, np.ndarray]] = field(default_factory=list)
    _flat: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    _matches: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(series id per sample, timestamps, values, offset of each series' first sample)."""
        if self._flat is None:
            n = len(self.series)
            counts = np.fromiter((len(t) for _, t, _ in self.series), dtype=np.int64, count=n)
            t = np.concatenate([t for _, t, _ in self.series]) if n else np.empty(0, np.int64)
            v = np.concatenate([v for _, _, v in self.series]) if n else np.empty(0, np.float64)
            sid = np.repeat(np.arange(n), counts)
            offsets = np.r_[0, np.cumsum(counts)[:-1]] if n else np.empty(0, np.int64)
            self._flat = (sid, t, v, offsets)
        return self._flat

    def select(self, others: list[Matcher], start_ms: int, end_ms: int) -> SeriesSet:
        key = tuple(str(m) for m in others)
        idx = self._matches.get(key)
        if idx is None:
            idx = np.fromiter((i for i, (labels, _, _) in enumerate(self.series)
                               if all(m.matches(labels.get(m.name, "")) for m in others)), dtype=np.int64)
            self._matches[key] = idx
        if not idx.size:
            return []
        sid, t, v, offsets = self.flat()
        n = len(self.series)
        lo = offsets + np.bincount(sid[t < start_ms], minlength=n)
        hi = offsets + np.bincount(sid[t <= end_ms], minlength=n)
        out: SeriesSet = []
        for i, a, b in zip(idx.tolist(), lo[idx].tolist(), hi[idx].tolist(), strict=True):
            if b > a:
                out.append(Series(self.series[i][0], t[a:b], v[a:b]))
        return out


class _CycleQuerier:
    """A querier for one group evaluation: prefetched metrics from memory, the rest from the store.

    Its ``pushdown`` (the engine's hook for aggregations) answers an aggregation another rule
    already computed at the same time, so rules that share ``sum by (...) (rate(x[5m]))`` compute
    it once per evaluation time.
    """

    def __init__(self, owner: StoreSources, project: str) -> None:
        self.owner = owner
        self.project = project
        self.prefetched: dict[str, _Prefetched] = {}
        self.cache: dict[tuple[Any, ...], SeriesSet] = {}

    def select(self, matchers: list[Matcher], start_ms: int, end_ms: int) -> SeriesSet:
        name = next((m.value for m in matchers if m.name == "__name__" and m.op == "="), None)
        if name is not None and (self.project, name) in self.owner._dirty:
            self.owner.flush()
            self.owner._shared.pop(name, None)
            self.prefetched.pop(name, None)
            self.cache = {k: v for k, v in self.cache.items() if k[0] != name}
        pf = self.prefetched.get(name) if name is not None else None
        if pf is not None and pf.start <= start_ms and end_ms <= pf.end:
            return pf.select([m for m in matchers if not (m.name == "__name__" and m.op == "=")], start_ms, end_ms)
        key = (name, tuple(str(m) for m in matchers), start_ms, end_ms)
        hit = self.cache.get(key)
        if hit is None:
            self.owner.fallback_selects += 1
            hit = self.owner._fallback(self.project).select(matchers, start_ms, end_ms)
            self.cache[key] = hit
        return hit

    def pushdown(self, node: Aggregate, ts: np.ndarray, lookback_ms: int, deadline: float) -> Any:
        return self.owner._memo_aggregate(self, node, ts, lookback_ms, deadline)


class StoreSources:
    """Sources over the server's metric and log stores (and the errors store once wired)."""

    def __init__(self, metrics: Any, logs: Any = None, errors: ErrorSource | None = None,
                 max_samples: int = 0, *, prefetch: bool = True) -> None:
        self.metrics = metrics
        self.prefetch = prefetch
        self.logs = logs
        self.errors = errors
        self.max_samples = max_samples
        self._buffer: dict[str, list[SampleOut]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._shared: dict[str, _Prefetched] = {}
        self._shared_key: tuple[str, int] | None = None
        #: Aggregations computed at one (project, time): structural key -> (result, metric names read).
        self._memo: dict[str, tuple[Any, frozenset[str]]] = {}
        self._memo_at: tuple[str, int] | None = None
        self._node_keys: dict[int, tuple[Node, str, frozenset[str]]] = {}
        self.memo_hits = 0
        #: Counters for the benchmark and the logs: how often the prefetch could not answer.
        self.fallback_selects = 0
        self.prefetch_queries = 0

    def _fallback(self, project: str) -> Querier:
        from stackwatch.query.promql.clickhouse import ClickHouseQuerier

        return ClickHouseQuerier(self.metrics, project, max_samples=self.max_samples)

    def prepare(self, project: str, nodes: Sequence[Node], t_ms: int, lookback_ms: int) -> None:
        """Prefetch for several groups evaluated at the same time (the manager calls it per tick),
        so the store is asked once for all of them rather than once per group."""
        self._shared = {}
        self._shared_key = (project, t_ms)
        self._fetch_into(self._shared, project, self._windows(nodes, t_ms, lookback_ms))

    @staticmethod
    def _windows(nodes: Sequence[Node], t_ms: int, lookback_ms: int) -> dict[str, tuple[int, int]]:
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
        return windows

    def querier(self, project: str, nodes: Sequence[Node], t_ms: int, lookback_ms: int) -> Querier:
        q = _CycleQuerier(self, project)
        if self._memo_at != (project, t_ms):
            self._memo, self._memo_at = {}, (project, t_ms)
        if not self.prefetch:
            return q
        windows = self._windows(nodes, t_ms, lookback_ms)
        if self._shared_key == (project, t_ms):
            # Reuse what the tick prefetched; fetch only what it did not cover.
            missing = {}
            for name, (s, e) in windows.items():
                pf = self._shared.get(name)
                if pf is not None and pf.start <= s and e <= pf.end and (project, name) not in self._dirty:
                    q.prefetched[name] = pf
                else:
                    missing[name] = (s, e)
            windows = missing
        if windows:
            self._fetch_into(q.prefetched, project, windows)
        return q

    def _fetch_into(self, into: dict[str, _Prefetched], project: str, windows: dict[str, tuple[int, int]]) -> None:
        """Series of the named metrics, then their samples, one query per distinct window."""
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
            into[name] = _Prefetched(*windows[name])
        # Rules mostly share a handful of ranges (5m, 1h...): one samples query per range.
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
                    into[labels["__name__"]].series.append((labels, ts[a:b], vals[a:b]))
        for name in names:
            into[name].series.sort(key=lambda s: sorted(s[0].items()))

    def _memo_aggregate(self, q: _CycleQuerier, node: Aggregate, ts: np.ndarray, lookback_ms: int,
                        deadline: float) -> Any:
        """An aggregation's result, computed once per evaluation time for every rule that has it."""
        from stackwatch.query.promql._eval import EvalContext, Evaluator
        from stackwatch.query.promql._values import Vec

        if not self.prefetch or ts.size != 1:
            return None
        known = self._node_keys.get(id(node))
        if known is None or known[0] is not node:
            names = frozenset(n for vs, _, _ in selector_windows(node, 0) if (n := _metric_name(vs)) is not None)
            known = (node, repr(node), names)
            self._node_keys[id(node)] = known
        _, key, names = known
        key = f"{int(ts[0])}|{lookback_ms}|{key}"
        hit = self._memo.get(key)
        if hit is None:
            ctx = EvalContext(querier=q, start_ms=int(ts[0]), end_ms=int(ts[-1]), lookback_ms=lookback_ms,
                              max_samples=self.max_samples or 50_000_000, deadline=deadline,
                              delayed_name_removal=False, subquery_step_ms=60_000)
            with np.errstate(all="ignore"):
                value = Evaluator(ctx).aggregate(node, ts)
            hit = (value, names)
            self._memo[key] = hit
        else:
            self.memo_hits += 1
        v = hit[0]
        return Vec(list(v.labels), v.values.copy(), v.present.copy(), v.drop_name.copy(),
                   None if v.sample_ts is None else v.sample_ts.copy())

    def append(self, project: str, samples: list[SampleOut]) -> None:
        if not samples:
            return
        self._buffer.setdefault(project, []).extend(samples)
        written = {lb["__name__"] for lb, _, _ in samples}
        self._dirty.update((project, n) for n in written)
        if self._memo and project == (self._memo_at or ("",))[0]:
            # A later rule must see what a recording rule just wrote, not a memo computed before.
            self._memo = {k: v for k, v in self._memo.items() if not (v[1] & written)}

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


