"""Retention tiers: a line moves hot -> warm -> cold (Parquet) -> deleted, on a clock we set."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_logstore import T0, record

from stackwatch.storage.executor import ChdbExecutor
from stackwatch.storage.logs import LogStore
from stackwatch.storage.retention import DAY_NS, RetentionManager, TierPolicy

WEB = TierPolicy(hot_days=3, warm_days=15, cold_days=90)
APP = TierPolicy(hot_days=7, warm_days=30, cold_days=365)


@pytest.fixture
def env(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[tuple[LogStore, RetentionManager]]:
    ex = ChdbExecutor(tmp_path_factory.getbasetemp() / "chdb", database=f"r_{uuid.uuid4().hex[:8]}")
    store = LogStore(ex, cold_dir=tmp_path / "cold")
    store.ensure_schema()
    manager = RetentionManager(ex, tmp_path / "cold", lambda: {"default": {"web": WEB, "application": APP}})
    store.hot_horizon = manager.hot_horizon_ns
    yield store, manager
    ex.command(f"DROP DATABASE `{ex.database}`")
    ex.close()


def tier_counts(store: LogStore) -> tuple[int, int]:
    db = store.db
    hot = store.ex.rows(f"SELECT count() AS n FROM `{db}`.logs_hot")[0]["n"]
    warm = store.ex.rows(f"SELECT count() AS n FROM `{db}`.logs_warm")[0]["n"]
    return int(hot), int(warm)


def searchable(store: LogStore) -> list[str]:
    page = store.search("default", "1", {}, T0 - DAY_NS, T0 + 2 * DAY_NS, limit=100)
    return sorted(h["message"] for h in page.hits)


def test_row_moves_through_every_tier_then_is_deleted(env: tuple[LogStore, RetentionManager]) -> None:
    store, manager = env
    store.insert([record(1, log_type="web", message="web line"), record(2, message="app line")])
    cold = manager.cold_dir / "default"

    assert manager.run_once(T0 + 1 * DAY_NS) == {"to_warm": 0, "to_cold": 0, "deleted": 0}
    assert tier_counts(store) == (2, 0)
    assert manager.hot_horizon_ns() == 0  # nothing ever left hot: every search may read hot only

    # Day 4: the web line is past its 3 hot days, the application line (7) is not.
    assert manager.run_once(T0 + 4 * DAY_NS)["to_warm"] == 1
    assert tier_counts(store) == (1, 1)
    assert manager.hot_horizon_ns() == T0 + DAY_NS  # the end of the day that moved
    assert searchable(store) == ["app line", "web line"]
    # A range starting inside the moved day must still find the warm line.
    page = store.search("default", "1", {}, T0 + 10**9, T0 + DAY_NS)
    assert sorted(h["message"] for h in page.hits) == ["app line", "web line"]
    # A fresh manager (a restart) derives the same horizon from what the tiers hold.
    restarted = RetentionManager(store.ex, manager.cold_dir, manager.policies)
    assert restarted.hot_horizon_ns() == T0 + DAY_NS

    # Day 16: web is past warm (15 days) -> a Parquet file, still searchable; app went warm.
    moved = manager.run_once(T0 + 16 * DAY_NS)
    assert moved["to_cold"] == 1
    assert tier_counts(store) == (0, 1)
    files = list(cold.glob("*_web_*.parquet"))
    assert len(files) == 1
    assert searchable(store) == ["app line", "web line"]
    hit = store.search("default", "service = {s:String}", {"s": "api"}, T0 - DAY_NS, T0 + DAY_NS).hits
    assert {h["message"] for h in hit} == {"app line", "web line"}

    # Day 91: the web line is past its 90 days in all: deleted. The app line is cold by now.
    moved = manager.run_once(T0 + 91 * DAY_NS)
    assert moved["deleted"] == 1
    assert not list(cold.glob("*_web_*.parquet"))
    assert searchable(store) == ["app line"]

    # Day 366: the app line is gone too.
    manager.run_once(T0 + 366 * DAY_NS)
    assert searchable(store) == []


def test_moves_are_idempotent_after_a_crash(env: tuple[LogStore, RetentionManager]) -> None:
    store, manager = env
    store.insert([record(i, log_type="web", message=f"w{i}") for i in range(5)])
    manager.run_once(T0 + 4 * DAY_NS)
    # As if the process died after copying the day to warm but before deleting it from hot:
    # put the rows back in hot and run again; warm must not get them twice.
    store.insert([record(i, log_type="web", message=f"w{i}") for i in range(5)])
    manager.run_once(T0 + 4 * DAY_NS)
    assert tier_counts(store) == (0, 5)
    manager.run_once(T0 + 16 * DAY_NS)
    assert len(searchable(store)) == 5


def test_late_lines_for_a_cold_day_get_their_own_file(env: tuple[LogStore, RetentionManager]) -> None:
    store, manager = env
    store.insert([record(1, log_type="web", message="first")])
    manager.run_once(T0 + 16 * DAY_NS)
    store.insert([record(2, log_type="web", message="late")])
    manager.run_once(T0 + 16 * DAY_NS)
    assert len(list((manager.cold_dir / "default").glob("*_web_*.parquet"))) == 2
    assert searchable(store) == ["first", "late"]


def test_other_signals_retention_runs_with_the_same_clock_and_survives_a_failure(
    env: tuple[LogStore, RetentionManager],
) -> None:
    store, manager = env
    seen: list[int] = []

    def broken(now_ns: int) -> None:
        raise RuntimeError("disk on fire")

    jobs = RetentionManager(store.ex, manager.cold_dir, manager.policies, also=[broken, seen.append])
    jobs.run_once(T0 + 5 * DAY_NS)
    assert seen == [T0 + 5 * DAY_NS]
