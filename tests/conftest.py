"""Shared fixtures.

PostgreSQL: ``pg_url`` is a real server for the whole run — the one at
``STACKWATCH_TEST_PG_URL`` if set, else a throwaway cluster started from the local server
binaries (tests/pg.py). Without PostgreSQL installed its tests skip, except under CI=true,
where every skip fails: CI must not go green by skipping them.

Meta store: ``meta_store`` is a migrated MetaStore, once on SQLite and once on PostgreSQL
(marked ``postgres``), each test getting an empty database of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import pg
from stackwatch.storage.meta import MetaStore


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL database for this test run."""
    external = os.environ.get("STACKWATCH_TEST_PG_URL")
    if external:
        yield external
        return
    bindir = pg.find_pg_bindir()
    if bindir is None:
        # Skips locally; fails under CI (see pytest_runtest_makereport below).
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql); or set STACKWATCH_TEST_PG_URL")
    server = pg.PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A URL to an empty schema of its own in the ``pg_url`` database, dropped afterwards."""
    url = pg.create_schema(pg_url)
    yield url
    pg.drop_schema(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, unmigrated meta-store database: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def meta_store(meta_url: str) -> Iterator[MetaStore]:
    """A MetaStore migrated to the newest schema."""
    store = MetaStore(meta_url)
    store.migrate()
    yield store
    store.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI every test must run: a skip there means an install step is missing.

    Locally, tests that need a service or tool the machine lacks (PostgreSQL, rsyslog,
    redis-server, chromium, shared/ test data) skip with the reason; with CI=true the same skip
    is reported as a failure, so a broken install step can never turn the suite green.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("CI", "").lower() in ("true", "1"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which means a missing install step: {reason}"
