"""``*_over_time`` in an instant query, answered by a GROUP BY in ClickHouse.

An instant query's ``count_over_time(x[1d])`` or an alert rule's ``max_over_time(x[1h])`` has
one window per series: ClickHouse aggregates it where the samples lie and returns one row per
series, instead of the numpy engine pulling every sample into Python (the metrics bench's count
of its 54 M samples: 3.7-3.9 s reading them, 2.3 s aggregated in place).

Range queries keep the engine, even where their windows do not overlap (a step at least the
range): one group per (series, step) made ClickHouse's aggregation the slow part, measured on
the bench's store over 24 h: ``max_over_time(bucket[1m])`` at 60 s 8.9 s against 1.9 s,
``count_over_time(x[1h])`` at 1 h 1.57 s against 1.07 s.

Prometheus's semantics are kept: staleness markers are not samples of a range vector;
``min``/``max`` skip NaN unless every value is NaN; ``sum`` is compensated as Prometheus's is
(to 1e-12 of the result; where values cancel more than that allows, the engine's own kernel
sums), plain IEEE arithmetic when a window holds an infinity or NaN; duplicates are
resolved as FINAL does, the last write winning as in the table's merges. ``sum`` and ``avg``
fall back to the engine when a window's values may overflow their sum (Prometheus answers +Inf
for the sum and switches to an incremental mean for the average there).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from stackwatch.storage.metrics import query_arrow

from ._values import Vec, make_labels
from .storage import STALE_NAN_BITS, Matcher

__all__ = ["FUNCTIONS", "window_aggregate"]

# Per function, the aggregates it needs over one part's share of a window (``ok``: not a
# staleness marker); the shares of a window's parts are combined in numpy (see _combine).
_COLUMNS: dict[str, tuple[str, ...]] = {
    "count_over_time": (),
    "present_over_time": (),
    "sum_over_time": ("countIf(ok AND NOT isFinite(value)) AS bad", "sumIf(value, ok) AS plain",
                      "sumKahanIf(value, ok) AS kahan", "sumIf(abs(value), ok) AS mass"),
    "avg_over_time": ("countIf(ok AND NOT isFinite(value)) AS bad", "sumIf(value, ok) AS plain",
                      "sumKahanIf(value, ok) AS kahan", "sumIf(abs(value), ok) AS mass"),
    "min_over_time": ("countIf(ok AND NOT isNaN(value)) AS real", "minIf(value, ok AND NOT isNaN(value)) AS v"),
    "max_over_time": ("countIf(ok AND NOT isNaN(value)) AS real", "maxIf(value, ok AND NOT isNaN(value)) AS v"),
    "last_over_time": ("argMaxIf(value, timestamp, ok) AS v", "maxIf(timestamp, ok) AS at"),
    "first_over_time": ("argMinIf(value, timestamp, ok) AS v", "minIf(timestamp, ok) AS at"),
}
FUNCTIONS = frozenset(_COLUMNS)

# Read without FINAL: merging unmerged parts to resolve duplicates made this 5x slower (all 54 M
# samples of the metrics bench grouped by series: 1.0 s with FINAL, 0.2 s without). A part
# holds a (series, timestamp) once, so a sample written twice lies in two parts whose time
# spans for that series and window overlap: grouping by part as well and comparing spans finds
# them (0.84 s for those 54 M samples, against 1.33 s counting distinct timestamps per window),
# and only those series are aggregated again with FINAL, which keeps the last write as the
# table's merges will.
_SQL = """
SELECT fingerprint AS f, _part_index AS part, countIf(ok) AS n,
  min(timestamp) AS t_lo, max(timestamp) AS t_hi{cols}
FROM (SELECT fingerprint, timestamp, value, _part_index, reinterpretAsUInt64(value) != {stale} AS ok
      FROM `{db}`.metric_samples{final}
      WHERE project = {{p:String}} AND fingerprint IN {{fps:Array(UInt64)}}
        AND timestamp > {{lo:Int64}} AND timestamp <= {{hi:Int64}})
