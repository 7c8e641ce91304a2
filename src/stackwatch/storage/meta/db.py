"""The relational store: an engine for SQLite or PostgreSQL, its migrations, and sessions.

Only the server process opens the store (SQLite is in-process); everything else goes through
the server's HTTP API. Alembic owns the schema: :meth:`MetaStore.migrate` runs the migrations
shipped inside this package, so an installed wheel can upgrade a database with no alembic.ini
and no source checkout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

__all__ = ["MIGRATIONS_DIR", "MetaStore", "make_engine", "normalize_url"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""The Alembic script directory, shipped as package data."""

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long a SQLite writer waits for another one before failing with 'database is locked'."""

# Any constant works; it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK_ID = 0x5374_6B77  # "Stkw"


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the driver we ship for PostgreSQL.

    ``postgresql://`` and ``postgres://`` (as Heroku-style environments spell it) would make
    SQLAlchemy look for psycopg2; the ``postgres`` extra installs psycopg 3, so those become
    ``postgresql+psycopg://``. Other URLs are returned unchanged.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the UI read while the scheduler writes; foreign keys are off by default in
    # SQLite and the ON DELETE CASCADE rules depend on them; the busy timeout turns brief
    # write contention into a wait instead of an error.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """Create an engine configured for the meta store's needs on its backend.

    SQLite gets WAL, foreign keys and a busy timeout on every connection, and the directory of
    its file is created; an in-memory SQLite database (``sqlite://``) is shared by all sessions
    of the engine, since each new connection would otherwise see an empty database.
    PostgreSQL connections are checked before use so a restarted server costs no failed request.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
        if in_memory:
            kwargs["poolclass"] = StaticPool
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, echo=echo, **kwargs)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    return create_engine(parsed, echo=echo, pool_pre_ping=True)


class MetaStore:
    """The relational state of one Stackwatch server.

    ``url`` is a SQLAlchemy URL: ``sqlite:///path/to/meta.db`` or
    ``postgresql+psycopg://user:pass@host/db``. Creating the store opens no connection;
    call :meth:`migrate` once at start-up before using :meth:`session`.
    """

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        self.engine: Engine = make_engine(url, echo=echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """The backend's name, ``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"MetaStore({self.engine.url.render_as_string(hide_password=True)!r})"

    @staticmethod
    def _script_config() -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        return config

    def _alembic_config(self) -> Config:
        return self._script_config()

    def migrate(self, revision: str = "heads") -> None:
        """Upgrade the schema to ``revision`` (default: the newest of every branch); a no-op when
        already there. Features that land independently (errors, alerting, incidents) may each
        branch from the same parent until a merge revision joins them, hence ``heads``.

        On PostgreSQL the upgrade holds an advisory lock for its transaction, so two servers
        started at once against one database migrate one after the other instead of racing.
        """
        self._run_alembic(command.upgrade, revision)

    def downgrade(self, revision: str = "base") -> None:
        """Downgrade the schema to ``revision``; ``"base"`` drops every table the migrations made."""
        self._run_alembic(command.downgrade, revision)

    def _run_alembic(self, action: Callable[[Config, str], None], revision: str) -> None:
        config = self._alembic_config()
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            # env.py uses this connection (and its transaction) instead of opening its own.
            config.attributes["connection"] = connection
            action(config, revision)

    def current_revision(self) -> str | None:
        """The schema revision the database is at (the heads joined by ``+``, sorted, when
        branches are applied side by side), or None for a database never migrated."""
        with self.engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
        return "+".join(sorted(heads)) or None

    @staticmethod
    def head_revision() -> str:
        """The revision :meth:`migrate` goes to, spelt as :meth:`current_revision` spells it."""
        return "+".join(sorted(ScriptDirectory.from_config(MetaStore._script_config()).get_heads()))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises.

        Objects loaded in it stay readable after the block (``expire_on_commit=False``), so
        callers can return them; they are detached, and changing them changes nothing stored.
        """
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        """Close all pooled connections (the store can still be used; it reconnects)."""
        self.engine.dispose()
