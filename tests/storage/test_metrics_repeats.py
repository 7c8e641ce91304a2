"""The check that lets a block skip "last write wins": it may say "maybe" wrongly, never "no"."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.storage.metrics import _may_repeat

_run = st.tuples(
    st.integers(0, 1),  # project code
    st.integers(1, 3),  # fingerprint
    st.lists(st.integers(0, 12), min_size=0, max_size=5),  # timestamps, in the event's order
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_run, min_size=1, max_size=8))
def test_no_means_no_key_repeats(runs: list[tuple[int, int, list[int]]]) -> None:
    pcode = np.array([r[0] for r in runs], dtype=np.int64)
    fps = np.array([r[1] for r in runs], dtype=np.uint64)
    counts = np.array([len(r[2]) for r in runs], dtype=np.int64)
    ts = np.array([t for r in runs for t in r[2]], dtype=np.int64)
    if not ts.size:
        return
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    keys = [(r[0], r[1], t) for r in runs for t in r[2]]
    repeated = len(set(keys)) != len(keys)
    if repeated:
        assert _may_repeat(fps, pcode, counts, starts, ts)
    # And it is not simply always "maybe": rising, disjoint runs are recognised.
    if not repeated and all(r[2] == sorted(set(r[2])) for r in runs):
        spans = {}
        disjoint = True
        for p, f, t in runs:
            if t:
                for lo, hi in spans.get((p, f), []):
                    disjoint &= t[-1] < lo or t[0] > hi
                spans.setdefault((p, f), []).append((t[0], t[-1]))
        if disjoint:
            assert not _may_repeat(fps, pcode, counts, starts, ts)
