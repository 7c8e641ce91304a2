"""The single-step histogram_quantile (all groups at once, used by alert rules and instant
queries) must answer exactly what the per-group path answers, whatever the buckets look like."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.query.promql._functions import histogram_quantile
from stackwatch.query.promql._values import Vec

LES = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf", "-1", "0", "1e+00", "bogus"]

bucket = st.tuples(
    st.sampled_from(LES),
    st.one_of(st.floats(0, 1000, allow_nan=False), st.sampled_from([0.0, 5.0, 5.000000000001, math.nan])),
    st.booleans(),  # present at this step
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(bucket, max_size=9), min_size=2, max_size=8),
    st.one_of(st.floats(-0.5, 1.5, allow_nan=False), st.just(math.nan), st.sampled_from([0.0, 0.5, 0.99, 1.0])),
    st.booleans(),
)
def test_one_step_equals_the_per_group_path(groups: list[list[tuple[str, float, bool]]], q: float,
                                            drop: bool) -> None:
    labels, values, present = [], [], []
    for g, buckets in enumerate(groups):
        for j, (le, value, here) in enumerate(buckets):
            labels.append(tuple(sorted({"job": "api", "route": f"/r{g}", "le": le, "n": str(j)}.items()))
                          if j % 3 == 2 else tuple(sorted({"job": "api", "route": f"/r{g}", "le": le}.items())))
            values.append(value)
            present.append(here)
    n = len(labels)
    vals = np.asarray(values, dtype=np.float64).reshape(n, 1)
    pres = np.asarray(present, dtype=bool).reshape(n, 1)
    drops = np.full(n, drop)
    one = histogram_quantile(np.asarray([q]), Vec(labels, vals, pres, drops))
    # Two identical steps take the per-group path; its first column is the reference.
    two = histogram_quantile(np.asarray([q, q]), Vec(labels, np.repeat(vals, 2, axis=1), np.repeat(pres, 2, axis=1),
                                                     drops))
    assert one.labels == two.labels
    assert np.array_equal(one.present[:, 0], two.present[:, 0])
    assert np.array_equal(one.drop_name, two.drop_name)
    a, b = one.values[:, 0], two.values[:, 0]
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    assert same.all(), (a, b)
