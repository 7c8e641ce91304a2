"""Executors: the only difference between embedded chDB and a ClickHouse server.

Every query in Stackwatch is written once in ClickHouse SQL with ``{name:Type}`` parameters;
an executor runs it. User text only ever reaches ClickHouse as a parameter value.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
from clickhouse_connect.driver.binding import format_bind_value

from stackwatch.errors import StackwatchError
from stackwatch.storage.schema import PROMPT_CLEANUP

__all__ = ["ChdbExecutor", "ClickHouseExecutor", "Executor", "StorageError", "open_executor"]


class StorageError(StackwatchError):
    status_code = 503


class Executor(Protocol):
    database: str
    cluster: str
    #: Settings every table created through this executor gets (see schema.PROMPT_CLEANUP).
    table_settings: Mapping[str, object]

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing."""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query; each row as a dict (64-bit integers as ints)."""

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run a query; the result as one Arrow table (no per-row Python objects)."""

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        """Insert a block. The same ``dedup_token`` twice stores the block once."""

    def close(self) -> None: ...


_OUTPUT_SETTINGS = "output_format_json_quote_64bit_integers=0, output_format_json_quote_denormals=1"


#: Startup options of the embedded engine. chDB starts with no cache of decompressed blocks
#: (``uncompressed_cache_size`` 0), where a ClickHouse server uses one by default: repeated
#: reads of the same recent data (a dashboard refreshing, a search refined) decompress again
#: on every query. Measured on a 1M-line store of 11 parts: a guide search 35 -> 22 ms. The
#: engine only caches blocks of reads under ``merge_tree_max_rows_to_use_cache`` rows, so large
#: scans do not evict them; the size is a cap, not an allocation.
_ENGINE_OPTIONS = "uncompressed_cache_size=1073741824&use_uncompressed_cache=1"


#: Embedded connections queries may run on at once. chDB 4 runs queries of different
#: connections to one store in parallel (one connection must not run two at once: a
#: ``Python(...)`` table read then finds another thread's table). With one connection every
#: search waited behind any insert, and an import's parse behind the store's insert, on a
#: machine whose second core sat idle. Connections are opened when first needed.
POOL_SIZE = 4


class _SharedSession:
    """chDB allows one embedded server per process, on one path: share its connections.

    ``acquire``/``release`` count the executors using the store (the last one closes it);
    ``checkout``/``checkin`` lend one connection to one query at a time.
    """

    lock = threading.Lock()
    path: str | None = None
    sessions: list[Any] = []
    idle: list[Any] = []
    free = threading.Condition(lock)
    users = 0
    size = POOL_SIZE

    @classmethod
    def _open(cls) -> Any:
        from chdb import session as chdb_session

        session = chdb_session.Session(f"{cls.path}?{_ENGINE_OPTIONS}")
        # Results cross no network here: compressing Arrow output only to decompress it in
        # the same process took more than half of a 4 M-sample metrics read (509 -> 246 ms
        # measured on 720 series x 24 h). SET lasts for the connection.
        session.query("SET output_format_arrow_compression_method = 'none'")
        cls.sessions.append(session)
        return session

    @classmethod
    def acquire(cls, path: str) -> None:
        with cls.lock:
            if cls.sessions and cls.path != path:
                raise StorageError(
                    f"the embedded store is already open at {cls.path!r} in this process; "
                    f"cannot also open {path!r}"
                )
            if not cls.sessions:
                cls.path = path
                cls.idle.append(cls._open())
            cls.users += 1

    @classmethod
    def checkout(cls) -> Any:
        with cls.lock:
            while not cls.idle:
                if not cls.sessions:
                    raise StorageError("the embedded store is closed")
                if len(cls.sessions) < cls.size:
                    return cls._open()
                cls.free.wait()
            return cls.idle.pop()  # the most recently used

    @classmethod
    def checkin(cls, session: Any) -> None:
        with cls.lock:
            if session in cls.sessions:
                cls.idle.append(session)
                cls.free.notify()

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users > 0 or not cls.sessions:
                return
            # Wait for queries still running, then close every connection (the engine stops
            # with the last).
            while len(cls.idle) < len(cls.sessions):
                cls.free.wait()
            for session in cls.sessions:
                session.close()
            cls.sessions.clear()
            cls.idle.clear()
            cls.path = None
            cls.free.notify_all()


