"""Instant-vector and scalar functions (everything that does not take a range vector)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ._ast import Call, StringLit, VectorSel
from ._values import NAME, Labels, Scalar, Vec, lget, make_labels
from .errors import EvaluationError
from .storage import compile_anchored

if TYPE_CHECKING:
    from ._eval import Evaluator

_MATH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "ln": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    "deg": lambda v: v * (180 / math.pi),
    "rad": lambda v: v * (math.pi / 180),
    "sgn": lambda v: np.where(v < 0, -1.0, np.where(v > 0, 1.0, v)),
}

_DATE = ("day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour", "minute", "month", "year")
_NATIVE_ONLY = (
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_fraction",
)


def call_instant_function(ev: Evaluator, node: Call, ts: np.ndarray) -> Vec | Scalar:
    name = node.func
    steps = ts.shape[0]
    args = node.args
    with np.errstate(all="ignore"):
        if name == "time":
            return Scalar(ts / 1000.0)
        if name in ("start", "end", "range", "step"):
            ctx = ev.ctx
            value = {
                "start": ctx.start_ms,
                "end": ctx.end_ms,
                "range": ctx.end_ms - ctx.start_ms,
                "step": ctx.step_ms,
            }[name] / 1000.0
            return Scalar(np.full(steps, value))
        if name in ("min_of", "max_of"):
            a, b = ev.eval_scalar(args[0], ts), ev.eval_scalar(args[1], ts)
            return Scalar(np.minimum(a, b) if name == "min_of" else np.maximum(a, b))
        if name == "pi":
            return Scalar(np.full(steps, math.pi))
        if name == "vector":
            s = ev.eval_scalar(args[0], ts)
            return Vec([()], s[None, :].copy(), np.ones((1, steps), dtype=bool), np.zeros(1, dtype=bool))
        if name == "scalar":
            v = ev.eval_vector(args[0], ts)
            cnt = v.present.sum(axis=0)
            picked = np.where(v.present, v.values, 0.0).sum(axis=0) if len(v) else np.zeros(steps)
            return Scalar(np.where(cnt == 1, picked, np.nan))
        if name in _MATH:
            v = ev.eval_vector(args[0], ts)
            out = Vec(list(v.labels), _MATH[name](v.values), v.present.copy(), v.drop_name.copy())
            return ev._drop_names(out, np.ones(len(out), dtype=bool))
        if name == "round":
            v = ev.eval_vector(args[0], ts)
            nearest = ev.eval_scalar(args[1], ts) if len(args) > 1 else np.ones(steps)
            inv = 1.0 / nearest
            vals = np.floor(v.values * inv + 0.5) / inv
            out = Vec(list(v.labels), vals, v.present.copy(), v.drop_name.copy())
            return ev._drop_names(out, np.ones(len(out), dtype=bool))
        if name in ("clamp", "clamp_min", "clamp_max"):
            v = ev.eval_vector(args[0], ts)
            if name == "clamp":
                lo, hi = ev.eval_scalar(args[1], ts), ev.eval_scalar(args[2], ts)
            elif name == "clamp_min":
                lo, hi = ev.eval_scalar(args[1], ts), np.full(steps, np.inf)
            else:
                lo, hi = np.full(steps, -np.inf), ev.eval_scalar(args[1], ts)
            vals = np.maximum(lo[None, :], np.minimum(hi[None, :], v.values))
            ok = ~(hi < lo)
            out = Vec(list(v.labels), vals, v.present & ok[None, :], v.drop_name.copy())
            return ev._drop_names(out, np.ones(len(out), dtype=bool))
        if name == "timestamp":
            return _timestamp(ev, node, ts)
        if name in _DATE:
            return _date(ev, node, ts)
        if name == "histogram_quantile":
            q = ev.eval_scalar(args[0], ts)
            v = ev.eval_vector(args[1], ts)
            out = histogram_quantile(q, v)
            return ev._drop_names(out, np.ones(len(out), dtype=bool))
        if name in _NATIVE_ONLY or name == "histogram_quantiles":
            # Only native histogram samples are processed; float-only storage has none.
            for a in args:
                if a.type in ("vector", "scalar"):
                    ev.eval(a, ts)
            return Vec.empty(steps)
        if name == "label_replace":
            return _label_replace(ev, node, ts)
        if name == "label_join":
            return _label_join(ev, node, ts)
        if name == "absent":
            v = ev.eval_vector(args[0], ts)
            arg = args[0]
            from ._eval import absent_labels

            labels = absent_labels(arg) if isinstance(arg, VectorSel) else ()
            empty = ~v.present.any(axis=0) if len(v) else np.ones(steps, dtype=bool)
            return Vec([labels], np.ones((1, steps)), empty[None, :], np.zeros(1, dtype=bool)).compact()
        if name in ("sort", "sort_desc"):
            v = ev.eval_vector(args[0], ts)
            return _sort_by_value(v, descending=name == "sort_desc")
        if name in ("sort_by_label", "sort_by_label_desc"):
            v = ev.eval_vector(args[0], ts)
            names = [a.value for a in args[1:] if isinstance(a, StringLit)]
            return _sort_by_label(v, names, descending=name == "sort_by_label_desc")
    raise EvaluationError(f"function {name!r} is not supported")


def _timestamp(ev: Evaluator, node: Call, ts: np.ndarray) -> Vec:
    arg = node.args[0]
    v = ev.eval_vector(arg, ts)
    if isinstance(arg, VectorSel) and v.sample_ts is not None:
        vals = v.sample_ts / 1000.0
    else:
        vals = np.broadcast_to(ts / 1000.0, v.values.shape).copy()
    out = Vec(list(v.labels), vals, v.present.copy(), v.drop_name.copy())
    return ev._drop_names(out, np.ones(len(out), dtype=bool))


def _date(ev: Evaluator, node: Call, ts: np.ndarray) -> Vec:
    steps = ts.shape[0]
    if not node.args:
        secs = (ts // 1000).astype(np.int64)[None, :]
        vals = _date_part(node.func, secs)
        return Vec([()], vals.astype(np.float64), np.ones((1, steps), dtype=bool), np.zeros(1, dtype=bool))
    v = ev.eval_vector(node.args[0], ts)
    finite = np.isfinite(v.values)
    secs = np.where(finite, np.trunc(np.where(finite, v.values, 0)), 0).astype(np.int64)
    vals = _date_part(node.func, secs).astype(np.float64)
    # Go's time.Unix of a NaN/Inf-converted int64 is far outside any calendar we can mirror.
    vals = np.where(finite, vals, np.nan)
    out = Vec(list(v.labels), vals, v.present.copy(), v.drop_name.copy())
    return ev._drop_names(out, np.ones(len(out), dtype=bool))


def _date_part(func: str, secs: np.ndarray) -> np.ndarray:
    dt = secs.astype("datetime64[s]")
    days = dt.astype("datetime64[D]")
    if func == "hour":
        return (secs // 3600) % 24
    if func == "minute":
        return (secs // 60) % 60
    if func == "day_of_week":
        return (days.astype(np.int64) + 4) % 7
    years = days.astype("datetime64[Y]")
    months = days.astype("datetime64[M]")
    if func == "year":
        return years.astype(np.int64) + 1970
    if func == "month":
        return months.astype(np.int64) % 12 + 1
    if func == "day_of_month":
        return (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    if func == "day_of_year":
        return (days - years.astype("datetime64[D]")).astype(np.int64) + 1
    if func == "days_in_month":
        nxt = (months + 1).astype("datetime64[D]")
        return (nxt - months.astype("datetime64[D]")).astype(np.int64)
    raise EvaluationError(f"unknown date function {func}")


def _sort_by_value(v: Vec, descending: bool) -> Vec:
    if v.values.shape[1] != 1:
        return v  # a range query's matrix is sorted by labels anyway
    rows = [i for i in range(len(v)) if v.present[i, 0]]
    nan = [i for i in rows if math.isnan(v.values[i, 0])]
    num = [i for i in rows if not math.isnan(v.values[i, 0])]
    num.sort(key=lambda i: v.values[i, 0], reverse=descending)
    return v.take(num + nan)


def _natsort_key(s: str) -> list[tuple[int, int | str]]:
    import re

    parts = re.split(r"(\d+)", s)
    return [(0, int(p)) if p.isdigit() else (1, p) for p in parts if p != ""]


def _sort_by_label(v: Vec, names: list[str], descending: bool) -> Vec:
    if v.values.shape[1] != 1:
        return v
    rows = [i for i in range(len(v)) if v.present[i, 0]]

    def key(i: int) -> tuple:
        return (tuple(_natsort_key(lget(v.labels[i], n)) for n in names), v.labels[i])

    rows.sort(key=key, reverse=descending)
    return v.take(rows)


def _expand(template: str, src: str, match: object, groupindex: dict[str, int], ngroups: int) -> str:
    """Go's ``regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``."""
    out: list[str] = []
    i = 0
    n = len(template)
    while i < n:
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        i = j
        if i + 1 < n and template[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        k = i + 1
        brace = k < n and template[k] == "{"
        if brace:
            k += 1
        start = k
        while k < n and (template[k] == "_" or template[k].isalnum()):
            k += 1
        name = template[start:k]
        if not name or (brace and (k >= n or template[k] != "}")):
            out.append("$")
            i += 1
            continue
        i = k + 1 if brace else k
        idx = -1
        if name.isdigit() and name.isascii():
            idx = int(name) if len(name) < 9 else -1
        elif name in groupindex:
            idx = groupindex[name]
        if 0 <= idx <= ngroups:
            a, b = match.span(idx)  # type: ignore[attr-defined]
            if a >= 0:
                out.append(src[a:b])
    return "".join(out)


def _string_arg(node: Call, i: int) -> str:
    a = node.args[i]
    if not isinstance(a, StringLit):
        raise EvaluationError(f"expected string argument {i} in call to {node.func}")
    return a.value


def _relabelled(ev: Evaluator, v: Vec, new_labels: list[Labels], keep_drop: list[bool]) -> Vec:
    from ._eval import merge_same_labels

    out = Vec(new_labels, v.values, v.present, np.asarray(keep_drop, dtype=bool).reshape(len(new_labels)))
    return merge_same_labels(out)


def _label_replace(ev: Evaluator, node: Call, ts: np.ndarray) -> Vec:
    dst, repl, src, regex_s = (_string_arg(node, i) for i in range(1, 5))
    try:
        regex = compile_anchored(regex_s)
    except Exception:
        raise EvaluationError(f"invalid regular expression in label_replace(): {regex_s}") from None
    if not dst:
        raise EvaluationError(f"invalid destination label name in label_replace(): {dst}")
    v = ev.eval_vector(node.args[0], ts)
    groupindex = dict(regex.groupindex)  # type: ignore[attr-defined]
    ngroups = int(regex.groups)  # type: ignore[attr-defined]
    labels, drops = [], []
    for i, lb in enumerate(v.labels):
        val = lget(lb, src)
        m = regex.fullmatch(val)  # type: ignore[attr-defined]
        if m is None:
            labels.append(lb)
            drops.append(bool(v.drop_name[i]))
            continue
        d = dict(lb)
        d[dst] = _expand(repl, val, m, groupindex, ngroups)
        labels.append(make_labels(d))
        drops.append(False if dst == NAME else bool(v.drop_name[i]))
    return _relabelled(ev, v, labels, drops)


def _label_join(ev: Evaluator, node: Call, ts: np.ndarray) -> Vec:
    dst = _string_arg(node, 1)
    sep = _string_arg(node, 2)
    srcs = [_string_arg(node, i) for i in range(3, len(node.args))]
    for s in srcs:
        if not s:
            raise EvaluationError(f"invalid source label name in label_join(): {s}")
    if not dst:
        raise EvaluationError(f"invalid destination label name in label_join(): {dst}")
    v = ev.eval_vector(node.args[0], ts)
    labels, drops = [], []
    for i, lb in enumerate(v.labels):
        d = dict(lb)
        d[dst] = sep.join(lget(lb, s) for s in srcs)
        labels.append(make_labels(d))
        drops.append(False if dst == NAME else bool(v.drop_name[i]))
    return _relabelled(ev, v, labels, drops)


def _almost_equal(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    min_normal = 2.2250738585072014e-308
    with np.errstate(all="ignore"):
        both_nan = np.isnan(a) & np.isnan(b)
        eq = a == b
        abs_sum = np.abs(a) + np.abs(b)
        diff = np.abs(a - b)
        small = (a == 0) | (b == 0) | (abs_sum < min_normal)
        rel = diff / np.minimum(abs_sum, np.finfo(np.float64).max)
        return both_nan | eq | np.where(small, diff < eps * min_normal, rel < eps)


def _parse_le(s: str) -> float | None:
    t = s.strip()
    try:
        return float(t)
    except ValueError:
        low = t.lower()
        if low in ("+inf", "inf"):
            return math.inf
        if low == "-inf":
            return -math.inf
        return None


def histogram_quantile(q: np.ndarray, v: Vec) -> Vec:
    """Classic-bucket ``histogram_quantile`` for every step (Prometheus's BucketQuantile)."""
    steps = v.values.shape[1]
    groups: dict[Labels, list[tuple[int, float]]] = defaultdict(list)
    for i, lb in enumerate(v.labels):
        le = _parse_le(lget(lb, "le"))
        if le is None:
            continue
        key = tuple(p for p in lb if p[0] != "le")
        groups[key].append((i, le))
    if steps == 1 and len(groups) > 1:
        return _histogram_quantile_one_step(float(q[0]), v, groups)
    labels_out, vals_out, pres_out, drop_out = [], [], [], []
    for key, members in groups.items():
        rows = np.asarray([m[0] for m in members], dtype=np.intp)
        les = np.asarray([m[1] for m in members])
        order = np.argsort(les, kind="stable")
        rows, les = rows[order], les[order]
        res = np.full(steps, np.nan)
        present = v.present[rows]
        anyp = present.any(axis=0)
        # Steps with the same set of present buckets are computed together.
        patterns: dict[bytes, list[int]] = defaultdict(list)
        for s in np.nonzero(anyp)[0]:
            patterns[present[:, s].tobytes()].append(int(s))
        for pat, cols_l in patterns.items():
            mask = np.frombuffer(pat, dtype=bool)
            cols = np.asarray(cols_l, dtype=np.intp)
            res[cols] = _bucket_quantile(q[cols], les[mask], v.values[np.ix_(rows[mask], cols)])
        labels_out.append(key)
        vals_out.append(res)
        pres_out.append(anyp)
        drop_out.append(bool(v.drop_name[rows].any()))
    n = len(labels_out)
    return Vec(
        labels_out,
        np.asarray(vals_out).reshape(n, steps),
        np.asarray(pres_out, dtype=bool).reshape(n, steps),
        np.asarray(drop_out, dtype=bool),
    )


def _histogram_quantile_one_step(q: float, v: Vec, groups: dict[Labels, list[tuple[int, float]]]) -> Vec:
    """The same answer as the per-group path for a single evaluation time (alert rules, instant
    queries), computed for all groups at once: buckets laid out as a (groups x buckets) matrix,
    then the monotonicity fix, the rank search and the interpolation run column-wise, so a rule
    over a thousand histograms costs a few numpy passes instead of a thousand small ones."""
    keys = list(groups)
    n_groups = len(keys)
    gid_l: list[int] = []
    rows_l: list[int] = []
    le_l: list[float] = []
    for g, key in enumerate(keys):
        for row, le in groups[key]:
            gid_l.append(g)
            rows_l.append(row)
            le_l.append(le)
    gid = np.asarray(gid_l, dtype=np.int64)
    rows = np.asarray(rows_l, dtype=np.intp)
    les = np.asarray(le_l, dtype=np.float64)
    present = v.present[rows, 0]
    anyp = np.zeros(n_groups, dtype=bool)
    np.logical_or.at(anyp, gid, present)
    drop = np.zeros(n_groups, dtype=bool)
    np.logical_or.at(drop, gid, v.drop_name[rows])
    gid, les, counts = gid[present], les[present], v.values[rows[present], 0].astype(np.float64)
    res = np.full(n_groups, np.nan)
    if gid.size:
        order = np.lexsort((les, gid))
        gid, les, counts = gid[order], les[order], counts[order]
        # Coalesce buckets of one group with the same upper bound.
        new = np.ones(gid.size, dtype=bool)
        new[1:] = (gid[1:] != gid[:-1]) | (les[1:] != les[:-1])
        starts = np.flatnonzero(new)
        counts = np.add.reduceat(counts, starts)
        gid, les = gid[starts], les[starts]
        first = np.ones(gid.size, dtype=bool)
        first[1:] = gid[1:] != gid[:-1]
        group_start = np.flatnonzero(first)
        sizes = np.diff(np.append(group_start, gid.size))
        groups_here = gid[group_start]
        width = int(sizes.max())
        col = np.arange(gid.size) - np.repeat(group_start, sizes)
        row = np.repeat(np.arange(group_start.size), sizes)
        # Each group's last bucket is repeated into the padding: it keeps the matrix monotone and
        # the rank search is limited to each group's own buckets below.
        last = group_start + sizes - 1
        L = np.repeat(les[last][:, None], width, axis=1)
        C = np.repeat(counts[last][:, None], width, axis=1)
        L[row, col] = les
        C[row, col] = counts
        prev = C[:, 0].copy()
        for j in range(1, width):
            cur = C[:, j]
            eq = cur == prev
            almost = ~eq & _almost_equal(prev, cur, 1e-12)
            less = ~eq & ~almost & (cur < prev)
            C[:, j] = np.where(almost | less, prev, cur)
            prev = np.where(eq | almost | less, prev, cur)
        nb = sizes
        valid = np.isinf(L[np.arange(nb.size), nb - 1]) & (L[np.arange(nb.size), nb - 1] > 0) & (nb >= 2)
        idx = np.arange(nb.size)
        with np.errstate(all="ignore"):
            obs = C[idx, nb - 1]
            rank = q * obs
            reach = (C[:, :-1] >= rank[:, None]) & (np.arange(width - 1)[None, :] < (nb - 1)[:, None])
            b = np.where(reach.any(axis=1), np.argmax(reach, axis=1) if width > 1 else 0, nb - 1)
            below = np.maximum(b - 1, 0)
            bucket_end = L[idx, b]
            bucket_start = np.where(b > 0, L[idx, below], 0.0)
            base = np.where(b > 0, C[idx, below], 0.0)
            interp = bucket_start + (bucket_end - bucket_start) * ((rank - base) / (C[idx, b] - base))
            out = np.where(b == nb - 1, L[idx, np.maximum(nb - 2, 0)],
                           np.where((b == 0) & (L[:, 0] <= 0), L[:, 0], interp))
            out = np.where(obs == 0, np.nan, out)
        res[groups_here] = np.where(valid, out, np.nan)
    if math.isnan(q):
        res[:] = np.nan
    elif q < 0:
        res[anyp] = -np.inf
    elif q > 1:
        res[anyp] = np.inf
    return Vec(keys, res.reshape(n_groups, 1), anyp.reshape(n_groups, 1), drop)


def _bucket_quantile(q: np.ndarray, les: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """BucketQuantile for buckets sorted by ``les`` and ``counts`` of shape (B, S)."""
    steps = counts.shape[1]
    out = np.full(steps, np.nan)
    if les.size == 0 or not math.isinf(les[-1]) or les[-1] < 0:
        return np.where(q < 0, -np.inf, np.where(q > 1, np.inf, out))
    # Coalesce buckets with the same upper bound.
    uniq, start = np.unique(les, return_index=True)
    if uniq.size != les.size:
        counts = np.add.reduceat(counts, start, axis=0)
        les = uniq
    c = counts.astype(np.float64).copy()
    prev = c[0].copy()
    for i in range(1, c.shape[0]):
        cur = c[i]
        eq = cur == prev
        almost = ~eq & _almost_equal(prev, cur, 1e-12)
        less = ~eq & ~almost & (cur < prev)
        c[i] = np.where(almost | less, prev, cur)
        prev = np.where(eq | almost | less, prev, cur)
    with np.errstate(all="ignore"):
        if c.shape[0] < 2:
            res = np.full(steps, np.nan)
        else:
            obs = c[-1]
            rank = q * obs
            reach = c[:-1] >= rank[None, :]
            b = np.where(reach.any(axis=0), np.argmax(reach, axis=0), c.shape[0] - 1)
            cols = np.arange(steps)
            bucket_end = les[b]
            bucket_start = np.where(b > 0, les[np.maximum(b - 1, 0)], 0.0)
            cnt = c[b, cols] - np.where(b > 0, c[np.maximum(b - 1, 0), cols], 0.0)
            rk = rank - np.where(b > 0, c[np.maximum(b - 1, 0), cols], 0.0)
            interp = bucket_start + (bucket_end - bucket_start) * (rk / cnt)
            res = np.where(b == c.shape[0] - 1, les[-2], np.where((b == 0) & (les[0] <= 0), les[0], interp))
            res = np.where(obs == 0, np.nan, res)
    res = np.where(np.isnan(q), np.nan, np.where(q < 0, -np.inf, np.where(q > 1, np.inf, res)))
    return res
