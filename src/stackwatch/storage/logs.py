"""Writing log blocks and reading them back: the logs side of the telemetry store."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from stackwatch.errors import BadRequest
from stackwatch.model.logs import LogRecord
from stackwatch.model.logs_arrow import records_to_arrow
from stackwatch.storage.executor import Executor
from stackwatch.storage.minute_counts import KEY_COLUMNS, MinuteCounts
from stackwatch.storage.retention import COLD_SCHEMA, cold_files
from stackwatch.storage.schema import (
    LOGS,
    LOGS_MINUTES,
    LOGS_MINUTES_FILTERS,
    LOGS_MINUTES_TTL_DAYS,
    TABLES,
    minutes_backfill_sql,
    minutes_view_ddl,
    render_ddl,
)

__all__ = ["LogHit", "LogStore", "SearchPage", "records_to_arrow"]

_TS = pa.timestamp("ns", tz="UTC")


def distinct_observed(block: pa.Table) -> pa.Table:
    """Make ``(timestamp, observed_timestamp)`` unique: the sort key that pages search results.

    All lines of one request arrive at the same instant; each line after the first in a run
    of equal observed times gets its position in the run added, in nanoseconds. The block is
    rebuilt identically on WAL replay, so the values are too.
    """
    column = block.column("observed_timestamp")
    observed = column.cast(pa.int64()).to_numpy()
    n = len(observed)
    if n < 2:
        return block
    index = np.arange(n, dtype=np.int64)
    run_start = np.empty(n, dtype=bool)
    run_start[0] = True
    np.not_equal(observed[1:], observed[:-1], out=run_start[1:])
    first = np.maximum.accumulate(np.where(run_start, index, 0))
    adjusted = pa.array(observed + (index - first), pa.int64()).cast(column.type)
    return block.set_column(block.schema.get_field_index("observed_timestamp"), "observed_timestamp", adjusted)


@dataclass(frozen=True)
class SearchPage:
    total: int
    hits: list[dict[str, Any]]
    next_cursor: str | None


LogHit = dict[str, Any]

_HIT_COLUMNS = """
    toUnixTimestamp64Nano(timestamp) AS ts,
    toUnixTimestamp64Nano(observed_timestamp) AS observed_ts,
    service, severity_text, severity_number, message, trace_id, span_id, source,
    logger, function, host, log_type, attributes_string, attributes_number, resource
