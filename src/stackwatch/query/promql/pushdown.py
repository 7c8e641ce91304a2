"""Dashboard-shaped PromQL evaluated inside ClickHouse: rates and aggregations per step in SQL.

Pulling every sample of ``sum by (route) (rate(http_requests_total[5m]))`` over 24 h into
Python moves millions of rows to compute a few thousand numbers. For the shapes dashboards are
made of, this module writes one SQL query that returns the final ``(group, step)`` values:

* ``sum|avg|count [by (labels)] (rate|increase(selector[range] [offset d]))`` — and therefore
  ``histogram_quantile(q, sum by (le, x) (rate(b[5m])))`` and ``topk(k, sum by ...)``, whose
  inner aggregation is this shape (the evaluator asks for every sub-expression);
* ``sum|avg|count [by (labels)] (selector [offset d])`` — instant vectors with lookback.

How a window becomes SQL, with Prometheus's semantics kept exactly. Steps are
``t_k = s + k * step``. A sample at ``t`` is in the window of step ``k`` iff
``b(t) <= k < d(t)`` with ``b(t) = ceil((t - s) / step)`` and ``d(t) = ceil((t + range - s) / step)``
(the window ``(t_k - range, t_k]`` is left-open, as in Prometheus 3). So, per series in time
order, sample ``i`` is the *last* sample of steps ``[b(t_i), b(t_{i+1}))`` and the *first*
of steps ``[d(t_{i-1}), d(t_i))``: each sample is expanded only to the (few) steps it is first
or last of, never to every window it lies in. Window functions give each sample its row number
(the count of a window is ``rn_last - rn_first + 1``) and the running sum of counter-reset
corrections (the correction of a window is ``C_last - C_first``). Grouping by series and step
joins first and last; the extrapolation of ``extrapolatedRate`` (threshold 1.1 x the average
interval, half an interval beyond, zero-point clamp for counters) is arithmetic on that row;
the aggregation groups by the grouping labels, mapped from fingerprints with ``transform``.

Staleness markers are removed before windows (Prometheus drops them from range vectors); for
instant vectors they are kept while deciding which sample is the latest and dropped after, so
a marker ends its series as lookback does in Prometheus.

Anything else (``@``, ``without``, other functions or aggregations, irregular steps) returns
``None`` and the numpy engine evaluates it from raw samples, as before; so do rates over
counters whose resets the running sums cannot subtract exactly (see ``_STAGES_RATE``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._ast import Aggregate, Call, MatrixSel, Node, Paren, VectorSel
from ._values import Labels, Vec
from .storage import STALE_NAN_BITS

__all__ = ["Plan", "plan", "run"]

_AGGS = ("sum", "avg", "count")
_FUNCS = ("rate", "increase")


@dataclass(frozen=True)
class Plan:
    """A recognised shape: ``op by (grouping) (func(vs[range_ms]))`` or ``op by (grouping) (vs)``."""

    op: str
    grouping: tuple[str, ...]
    func: str | None  # "rate" | "increase" | None (instant selector)
    vs: VectorSel
    range_ms: int


def _unparen(node: Node) -> Node:
    while isinstance(node, Paren):
        node = node.expr
    return node


def plan(node: Node) -> Plan | None:
    """The pushdown plan for ``node``, or None when it is not a shape this module handles."""
    node = _unparen(node)
    if not isinstance(node, Aggregate) or node.op not in _AGGS or node.param is not None or node.without:
        return None
    if "__name__" in node.grouping:
        return None
    inner = _unparen(node.expr)
    grouping = tuple(sorted(set(node.grouping)))
    if isinstance(inner, VectorSel):
        if inner.at is not None or inner.or_matchers:
            return None
        return Plan(node.op, grouping, None, inner, 0)
    if isinstance(inner, Call) and inner.func in _FUNCS and len(inner.args) == 1:
        arg = _unparen(inner.args[0])
        if isinstance(arg, MatrixSel) and arg.vs.at is None and not arg.vs.or_matchers:
            return Plan(node.op, grouping, inner.func, arg.vs, arg.range_ms)
    return None


def _steps(ts: np.ndarray) -> tuple[int, int] | None:
    """(first time, step) of a regular grid of evaluation times, or None."""
    if ts.size == 1:
        return int(ts[0]), 1
    step = int(ts[1] - ts[0])
    if step <= 0 or not np.all(np.diff(ts) == step):
        return None
    return int(ts[0]), step


# Per series (one GROUP BY fingerprint): its samples as time-ordered arrays; sample i is the
# last sample of ``bs[i+1] - bs[i]`` consecutive steps and the first of ``ds[i] - ds[i-1]``, so
# repeating each sample's fields that many times (arrayWithConstant, flattened) lays out, for
# every step, the fields of its last and first sample. Everything is zipped element-wise (a
# lambda that captured a whole array would copy it once per element), and each stage is its
# own subquery: ClickHouse's analyzer inlines aliases, and one flat SELECT of these
# dependent arrays took it most of a second just to plan.
_SERIES_SQL = """
SELECT transform(fingerprint, {{fps:Array(UInt64)}}, {{gids:Array(UInt32)}}, toUInt32(0)) AS g,
  arraySort(x -> x.1, groupArray((timestamp, value))) AS pts,
  arrayMap(x -> x.1, pts) AS ts,
  arrayMap(x -> x.2, pts) AS vs
