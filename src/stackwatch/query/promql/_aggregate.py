"""Aggregation operators over ``(series, steps)`` arrays.

Series are mapped to groups once (labels do not change across steps). Where
Prometheus's arithmetic is order-sensitive (Kahan sums, Welford variance,
min/max NaN rules) the group members are walked "rank by rank": the k-th member
of every group is folded in with one numpy operation over all groups and steps.
When there are few steps and large groups (an instant query's ``sum`` over
thousands of series: one numpy call per member on one-element arrays), each
group's members are folded with Python floats instead (:func:`_fold_scalar`),
the same operations in the same order, so the same bits.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ._format import format_go_f, format_go_v
from ._range_funcs import kahan_inc
from ._values import NAME, Labels, Vec
from .errors import EvaluationError

_MAX_INT64 = 9.223372036854775807e18
_MIN_INT64 = -9.223372036854775808e18


def grouping_key(labels: Labels, grouping: list[str], without: bool) -> Labels:
    """The output label set of a series' group."""
    if without:
        drop = set(grouping) | {NAME}
        return tuple(p for p in labels if p[0] not in drop)
    keep = set(grouping)
    return tuple(p for p in labels if p[0] in keep)


def _groups(vec: Vec, grouping: list[str], without: bool) -> tuple[list[Labels], np.ndarray]:
    index: dict[Labels, int] = {}
    gidx = np.empty(len(vec), dtype=np.intp)
    for i, lb in enumerate(vec.labels):
        key = grouping_key(lb, grouping, without)
        gidx[i] = index.setdefault(key, len(index))
    return list(index), gidx