"""


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=4096)
def _iso_day(days: int) -> str:
    return dt.date.fromordinal(_EPOCH_ORDINAL + days).isoformat()


def ns_to_rfc3339(ns: int) -> str:
    # Two per hit, 200 per search page: arithmetic and a cached date, not datetime's
    # strftime (4.6 -> 2.1 us each).
    seconds, rem = divmod(ns, 1_000_000_000)
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_iso_day(days)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{rem:09d}Z"


def _number(value: float | int) -> int | float:
    # JSON output writes 2490.0 as 2490; show whole numbers as ints either way.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _edge_filters(start_ns: int, end_ns: int, minutes: tuple[int, int]) -> list[str]:
    """Conditions for the lines in the partial minutes at the ends of a range whose whole
    minutes (first, end; epoch s, parameters ``_m0`` and ``_m1``) come from the minute counts."""
    edges = []
    if start_ns < minutes[0] * 1_000_000_000:
        edges.append("(timestamp < toDateTime64({_m0:Int64}, 9, 'UTC'))")
    if minutes[1] * 1_000_000_000 < end_ns:
        edges.append("(timestamp >= toDateTime64({_m1:Int64}, 9, 'UTC'))")
    return edges


def _hit(row: dict[str, Any], project: str) -> LogHit:
    """A stored line as the API shows it. Every read is within one project, which is
    therefore not read back from the table."""
    attributes: dict[str, Any] = dict(row["attributes_string"])
    for key, value in row["attributes_number"].items():
        attributes[key] = _number(value)
    return {
        "timestamp": ns_to_rfc3339(row["ts"]),
        "timestamp_ns": row["ts"],
        "observed_timestamp": ns_to_rfc3339(row["observed_ts"]),
        "observed_timestamp_ns": row["observed_ts"],
        "project": project,
        "service": row["service"],
        "level": row["severity_text"],
        "severity_number": row["severity_number"],
        "message": row["message"],
        "trace_id": row["trace_id"],
        "span_id": row["span_id"],
        "source": row["source"],
        "logger": row["logger"],
        "function": row["function"],
        "host": row["host"],
        "log_type": row["log_type"],
        "attributes": attributes,
        "resource": row["resource"],
    }


def encode_cursor(ts: int, observed: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts, observed])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts, observed = orjson.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(ts, int) or not isinstance(observed, int):
            raise ValueError
        return ts, observed
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("invalid cursor: pass back the next_cursor of a previous page") from None


class LogStore:
    """Reads and writes the logs tables through an executor (embedded or server)."""

    def __init__(
        self, executor: Executor, cold_dir: Path | None = None, hot_horizon: Callable[[], int] | None = None
    ) -> None:
        """``hot_horizon()``: lines at or after this time (ns) are all in the hot tier."""
        self.ex = executor
        self.db = executor.database
        self.cold_dir = cold_dir
        self.hot_horizon = hot_horizon
        #: Whether logs_minutes is kept (set by ensure_schema): histograms may read it.
        self.minutes = False
        #: The same counts in memory (set by ensure_schema on the embedded store, whose only
        #: writer is this process: a ClickHouse server may have other writers).
        self.minute_counts: MinuteCounts | None = None
        # Held across an insert and its counting, and while the counts are filled from the
        # table, so no block is in both.
        self._insert_lock = threading.Lock()

    def _from(self, project: str, start_ns: int, end_ns: int) -> str:
        """The table to read: hot (and warm when the range reaches it), plus cold files in range."""
        files = cold_files(self.cold_dir, project, start_ns, end_ns) if self.cold_dir else []
        if not files:
            # Most searches cover recent hours that only the hot tier can hold; reading
            # logs_hot directly instead of through the Merge table saves a third of their time.
            if self.hot_horizon is not None and start_ns >= self.hot_horizon():
                return f"`{self.db}`.logs_hot"
            return f"`{self.db}`.logs"
        cols = ", ".join(c.name for c in LOGS.columns)
        folder = str(files[0].parent).replace("\\", "\\\\").replace("'", "\\'")
        names = ",".join(f.name for f in files)
        schema = COLD_SCHEMA.replace("'", "\\'")
        return (
            f"(SELECT {cols} FROM `{self.db}`.logs UNION ALL SELECT {cols} FROM "
            f"file('{folder}/{{{names}}}', Parquet, '{schema}'))"
        )

    def ensure_schema(self) -> None:
        """Create the tables; on a store made before the minute counts, fill them in first.

        Runs at start-up, before the batcher inserts anything, so the backfill and the view
        that takes over from it see the same lines. The view is created last: a start that
        died half-way through the backfill finds no view and does the backfill again, from an
        emptied table. On a cluster the minute counts are not kept (histograms read the lines).
        """
        for table in TABLES:
            for stmt in render_ddl(table, self.db, self.ex.cluster, self.ex.table_settings):
                self.ex.command(stmt)
        if self.ex.cluster:
            return
        has_view = self.ex.rows(
            "SELECT count() AS n FROM system.tables WHERE database = {db:String} AND name = 'logs_minutes_mv'",
            {"db": self.db},
        )[0]["n"]
        for stmt in render_ddl(LOGS_MINUTES, self.db, extra_settings=self.ex.table_settings):
            self.ex.command(stmt)
        if not int(has_view):
            self.ex.command(f"TRUNCATE TABLE `{self.db}`.`logs_minutes`")
            self.ex.command(minutes_backfill_sql(self.db))
            self.ex.command(minutes_view_ddl(self.db))
        self.minutes = True
        if hasattr(self.ex, "query_local"):
            self.minute_counts = MinuteCounts()

    def insert(self, records: Sequence[LogRecord], *, dedup_token: str | None = None) -> int:
        if not records:
            return 0
        return self.insert_block(records_to_arrow(records), dedup_token=dedup_token)

    def insert_block(self, block: pa.Table, *, dedup_token: str | None = None) -> int:
        """Insert a block already in the table's columns (see :func:`records_to_arrow`)."""
        if not block.num_rows:
            return 0
        block = distinct_observed(block)
        counts = self.minute_counts
        if counts is None:
            self.ex.insert_arrow("logs_hot", block, dedup_token=dedup_token)
        else:
            with self._insert_lock:
                self.ex.insert_arrow("logs_hot", block, dedup_token=dedup_token)
                with counts.lock:
                    counts.add(block, dedup_token)
        return int(block.num_rows)

    def _scope(self, project: str, start_ns: int, end_ns: int) -> tuple[str, dict[str, Any]]:
        where = (
            "project = {_project:String} AND timestamp >= fromUnixTimestamp64Nano({_start:Int64}) "
            "AND timestamp < fromUnixTimestamp64Nano({_end:Int64})"
        )
        return where, {"_project": project, "_start": start_ns, "_end": end_ns}

    def search(
        self,
        project: str,
        where: str,
        params: dict[str, Any],
        start_ns: int,
        end_ns: int,
        *,
        limit: int = 100,
        cursor: str | None = None,
        with_total: bool = True,
    ) -> SearchPage:
        """Newest-first page of matching lines, plus the total count over the whole range."""
        scope, scope_params = self._scope(project, start_ns, end_ns)
        all_params = {**params, **scope_params, "_limit": limit}
        page_filter = ""
        if cursor:
            ts, observed = decode_cursor(cursor)
            page_filter = (
                " AND (timestamp, observed_timestamp) < "
                "(fromUnixTimestamp64Nano({_cts:Int64}), fromUnixTimestamp64Nano({_cob:Int64}))"
            )
            all_params.update(_cts=ts, _cob=observed)
        sql = (
            f"SELECT {_HIT_COLUMNS} FROM {self._from(project, start_ns, end_ns)} "
            f"WHERE {scope} AND ({where}){page_filter} "
            # (timestamp, observed_timestamp) is unique per line (see records_to_arrow), so pages
            # neither repeat nor skip lines; both are small columns, so the engine can sort on
            # them alone and read the wide columns for the page's rows only.
            "ORDER BY timestamp DESC, observed_timestamp DESC LIMIT {_limit:UInt32}"
        )
        total: int | None = -1 if not with_total else None
        with_count = getattr(self.ex, "rows_with_total", None)
        if with_total and not cursor and with_count is not None:
            # The first page: the rows that reached the LIMIT are exactly the lines matching
            # in the whole range, so one scan gives the page and the total (half the work of
            # a second count query, which re-reads the same granules).
            rows, total = with_count(sql, all_params)
        else:
            rows = self.ex.rows(sql, all_params)
        if total is None:
            total = self.count(project, where, params, start_ns, end_ns)
        next_cursor = None
        if len(rows) == limit:
            last = rows[-1]
            next_cursor = encode_cursor(last["ts"], last["observed_ts"])
        return SearchPage(total=total, hits=[_hit(r, project) for r in rows], next_cursor=next_cursor)

    def count(self, project: str, where: str, params: dict[str, Any], start_ns: int, end_ns: int) -> int:
        scope, scope_params = self._scope(project, start_ns, end_ns)
        rows = self.ex.rows(
            f"SELECT count() AS n FROM {self._from(project, start_ns, end_ns)} WHERE {scope} AND ({where})",
            {**params, **scope_params},
        )
        return int(rows[0]["n"]) if rows else 0

    def histogram(
        self,
        project: str,
        where: str,
        params: dict[str, Any],
        start_ns: int,
        end_ns: int,
        interval_s: int,
        *,
        by_level: bool = False,
        columns: frozenset[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Counts per time bucket (aligned to the epoch), empty buckets included.

        ``columns`` are the columns ``where`` reads (``CompiledQuery.columns``); when they
        are all kept in the per-minute counts and the buckets are whole minutes, the whole
        minutes of the range are summed from ``logs_minutes`` and only the partial minutes at
        its ends are counted from the lines.
        """
        minutes = self._minute_range(project, start_ns, end_ns, interval_s, columns)
        if minutes is not None and self.minute_counts is not None:
            held = self._histogram_in_memory(project, where, params, start_ns, end_ns, interval_s, by_level, minutes)
            if held is not None:
                return held
        scope, scope_params = self._scope(project, start_ns, end_ns)
        level = ", severity_text AS level" if by_level else ""
        group = ", level" if by_level else ""
        all_params = {**params, **scope_params, "_iv": interval_s}
        bucket = "toUnixTimestamp(toStartOfInterval({col}, toIntervalSecond({{_iv:UInt32}})))"
        if minutes is None:
            sql = (
                f"SELECT {bucket.format(col='timestamp')} AS t{level}, count() AS n "
                f"FROM {self._from(project, start_ns, end_ns)} WHERE {scope} AND ({where}) "
                f"GROUP BY t{group} ORDER BY t{group}"
            )
        else:
            first_min, end_min = minutes
            all_params.update(_m0=first_min, _m1=end_min)
            sql = (
                f"SELECT {bucket.format(col='minute')} AS t{level}, sum(lines) AS n "
                f"FROM `{self.db}`.logs_minutes WHERE project = {{_project:String}} "
                "AND minute >= toDateTime({_m0:Int64}, 'UTC') AND minute < toDateTime({_m1:Int64}, 'UTC') "
                f"AND ({where}) GROUP BY t{group}"
            )
            edges = _edge_filters(start_ns, end_ns, minutes)
            if edges:
                # The partial minutes at the ends of the range, counted from the lines.
                sql = (
                    f"SELECT t{group}, sum(n) AS n FROM ({sql} UNION ALL "
                    f"SELECT {bucket.format(col='timestamp')} AS t{level}, count() AS n "
                    f"FROM `{self.db}`.logs_hot WHERE {scope} AND ({' OR '.join(edges)}) AND ({where}) "
                    f"GROUP BY t{group}) GROUP BY t{group}"
                )
            if by_level:  # per-level rows are returned as they come: in time order
                sql += " ORDER BY t, level"
        # Arrow, not JSON rows: a day of minutes is 1,440 rows, parsed in one call instead of
        # one per line (a millisecond of a histogram's few).
        table = self.ex.query_arrow(sql, all_params)
        first = (start_ns // 1_000_000_000) // interval_s * interval_s
        last = ((end_ns - 1) // 1_000_000_000) // interval_s * interval_s
        if table.num_rows == 0:
            times, numbers, levels = [], [], []
        else:
            times, numbers = table.column("t").to_pylist(), table.column("n").to_pylist()
            levels = table.column("level").to_pylist() if by_level else []
        if by_level:
            return [
                {"t": t, "level": lv, "count": int(n)} for t, lv, n in zip(times, levels, numbers, strict=True)
            ]
        counts = dict(zip(times, numbers, strict=True))  # Arrow gives Python ints already
        return [{"t": t, "count": counts.get(t, 0)} for t in range(first, last + 1, interval_s)]

    def _histogram_in_memory(
        self,
        project: str,
        where: str,
        params: dict[str, Any],
        start_ns: int,
        end_ns: int,
        interval_s: int,
        by_level: bool,
        minutes: tuple[int, int],
        memory_only: bool = False,
    ) -> list[dict[str, Any]] | None:
        """The histogram from the in-memory minute counts; None when they do not hold the range.

        ``memory_only``: None also whenever the answer would need the storage (filling the
        counts, matching a query not seen before, partial minutes at the ends) or a wait for
        the counts' lock: what an event loop may call without blocking.
        """
        counts = self.minute_counts
        assert counts is not None
        if not counts.ready:
            if counts.disabled or memory_only:
                return None
            self._fill_counts(counts)
        first_min, end_min = minutes[0] // 60, minutes[1] // 60
        if memory_only and _edge_filters(start_ns, end_ns, minutes):
            return None
        query_key = (where, tuple(sorted(params.items())))
        if not counts.lock.acquire(blocking=not memory_only):
            return None
        try:
            counts.advance(time.time_ns() // 86_400_000_000_000)
            if not counts.covers(first_min, end_min):
                return None
            if memory_only:
                cached = counts.cached_matching(project, query_key)
                if cached is None:
                    return None
                rows = cached
            else:
                rows = counts.matching(
                    project, query_key, lambda keys: self._match_keys(keys, project, where, params)
                )
            if by_level:
                groups: dict[str, list[int]] = {}
                for row in rows.tolist():
                    groups.setdefault(counts.level_of(row), []).append(row)
                per_level = {
                    lv: counts.sum_minutes(np.asarray(r, dtype=np.int64), first_min, end_min)
                    for lv, r in groups.items()
                }
            else:
                total = counts.sum_minutes(rows, first_min, end_min)
        finally:
            counts.lock.release()
        # Whole minutes to buckets aligned to the epoch (intervals are whole minutes here).
        bucket_of = (np.arange(first_min, end_min, dtype=np.int64) * 60) // interval_s * interval_s
        first = (start_ns // 1_000_000_000) // interval_s * interval_s
        last = ((end_ns - 1) // 1_000_000_000) // interval_s * interval_s
        edges = self._edge_counts(project, where, params, start_ns, end_ns, interval_s, by_level, minutes)
        n_buckets = (last - first) // interval_s + 1
        slot = (bucket_of - first) // interval_s
        if by_level:
            cells: dict[tuple[int, str], int] = dict(edges)
            for lv, series in per_level.items():
                sums = np.bincount(slot, weights=series, minlength=n_buckets).astype(np.int64)
                nonzero = np.flatnonzero(sums)
                for i, n in zip(nonzero.tolist(), sums[nonzero].tolist(), strict=True):
                    key = (first + i * interval_s, lv)
                    cells[key] = cells.get(key, 0) + n
            return [{"t": t, "level": lv, "count": n} for (t, lv), n in sorted(cells.items()) if n]
        out = np.bincount(slot, weights=total, minlength=n_buckets).astype(np.int64).tolist()
        for (t, _), n in edges.items():
            out[(t - first) // interval_s] += n
        return [{"t": t, "count": n} for t, n in zip(range(first, last + 1, interval_s), out, strict=True)]

    def histogram_from_memory(
        self,
        project: str,
        where: str,
        params: dict[str, Any],
        start_ns: int,
        end_ns: int,
        interval_s: int,
        *,
        by_level: bool = False,
        columns: frozenset[str] | None = None,
    ) -> list[dict[str, Any]] | None:
        """:meth:`histogram` when the in-memory counts answer it alone, else None; never blocks.

        Most dashboard and explorer histograms are answered this way in well under a
        millisecond, so the web server calls this on its event loop and hands only the rest to
        a worker thread (the hop alone cost 1.3 ms a request, measured).
        """
        if self.minute_counts is None:
            return None
        minutes = self._minute_range(project, start_ns, end_ns, interval_s, columns)
        if minutes is None:
            return None
        return self._histogram_in_memory(
            project, where, params, start_ns, end_ns, interval_s, by_level, minutes, memory_only=True
        )

    def _fill_counts(self, counts: MinuteCounts) -> None:
        """Fill the in-memory counts from logs_minutes, inserts held off meanwhile."""
        today = time.time_ns() // 86_400_000_000_000
        with self._insert_lock, counts.lock:
            if counts.ready or counts.disabled:
                return
            cols = ", ".join(KEY_COLUMNS)
            table = self.ex.query_arrow(
                f"SELECT {cols}, toUnixTimestamp(minute) AS minute, sum(lines) AS lines "
                f"FROM `{self.db}`.logs_minutes WHERE minute >= toDateTime({{_m:Int64}}, 'UTC') "
                f"GROUP BY {cols}, minute",
                {"_m": (today - counts.keep_days + 1) * 86_400},
            )
            counts.load(table, today)

    def _match_keys(self, keys: pa.Table, project: str, where: str, params: dict[str, Any]) -> list[int]:
        """Which of the counts' keys the compiled query matches, decided by the engine itself."""
        query_local = getattr(self.ex, "query_local")  # noqa: B009 - only the embedded executor has it
        table = query_local(
            f"SELECT i FROM Python(local) WHERE project = {{_project:String}} AND ({where})",
            keys,
            {**params, "_project": project},
        )
        return table.column("i").to_pylist() if table.num_rows else []

    def _edge_counts(
        self,
        project: str,
        where: str,
        params: dict[str, Any],
        start_ns: int,
        end_ns: int,
        interval_s: int,
        by_level: bool,
        minutes: tuple[int, int],
    ) -> dict[tuple[int, str], int]:
        """Counts of the partial minutes at the ends of the range, from the lines."""
        first_min, end_min = minutes
        edges = _edge_filters(start_ns, end_ns, minutes)
        if not edges:
            return {}
        scope, scope_params = self._scope(project, start_ns, end_ns)
        level = "severity_text" if by_level else "''"
        rows = self.ex.rows(
            "SELECT toUnixTimestamp(toStartOfInterval(timestamp, toIntervalSecond({_iv:UInt32}))) AS t, "
            f"{level} AS level, count() AS n FROM `{self.db}`.logs_hot WHERE {scope} "
            f"AND ({' OR '.join(edges)}) AND ({where}) GROUP BY t, level",
            {**params, **scope_params, "_iv": interval_s, "_m0": first_min, "_m1": end_min},
        )
        return {(int(r["t"]), str(r["level"])): int(r["n"]) for r in rows}

    def _minute_range(
        self, project: str, start_ns: int, end_ns: int, interval_s: int, columns: frozenset[str] | None
    ) -> tuple[int, int] | None:
        """The whole minutes (first, end; epoch seconds) a histogram can sum from logs_minutes.

        None when it cannot: the query reads other columns, buckets split minutes, the range
        reaches lines outside the hot tier (logs_minutes counts what was inserted into
        logs_hot, and the retention manager moves days out of it) or past the counts' TTL,
        or it holds no whole minute.
        """
        if not self.minutes or columns is None or not columns <= LOGS_MINUTES_FILTERS or interval_s % 60:
            return None
        if self.hot_horizon is None or start_ns < self.hot_horizon():
            return None
        ttl_floor_ns = time.time_ns() - (LOGS_MINUTES_TTL_DAYS - 1) * 86_400 * 1_000_000_000
        if start_ns < ttl_floor_ns:
            return None
        if self.cold_dir and cold_files(self.cold_dir, project, start_ns, end_ns):
            return None
        first_min = -(-start_ns // 60_000_000_000) * 60
        end_min = end_ns // 60_000_000_000 * 60
        if first_min >= end_min:
            return None
        return first_min, end_min

    def newer_than(
        self,
        project: str,
        where: str,
        params: dict[str, Any],
        observed_after_ns: int,
        limit: int = 1000,
        observed_upto_ns: int = 2**63 - 1,
        after_line: tuple[int, int] | None = None,
    ) -> list[LogHit]:
        """Lines that arrived in (after, upto], oldest first: what live tail streams.

        ``after_line`` (observed ns, timestamp ns of the last line read) continues a read that
        reached ``limit``: the lines after it, in the same order. Lines whose own timestamp is
        more than a day older than their arrival are left out so the scan stays within recent
        partitions.
        """
        after = "observed_timestamp > fromUnixTimestamp64Nano({_after:Int64})"
        line: dict[str, Any] = {}
        if after_line is not None:
            after = ("(observed_timestamp, timestamp) > "
                     "(fromUnixTimestamp64Nano({_line_obs:Int64}), fromUnixTimestamp64Nano({_line_ts:Int64}))")
            line = {"_line_obs": after_line[0], "_line_ts": after_line[1]}
        rows = self.ex.rows(
            f"SELECT {_HIT_COLUMNS} FROM `{self.db}`.logs WHERE project = {{_project:String}} "
            f"AND {after} "
            "AND observed_timestamp <= fromUnixTimestamp64Nano({_upto:Int64}) "
            "AND timestamp > fromUnixTimestamp64Nano({_after:Int64}) - toIntervalDay(1) "
            f"AND ({where}) ORDER BY observed_timestamp, timestamp LIMIT {{_limit:UInt32}}",
            {**params, **line, "_project": project, "_after": observed_after_ns, "_upto": observed_upto_ns,
             "_limit": limit},
        )
        return [_hit(r, project) for r in rows]
