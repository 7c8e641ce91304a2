"""Alembic environment for the meta store, used both by ``MetaStore.migrate()`` and the CLI.

From code, ``MetaStore`` passes an open connection in ``config.attributes["connection"]`` so
the migration runs inside its transaction (and its PostgreSQL advisory lock). From the
``alembic`` command line (``alembic -c src/stackwatch/storage/meta/alembic.ini ...``) the URL
comes from ``-x url=...``, else ``STACKWATCH_DATABASE_URL``, else ``sqlalchemy.url`` in the ini.
Either way the engine is built by ``make_engine`` so SQLite gets the same pragmas as at run time.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from stackwatch.storage.meta.db import make_engine, normalize_url
from stackwatch.storage.meta.models import Base

config = context.config
target_metadata = Base.metadata


def _cli_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("STACKWATCH_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=..., or set STACKWATCH_DATABASE_URL")
    return url


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def _run_with(connection: Connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead, so
    # future migrations written with op.batch_alter_table() work on both backends.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Print the SQL instead of running it (``alembic upgrade head --sql``)."""
    url = normalize_url(_cli_url())
    _configure(url=url, literal_binds=True, render_as_batch=url.get_backend_name() == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run against a live database: the caller's connection, or one opened from the CLI URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = make_engine(_cli_url())
    try:
        with engine.connect() as connection:
            _run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


# Configure logging from the ini only on the CLI; from code the application owns logging.
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
else:
    run_online()
