"""The two ways aggregations fold a group's members give the same bits.

Few steps and large groups take Python floats member by member (``_fold_scalar``); the rest
numpy, rank by rank. Prometheus's order-sensitive arithmetic (Kahan sums, the incremental mean
after an overflow, Welford variance, min/max NaN rules) must come out identical either way.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackwatch.query.promql import _aggregate
from stackwatch.query.promql._values import Vec

OPS = sorted(_aggregate._SCALAR_OPS)

_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 1e100, -1e100, 1.0, 0.1, 5e-324]),
)


def _bits(a: np.ndarray) -> list[int | str]:
    """Each value's bits (so -0.0 differs from 0.0); any NaN as one, as the API prints it."""
    return ["NaN" if x != x else struct.unpack("<Q", struct.pack("<d", float(x)))[0] for x in a.ravel()]


def _both(op: str, vec: Vec, grouping: list[str]) -> tuple[Vec, Vec]:
    threshold = _aggregate._SCALAR_OPS
    try:
        _aggregate._SCALAR_OPS = frozenset()  # rank by rank, numpy
        ranked = _aggregate.aggregate(op, vec, grouping, False, None)
    finally:
        _aggregate._SCALAR_OPS = threshold
    scalar = _aggregate.aggregate(op, vec, grouping, False, None)
    return ranked, scalar


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 40), st.integers(1, 3), st.integers(1, 3))
def test_scalar_fold_equals_rank_fold(data: st.DataObject, n: int, steps: int, groups: int) -> None:
    vals = np.array(data.draw(st.lists(_value, min_size=n * steps, max_size=n * steps)), dtype=np.float64)
    pres = np.array(data.draw(st.lists(st.booleans(), min_size=n * steps, max_size=n * steps)))
    labels = [(("__name__", "x"), ("g", str(data.draw(st.integers(0, groups - 1)))), ("i", str(i))) for i in range(n)]
    vec = Vec(labels, vals.reshape(n, steps), pres.reshape(n, steps), np.zeros(n, dtype=bool))
    for op in OPS:
        ranked, scalar = _both(op, vec, ["g"])
        assert ranked.labels == scalar.labels, op
        assert np.array_equal(ranked.present, scalar.present), op
        p = ranked.present
        assert _bits(ranked.values[p]) == _bits(scalar.values[p]), op


def test_a_big_group_of_an_instant_query_takes_the_scalar_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 5_000
    rng = np.random.default_rng(7)
    vals = rng.normal(size=(n, 1)) * 10.0 ** rng.integers(-5, 12, size=(n, 1))
    vec = Vec([(("__name__", "x"), ("i", str(i))) for i in range(n)], vals, np.ones((n, 1), dtype=bool),
              np.zeros(n, dtype=bool))
    folded: list[str] = []
    fold = _aggregate._fold_scalar
    monkeypatch.setattr(_aggregate, "_fold_scalar", lambda op, *a: folded.append(op) or fold(op, *a))
    for op in OPS:
        ranked, scalar = _both(op, vec, [])
        assert _bits(ranked.values) == _bits(scalar.values), op
    assert folded == OPS  # one step, one group of every series: each op took the Python-float fold
