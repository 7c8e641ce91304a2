"""The evaluator: one method per AST node kind, each evaluating all steps at once.

``Evaluator.eval(node, ts)`` returns the node's value at every evaluation time in
``ts`` (an int64 array). Selectors resolve lookback with ``np.searchsorted``,
range functions run the kernels of :mod:`._range_funcs` over every window,
aggregations and operators work on ``(series, steps)`` arrays. Keeping each node
kind in its own method is what lets a storage backend later intercept a subtree
(``sum by (x) (rate(m[5m]))``) and answer it itself.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from . import _binop
from ._aggregate import aggregate
from ._ast import (
    Aggregate,
    AtSpec,
    Binary,
    Call,
    MatrixSel,
    Node,
    NumberLit,
    Paren,
    StringLit,
    Subquery,
    Unary,
    VectorSel,
)
from ._range_funcs import KEEPS_NAME, KERNELS, MATRIX_ARG, WindowInput
from ._values import NAME, Labels, RangeVec, Scalar, String, Vec, make_labels, without_name
from .errors import EvaluationError, QueryTimeout, TooManySamples
from .storage import Querier, SeriesSet, is_stale_nan

Value = Vec | Scalar | String | RangeVec


@dataclass
class EvalContext:
    querier: Querier
    start_ms: int
    end_ms: int
    lookback_ms: int
    max_samples: int
    deadline: float
    delayed_name_removal: bool
    subquery_step_ms: int
    step_ms: int = 0


class Evaluator:
    """Evaluates our AST against a :class:`Querier` (see module docstring)."""

    def __init__(self, ctx: EvalContext) -> None:
        self.ctx = ctx
        self.samples = 0

    # -- bookkeeping -------------------------------------------------------

    def _check(self) -> None:
        if time.monotonic() > self.ctx.deadline:
            raise QueryTimeout()

    def _account(self, n: int) -> None:
        self.samples += int(n)
        if self.samples > self.ctx.max_samples:
            raise TooManySamples()

    def _consumed(self, mark: int, out: Value) -> None:
        """An operator is done with its operands: only its result stays held.

        ``samples`` is what evaluation holds at once, as Prometheus counts for
        ``--query.max-samples``: a function's range vector is let go once the function has
        made its result, so ``sum(count_over_time(a[1d])) + sum(count_over_time(b[1d]))``
        is limited by the larger selection, not by both together.
        """
        self.samples = mark
        if isinstance(out, Vec):
            self._account(int(out.present.sum()))

    def _at_times(self, at: AtSpec | None, offset_ms: int, ts: np.ndarray) -> np.ndarray:
        if at is None:
            base = ts
        elif at.kind == "start":
            base = np.full(ts.shape, self.ctx.start_ms, dtype=np.int64)
        elif at.kind == "end":
            base = np.full(ts.shape, self.ctx.end_ms, dtype=np.int64)
        else:
            base = np.full(ts.shape, at.ms, dtype=np.int64)
        return base - offset_ms

    def _drop_names(self, vec: Vec, mask: np.ndarray) -> Vec:
        """Mark rows whose ``__name__`` goes; strip it now unless removal is delayed."""
        if not mask.any():
            return vec
        if self.ctx.delayed_name_removal:
            vec.drop_name = vec.drop_name | mask
            return vec
        labels = [without_name(lb) if m else lb for lb, m in zip(vec.labels, mask, strict=True)]
        vec = Vec(labels, vec.values, vec.present, vec.drop_name.copy(), vec.sample_ts)
        return merge_same_labels(vec)

    # -- dispatch ------------------------------------------------------------

    def eval(self, node: Node, ts: np.ndarray) -> Value:
        self._check()
        if isinstance(node, Paren):
            return self.eval(node.expr, ts)
        if isinstance(node, NumberLit):
            return Scalar(np.full(ts.shape, node.value, dtype=np.float64))
        if isinstance(node, StringLit):
            return String(node.value)
        if isinstance(node, VectorSel):
            return self.vector_selector(node, ts)
        if isinstance(node, MatrixSel):
            return self.matrix_selector(node, ts)
        if isinstance(node, Subquery):
            return self.subquery(node, ts)
        if isinstance(node, Unary):
            return self.unary(node, ts)
        if isinstance(node, Binary):
            return self.binary(node, ts)
        if isinstance(node, Aggregate):
            pushdown = getattr(self.ctx.querier, "pushdown", None)
            if pushdown is not None:
                pushed = pushdown(node, ts, self.ctx.lookback_ms, self.ctx.deadline)
                if pushed is not None:
                    self._account(int(pushed.present.sum()))
                    return pushed
            return self.aggregate(node, ts)
        if isinstance(node, Call):
            return self.call(node, ts)
        raise EvaluationError(f"unhandled expression of type {type(node).__name__}")

    def eval_vector(self, node: Node, ts: np.ndarray) -> Vec:
        v = self.eval(node, ts)
        assert isinstance(v, Vec), type(v)
        return v

    def eval_scalar(self, node: Node, ts: np.ndarray) -> np.ndarray:
        v = self.eval(node, ts)
        assert isinstance(v, Scalar), type(v)
        return v.values

    # -- selectors -------------------------------------------------------------

    def _select(self, vs: VectorSel, start: int, end: int) -> SeriesSet:
        if not vs.or_matchers:
            return self.ctx.querier.select(list(vs.matchers), start, end)
        seen: dict[Labels, int] = {}
        out: SeriesSet = []
        for group in vs.or_matchers:
            for s in self.ctx.querier.select(list(group), start, end):
                key = make_labels(s.labels)
                if key not in seen:
                    seen[key] = len(out)
                    out.append(s)
        out.sort(key=lambda s: make_labels(s.labels))
        return out

    def vector_selector(self, vs: VectorSel, ts: np.ndarray) -> Vec:
        eff = self._at_times(vs.at, vs.offset_ms, ts)
        lookback = self.ctx.lookback_ms
        steps = ts.shape[0]
        series = self._select(vs, int(eff.min()) - lookback + 1, int(eff.max()))
        labels: list[Labels] = []
        vals, pres, sts = [], [], []
        for s in series:
            self._check()
            t, v = s.timestamps_ms, s.values
            idx = np.searchsorted(t, eff, side="right") - 1
            ok = idx >= 0
            idx_c = np.where(ok, idx, 0)
            tt = t[idx_c]
            vv = v[idx_c]
            ok &= tt > eff - lookback
            ok &= ~is_stale_nan(vv)
            if not ok.any():
                continue
            labels.append(make_labels(s.labels))
            vals.append(vv)
            pres.append(ok)
            sts.append(tt)
        n = len(labels)
        out = Vec(
            labels,
            np.asarray(vals, dtype=np.float64).reshape(n, steps),
            np.asarray(pres, dtype=bool).reshape(n, steps),
            np.zeros(n, dtype=bool),
            np.asarray(sts, dtype=np.int64).reshape(n, steps),
        )
        self._account(int(out.present.sum()))
        return out

    def matrix_selector(self, ms: MatrixSel, ts: np.ndarray) -> RangeVec:
        vs = ms.vs
        ends = self._at_times(vs.at, vs.offset_ms, ts)
        return self._matrix_of(self._select(vs, int(ends.min()) - ms.range_ms + 1, int(ends.max())), ms.range_ms, ends)

    def _matrix_of(self, series: SeriesSet, range_ms: int, ends: np.ndarray) -> RangeVec:
        flat = _flat_blocks(series)
        if flat is not None:
            # The series lie in storage's flat arrays already: window them there.
            t, v, starts = flat
            sizes = np.fromiter((s.timestamps_ms.size for s in series), dtype=np.intp, count=len(series))
            self._account(int(sizes.sum()))
            labels = [make_labels(s.labels) for s in series]
            return RangeVec(labels, np.zeros(len(labels), dtype=bool), t, v, starts, starts + sizes, range_ms, ends)
        labels, ts_list, v_list = [], [], []
        for s in series:
            stale = is_stale_nan(s.values)
            if stale.any():
                keep = ~stale
                if not keep.any():
                    continue
                t, v = s.timestamps_ms[keep], s.values[keep]
            else:  # the usual case: no copy here, _range_vec concatenates once
                t, v = s.timestamps_ms, s.values
            labels.append(make_labels(s.labels))
            ts_list.append(t)
            v_list.append(v)
        return self._range_vec(labels, np.zeros(len(labels), dtype=bool), ts_list, v_list, range_ms, ends)

    def _range_vec(
        self,
        labels: list[Labels],
        drop: np.ndarray,
        ts_list: list[np.ndarray],
        v_list: list[np.ndarray],
        range_ms: int,
        ends: np.ndarray,
    ) -> RangeVec:
        sizes = np.fromiter((len(t) for t in ts_list), dtype=np.intp, count=len(ts_list))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp) if ts_list else sizes
        flat_t = np.concatenate(ts_list).astype(np.int64) if ts_list else np.empty(0, dtype=np.int64)
        flat_v = np.concatenate(v_list).astype(np.float64) if v_list else np.empty(0)
        self._account(int(flat_t.size))
        return RangeVec(labels, drop, flat_t, flat_v, starts, starts + sizes, range_ms, ends)

    def subquery(self, sq: Subquery, ts: np.ndarray) -> RangeVec:
        ends = self._at_times(sq.at, sq.offset_ms, ts)
        step = sq.step_ms or self.ctx.subquery_step_ms
        lo_bound = int(ends.min()) - sq.range_ms
        start = (lo_bound // step + 1) * step  # first multiple of step after lo_bound
        inner_ts = np.arange(start, int(ends.max()) + 1, step, dtype=np.int64)
        if inner_ts.size == 0:
            return self._range_vec([], np.zeros(0, dtype=bool), [], [], sq.range_ms, ends)
        mark = self.samples
        inner = self.eval_vector(sq.expr, inner_ts)
        labels, ts_list, v_list, drops = [], [], [], []
        for i, lb in enumerate(inner.labels):
            p = inner.present[i]
            if not p.any():
                continue
            labels.append(lb)
            ts_list.append(inner_ts[p])
            v_list.append(inner.values[i][p])
            drops.append(bool(inner.drop_name[i]))
        self.samples = mark  # the inner vector's samples now live on as the range vector's
        return self._range_vec(labels, np.asarray(drops, dtype=bool), ts_list, v_list, sq.range_ms, ends)

    # -- operators -------------------------------------------------------------

    def unary(self, node: Unary, ts: np.ndarray) -> Value:
        v = self.eval(node.expr, ts)
        if isinstance(v, Scalar):
            return Scalar(-v.values)
        assert isinstance(v, Vec)
        out = Vec(list(v.labels), -v.values, v.present.copy(), v.drop_name.copy())
        return self._drop_names(out, np.ones(len(out), dtype=bool))

    def binary(self, node: Binary, ts: np.ndarray) -> Value:
        mark = self.samples
        out = self._binary(node, ts)
        self._consumed(mark, out)
        return out

    def _binary(self, node: Binary, ts: np.ndarray) -> Value:
        lhs = self.eval(node.lhs, ts)
        rhs = self.eval(node.rhs, ts)
        op = node.op
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            return _binop.scalar_scalar(op, lhs, rhs)
        if isinstance(lhs, Vec) and isinstance(rhs, Scalar):
            out, drop = _binop.vector_scalar(op, lhs, rhs, False, node.return_bool)
            return self._drop_names(out, drop)
        if isinstance(lhs, Scalar) and isinstance(rhs, Vec):
            out, drop = _binop.vector_scalar(op, rhs, lhs, True, node.return_bool)
            return self._drop_names(out, drop)
        assert isinstance(lhs, Vec) and isinstance(rhs, Vec)
        if op in ("and", "or", "unless"):
            return _binop.set_operation(node, lhs, rhs)
        return _binop.vector_vector(node, lhs, rhs, self.ctx.delayed_name_removal)

    def aggregate(self, node: Aggregate, ts: np.ndarray) -> Vec:
        param: np.ndarray | str | None = None
        mark = self.samples
        if node.param is not None:
            p = self.eval(node.param, ts)
            param = p.value if isinstance(p, String) else p.values  # type: ignore[union-attr]
        vec = self.eval_vector(node.expr, ts)
        out = aggregate(node.op, vec, node.grouping, node.without, param)
        self._consumed(mark, out)
        return out

    # -- functions ---------------------------------------------------------------

    def call(self, node: Call, ts: np.ndarray) -> Value:
        name = node.func
        if name in KERNELS or name == "absent_over_time":
            return self.range_function(node, ts)
        from ._functions import call_instant_function

        return call_instant_function(self, node, ts)

    def range_function(self, node: Call, ts: np.ndarray) -> Vec:
        name = node.func
        mi = MATRIX_ARG.get(name, 0)
        arg = node.args[mi]
        stream = getattr(self.ctx.querier, "select_stream", None)
        window = getattr(self.ctx.querier, "window_aggregate", None)
        mark = self.samples
        pushed = None
        selector = arg if isinstance(arg, MatrixSel) and not arg.vs.or_matchers else None
        if selector is not None:
            vs = selector.vs
            ends = self._at_times(vs.at, vs.offset_ms, ts)
            if window is not None and len(node.args) == 1:
                # An instant query's one window per series: storage aggregates it where the
                # samples lie and none are read here.
                pushed = window(name, list(vs.matchers), ends, selector.range_ms, self.ctx.deadline)
        if pushed is not None:
            out = pushed
        elif selector is not None and stream is not None and name != "absent_over_time":
            # Windows of different series never meet, so a selection can be worked on part by
            # part while storage reads the next part.
            args = [self.eval_scalar(a, ts) for i, a in enumerate(node.args) if i != mi]
            parts = []
            for series in stream(list(vs.matchers), int(ends.min()) - selector.range_ms + 1, int(ends.max())):
                held = self.samples
                part = self._apply_kernel(name, self._matrix_of(series, selector.range_ms, ends), ts, args)
                # The part's samples are let go; the querier limits the whole selection.
                self._consumed(held, part)
                parts.append(part)
            out = _stack_sorted(parts, ts.shape[0])
        else:
            rv = self.eval(arg, ts)
            assert isinstance(rv, RangeVec)
            if name == "absent_over_time":
                absent = self._absent_over_time(node, rv, ts.shape[0])
                self._consumed(mark, absent)
                return absent
            args = [self.eval_scalar(a, ts) for i, a in enumerate(node.args) if i != mi]
            out = self._apply_kernel(name, rv, ts, args)
        out = out.compact()
        self._consumed(mark, out)
        drop = np.full(len(out), name not in KEEPS_NAME) | out.drop_name
        if self.ctx.delayed_name_removal:
            out.drop_name = drop
            return out
        return self._drop_names(out, drop)

    def _apply_kernel(self, name: str, rv: RangeVec, ts: np.ndarray, args: list[np.ndarray]) -> Vec:
        self._check()
        n, steps = len(rv), ts.shape[0]
        lo, hi = rv.windows()
        kernel = KERNELS[name]
        values = np.empty((n, steps), dtype=np.float64)
        present = np.empty((n, steps), dtype=bool)
        # Kernels are a few dozen numpy passes over their windows; run on blocks of series whose
        # temporaries stay in the CPU cache (rate over 720 series x 1,441 steps: 84 ms in one
        # block of 1 M windows, 32 ms in blocks of 64 series).
        rows = max(1, KERNEL_BLOCK_WINDOWS // max(steps, 1))
        for a in range(0, n, rows):
            b = min(n, a + rows)
            w = WindowInput(
                t=rv.flat_t,
                v=rv.flat_v,
                lo=lo[a:b].ravel(),
                hi=hi[a:b].ravel(),
                ends=rv.ends,
                times=ts,
                range_ms=rv.range_ms,
                args=[np.broadcast_to(x, (b - a, steps)).ravel() for x in args],
            )
            with np.errstate(all="ignore"):
                v, p = kernel(w)
            values[a:b] = np.asarray(v, dtype=np.float64).reshape(b - a, steps)
            present[a:b] = np.asarray(p, dtype=bool).reshape(b - a, steps)
        return Vec(list(rv.labels), values, present, rv.drop_name.copy())

    def _absent_over_time(self, node: Call, rv: RangeVec, steps: int) -> Vec:
        lo, hi = rv.windows()
        any_present = ((hi - lo) > 0).any(axis=0) if len(rv) else np.zeros(steps, dtype=bool)
        arg = node.args[0]
        labels = absent_labels(arg.vs) if isinstance(arg, MatrixSel) else ()
        return Vec([labels], np.ones((1, steps)), (~any_present)[None, :], np.zeros(1, dtype=bool)).compact()


KERNEL_BLOCK_WINDOWS = 1 << 16
"""Windows per kernel call: small enough for a kernel's temporaries to stay in cache."""


