"""Arrow results of the embedded store are read in place: the data must outlive everything but
the arrays that use it."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from stackwatch.storage.executor import ChdbExecutor


def test_arrays_from_a_result_stay_valid_after_the_table_and_later_queries(tmp_path: Path) -> None:
    ex = ChdbExecutor(tmp_path / "ch", database="arrow_life")
    try:
        table = ex.query_arrow("SELECT number * 3 AS x, toString(number) AS s FROM numbers(2000000)")
        x = table.column("x").to_numpy()
        s = table.column("s")
        del table
        gc.collect()
        # Later results reuse freed memory: had the first result been freed, x would now read it.
        for _ in range(4):
            ex.query_arrow("SELECT number * 7 AS z, toString(number * 11) AS t FROM numbers(2000000)")
        np.testing.assert_array_equal(x, np.arange(2_000_000, dtype=np.uint64) * 3)
        assert s[1_999_999].as_py() == "1999999"
        empty = ex.query_arrow("SELECT 1 AS one WHERE 0")
        assert empty.num_rows == 0 and empty.column_names == ["one"]
    finally:
        ex.close()
