"""One PromQL expression through a ClickHouse querier, and two answers compared.

The SQL paths of the querier (``pushdown``, ``windows``) are held to the numpy engine by
running each expression with the path on and off over the same store.
"""

from __future__ import annotations

import math
from typing import Any

from stackwatch.query.promql import Engine
from stackwatch.query.promql.clickhouse import ClickHouseQuerier
from stackwatch.storage.metrics import MetricStore

Answer = dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]]


def answer(store: MetricStore, expr: str, querier: dict[str, Any], **at: int) -> tuple[Answer, int]:
    """The result by label set, and how many sub-expressions the querier answered in SQL.

    ``at``: ``time`` for an instant query, or ``start``, ``end`` and ``step`` for a range query.
    """
    q = ClickHouseQuerier(store, "default", **querier)
    e = Engine(q)
    res = e.range(expr, at["start"], at["end"], at["step"]) if "step" in at else e.instant(expr, at["time"])
    return {tuple(sorted(s.labels.items())): (s.timestamps_ms.tolist(), s.values.tolist()) for s in res.series}, q.pushed


def assert_same(expr: str, got: Answer, want: Answer, *, ordered: bool = False) -> None:
    """Same series (in the same order, if ``ordered``), timestamps, and values within 1e-9 relative."""
    if ordered:
        assert list(got) == list(want), f"{expr}: series differ or come in another order"
    assert set(got) == set(want), f"{expr}: series differ {set(got) ^ set(want)}"
    for key in got:
        tg, vg = got[key]
        tw, vw = want[key]
        assert tg == tw, f"{expr} {key}: timestamps differ"
        for x, y in zip(vg, vw, strict=True):
            same = (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
            assert same, f"{expr} {key}: in SQL {x!r} != engine {y!r}"
