"""The engine's :class:`~stackwatch.query.promql.storage.Querier` over the ClickHouse metric tables.

``select`` is two queries: matchers become SQL on ``metric_series`` (the small table: one row
per series), then the samples of the matching fingerprints in the time range come from
``metric_samples`` as Arrow columns, split into per-series numpy views without a Python loop
over samples.

``pushdown`` is the optional, richer question: the evaluator offers it every aggregation
first, and for dashboard shapes (``sum by (route) (rate(x[5m]))`` and the like) the per-step
rates and the sum are computed in ClickHouse, returning a few thousand points instead of
millions of samples (:mod:`.pushdown`). Other queriers simply do not have the method.

``window_aggregate`` answers ``*_over_time`` in an instant query with one GROUP BY per
selection (:mod:`.windows`). It is on by default: the samples stay in the store (the bench's
count of 54 M samples: 3.7 -> 2.3 s), and a small selection costs about what reading it does
(22-30 ms for 104 series over 1 h). Range queries read samples (see the module for why).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from stackwatch.storage.metrics import MetricStore

from . import pushdown as _pushdown
from . import windows as _windows
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
        self,
        store: MetricStore,
        project: str,
        *,
        max_samples: int = 0,
        pushdown: bool | None = None,
        windows: bool = True,
    ) -> None:
        self.store = store
        self.project = project
        self.max_samples = max_samples
        # The server's ``query_pushdown`` setting travels on the store (see MetricStore).
        self.use_pushdown = store.query_pushdown if pushdown is None else pushdown
        self.use_windows = windows
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

    def window_aggregate(
        self, func: str, matchers: Sequence[Matcher], ends: np.ndarray, range_ms: int, deadline: float
    ) -> Vec | None:
        """``func(selector[range])`` computed in ClickHouse for an instant query, else None."""
        if not self.use_windows:
            return None
        out = _windows.window_aggregate(self.store, self.project, func, matchers, ends, range_ms, deadline)
        if out is not None:
            self.pushed += 1
        return out

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> SeriesSet:
        """See :class:`~stackwatch.query.promql.storage.Querier`."""
        found = self.store.find_series(self.project, list(matchers), start_ms, end_ms)
        if not found:
            return []
        labels_of = dict(found)
        cached = self._cache(start_ms, end_ms)
        missing = [f for f in labels_of if f not in cached]
        if missing:
            self._remember(cached, missing, self._fetch(missing, start_ms, end_ms))
        return self._series(labels_of, list(labels_of), cached)

    def select_stream(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> Iterator[SeriesSet]:
        """``select``'s series in parts, the next part read while the caller works on this one.

        Reading samples (ClickHouse decoding, on its own threads without the GIL) and what a
        range function does with them (numpy) then overlap instead of taking turns: on the
        metrics bench, 720 series x 24 h, that is most of the read hidden behind the
        arithmetic. Each part is sorted by labels; parts come in no particular label order.
        """
        found = self.store.find_series(self.project, list(matchers), start_ms, end_ms)
        if not found:
            return
        labels_of = dict(found)
        cached = self._cache(start_ms, end_ms)
        have = [f for f in labels_of if f in cached]
        missing = sorted(f for f in labels_of if f not in cached)  # key order: each part one key range
        if have:
            yield self._series(labels_of, have, cached)
        parts = max(1, min(STREAM_PARTS, len(missing) // STREAM_MIN_SERIES))
        size = -(-len(missing) // parts) if missing else 0
        chunks = [missing[i : i + size] for i in range(0, len(missing), size)] if size else []
        if len(chunks) <= 1:
            for chunk in chunks:
                self._remember(cached, chunk, self._fetch(chunk, start_ms, end_ms))
                yield self._series(labels_of, chunk, cached)
            return
        loaded = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="promql-read") as pool:
            pending = pool.submit(self._fetch, chunks[0], start_ms, end_ms)
            for i, chunk in enumerate(chunks):
                read = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self._fetch, chunks[i + 1], start_ms, end_ms)
                loaded += read[0].size
                if self.max_samples and loaded > self.max_samples:
                    pending.cancel()
                    raise TooManySamples("series selection")
                self._remember(cached, chunk, read)
                yield self._series(labels_of, chunk, cached)

    def _cache(self, start_ms: int, end_ms: int) -> dict[int, tuple[tuple[np.ndarray, np.ndarray], int, int]]:
        # One query often selects the same series twice over the same range (``errors / all``
        # of one counter): samples read once are kept for this querier's life, one query.
        return self._read.setdefault((start_ms, end_ms, self.resolution_ms), {})

    def _fetch(self, fingerprints: list[int], start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fp, ts, vals = self.store.fetch_samples(
            self.project, fingerprints, start_ms, end_ms, max_samples=self.max_samples, resolution_ms=self.resolution_ms
        )
        if self.max_samples and fp.size > self.max_samples:
            raise TooManySamples("series selection")
        return fp, ts, vals

    @staticmethod
    def _remember(
        cached: dict[int, tuple[tuple[np.ndarray, np.ndarray], int, int]],
        fingerprints: list[int],
        read: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        fp, ts, vals = read
        # Rows come sorted by fingerprint: each series is one contiguous run.
        if fp.size:
            block = (ts, vals)
            starts = np.flatnonzero(np.r_[True, fp[1:] != fp[:-1]])
            ends = np.r_[starts[1:], fp.size]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                cached[int(fp[a])] = (block, a, b)
        for f in fingerprints:
            cached.setdefault(f, (_EMPTY, 0, 0))

    @staticmethod
    def _series(
        labels_of: dict[int, dict[str, str]],
        fingerprints: list[int],
        cached: dict[int, tuple[tuple[np.ndarray, np.ndarray], int, int]],
    ) -> SeriesSet:
        out: SeriesSet = []
        for f in fingerprints:
            block, a, b = cached[f]
            if b > a:
                out.append(Series(labels_of[f], block[0][a:b], block[1][a:b], block, a))
        out.sort(key=lambda s: sorted(s.labels.items()))
        return out


STREAM_PARTS = 4
"""How many reads ``select_stream`` splits a selection into (more parts: more overlap, more queries)."""
STREAM_MIN_SERIES = 64
"""Below this many series per part a selection is read in one go: the overlap would not pay for a query."""

_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
