"""Range-vector function kernels (``rate``, ``*_over_time``, ...).

Each kernel takes the flat samples of a :class:`RangeVec`, the ``[lo, hi)`` bounds
of every (series, step) window (flattened to 1-D), and per-step scalar arguments,
and returns ``(values, present)`` for every window. They are independent of the
evaluator so that a storage backend can later replace one with a pushed-down
computation that yields the same arrays.

Most kernels walk all windows in lock-step ("the k-th sample of every window"),
which keeps Prometheus's exact arithmetic (Kahan sums, update rules for min/max,
NaN handling) while still doing one numpy operation per sample *position*
rather than per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

Kernel = Callable[["WindowInput"], tuple[np.ndarray, np.ndarray]]


@dataclass
class WindowInput:
    """Everything a kernel may need; arrays of windows are 1-D of length N*S.

    Window ``i`` belongs to step ``i % steps``. The per-window time bounds are derived from
    the per-step ``ends`` only when a kernel asks for them: materialising three N*S arrays
    for every range function cost more than some kernels themselves.
    """

    t: np.ndarray  # flat sample timestamps (int64)
    v: np.ndarray  # flat sample values
    lo: np.ndarray  # window start index (inclusive)
    hi: np.ndarray  # window end index (exclusive)
    ends: np.ndarray  # (S,) each step's inclusive upper time bound
    times: np.ndarray  # (S,) each step's evaluation time
    range_ms: int
    args: list[np.ndarray]  # extra scalar arguments, each per window

    @property
    def steps(self) -> int:
        return int(self.ends.shape[0])

    def per_step(self, a: np.ndarray) -> np.ndarray:
        """An (N, S) view of a per-window array, for arithmetic that broadcasts per-step values."""
        return a.reshape(-1, self.steps) if self.steps else a.reshape(0, 0)

    def _expand(self, per_step: np.ndarray) -> np.ndarray:
        n = self.lo.shape[0] // self.steps if self.steps else 0
        return np.broadcast_to(per_step, (n, self.steps)).ravel()

    @cached_property
    def range_start(self) -> np.ndarray:
        """Each window's exclusive lower time bound."""
        return self._expand(self.ends - self.range_ms)

    @cached_property
    def range_end(self) -> np.ndarray:
        """Each window's inclusive upper time bound."""
        return self._expand(self.ends)

    @cached_property
    def step_ts(self) -> np.ndarray:
        """Each window's evaluation time."""
        return self._expand(self.times)


