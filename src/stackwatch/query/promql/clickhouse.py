"""The engine's :class:`~stackwatch.query.promql.storage.Querier` over the ClickHouse metric tables.

``select`` is two queries: matchers become SQL on ``metric_series`` (the small table: one row
per series), then the samples of the matching fingerprints in the time range come from
``metric_samples`` as Arrow columns, split into per-series numpy views without a Python loop
over samples.

``pushdown`` is the optional, richer question: the evaluator offers it every aggregation
first, and for dashboard shapes (``sum by (route) (rate(x[5m]))`` and the like) the per-step
rates and the sum are computed in ClickHouse, returning a few thousand points instead of
millions of samples (:mod:`.pushdown`). Other queriers simply do not have the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stackwatch.storage.metrics import MetricStore

from . import pushdown as _pushdown
from ._ast import Node
from ._values import Vec
from .errors import TooManySamples
from .storage import Matcher, Series, SeriesSet

__all__ = ["ClickHouseQuerier"]


class ClickHouseQuerier:
    """Reads one project's metrics for the engine.

    Make one per query: it keeps the samples it has read until it is dropped, so that a
    query naming the same series twice reads them once.

    ``max_samples`` bounds what one ``select`` may load (0: unbounded); the engine applies
    its own limit to what evaluation holds, but this one stops a huge selector before its
    samples are ever materialised.
    """

    def __init__(
        self, store: MetricStore, project: str, *, max_samples: int = 0, pushdown: bool | None = None
    ) -> None:
        self.store = store
        self.project = project
        self.max_samples = max_samples
        # The server's ``query_pushdown`` setting travels on the store (see MetricStore).
        self.use_pushdown = store.query_pushdown if pushdown is None else pushdown
        self.pushed = 0  # sub-expressions answered in SQL (tests and benchmarks read it)
        # (start, end, resolution) -> fingerprint -> (block, start, stop): the flat arrays a
        # read returned and where the series lies in them.
        self._read: dict[tuple[int, int, int], dict[int, tuple[tuple[np.ndarray, np.ndarray], int, int]]] = {}
        #: Read rollups at this resolution instead of samples (0: samples); the engine sets it
        #: for a range query whose step is long enough (see Engine.range).
        self.resolution_ms = 0

    @property
    def rollup_resolutions(self) -> tuple[int, ...]:
        """The rollup resolutions this store keeps (ms), for the engine's choice."""
        return tuple(self.store.rollups)

    def pushdown(self, node: Node, ts: np.ndarray, lookback_ms: int, deadline: float) -> Vec | None:
        """Answer a whole dashboard-shaped sub-expression in ClickHouse, or None (see :mod:`.pushdown`)."""
        if not self.use_pushdown:
            return None
        p = _pushdown.plan(node)
        if p is None:
            return None
        out = _pushdown.run(self.store, self.project, p, ts, lookback_ms, deadline)
        if out is not None:
            self.pushed += 1
        return out

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> SeriesSet:
        """See :class:`~stackwatch.query.promql.storage.Querier`."""
        found = self.store.find_series(self.project, list(matchers), start_ms, end_ms)
        if not found:
            return []
        labels_of = dict(found)
        # One query often selects the same series twice over the same range (``errors / all``
        # of one counter): samples read once are kept for this querier's life, one query.
        cached = self._read.setdefault((start_ms, end_ms, self.resolution_ms), {})
        missing = [f for f in labels_of if f not in cached]
        if missing:
            fp, ts, vals = self.store.fetch_samples(
                self.project, missing, start_ms, end_ms, max_samples=self.max_samples, resolution_ms=self.resolution_ms
            )
            if self.max_samples and fp.size > self.max_samples:
                raise TooManySamples("series selection")
            # Rows come sorted by fingerprint: each series is one contiguous run.
            if fp.size:
                block = (ts, vals)
                starts = np.flatnonzero(np.r_[True, fp[1:] != fp[:-1]])
                ends = np.r_[starts[1:], fp.size]
                for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                    cached[int(fp[a])] = (block, a, b)
            for f in missing:
                cached.setdefault(f, (_EMPTY, 0, 0))
        out: SeriesSet = []
        for f, labels in labels_of.items():
            block, a, b = cached[f]
            if b > a:
                out.append(Series(labels, block[0][a:b], block[1][a:b], block, a))
        out.sort(key=lambda s: sorted(s.labels.items()))
        return out


_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
