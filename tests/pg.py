"""Start a throwaway PostgreSQL server for the tests, from the server binaries on this machine.

The cluster lives in a temporary directory, listens on a free loopback port (and a unix
socket in the same directory), runs with fsync off (its data is thrown away), and is removed
when stopped. ``initdb`` refuses to run as root, so as root the cluster directory is given to
the ``postgres`` user (or ``nobody``) and the server binaries run as that user.

Used by the ``pg_url`` fixture in ``tests/conftest.py``; also runnable by hand
(``python tests/pg.py``) to get a server for poking at.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import make_url

__all__ = ["PostgresServer", "create_schema", "drop_schema", "find_pg_bindir"]

SUPERUSER = "postgres"
DATABASE = "stackwatch_test"


def find_pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` that has initdb and pg_ctl, else one on PATH."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> str | None:
    """The user to run the server as, or None to run as ourselves (when we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither user 'postgres' nor 'nobody' exists for initdb")


class PostgresServer:
    """One temporary PostgreSQL cluster; :meth:`start` returns a SQLAlchemy URL to a fresh database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _unprivileged_user()
        self.root: Path | None = None
        self.port: int | None = None

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user, group=pwd.getpwnam(self.user).pw_gid, extra_groups=[])
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            timeout=120,
            **kwargs,
        )

    def _check(self, what: str, result: subprocess.CompletedProcess[str]) -> None:
        if result.returncode != 0:
            log = self.root / "server.log" if self.root else None
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(
                f"{what} failed with exit code {result.returncode}:\n{result.stdout}\n{result.stderr}\n{tail}"
            )

    def start(self) -> str:
        """initdb, start the server and create the test database; return its URL."""
        # mkdtemp, not pytest's tmp_path: pytest's directories are private to root and the
        # server runs as another user, which must be able to reach its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="stackwatch-pg-"))
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        initdb = (self.bindir / "initdb", "-D", data, "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8")
        self._check("initdb", self._run(*initdb, "--no-locale", "--no-sync"))
        self.port = _free_port()
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        pg_ctl = (self.bindir / "pg_ctl", "-D", data, "-l", self.root / "server.log", "-o", options)
        self._check("pg_ctl start", self._run(*pg_ctl, "-w", "-t", "60", "start"))
        with psycopg.connect(self.admin_dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def admin_dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def stop(self) -> None:
        """Stop the server (immediately: its data is not kept) and remove its directory."""
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run(self.bindir / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _psycopg_dsn(url: str) -> str:
    """A libpq connection string for a SQLAlchemy URL (psycopg does not take ``+psycopg`` URLs)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_schema(url: str) -> str:
    """Create an empty schema in the database at ``url``; return a URL whose connections use it.

    A fresh schema per test isolates tests as well as a fresh database would, needs only the
    CREATE privilege on the database (an externally provided server may not grant CREATEDB),
    and costs a few milliseconds.
    """
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_psycopg_dsn(url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    parsed = make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def drop_schema(url: str) -> None:
    """Drop the schema that ``url`` (from :func:`create_schema`) points its search path at."""
    parsed = make_url(url)
    options = parsed.query["options"]
    schema = str(options).removeprefix("-csearch_path=")
    base = parsed.difference_update_query(["options"]).render_as_string(hide_password=False)
    with psycopg.connect(_psycopg_dsn(base), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    """Start a server for the length of the block and yield its URL."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


if __name__ == "__main__":
    with running_server() as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            input("PostgreSQL is running; press Enter to stop it. ")