def kahan_inc(inc: np.ndarray, s: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Kahan-Neumaier step, exactly as Prometheus's ``kahansum.Inc``."""
    t = s + inc
    big = np.abs(s) >= np.abs(inc)
    c = np.where(np.isinf(t), 0.0, np.where(big, c + ((s - t) + inc), c + ((inc - t) + s)))
    return t, c


def _walk(w: WindowInput, first: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(k, active, idx)``: the (first+k)-th sample of each window that has one."""
    n = w.hi - w.lo
    top = int(n.max()) if n.size else 0
    for k in range(first, top):
        active = n > k
        idx = np.where(active, w.lo + k, 0)
        yield k, active, idx


def _at(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        return np.zeros(idx.shape, dtype=arr.dtype)
    return np.take(arr, idx, mode="clip")  # clamps like clip-then-index, without the index copy


def _count(w: WindowInput) -> np.ndarray:
    return w.hi - w.lo


def count_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return n.astype(np.float64), n > 0


def present_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return np.ones(n.shape), n > 0


def last_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return _at(w.v, w.hi - 1), n > 0


def first_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return _at(w.v, w.lo), n > 0


def ts_of_last_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return _at(w.t, w.hi - 1) / 1000.0, n > 0


def ts_of_first_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return _at(w.t, w.lo) / 1000.0, n > 0


def sum_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    s = np.zeros(n.shape)
    c = np.zeros(n.shape)
    for _, active, idx in _walk(w):
        ns, nc = kahan_inc(w.v[idx], s, c)
        s, c = np.where(active, ns, s), np.where(active, nc, c)
    return np.where(np.isinf(s), s, s + c), n > 0


def avg_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    s = _at(w.v, w.lo).astype(np.float64)
    c = np.zeros(n.shape)
    mean = np.zeros(n.shape)
    incremental = np.zeros(n.shape, dtype=bool)
    for k, active, idx in _walk(w, first=1):
        f = w.v[idx]
        count = float(k + 1)
        ns, nc = kahan_inc(f, s, c)
        direct = active & ~incremental & ~np.isinf(ns)
        s, c = np.where(direct, ns, s), np.where(direct, nc, c)
        switch = active & ~incremental & np.isinf(ns)
        # Switch to incremental mean once the plain sum would overflow.
        mean = np.where(switch, s / (count - 1), mean)
        c = np.where(switch, c / (count - 1), c)
        incremental = incremental | switch
        inc_now = active & incremental
        q = (count - 1) / count
        nm, nc2 = kahan_inc(f / count, q * mean, q * c)
        mean, c = np.where(inc_now, nm, mean), np.where(inc_now, nc2, c)
    cnt = np.maximum(n, 1).astype(np.float64)
    out = np.where(incremental, mean + c, s / cnt + c / cnt)
    return out, n > 0


def _compare(
    w: WindowInput, better: Callable[[np.ndarray, np.ndarray], np.ndarray], want_ts: bool
) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    best = _at(w.v, w.lo).astype(np.float64)
    best_t = _at(w.t, w.lo)
    for _, active, idx in _walk(w, first=1):
        f = w.v[idx]
        upd = active & (better(f, best) | np.isnan(best))
        best = np.where(upd, f, best)
        best_t = np.where(upd, w.t[idx], best_t)
    return (best_t / 1000.0 if want_ts else best), n > 0


def max_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _compare(w, np.greater, False)


def min_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _compare(w, np.less, False)


def ts_of_max_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _compare(w, np.greater, True)


def ts_of_min_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _compare(w, np.less, True)


def _variance(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    mean = np.zeros(n.shape)
    cmean = np.zeros(n.shape)
    aux = np.zeros(n.shape)
    caux = np.zeros(n.shape)
    for k, active, idx in _walk(w):
        f = w.v[idx]
        count = float(k + 1)
        delta = f - (mean + cmean)
        nm, ncm = kahan_inc(delta / count, mean, cmean)
        na, nca = kahan_inc(delta * (f - (nm + ncm)), aux, caux)
        mean, cmean = np.where(active, nm, mean), np.where(active, ncm, cmean)
        aux, caux = np.where(active, na, aux), np.where(active, nca, caux)
    return (aux + caux) / np.maximum(n, 1), n > 0


def stdvar_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _variance(w)


def stddev_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    var, ok = _variance(w)
    return np.sqrt(var), ok


def quantile_value(q: float, values: np.ndarray) -> float:
    """Prometheus's ``quantile``: NaNs sort first, linear interpolation between ranks."""
    if values.size == 0 or np.isnan(q):
        return float("nan")
    if q < 0:
        return float("-inf")
    if q > 1:
        return float("inf")
    nan = np.isnan(values)
    ordered = np.concatenate([values[nan], np.sort(values[~nan])])
    n = ordered.size
    rank = q * (n - 1)
    lower = max(0.0, np.floor(rank))
    upper = min(n - 1.0, lower + 1)
    weight = rank - np.floor(rank)
    return float(ordered[int(lower)] * (1 - weight) + ordered[int(upper)] * weight)


def quantile_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    out = np.full(n.shape, np.nan)
    q = w.args[0]
    for i in np.nonzero(n > 0)[0]:
        out[i] = quantile_value(float(q[i]), w.v[w.lo[i] : w.hi[i]])
    return out, n > 0


def mad_over_time(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    out = np.full(n.shape, np.nan)
    for i in np.nonzero(n > 0)[0]:
        vals = w.v[w.lo[i] : w.hi[i]]
        if np.isnan(vals).any():
            continue
        median = quantile_value(0.5, vals)
        out[i] = quantile_value(0.5, np.abs(vals - median))
    return out, n > 0


def _span(w: WindowInput) -> tuple[int, int]:
    """The flat-sample index range ``[a, b)`` these windows cover (kernels run on blocks of windows)."""
    if not w.lo.size:
        return 0, 0
    return int(w.lo.min()), int(w.hi.max())


def _pair_counts(w: WindowInput, pair_flag: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """How many i in (lo, hi) have ``pair_flag(v[i], v[i-1])``, looking only at the windows' span."""
    a0, b0 = _span(w)
    seg = w.v[a0:b0]
    cs = np.zeros(seg.size + 1, dtype=np.int64)
    if seg.size > 1:
        np.cumsum(pair_flag(seg[1:], seg[:-1]), out=cs[2:])
    lo1 = np.minimum(w.lo + 1, w.hi)
    return cs[w.hi - a0] - cs[lo1 - a0]


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b) & ~(np.isnan(a) & np.isnan(b))


def changes(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return _pair_counts(w, _changed).astype(np.float64), n > 0


def resets(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    return _pair_counts(w, np.less).astype(np.float64), n > 0


def _extrapolated(w: WindowInput, is_counter: bool, is_rate: bool) -> tuple[np.ndarray, np.ndarray]:
    # Prometheus's extrapolatedRate, over every window at once. Shaped (N, S) so that the
    # per-step bounds broadcast instead of being expanded per window, and computed in place:
    # at 1 M windows (720 series x 1,441 steps) each avoided temporary is about 2 ms.
    lo, hi = w.per_step(w.lo), w.per_step(w.hi)
    n = hi - lo
    ok = n >= 2
    last_i = hi - 1
    first_t = _at(w.t, lo)
    last_t = _at(w.t, last_i)
    first_v = _at(w.v, lo)
    result = _at(w.v, last_i)
    result -= first_v
    if is_counter and w.v.size > 1 and lo.size:
        # Each reset inside the window adds the value just before it, in order, as Prometheus's
        # loop does. Resets are rare, so only windows holding one are touched, and only the
        # samples these windows span are looked at (callers pass windows in blocks). No running
        # total across windows: a difference of two would carry one series' +Inf (NaN) or 2^64
        # wrap (lost digits) into every window after it, of its own series and of the others.
        a0, b0 = _span(w)
        seg = w.v[a0:b0]
        pos = np.flatnonzero(seg[1:] < seg[:-1]) + (a0 + 1)
        if pos.size:
            lo1 = np.minimum(lo + 1, hi)
            a = np.searchsorted(pos, lo1, side="left")
            b = np.searchsorted(pos, hi, side="left")
            held = np.flatnonzero(b > a)  # flat indices of the windows with a reset
            if held.size:
                first, count = a.ravel()[held], (b - a).ravel()[held]
                added = result.ravel()[held]
                before = w.v[pos - 1]  # the value each reset adds
                for k in range(int(count.max())):
                    more = count > k
                    added[more] += before[first[more] + k]
                result.flat[held] = added
    # Differences of integer milliseconds are exact, so subtracting before the conversion to
    # float gives the same seconds as Prometheus's float arithmetic.
    sampled = (last_t - first_t).astype(np.float64)
    sampled /= 1000
    to_start = (first_t - (w.ends - w.range_ms)).astype(np.float64)
    to_start /= 1000
    to_end = (w.ends - last_t).astype(np.float64)
    to_end /= 1000
    with np.errstate(all="ignore"):
        # Windows with fewer than two samples have no rate; what is computed for them is
        # masked by ``ok``.
        avg = sampled / np.maximum(n - 1, 1)
        threshold = avg * 1.1
        half = avg / 2
        np.copyto(to_start, half, where=to_start >= threshold)
        if is_counter:
            # A counter is not extrapolated below zero: stop where the line would reach it.
            to_zero = first_v / result
            to_zero *= sampled
            use_zero = result > 0
            use_zero &= first_v >= 0
            use_zero &= to_zero < to_start
            np.copyto(to_start, to_zero, where=use_zero)
        np.copyto(to_end, half, where=to_end >= threshold)
        factor = sampled + to_start
        factor += to_end
        factor /= sampled
        np.copyto(factor, 1.0, where=sampled == 0)
        if is_rate:
            factor /= w.range_ms / 1000.0
        result *= factor
    return result.reshape(-1), ok.reshape(-1)


def rate(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _extrapolated(w, True, True)


def increase(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _extrapolated(w, True, False)


def delta(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _extrapolated(w, False, False)


def _instant(w: WindowInput, is_rate: bool) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    prev_t = _at(w.t, w.hi - 2)
    last_t = _at(w.t, w.hi - 1)
    prev_v = _at(w.v, w.hi - 2)
    last_v = _at(w.v, w.hi - 1)
    interval = last_t - prev_t
    ok = (n >= 2) & (interval != 0)
    with np.errstate(all="ignore"):
        if is_rate:
            out = np.where(last_v < prev_v, last_v, last_v - prev_v)
            out = out / (np.where(interval == 0, 1, interval) / 1000.0)
        else:
            out = last_v - prev_v
    return out, ok


def irate(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _instant(w, True)


def idelta(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    return _instant(w, False)


def _regression(w: WindowInput, intercept_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    shape = n.shape
    sx, cx, sy, cy = (np.zeros(shape) for _ in range(4))
    sxy, cxy, sx2, cx2 = (np.zeros(shape) for _ in range(4))
    init_y = _at(w.v, w.lo)
    const_y = np.ones(shape, dtype=bool)
    for k, active, idx in _walk(w):
        y = w.v[idx]
        if k > 0:
            const_y &= ~active | (y == init_y)
        x = (w.t[idx] - intercept_t) / 1e3
        a = active
        r = kahan_inc(x, sx, cx)
        sx, cx = np.where(a, r[0], sx), np.where(a, r[1], cx)
        r = kahan_inc(y, sy, cy)
        sy, cy = np.where(a, r[0], sy), np.where(a, r[1], cy)
        r = kahan_inc(x * y, sxy, cxy)
        sxy, cxy = np.where(a, r[0], sxy), np.where(a, r[1], cxy)
        r = kahan_inc(x * x, sx2, cx2)
        sx2, cx2 = np.where(a, r[0], sx2), np.where(a, r[1], cx2)
    cnt = np.maximum(n, 1).astype(np.float64)
    sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
    cov = sxy - sx * sy / cnt
    var = sx2 - sx * sx / cnt
    slope = cov / var
    intercept = sy / cnt - slope * sx / cnt
    inf_y = np.isinf(init_y)
    slope = np.where(const_y, np.where(inf_y, np.nan, 0.0), slope)
    intercept = np.where(const_y, np.where(inf_y, np.nan, init_y), intercept)
    return slope, intercept


def deriv(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    slope, _ = _regression(w, _at(w.t, w.lo))
    return slope, n >= 2


def predict_linear(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    n = _count(w)
    slope, intercept = _regression(w, w.step_ts)
    return slope * w.args[0] + intercept, n >= 2


def double_exponential_smoothing(w: WindowInput) -> tuple[np.ndarray, np.ndarray]:
    from .errors import EvaluationError

    n = _count(w)
    out = np.full(n.shape, np.nan)
    sf_all, tf_all = w.args
    for i in np.nonzero(n >= 2)[0]:
        sf, tf = float(sf_all[i]), float(tf_all[i])
        if not 0 < sf < 1:
            raise EvaluationError(f"invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:f}")
        if not 0 < tf < 1:
            raise EvaluationError(f"invalid trend factor. Expected: 0 < tf < 1, got: {tf:f}")
        vals = w.v[w.lo[i] : w.hi[i]]
        s0, s1 = 0.0, float(vals[0])
        b = float(vals[1] - vals[0])
        for j in range(1, vals.size):
            x = sf * float(vals[j])
            if j - 1 != 0:
                b = tf * (s1 - s0) + (1 - tf) * b
            y = (1 - sf) * (s1 + b)
            s0, s1 = s1, x + y
        out[i] = s1
    return out, n >= 2


KERNELS: dict[str, Kernel] = {
    "rate": rate,
    "increase": increase,
    "delta": delta,
    "irate": irate,
    "idelta": idelta,
    "deriv": deriv,
    "predict_linear": predict_linear,
    "resets": resets,
    "changes": changes,
    "avg_over_time": avg_over_time,
    "min_over_time": min_over_time,
    "max_over_time": max_over_time,
    "sum_over_time": sum_over_time,
    "count_over_time": count_over_time,
    "last_over_time": last_over_time,
    "first_over_time": first_over_time,
    "present_over_time": present_over_time,
    "stddev_over_time": stddev_over_time,
    "stdvar_over_time": stdvar_over_time,
    "quantile_over_time": quantile_over_time,
    "mad_over_time": mad_over_time,
    "ts_of_last_over_time": ts_of_last_over_time,
    "ts_of_first_over_time": ts_of_first_over_time,
    "ts_of_max_over_time": ts_of_max_over_time,
    "ts_of_min_over_time": ts_of_min_over_time,
    "double_exponential_smoothing": double_exponential_smoothing,
    "holt_winters": double_exponential_smoothing,
}
"""Range function name -> kernel. The matrix argument's position is in ``MATRIX_ARG``."""

MATRIX_ARG: dict[str, int] = {"quantile_over_time": 1}
"""Functions whose range-vector argument is not the first one."""

KEEPS_NAME = frozenset({"last_over_time", "first_over_time"})
"""Range functions that act like ``offset`` and so keep ``__name__``."""
