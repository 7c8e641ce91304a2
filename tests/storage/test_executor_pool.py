"""The embedded store's connections: queries from several threads run at once, each on its own
connection, and each sees its own ``Python(...)`` table.

One chDB connection used by two threads at once read the wrong thread's table (seen in a
scratch test: one thread's insert stored the other's rows); the pool lends a connection to one
query at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from stackwatch.storage.executor import ChdbExecutor


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbExecutor]:
    executor = ChdbExecutor(tmp_path_factory.mktemp("pool") / "ch", database="pool")
    executor.command("CREATE TABLE pool.t (tag UInt64, v Float64) ENGINE = MergeTree ORDER BY tag")
    yield executor
    executor.close()


def test_threads_each_read_their_own_python_table(ex: ChdbExecutor) -> None:
    errors: list[str] = []
    inserted = {tag: 0 for tag in range(1, 7)}

    def work(tag: int) -> None:
        rng = np.random.default_rng(tag)
        for _ in range(15):
            n = int(rng.integers(1, 20_000))
            block = pa.table({"tag": np.full(n, tag, dtype=np.uint64), "v": np.arange(n, dtype=np.float64)})
            ex.insert_arrow("t", block)
            inserted[tag] += n
            seen = ex.query_local("SELECT count() AS n, min(tag) AS lo, max(tag) AS hi FROM Python(local)", block)
            row = seen.to_pylist()[0]
            if (row["n"], row["lo"], row["hi"]) != (n, tag, tag):
                errors.append(f"thread {tag} read {row}, expected {n} rows of its own")

    threads = [threading.Thread(target=work, args=(tag,)) for tag in inserted]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = {int(r["tag"]): int(r["n"]) for r in ex.rows("SELECT tag, count() AS n FROM pool.t GROUP BY tag")}
    assert stored == inserted


def test_a_query_does_not_wait_for_another(ex: ChdbExecutor) -> None:
    """A long query on one thread; a short one on another finishes while it still runs."""
    started, finished = threading.Event(), threading.Event()

    def long_query() -> None:
        started.set()
        ex.rows("SELECT sleep(2) AS s")
        finished.set()

    t = threading.Thread(target=long_query)
    t.start()
    assert started.wait(10)
    threading.Event().wait(0.3)  # let it reach the engine
    assert ex.rows("SELECT 41 + 1 AS x") == [{"x": 42}]
    assert not finished.is_set(), "the short query waited for the long one"
    t.join()
    assert finished.is_set()