FROM `{db}`.metric_samples FINAL
WHERE project = {{p:String}} AND fingerprint IN {{fps:Array(UInt64)}}
  AND timestamp > {{lo:Int64}} AND timestamp <= {{hi:Int64}}{where}
GROUP BY fingerprint
SETTINGS do_not_merge_across_partitions_select_final = 1
"""

_STAGES_COMMON = [
    # bs/ds: the first step each sample is in / no longer in the window of (clipped to [0, n]).
    """g, ts, vs,
    arrayMap(t -> toUInt32(greatest(least({b_t}, {{n:Int64}}), 0)), ts) AS bs,
    arrayMap(t -> toUInt32(greatest(least({d_t}, {{n:Int64}}), 0)), ts) AS ds""",
    # selL: samples that are the last sample of at least one step (the steps [bs[i], bs[i+1]));
    # selF: samples that are the first in at least one step's window (steps [ds[i-1], ds[i])).
    """g, ts, vs, bs, ds,
    arrayConcat(arrayWithConstant(bs[1], toUInt8(0)), arrayWithConstant(toUInt32({{n:Int64}}) - bs[1], toUInt8(1)))
      AS hasL,
    arrayResize(arrayWithConstant(ds[-1], toUInt8(1)), {{n:Int64}}, toUInt8(0)) AS hasF,
    arrayMap((b, nb) -> toUInt8(nb > b), bs, arrayPushBack(arrayPopFront(bs), toUInt32({{n:Int64}}))) AS selL,
    arrayMap((pd, d) -> toUInt8(d > pd), arrayPushFront(arrayPopBack(ds), toUInt32(0)), ds) AS selF""",
    """g, ts, vs, bs, ds, hasL, hasF, selL, selF,
    arrayFilter((b, s) -> s, bs, selL) AS posL,
    arrayFilter((pd, s) -> s, arrayPushFront(arrayPopBack(ds), toUInt32(0)), selF) AS posF,
    arrayReduce('groupArrayInsertAt(toUInt8(0), {N})', arrayMap(x -> toUInt8(1), posL), posL) AS markL,
    arrayReduce('groupArrayInsertAt(toUInt8(0), {N})', arrayMap(x -> toUInt8(1), posF), posF) AS markF""",
]

_STAGES_RATE = [
    # rv: what each sample's reset adds (the value before it); cs: their running sum.
    """g, ts, vs, hasL, hasF, selL, selF, posL, posF, markL, markF,
    arrayMap((v, pv) -> if(v < pv, pv, 0.), vs, arrayPushFront(arrayPopBack(vs), vs[1])) AS rv,
    arrayCumSum(rv) AS cs,
    arrayEnumerate(vs) AS rn""",
    # A window's resets are the difference of two running sums, exact only while every partial
    # sum is: resets that are finite integers summing below 2^53, or a single reset (0 and its
    # own value). Otherwise (a +Inf once, a 2^64 wrap beside small restarts) the whole query is
    # left to the numpy engine, which sums each window's resets by themselves.
    """g, hasL, hasF, {rnL} AS rnL, {rnF} AS rnF, {tL} AS tLs, {tF} AS tFs, {vL} AS vLs, {vF} AS vFs,
    {cL} AS cLs, {cF} AS cFs,
    toUInt8(arrayExists(x -> NOT isFinite(x), rv) OR (arrayCount(x -> x != 0, rv) > 1
      AND (arrayExists(x -> x != floor(x), rv) OR greatest(abs(arrayMin(cs)), abs(arrayMax(cs))) >= 9007199254740992)))
      AS unsafe""",
    """g, unsafe, tLs, tFs, vFs,
    arrayMap((hl, hf, a, b) -> toUInt32(hl AND hf AND a > b), hasL, hasF, rnL, rnF) AS pres,
    arrayMap((vl, vf, cl, cf) -> vl - vf + (cl - cf), vLs, vFs, cLs, cFs) AS res,
    arrayMap(k -> {{s0:Int64}} + toInt64(k) * {{step:Int64}}, range(toUInt32({{n:Int64}}))) AS tes,
    arrayMap((a, b) -> (a - b) / 1000, tLs, tFs) AS samp,
    arrayMap((sp, a, b) -> sp / (toInt64(a) - toInt64(b)), samp, rnL, rnF) AS avgs""",
    """g, unsafe, pres, res, samp,
    arrayMap((tf, te, av) -> if((tf - (te - {{range:Int64}})) / 1000 >= av * 1.1, av / 2,
                                (tf - (te - {{range:Int64}})) / 1000), tFs, tes, avgs) AS st1,
    arrayMap((tl, te, av) -> if((te - tl) / 1000 >= av * 1.1, av / 2, (te - tl) / 1000), tLs, tes, avgs) AS en,
    vFs""",
    """g, unsafe, pres, res, samp, en,
    arrayMap((x, r, vf, sp) -> if(r > 0 AND vf >= 0 AND sp * (vf / r) < x, sp * (vf / r), x),
             st1, res, vFs, samp) AS st""",
    """g, unsafe, pres,
    arrayMap((ok, r, sp, a, b) -> if(ok = 0, 0., r * ((sp + a + b) / sp) {rate_div}), pres, res, samp, st, en)
      AS vals""",
]

_STAGES_LAST = [
    """g, hasL, {dL} AS dLs, {vL} AS vLs""",
    """g,
    arrayMap((hl, k, dl, v) -> toUInt32(hl AND k < dl AND reinterpretAsUInt64(v) != {stale}),
             hasL, range(toUInt32({{n:Int64}})), dLs, vLs) AS pres,
    vLs""",
    """g, toUInt8(0) AS unsafe, pres, arrayMap((v, ok) -> if(ok = 0, 0., v), vLs, pres) AS vals""",
]

_FINAL_SQL = """
SELECT g, sumForEach(vals) AS sv, sumForEach(pres) AS c, max(unsafe) AS unsafe FROM ({inner})
GROUP BY g
SETTINGS max_execution_time = {timeout}
"""


def _at_last(arr: str, default: str, n: int) -> str:
    """Per step, ``arr``'s element of the step's last sample (``default`` before the first).

    Each sample that is last of some steps is written at the first of them
    (groupArrayInsertAt) and carried forward over the rest (arrayFill): linear, no nested arrays.
    """
    return (f"arrayFill((x, m) -> m, arrayReduce('groupArrayInsertAt({default}, {n})', "
            f"arrayFilter((x, s) -> s, {arr}, selL), posL), markL)")


def _at_first(arr: str, default: str, n: int) -> str:
    """Per step, ``arr``'s element of the first sample in the step's window."""
    return (f"arrayFill((x, m) -> m, arrayReduce('groupArrayInsertAt({default}, {n})', "
            f"arrayFilter((x, s) -> s, {arr}, selF), posF), markF)")


def _layered(first: str, stages: list[str]) -> str:
    sql = first
    for cols in stages:
        sql = f"SELECT {cols}\nFROM ({sql})"
    return sql


def _ceil_div(num: str) -> str:
    """``ceil(num / step)`` for any sign of ``num``, in integers (ClickHouse's intDiv truncates)."""
    return f"if(({num}) > 0, intDiv(({num}) + {{step:Int64}} - 1, {{step:Int64}}), -intDiv(-({num}), {{step:Int64}}))"


def run(store: Any, project: str, p: Plan, ts: np.ndarray, lookback_ms: int, deadline: float) -> Vec | None:
    """Evaluate a plan at the times ``ts``; None if the times are not a regular grid."""
    grid = _steps(ts)
    if grid is None:
        return None
    start, step = grid
    steps = int(ts.size)
    s0 = start - p.vs.offset_ms  # effective evaluation times (offset applied)
    end = s0 + (steps - 1) * step
    span = p.range_ms if p.func else lookback_ms
    found = store.find_series(project, list(p.vs.matchers), s0 - span + 1, end)
    if not found:
        return Vec.empty(steps)
    groups: dict[Labels, int] = {}
    fps: list[int] = []
    gids: list[int] = []
    for fp, labels in found:
        key = tuple((name, labels[name]) for name in p.grouping if labels.get(name, ""))
        gids.append(groups.setdefault(key, len(groups)))
        fps.append(fp)
    timeout = max(1, int(deadline - time.monotonic()))
    fmt = {"db": store.db, "stale": STALE_NAN_BITS, "timeout": timeout, "N": steps,
           "b_t": _ceil_div("t - {s0:Int64}"), "d_t": _ceil_div("t + {span:Int64} - {s0:Int64}")}
    fmt["where"] = f" AND reinterpretAsUInt64(value) != {STALE_NAN_BITS}" if p.func else ""
    fmt.update(rnL=_at_last("rn", "toUInt32(0)", steps), rnF=_at_first("rn", "toUInt32(0)", steps),
               tL=_at_last("ts", "toInt64(0)", steps), tF=_at_first("ts", "toInt64(0)", steps),
               vL=_at_last("vs", "0.", steps), vF=_at_first("vs", "0.", steps),
               cL=_at_last("cs", "0.", steps), cF=_at_first("cs", "0.", steps),
               dL=_at_last("ds", "toUInt32(0)", steps))
    fmt["rate_div"] = f"/ {p.range_ms / 1000!r}" if p.func == "rate" else ""
    stages = _STAGES_COMMON + (_STAGES_RATE if p.func else _STAGES_LAST)
    inner = _layered(_SERIES_SQL.format(**fmt), [st.format(**fmt) for st in stages])
    sql = _FINAL_SQL.format(inner=inner, timeout=timeout)
    params = {"p": project, "fps": fps, "gids": gids, "s0": s0, "step": step, "n": steps, "span": span,
              "lo": s0 - span, "hi": end}
    if p.func:
        params["range"] = p.range_ms
    from stackwatch.storage.metrics import query_arrow

    table = query_arrow(store.ex, sql, params)
    if table.num_rows and max(table.column("unsafe").to_pylist()):
        return None  # resets the running sums cannot give exactly: the engine's path
    n = len(groups)
    sums = np.zeros((n, steps))
    counts = np.zeros((n, steps))
    if table.num_rows:
        g = table.column("g").to_numpy().astype(np.intp)
        sums[g] = np.asarray(table.column("sv").to_pylist(), dtype=np.float64).reshape(len(g), steps)
        counts[g] = np.asarray(table.column("c").to_pylist(), dtype=np.float64).reshape(len(g), steps)
    present = counts > 0
    if p.op == "sum":
        values = sums
    elif p.op == "avg":
        with np.errstate(all="ignore"):
            values = np.where(present, sums / np.maximum(counts, 1), 0.0)
    else:
        values = counts
    out = Vec(list(groups), values, present, np.zeros(n, dtype=bool))
    return out.compact()