class ChdbExecutor:
    """Embedded ClickHouse in this process, stored under ``path``.

    Each query borrows one of the store's connections (:data:`POOL_SIZE`), so up to that many
    run at once; the GIL is released while a query runs.
    """

    def __init__(self, path: str | Path, database: str = "stackwatch") -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.database = database
        self.cluster = ""
        self.table_settings: Mapping[str, object] = PROMPT_CLEANUP
        _SharedSession.acquire(str(Path(path).resolve()))
        self._closed = False
        self.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")

    def _query(self, sql: str, fmt: str, params: Mapping[str, Any] | None) -> Any:
        # chDB reads parameter values in ClickHouse's escaped text format, as a server reads
        # them from clickhouse-connect; without escaping, "C:\new" would arrive with a newline.
        bound = {k: format_bind_value(v) for k, v in params.items()} if params else None
        session = _SharedSession.checkout()
        try:
            return session.query(sql, fmt, params=bound)
        except Exception as exc:  # chDB raises RuntimeError with the server's message
            raise StorageError(f"storage query failed: {exc}") from exc
        finally:
            _SharedSession.checkin(session)

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._query(sql, "CSV", params)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self._query(f"{sql}\nSETTINGS {_OUTPUT_SETTINGS}", "JSONEachRow", params)
        data = result.bytes()
        if not data:
            return []
        return [orjson.loads(line) for line in data.splitlines() if line]

    def rows_with_total(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Run a query ending in ``LIMIT``; its rows, and how many rows the LIMIT chose from.

        A search page and its total from one scan instead of two (rows, then ``count()``):
        ClickHouse reports the rows that reached the LIMIT in the JSON format's
        ``rows_before_limit_at_least``, exact with ``exact_rows_before_limit``. The total is
        None when the engine did not report it.
        """
        result = self._query(
            f"{sql}\nSETTINGS {_OUTPUT_SETTINGS}, exact_rows_before_limit=1", "JSON", params
        )
        data = result.bytes()
        if not data:
            return [], None
        doc = orjson.loads(data)
        total = doc.get("rows_before_limit_at_least")
        return doc["data"], None if total is None else int(total)

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """The result as Arrow columns over chDB's own result buffer, without copying it.

        ``bytes()`` copied the result into a Python bytes object first: 80 ms for the 94 MB of
        a 4 M-sample metrics read. The buffer belongs to the result object, and a memoryview
        of it does not keep that alive (reading after it was freed returned other data), so
        the Arrow buffer is made with the result as its base: the table, and any numpy view
        of its columns, keep the result alive.
        """
        result = self._query(sql, "ArrowStream", params)
        size = result.size()
        if not size:
            return pa.table({})
        view = result.get_memview().view()
        address = np.frombuffer(view, dtype=np.uint8).ctypes.data
        return pa.ipc.open_stream(pa.foreign_buffer(address, size, base=result)).read_all()

    def query_local(self, sql: str, local: pa.Table, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run ``sql`` over an Arrow table of this process, which it reads as ``Python(local)``.

        Lets a small in-memory table be filtered by the same compiled SQL as the stored one
        (the in-memory minute counts decide which of their keys a log query matches this way).
        """
        # chDB's Python() table function finds the table among the calling frames' locals.
        return self.query_arrow(sql, params)

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        settings = ""
        if dedup_token is not None:
            if not dedup_token.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"bad dedup token {dedup_token!r}")
            settings = f" SETTINGS insert_deduplication_token='{dedup_token}'"
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        # chDB's Python() table function reads the Arrow table from this frame's locals.
        block = data  # noqa: F841
        self.command(f"INSERT INTO `{self.database}`.`{table}` ({cols}){settings} SELECT * FROM Python(block)")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _SharedSession.release()


class ClickHouseExecutor:
    """A ClickHouse server (or cluster) over HTTP through clickhouse-connect."""

    def __init__(self, url: str, cluster: str = "", database: str | None = None) -> None:
        import clickhouse_connect

        self._client = clickhouse_connect.get_client(dsn=url)
        self.database = database or self._client.database or "stackwatch"
        if self.database == "default":
            self.database = "stackwatch"
        self.cluster = cluster
        self.table_settings: Mapping[str, object] = {}
        on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
        self._client.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`{on_cluster}")
        self._lock = threading.Lock()

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        try:
            with self._lock:
                self._client.command(sql, parameters=dict(params) if params else None)
        except Exception as exc:
            raise StorageError(f"storage query failed: {exc}") from exc

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            with self._lock:
                result = self._client.query(sql, parameters=dict(params) if params else None)
            return list(result.named_results())
        except Exception as exc:
            raise StorageError(f"storage query failed: {exc}") from exc

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        try:
            with self._lock:
                return self._client.query_arrow(sql, parameters=dict(params) if params else None)
        except Exception as exc:
            raise StorageError(f"storage query failed: {exc}") from exc

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        settings = {"insert_deduplication_token": dedup_token} if dedup_token else None
        try:
            with self._lock:
                self._client.insert_arrow(f"{self.database}.{table}", data, settings=settings)
        except Exception as exc:
            raise StorageError(f"storage insert failed: {exc}") from exc

    def close(self) -> None:
        self._client.close()


def open_executor(data_dir: Path, clickhouse_url: str = "", cluster: str = "") -> Executor:
    if clickhouse_url:
        return ClickHouseExecutor(clickhouse_url, cluster)
    return ChdbExecutor(data_dir / "clickhouse")
