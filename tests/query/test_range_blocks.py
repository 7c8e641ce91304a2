"""Range functions answer the same however their windows are cut into blocks.

The evaluator runs kernels on blocks of series (so their temporaries stay in cache) and the
ClickHouse querier streams a selection in parts; both must be invisible in the answer. Every
kernel runs here with blocks of one and a few series against one block of everything, over
counters with resets, gauges with NaN and infinities, and series with gaps, so that windows
of neighbouring series sit next to each other in the flat sample arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.query.promql import Engine, MemoryStorage, _eval
from stackwatch.query.promql._range_funcs import KERNELS
from stackwatch.query.promql._values import RangeVec

T0 = 1_700_000_000_000
STEP = 15_000


def _storage(seed: int) -> MemoryStorage:
    rng = np.random.default_rng(seed)
    mem = MemoryStorage()
    for i in range(9):
        n = int(rng.integers(10, 60))
        ts = T0 + np.cumsum(rng.integers(10_000, 20_000, n))
        counter = np.cumsum(rng.poisson(4, n)).astype(float)
        if i % 3 == 0:  # a restart: the counter falls back
            counter[n // 2 :] -= counter[n // 2] - 1
        mem.add_many({"__name__": "c_total", "i": str(i)}, ts, counter)
        gauge = rng.normal(10, 5, n)
        if i == 4:
            gauge[3] = math.nan
            gauge[7] = math.inf
        mem.add_many({"__name__": "g", "i": str(i)}, ts, gauge)
    return mem


def _calls() -> list[str]:
    out = []
    for name in sorted(KERNELS):
        if name == "holt_winters":  # the parser knows it only under its new name
            continue
        if name == "quantile_over_time":
            out.append("quantile_over_time(0.9, g[2m])")
        elif name == "predict_linear":
            out.append("predict_linear(g[3m], 60)")
        elif name == "double_exponential_smoothing":
            out.append(f"{name}(g[3m], 0.5, 0.5)")
        elif name in ("rate", "increase", "irate", "resets"):
            out.append(f"{name}(c_total[2m])")
        else:
            out.append(f"{name}(g[2m])")
    return out


@pytest.mark.parametrize("expr", _calls())
def test_every_kernel_is_the_same_in_blocks(expr: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = _storage(3)
    whole = Engine(mem).range(expr, T0, T0 + 900_000, 20_000).to_prometheus_json()
    assert whole["result"], f"{expr}: nothing to compare"
    for windows in (1, 47, 200):  # one series per block; a few; blocks not a multiple of steps
        monkeypatch.setattr(_eval, "KERNEL_BLOCK_WINDOWS", windows)
        assert Engine(mem).range(expr, T0, T0 + 900_000, 20_000).to_prometheus_json() == whole, (expr, windows)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 400), st.sampled_from(["rate", "increase", "delta", "changes", "resets"]))
def test_counter_kernels_in_random_blocks(seed: int, windows: int, func: str) -> None:
    mem = _storage(seed)
    expr = f"{func}(c_total[1m])"
    saved = _eval.KERNEL_BLOCK_WINDOWS
    try:
        whole = Engine(mem).range(expr, T0, T0 + 600_000, 7_000).to_prometheus_json()
        _eval.KERNEL_BLOCK_WINDOWS = windows
        assert Engine(mem).range(expr, T0, T0 + 600_000, 7_000).to_prometheus_json() == whole
    finally:
        _eval.KERNEL_BLOCK_WINDOWS = saved


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 400), max_size=40), min_size=1, max_size=5),
    st.integers(1, 60),
    st.integers(1, 30),
    st.integers(1, 8),
    st.integers(-50, 450),
)
def test_window_bounds_match_a_search_per_window(series: list[list[int]], steps: int, step: int, mult: int,
                                                 first_end: int) -> None:
    """windows() reuses step k - shift's end as step k's start when the range is a whole number
    of steps; every bound must still be the one a direct search finds (either side of a sample)."""
    flats = [np.unique(np.asarray(s, dtype=np.int64)) for s in series]
    flat_t = np.concatenate(flats)
    sizes = np.asarray([f.size for f in flats], dtype=np.intp)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    ends = first_end + np.arange(steps, dtype=np.int64) * step
    for range_ms in (mult * step, mult * step + 1):  # a multiple of the step, and not
        rv = RangeVec([()] * len(flats), np.zeros(len(flats), dtype=bool), flat_t, np.zeros(flat_t.size),
                      starts, starts + sizes, range_ms, ends)
        lo, hi = rv.windows()
        for i, f in enumerate(flats):
            for k, e in enumerate(ends.tolist()):
                assert lo[i, k] == starts[i] + np.count_nonzero(f <= e - range_ms)
                assert hi[i, k] == starts[i] + np.count_nonzero(f <= e)