def _stack_sorted(parts: list[Vec], steps: int) -> Vec:
    """One vector of the parts' rows, in label order (the order ``select`` gives)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Vec.empty(steps)
    if len(parts) == 1:
        return parts[0]
    labels = [lb for p in parts for lb in p.labels]
    order = sorted(range(len(labels)), key=labels.__getitem__)
    idx = np.asarray(order, dtype=np.intp)
    return Vec(
        [labels[i] for i in order],
        np.concatenate([p.values for p in parts])[idx],
        np.concatenate([p.present for p in parts])[idx],
        np.concatenate([p.drop_name for p in parts])[idx],
    )


def _flat_blocks(series: SeriesSet) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(timestamps, values, starts) of the storage blocks the series lie in, if they all do.

    One block (the usual case) is used as it is; several (a selector whose series were partly
    read for an earlier one) are joined once, block by block. Only blocks without staleness
    markers qualify: range functions skip markers, which the per-series path does by copying
    each series without them.
    """
    if not series:
        return None
    index: dict[int, int] = {}
    blocks: list[tuple[np.ndarray, np.ndarray]] = []
    for s in series:
        b = s.block
        if b is None:
            return None
        if id(b) not in index:
            t, v = b
            if t.dtype != np.int64 or v.dtype != np.float64 or is_stale_nan(v).any():
                return None
            index[id(b)] = len(blocks)
            blocks.append(b)
    starts = np.fromiter((s.start for s in series), dtype=np.intp, count=len(series))
    if len(blocks) == 1:
        return blocks[0][0], blocks[0][1], starts
    base = np.cumsum([0] + [b[0].size for b in blocks[:-1]])
    starts += base[[index[id(s.block)] for s in series]]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]), starts


