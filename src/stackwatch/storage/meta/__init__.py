"""Relational state (projects, users, tokens, settings) in SQLite or PostgreSQL.

:class:`MetaStore` opens the database and runs the Alembic migrations shipped in
``migrations/``; :mod:`.models` declares the tables.
"""

from stackwatch.storage.meta.db import MetaStore, make_engine, normalize_url
from stackwatch.storage.meta.models import DEFAULT_RETENTION, ROLES, Base

__all__ = ["DEFAULT_RETENTION", "ROLES", "Base", "MetaStore", "make_engine", "normalize_url"]