GROUP BY f, part
SETTINGS max_execution_time = {timeout}{settings}
"""


def window_aggregate(
    store: Any,
    project: str,
    func: str,
    matchers: Sequence[Matcher],
    ends: np.ndarray,
    range_ms: int,
    deadline: float,
) -> Vec | None:
    """``func(selector[range])`` at the one window end ``ends``; None for a range query.

    The result's rows keep every label, ``__name__`` included (the evaluator drops it as it
    does for the engine's own kernels), sorted by labels as a selection is.
    """
    if func not in _COLUMNS or ends.size != 1:
        return None
    hi = int(ends[0])
    found = store.find_series(project, list(matchers), hi - range_ms + 1, hi)
    if not found:
        return Vec.empty(1)
    labels = [make_labels(lb) for _, lb in found]
    order = sorted(range(len(found)), key=labels.__getitem__)  # a selection's order
    labels = [labels[i] for i in order]
    fps = np.fromiter((found[i][0] for i in order), dtype=np.uint64, count=len(order))
    by_fp = np.argsort(fps)
    params = {"p": project, "lo": hi - range_ms, "hi": hi}
    fmt = {"cols": "".join(", " + c for c in _COLUMNS[func]), "db": store.db, "stale": STALE_NAN_BITS}

    def run(fps: list[int], final: bool) -> dict[str, np.ndarray] | None:
        timeout = max(1, int(deadline - time.monotonic()))
        sql = _SQL.format(**fmt, timeout=timeout, final=" FINAL" if final else "",
                          settings=", do_not_merge_across_partitions_select_final = 1" if final else "")
        table = query_arrow(store.ex, sql, {**params, "fps": fps})
        if not table.num_rows:
            return None
        return {name: table.column(name).to_numpy() for name in table.column_names}

    cols = run(fps.tolist(), final=False)
    if cols is not None:
        order = np.lexsort((cols["t_lo"], cols["f"]))
        cols = {name: c[order] for name, c in cols.items()}
        f = cols["f"]
        same = f[1:] == f[:-1]
        # Sorted by span start: if any two spans of a series overlap, two neighbours do.
        overlap = same & (cols["t_lo"][1:] <= cols["t_hi"][:-1])
        if overlap.any():
            again = np.unique(f[1:][overlap])
            keep = ~np.isin(f, again)
            fixed = run(again.tolist(), final=True)
            cols = {name: np.concatenate([c[keep], fixed[name]]) if fixed else c[keep] for name, c in cols.items()}
        # Each row's series row in the result (label order).
        rows = by_fp[np.searchsorted(fps, cols["f"].astype(np.uint64), sorter=by_fp)]
        cols = _combine(func, cols, rows.astype(np.int64))
    n = len(found)
    values = np.zeros((n, 1))
    present = np.zeros((n, 1), dtype=bool)
    if cols is not None:
        got = _values(func, cols)
        if got is None:
            return None
        values[cols["row"], 0] = got
        present[cols["row"], 0] = True
    return Vec(labels, values, present, np.zeros(n, dtype=bool)).compact()


def _combine(func: str, c: dict[str, np.ndarray], row: np.ndarray) -> dict[str, np.ndarray] | None:
    """One row per series (its ``row`` in the result) from the rows of its parts; series
    without a sample in the window dropped."""
    uniq, inv = np.unique(row, return_inverse=True)
    g = uniq.size
    out: dict[str, np.ndarray] = {"row": uniq}

    def total(name: str) -> np.ndarray:
        acc = np.zeros(g, dtype=np.float64 if c[name].dtype.kind == "f" else np.int64)
        np.add.at(acc, inv, c[name].astype(acc.dtype))
        return acc

    out["n"] = total("n")
    for name in ("bad", "plain", "kahan", "mass"):
        if name in c:
            out[name] = total(name)
    if func in ("min_over_time", "max_over_time"):
        # A part without a real value has v of NaN (or ClickHouse's empty default): left out,
        # so a window whose values are all NaN stays NaN.
        v = np.where(c["real"] > 0, c["v"], np.nan)
        best = np.full(g, np.nan)
        (np.fmin if func == "min_over_time" else np.fmax).at(best, inv, v)
        out["v"] = best
    elif func in ("last_over_time", "first_over_time"):
        # The part whose last (first) sample is latest (earliest) holds the window's.
        at = np.where(c["n"] > 0, c["at"], np.iinfo(np.int64).min if func == "last_over_time" else np.iinfo(np.int64).max)
        pick = np.lexsort((at if func == "last_over_time" else -at, inv))
        last_of_group = np.r_[inv[pick][1:] != inv[pick][:-1], True]
        out["v"] = np.empty(g)
        out["v"][inv[pick][last_of_group]] = c["v"][pick][last_of_group]
    keep = out["n"] > 0
    return {name: col[keep] for name, col in out.items()} if keep.any() else None


def _values(func: str, c: dict[str, np.ndarray]) -> np.ndarray | None:
    n = c["n"].astype(np.float64)
    if func == "count_over_time":
        return n
    if func == "present_over_time":
        return np.ones_like(n)
    if func in ("sum_over_time", "avg_over_time"):
        finite = c["bad"] == 0
        total = np.where(finite, c["kahan"], c["plain"])
        # ClickHouse's compensated sum is Kahan's, whose error is bounded by about 2 ulp of the
        # values' absolute sum; Prometheus's is Neumaier's, exact where values cancel
        # ([1e100, 1, -1e100] sums to 1). Where cancellation could cost more than 1e-12 of the
        # result, the engine's kernel sums instead; so it does where finite values' sum may
        # overflow (Kahan's compensation then turns into Inf - Inf, a NaN, where Prometheus
        # answers +Inf, and its avg switches to an incremental mean).
        risky = (c["mass"] > 4096 * np.abs(total)) | ~np.isfinite(c["mass"]) | ~np.isfinite(total)
        if np.any(finite & risky):
            return None
        return total if func == "sum_over_time" else total / n
    return c["v"].astype(np.float64)  # min, max, last, first: chosen in _combine