def absent_labels(vs: VectorSel) -> Labels:
    """Labels for ``absent(sel)``: the selector's equality matchers (ambiguous ones dropped)."""
    d: dict[str, str] = {}
    has: set[str] = set()
    for m in vs.matchers:
        if m.name == NAME:
            continue
        if m.op == "=" and m.name not in has:
            d[m.name] = m.value
            has.add(m.name)
        else:
            d.pop(m.name, None)
    return make_labels(d)


def merge_same_labels(vec: Vec) -> Vec:
    """Merge series that ended up with equal label sets; overlapping in time is an error."""
    groups: dict[Labels, list[int]] = defaultdict(list)
    for i, lb in enumerate(vec.labels):
        groups[lb].append(i)
    if len(groups) == len(vec.labels):
        return vec
    labels, vals, pres, drops = [], [], [], []
    for lb, rows in groups.items():
        if len(rows) == 1:
            r = rows[0]
            labels.append(lb)
            vals.append(vec.values[r])
            pres.append(vec.present[r])
            drops.append(vec.drop_name[r])
            continue
        if (vec.present[rows].sum(axis=0) > 1).any():
            raise EvaluationError("vector cannot contain metrics with the same labelset")
        v = np.zeros(vec.values.shape[1])
        p = np.zeros(vec.values.shape[1], dtype=bool)
        for r in rows:
            v = np.where(vec.present[r], vec.values[r], v)
            p |= vec.present[r]
        labels.append(lb)
        vals.append(v)
        pres.append(p)
        drops.append(bool(vec.drop_name[rows].any()))
    n, steps = len(labels), vec.values.shape[1]
    return Vec(
        labels,
        np.asarray(vals).reshape(n, steps),
        np.asarray(pres, dtype=bool).reshape(n, steps),
        np.asarray(drops, dtype=bool),
    )


def finish_names(vec: Vec) -> Vec:
    """Apply delayed ``__name__`` removal at the end of evaluation."""
    if not vec.drop_name.any():
        return vec
    labels = [without_name(lb) if d else lb for lb, d in zip(vec.labels, vec.drop_name, strict=True)]
    out = Vec(labels, vec.values, vec.present, np.zeros(len(labels), dtype=bool))
    return merge_same_labels(out)