def _ranks(members: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For k = 0, 1, ...: (rows that are the k-th member of their group, their groups)."""
    top = max((len(m) for m in members), default=0)
    out = []
    for k in range(top):
        rows = [m[k] for m in members if len(m) > k]
        groups = [g for g, m in enumerate(members) if len(m) > k]
        out.append((np.asarray(rows, dtype=np.intp), np.asarray(groups, dtype=np.intp)))
    return out


#: Aggregations :func:`_fold_scalar` computes.
_SCALAR_OPS = frozenset({"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar"})


def _kahan(inc: float, s: float, c: float) -> tuple[float, float]:
    """:func:`kahan_inc` on Python floats."""
    t = s + inc
    if math.isinf(t):
        return t, 0.0
    if abs(s) >= abs(inc):
        return t, c + ((s - t) + inc)
    return t, c + ((inc - t) + s)


def _fold_scalar(op: str, members: list[list[int]], vals: np.ndarray, pres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of ``op`` per group and step, member by member in Python floats.

    Mirrors the rank-by-rank numpy code of :func:`aggregate` operation for operation.
    """
    ng, steps = len(members), vals.shape[1]
    out = np.zeros((ng, steps))
    seen = np.zeros((ng, steps), dtype=bool)
    isnan, isinf = math.isnan, math.isinf
    for g, rows in enumerate(members):
        for j in range(steps):
            fs = [f for f, p in zip(vals[rows, j].tolist(), pres[rows, j].tolist(), strict=True) if p]
            if not fs:
                if op in ("min", "max"):
                    out[g, j] = math.nan
                elif op == "group":
                    out[g, j] = 1.0
                continue
            seen[g, j] = True
            n = len(fs)
            if op == "sum":
                s, c = fs[0], 0.0
                for f in fs[1:]:
                    s, c = _kahan(f, s, c)
                out[g, j] = s + c
            elif op == "avg":
                s, c, mean, incr = fs[0], 0.0, 0.0, False
                for cnt, f in enumerate(fs[1:], start=2):
                    if not incr:
                        t, nc = _kahan(f, s, c)
                        if not isinf(t):
                            s, c = t, nc
                        else:
                            mean, c, incr = s / (cnt - 1), c / (cnt - 1), True
                    if incr:
                        q = (cnt - 1) / cnt
                        mean, c = _kahan(f / cnt, q * mean, q * c)
                out[g, j] = mean + c if incr else s / n + c / n
            elif op in ("min", "max"):
                cur = fs[0]
                for f in fs[1:]:
                    if (f > cur if op == "max" else f < cur) or isnan(cur):
                        cur = f
                out[g, j] = cur
            elif op == "count":
                out[g, j] = float(n)
            elif op == "group":
                out[g, j] = 1.0
            else:  # stddev, stdvar: Welford
                first = fs[0]
                mean, acc = first, (math.nan if isnan(first) or isinf(first) else 0.0)
                for cnt, f in enumerate(fs[1:], start=2):
                    delta = f - mean
                    mean = mean + delta / cnt
                    acc = acc + delta * (f - mean)
                v = acc / n
                if op == "stddev":
                    v = math.sqrt(v) if v >= 0 else math.nan  # as np.sqrt: NaN for NaN and below 0
                out[g, j] = v
    return out, seen


def aggregate(op: str, vec: Vec, grouping: list[str], without: bool, param: np.ndarray | str | None) -> Vec:
    """Evaluate ``op`` (sum, avg, ..., topk) over ``vec`` for every step."""
    steps = vec.values.shape[1]
    if op == "count_values":
        assert isinstance(param, str)
        return _count_values(vec, grouping, without, param)
    if op in ("topk", "bottomk"):
        assert isinstance(param, np.ndarray)
        return _topk(op, vec, grouping, without, param)
    keys, gidx = _groups(vec, grouping, without)
    ng = len(keys)
    vals, pres = vec.values, vec.present
    seen = np.zeros((ng, steps), dtype=bool)
    count = np.zeros((ng, steps))
    drop = np.zeros(ng, dtype=bool)
    for i, g in enumerate(gidx):
        # A group drops __name__ if any member present at some step wants it dropped.
        if vec.drop_name[i] and pres[i].any():
            drop[g] = True
    members: list[list[int]] = [[] for _ in range(ng)]
    for i, g in enumerate(gidx.tolist()):
        members[g].append(i)
    top = max((len(m) for m in members), default=0)
    # One numpy step per rank costs some 40 us whatever its width; a Python float step about
    # 0.3 us per member and step.
    if op in _SCALAR_OPS and len(vec) * steps < 100 * top:
        out, seen = _fold_scalar(op, members, vals, pres)
        return Vec(keys, out, seen, drop)
    ranks = _ranks(members)
    with np.errstate(all="ignore"):
        if op in ("sum", "avg"):
            s = np.zeros((ng, steps))
            c = np.zeros((ng, steps))
            mean = np.zeros((ng, steps))
            incr = np.zeros((ng, steps), dtype=bool)
            for rows, groups in ranks:
                p = pres[rows]
                f = vals[rows]
                first = p & ~seen[groups]
                later = p & seen[groups]
                cnt = count[groups] + p
                gs, gc, gm, gi = s[groups], c[groups], mean[groups], incr[groups]
                ns, nc = kahan_inc(f, gs, gc)
                if op == "sum":
                    gs = np.where(first, f, np.where(later, ns, gs))
                    gc = np.where(first, 0.0, np.where(later, nc, gc))
                else:
                    direct = later & ~gi & ~np.isinf(ns)
                    switch = later & ~gi & np.isinf(ns)
                    gs = np.where(first, f, np.where(direct, ns, gs))
                    gc = np.where(first, 0.0, np.where(direct, nc, gc))
                    gm = np.where(switch, gs / (cnt - 1), gm)
                    gc = np.where(switch, gc / (cnt - 1), gc)
                    gi = gi | switch
                    inc_now = later & gi
                    q = (cnt - 1) / np.where(cnt == 0, 1, cnt)
                    nm, nc2 = kahan_inc(f / np.where(cnt == 0, 1, cnt), q * gm, q * gc)
                    gm = np.where(inc_now, nm, gm)
                    gc = np.where(inc_now, nc2, gc)
                s[groups], c[groups], mean[groups], incr[groups] = gs, gc, gm, gi
                count[groups] = cnt
                seen[groups] |= p
            if op == "sum":
                out = s + c
            else:
                cnt = np.where(count == 0, 1, count)
                out = np.where(incr, mean + c, s / cnt + c / cnt)
        elif op in ("min", "max"):
            out = np.full((ng, steps), np.nan)
            for rows, groups in ranks:
                p = pres[rows]
                f = vals[rows]
                cur = out[groups]
                better = (f > cur) if op == "max" else (f < cur)
                upd = p & (~seen[groups] | better | np.isnan(cur))
                out[groups] = np.where(upd, f, cur)
                seen[groups] |= p
        elif op in ("count", "group"):
            for rows, groups in ranks:
                count[groups] += pres[rows]
            seen = count > 0
            out = count.copy() if op == "count" else np.ones((ng, steps))
        elif op in ("stddev", "stdvar"):
            mean = np.zeros((ng, steps))
            acc = np.zeros((ng, steps))
            for rows, groups in ranks:
                p = pres[rows]
                f = vals[rows]
                first = p & ~seen[groups]
                later = p & seen[groups]
                cnt = count[groups] + p
                gm, ga = mean[groups], acc[groups]
                bad = np.isnan(f) | np.isinf(f)
                ga = np.where(first, np.where(bad, np.nan, 0.0), ga)
                gm = np.where(first, f, gm)
                delta = f - gm
                nm = gm + delta / np.where(cnt == 0, 1, cnt)
                na = ga + delta * (f - nm)
                gm = np.where(later, nm, gm)
                ga = np.where(later, na, ga)
                mean[groups], acc[groups], count[groups] = gm, ga, cnt
                seen[groups] |= p
            out = acc / np.where(count == 0, 1, count)
            if op == "stddev":
                out = np.sqrt(out)
        elif op == "quantile":
            assert isinstance(param, np.ndarray)
            out = np.full((ng, steps), np.nan)
            for g in range(ng):
                rows = np.nonzero(gidx == g)[0]
                q_out, any_p = quantile_columns(vals[rows], pres[rows], param)
                out[g] = q_out
                seen[g] = any_p
        else:
            raise EvaluationError(f"unknown aggregation {op!r}")
    return Vec(keys, out, seen, drop)


def quantile_columns(vals: np.ndarray, pres: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prometheus's ``quantile`` over the present values of each column (NaNs sort first)."""
    m, steps = vals.shape
    cat = np.where(pres, np.where(np.isnan(vals), 0, 1), 2)
    filled = np.where(cat == 1, vals, 0.0)
    order = np.argsort(filled, axis=0, kind="stable")
    cat_sorted = np.take_along_axis(cat, order, axis=0)
    order2 = np.argsort(cat_sorted, axis=0, kind="stable")
    final = np.take_along_axis(order, order2, axis=0)
    sorted_vals = np.take_along_axis(vals, final, axis=0)
    n = pres.sum(axis=0)
    any_p = n > 0
    nf = n.astype(np.float64)
    with np.errstate(all="ignore"):
        rank = q * (nf - 1)
        lower = np.maximum(0, np.floor(rank))
        upper = np.minimum(nf - 1, lower + 1)
        weight = rank - np.floor(rank)
        li = np.clip(np.nan_to_num(lower), 0, max(m - 1, 0)).astype(np.intp)
        ui = np.clip(np.nan_to_num(upper), 0, max(m - 1, 0)).astype(np.intp)
        cols = np.arange(steps)
        if m == 0:
            return np.full(steps, np.nan), any_p
        lv = sorted_vals[li, cols]
        uv = sorted_vals[ui, cols]
        res = lv * (1 - weight) + uv * weight
    res = np.where(np.isnan(q), np.nan, np.where(q < 0, -np.inf, np.where(q > 1, np.inf, res)))
    return res, any_p


def _topk(op: str, vec: Vec, grouping: list[str], without: bool, k_param: np.ndarray) -> Vec:
    steps = vec.values.shape[1]
    if np.isnan(k_param).any():
        raise EvaluationError("Parameter value is NaN")
    if len(vec) == 0:
        return Vec.empty(steps)
    if k_param.max() < 1:
        return Vec.empty(steps)
    if k_param.min() <= _MIN_INT64:
        raise EvaluationError(f"Scalar value {format_go_v(float(k_param.min()))} underflows int64")
    if k_param.max() >= _MAX_INT64:
        raise EvaluationError(f"Scalar value {format_go_v(float(k_param.max()))} overflows int64")
    k = np.minimum(np.trunc(k_param), len(vec))
    keys, gidx = _groups(vec, grouping, without)
    selected = np.zeros(vec.values.shape, dtype=bool)
    rank_of = np.zeros(vec.values.shape, dtype=np.intp)
    sign = -1.0 if op == "topk" else 1.0
    for g in range(len(keys)):
        rows = np.nonzero(gidx == g)[0]
        v = vec.values[rows]
        p = vec.present[rows]
        selected[rows] = _heap_select(v, p, k, op == "bottomk")
        # Output order of an instant result: by value (NaN last), as Prometheus sorts the heap.
        cat = np.where(p, np.where(np.isnan(v), 1, 0), 2)
        key = np.where(cat == 0, sign * v, 0.0)
        order = np.argsort(key, axis=0, kind="stable")
        order = np.take_along_axis(
            order, np.argsort(np.take_along_axis(cat, order, axis=0), axis=0, kind="stable"), axis=0
        )
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(len(rows))[:, None].repeat(steps, axis=1), axis=0)
        rank_of[rows] = ranks
    present = vec.present & selected
    out = Vec(list(vec.labels), vec.values.copy(), present, vec.drop_name.copy())
    if steps == 1:
        # Instant query: Prometheus returns each group's series sorted by value.
        order_rows = sorted(np.nonzero(present[:, 0])[0], key=lambda i: (gidx[i], rank_of[i, 0]))
        out = out.take(order_rows)
    return out


def _heap_select(values: np.ndarray, present: np.ndarray, k: np.ndarray, bottom: bool) -> np.ndarray:
    """Which rows topk/bottomk keep at each step, ties broken exactly as Prometheus breaks them.

    Prometheus feeds the group's series, in input order, through a size-k binary heap
    (Go's ``container/heap``): the first k enter, and a later one replaces the heap's root
    only if strictly better. Among equal values the survivors therefore depend on the heap's
    shape, not just on input order, and integer gauges tie all the time. This runs that heap
    for every step at once: one pass over the rows, each push / replace and its sift-up /
    sift-down done as numpy operations over the steps. Returns an ``(rows, steps)`` mask.
    """
    n, steps = values.shape
    kmax = int(min(n, k.max())) if n else 0
    out = np.zeros((n, steps), dtype=bool)
    if kmax < 1:
        return out
    cols = np.arange(steps)
    heap_v = np.zeros((kmax, steps))
    heap_r = np.full((kmax, steps), -1, dtype=np.intp)
    size = np.zeros(steps, dtype=np.intp)
    kk = k.astype(np.intp)
    depth = max(1, int(np.ceil(np.log2(kmax + 1))) + 1)

    def less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Go's vectorByValueHeap (topk) / vectorByReverseValueHeap (bottomk): NaN sorts first.
        nan_first = np.isnan(a) & ~np.isnan(b)
        return nan_first | ((a > b) if bottom else (a < b))

    def swap(i: np.ndarray, j: np.ndarray, m: np.ndarray) -> None:
        c = cols[m]
        ii, jj = i[m], j[m]
        heap_v[ii, c], heap_v[jj, c] = heap_v[jj, c], heap_v[ii, c].copy()
        heap_r[ii, c], heap_r[jj, c] = heap_r[jj, c], heap_r[ii, c].copy()

    for r in range(n):
        p = present[r]
        if not p.any():
            continue
        v = values[r]
        push = p & (size < kk)
        root = heap_v[0]
        better = (root > v) if bottom else (root < v)
        replace = p & ~push & (kk >= 1) & (better | (np.isnan(root) & ~np.isnan(v)))
        if push.any():
            j = np.where(push, size, 0)
            heap_v[j[push], cols[push]] = v[push]
            heap_r[j[push], cols[push]] = r
            size = size + push
            active = push.copy()
            for _ in range(depth):  # up(j)
                parent = np.maximum(j - 1, 0) // 2
                go = active & (j > 0)
                if not go.any():
                    break
                go &= less(heap_v[j, cols], heap_v[parent, cols])
                swap(j, parent, go)
                j = np.where(go, parent, j)
                active = go
        if replace.any():
            heap_v[0, replace] = v[replace]
            heap_r[0, replace] = r
            active = replace & (kk > 1)
            i = np.zeros(steps, dtype=np.intp)
            for _ in range(depth):  # down(0, size)
                j1 = 2 * i + 1
                go = active & (j1 < size)
                if not go.any():
                    break
                j1c = np.minimum(j1, kmax - 1)
                j2c = np.minimum(j1 + 1, kmax - 1)
                use2 = (j1 + 1 < size) & less(heap_v[j2c, cols], heap_v[j1c, cols])
                j = np.where(use2, j2c, j1c)
                go &= less(heap_v[j, cols], heap_v[i, cols])
                swap(i, j, go)
                i = np.where(go, j, i)
                active = go
    for slot in range(kmax):
        rr = heap_r[slot]
        ok = (rr >= 0) & (slot < size)
        out[rr[ok], cols[ok]] = True
    return out & present


def _count_values(vec: Vec, grouping: list[str], without: bool, label: str) -> Vec:
    steps = vec.values.shape[1]
    if not _valid_label_name(label):
        raise EvaluationError(f"invalid label name {_go_quote(label)}")
    group_names = list(grouping) if without else sorted({*grouping, label})
    counts: dict[Labels, np.ndarray] = defaultdict(lambda: np.zeros(steps))
    order: list[Labels] = []
    for s in range(steps):
        for i in np.nonzero(vec.present[:, s])[0]:
            d = dict(vec.labels[i])
            d[label] = format_go_f(float(vec.values[i, s]))
            lb = tuple(sorted(d.items()))
            key = grouping_key(lb, group_names, without)
            if key not in counts:
                order.append(key)
            counts[key][s] += 1
    n = len(order)
    vals = np.asarray([counts[k] for k in order]).reshape(n, steps)
    return Vec(order, vals, vals > 0, np.zeros(n, dtype=bool))


def _valid_label_name(name: str) -> bool:
    # Prometheus 3 accepts any valid UTF-8 label name except the empty one.
    if not name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
