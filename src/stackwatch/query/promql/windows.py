"""``*_over_time`` over windows that do not overlap, answered by a GROUP BY in ClickHouse.

An instant query's ``count_over_time(x[1d])``, an alert rule's ``max_over_time(x[1h])`` or a
range query whose step is at least its range (Grafana's ``$__interval`` as the range) puts
every sample in at most one window. The answer is then one aggregate per (series, window):
ClickHouse computes it where the samples lie and returns one row per window, instead of the
numpy engine pulling every sample into Python (the metrics bench's count of its 54 M samples:
seconds of reading, and more than ``query_max_samples`` in one selection).

Windows ``(t_k - range, t_k]`` with ``t_k = s + k * step`` and ``step >= range``: a sample at
``t`` can only be in window ``k = ceil((t - s) / step)``, and is when ``t > t_k - range``.
Prometheus's semantics are kept: staleness markers are not samples of a range vector;
``min``/``max`` skip NaN unless every value is NaN; ``sum`` is compensated as Prometheus's is
(to 1e-12 of the result; where values cancel more than that allows, the engine's own kernel
sums), plain IEEE arithmetic when a window holds an infinity or NaN; duplicates are
resolved as FINAL does, the last write winning as in the table's merges. ``avg`` falls back to
the engine when a window's sum overflows (Prometheus switches to an incremental mean there).
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
SELECT fingerprint AS f, {k} AS k, _part_index AS part, countIf(ok) AS n,
  min(timestamp) AS t_lo, max(timestamp) AS t_hi{cols}
FROM (SELECT fingerprint, timestamp, value, _part_index, reinterpretAsUInt64(value) != {stale} AS ok
      FROM `{db}`.metric_samples{final}
      WHERE project = {{p:String}} AND fingerprint IN {{fps:Array(UInt64)}}
        AND timestamp > {{lo:Int64}} AND timestamp <= {{hi:Int64}}{window})
GROUP BY f, k, part
SETTINGS max_execution_time = {timeout}{settings}
"""
# Step k's window is (s + k * st - range, s + k * st]; a sample at t can only be in step ceil((t - s) / st).
_K = "toUInt32(intDiv(timestamp - {s:Int64} + {st:Int64} - 1, {st:Int64}))"
_IN_WINDOW = "\n        AND timestamp > {s:Int64} + " + _K + " * {st:Int64} - {range:Int64}"


def _grid(ends: np.ndarray, range_ms: int) -> tuple[int, int] | None:
    """(first end, step) when the windows ending at ``ends`` are a regular grid that never overlaps."""
    if ends.size == 1:
        return int(ends[0]), max(int(range_ms), 1)
    step = int(ends[1] - ends[0])
    if step < range_ms or step <= 0 or not np.all(np.diff(ends) == step):
        return None
    return int(ends[0]), step


def window_aggregate(
    store: Any,
    project: str,
    func: str,
    matchers: Sequence[Matcher],
    ends: np.ndarray,
    range_ms: int,
    deadline: float,
) -> Vec | None:
    """``func(selector[range])`` at the window ends ``ends``, or None when the windows overlap.

    The result's rows keep every label, ``__name__`` included (the evaluator drops it as it
    does for the engine's own kernels), sorted by labels as a selection is.
    """
    if func not in _COLUMNS:
        return None
    grid = _grid(ends, range_ms)
    if grid is None:
        return None
    s, step = grid
    steps = int(ends.size)
    hi = s + (steps - 1) * step
    found = store.find_series(project, list(matchers), s - range_ms + 1, hi)
    if not found:
        return Vec.empty(steps)
    found.sort(key=lambda item: make_labels(item[1]))
    row_of = {fp: i for i, (fp, _) in enumerate(found)}
    params = {"p": project, "s": s, "st": step, "range": int(range_ms), "lo": s - range_ms, "hi": hi}
    fmt = {"cols": "".join(", " + c for c in _COLUMNS[func]), "db": store.db, "stale": STALE_NAN_BITS,
           # One window (an instant query): every selected sample is in it.
           "k": "toUInt32(0)" if steps == 1 else _K, "window": "" if steps == 1 else _IN_WINDOW}

    def run(fps: list[int], final: bool) -> dict[str, np.ndarray] | None:
        timeout = max(1, int(deadline - time.monotonic()))
        sql = _SQL.format(**fmt, timeout=timeout, final=" FINAL" if final else "",
                          settings=", do_not_merge_across_partitions_select_final = 1" if final else "")
        table = query_arrow(store.ex, sql, {**params, "fps": fps})
        if not table.num_rows:
            return None
        return {name: table.column(name).to_numpy() for name in table.column_names}

    cols = run([fp for fp, _ in found], final=False)
    if cols is not None:
        order = np.lexsort((cols["t_lo"], cols["k"], cols["f"]))
        cols = {name: c[order] for name, c in cols.items()}
        f, k = cols["f"], cols["k"]
        same = (f[1:] == f[:-1]) & (k[1:] == k[:-1])
        # Sorted by span start: if any two spans of a window overlap, two neighbours do.
        overlap = same & (cols["t_lo"][1:] <= cols["t_hi"][:-1])
        if overlap.any():
            again = np.unique(f[1:][overlap])
            keep = ~np.isin(f, again)
            fixed = run(again.tolist(), final=True)
            cols = {name: np.concatenate([c[keep], fixed[name]]) if fixed else c[keep] for name, c in cols.items()}
        cols = _combine(func, cols)
    n = len(found)
    values = np.zeros((n, steps))
    present = np.zeros((n, steps), dtype=bool)
    if cols is not None and cols["f"].size:
        rows = np.fromiter((row_of[int(f)] for f in cols["f"]), dtype=np.intp, count=cols["f"].size)
        k = cols["k"].astype(np.intp)
        got = _values(func, cols)
        if got is None:
            return None
        values[rows, k] = got
        present[rows, k] = True
    labels = [make_labels(lb) for _, lb in found]
    return Vec(labels, values, present, np.zeros(n, dtype=bool)).compact()


def _combine(func: str, c: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """One row per (series, window) from the rows of its parts; windows without a sample dropped."""
    key = c["f"].astype(np.uint64), c["k"].astype(np.uint64)
    pairs = np.rec.fromarrays(key, names="f,k")
    uniq, inv = np.unique(pairs, return_inverse=True)
    g = uniq.size
    out: dict[str, np.ndarray] = {"f": uniq["f"], "k": uniq["k"]}

    def total(name: str) -> np.ndarray:
        acc = np.zeros(g, dtype=np.float64 if c[name].dtype.kind == "f" else np.int64)
        np.add.at(acc, inv, c[name].astype(acc.dtype))
        return acc

    out["n"] = total("n")
    for name in ("bad", "plain", "kahan", "mass", "real"):
        if name in c:
            out[name] = total(name)
    if func in ("min_over_time", "max_over_time"):
        # A part without a real value has v of NaN (or ClickHouse's empty default): left out.
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
        # result, the engine's kernel sums instead.
        if np.any(finite & (c["mass"] > 4096 * np.abs(total))):
            return None
        if func == "sum_over_time":
            return total
        if np.any(finite & np.isinf(total)):
            return None  # finite values whose sum overflows: the engine's incremental mean
        return total / n
    if func in ("min_over_time", "max_over_time"):
        return np.where(c["real"] > 0, c["v"], np.nan)
    return c["v"].astype(np.float64)  # last_over_time, first_over_time
