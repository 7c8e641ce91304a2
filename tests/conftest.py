"""Shared fixtures.

PostgreSQL: ``pg_url`` is a real server for the whole run — the one at
``STACKWATCH_TEST_PG_URL`` if set, else a throwaway cluster started from the local server
binaries (tests/pg.py). Without PostgreSQL installed its tests skip, except under CI=true,
where they fail: CI must not go green by skipping them.

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
        reason = "PostgreSQL is not installed (apt-get install -y postgresql); or set STACKWATCH_TEST_PG_URL"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
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
