"""MetaStore: engines, migrations (both backends, code and CLI), sessions, portable types."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from stackwatch.storage.meta import MetaStore, normalize_url
from stackwatch.storage.meta.models import Base, IngestToken, Project, User

# Every table the models declare; test_models_match_the_migrations checks the migrations agree.
TABLES = set(Base.metadata.tables)
HEAD = MetaStore.head_revision()
REPO = Path(__file__).resolve().parents[3]


def _tables(store: MetaStore) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names())


def _diff(store: MetaStore, metadata: sa.MetaData = Base.metadata) -> list[object]:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_upgrade_creates_all_tables_on_an_empty_database(meta_url: str) -> None:
    store = MetaStore(meta_url)
    try:
        assert store.current_revision() is None
        store.migrate()
        assert store.current_revision() == HEAD
        assert _tables(store) == TABLES | {"alembic_version"}
        store.migrate()  # already at head: a no-op, not an error
        assert store.current_revision() == HEAD
    finally:
        store.close()


def test_downgrade_to_base_drops_every_table(meta_store: MetaStore) -> None:
    meta_store.downgrade("base")
    assert meta_store.current_revision() is None
    assert _tables(meta_store) <= {"alembic_version"}
    meta_store.migrate()  # and back up again
    assert _tables(meta_store) == TABLES | {"alembic_version"}


def test_models_match_the_migrations(meta_store: MetaStore) -> None:
    assert _diff(meta_store) == []


def test_the_model_comparison_would_notice_a_drift(meta_store: MetaStore) -> None:
    # Guards the test above against passing vacuously (e.g. comparing an empty schema).
    drifted = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["projects"].append_column(sa.Column("extra", sa.String(10)))
    sa.Index("ix_users_name", drifted.tables["users"].c.name)
    kinds = {diff[0] for diff in _diff(meta_store, drifted) if isinstance(diff, tuple)}
    assert {"add_column", "add_index"} <= kinds


def test_session_commits_on_success_and_rolls_back_on_error(meta_store: MetaStore) -> None:
    with meta_store.session() as s:
        s.add(Project(slug="kept", name="Kept"))
    with pytest.raises(RuntimeError), meta_store.session() as s:
        s.add(Project(slug="dropped", name="Dropped"))
        s.flush()
        raise RuntimeError("boom")
    with meta_store.session() as s:
        assert list(s.scalars(sa.select(Project.slug))) == ["kept"]


def test_objects_stay_readable_after_the_session(meta_store: MetaStore) -> None:
    with meta_store.session() as s:
        project = Project(slug="p", name="P", settings={"a": [1, 2]})
        s.add(project)
    assert project.id is not None
    assert (project.slug, project.settings, project.retention) == ("p", {"a": [1, 2]}, None)


def test_unique_and_foreign_key_constraints_are_enforced(meta_store: MetaStore) -> None:
    with meta_store.session() as s:
        s.add(Project(slug="dup", name="A"))
    with pytest.raises(IntegrityError), meta_store.session() as s:
        s.add(Project(slug="dup", name="B"))
    # SQLite checks foreign keys only with the pragma MetaStore sets on every connection.
    with pytest.raises(IntegrityError), meta_store.session() as s:
        s.add(IngestToken(project_id=12345, token_hash="0" * 64, prefix="x", name="orphan"))


def test_deleting_a_project_cascades_to_its_tokens(meta_store: MetaStore) -> None:
    with meta_store.session() as s:
        project = Project(slug="gone", name="Gone")
        s.add(project)
        s.flush()
        s.add(IngestToken(project_id=project.id, token_hash="a" * 64, prefix="swi_", name="t"))
    with meta_store.session() as s:
        s.execute(sa.delete(Project).where(Project.slug == "gone"))
    with meta_store.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(IngestToken)) == 0


def test_timestamps_come_back_as_aware_utc(meta_store: MetaStore) -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    with meta_store.session() as s:
        s.add(Project(slug="t", name="T", created_at=moment))
    with meta_store.session() as s:
        stored = s.scalar(sa.select(Project.created_at))
        later = s.scalar(sa.select(sa.func.count()).where(Project.created_at > moment - timedelta(seconds=1)))
    assert stored == moment
    assert stored is not None and stored.tzinfo is UTC
    assert later == 1  # comparisons in SQL agree with Python's


def test_naive_datetimes_are_refused(meta_store: MetaStore) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), meta_store.session() as s:
        s.add(Project(slug="n", name="N", created_at=datetime(2024, 1, 1)))


def test_role_check_constraint(meta_store: MetaStore) -> None:
    with pytest.raises(IntegrityError), meta_store.session() as s:
        s.add(User(email="x@y", password_hash="h", role="root"))


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    store = MetaStore(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'meta.db'}")
    try:
        with store.engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            }
        assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000}
        assert (tmp_path / "nested" / "dir" / "meta.db").exists()
    finally:
        store.close()


def test_in_memory_sqlite_is_one_database_for_all_sessions() -> None:
    store = MetaStore("sqlite://")
    try:
        store.migrate()
        with store.session() as s:
            s.add(Project(slug="mem", name="Mem"))
        with store.session() as s:
            assert s.scalar(sa.select(Project.slug)) == "mem"
    finally:
        store.close()


def test_postgres_urls_get_the_psycopg_driver() -> None:
    for url in ("postgresql://u:p@h/db", "postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"):
        assert normalize_url(url).drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    assert "secret" not in repr(MetaStore("postgresql://u:secret@127.0.0.1/db"))


def test_migrations_ship_inside_the_package() -> None:
    meta = resources.files("stackwatch.storage.meta")
    assert meta.joinpath("migrations/env.py").is_file()
    assert meta.joinpath("migrations/versions/0001_initial.py").is_file()
    assert meta.joinpath("alembic.ini").is_file()


def test_the_alembic_command_line_uses_the_same_migrations(meta_url: str) -> None:
    ini = REPO / "src/stackwatch/storage/meta/alembic.ini"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "alembic", "-c", str(ini), "-x", f"url={meta_url}", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)

    upgraded = alembic("upgrade", "heads")
    assert upgraded.returncode == 0, upgraded.stderr
    store = MetaStore(meta_url)
    try:
        assert store.current_revision() == HEAD
        assert _diff(store) == []
        current = alembic("current")
        assert current.returncode == 0 and all(f"{h} (head)" in current.stdout for h in HEAD.split("+")), current.stderr
        downgraded = alembic("downgrade", "base")
        assert downgraded.returncode == 0, downgraded.stderr
        assert store.current_revision() is None
    finally:
        store.close()


def test_the_command_line_without_a_url_says_how_to_give_one(tmp_path: Path) -> None:
    ini = REPO / "src/stackwatch/storage/meta/alembic.ini"
    env = {k: v for k, v in os.environ.items() if k != "STACKWATCH_DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO / "src")
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "heads"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "-x url=" in result.stderr + result.stdout


def test_a_database_of_an_earlier_release_upgrades_to_the_single_head(meta_url: str) -> None:
    """A store created at 0001 (the first release) gets every feature's tables and ends on one head."""
    store = MetaStore(meta_url)
    try:
        store.migrate("0001")
        assert store.current_revision() == "0001"
        store.migrate()
        assert store.current_revision() == HEAD == "0006"
        assert _tables(store) == TABLES | {"alembic_version"}
        assert _diff(store) == []
    finally:
        store.close()
