"""Retention tiers for logs: hot -> warm -> cold -> deleted, per project and log type.

The same periodic run also applies the metrics retention (days per project, see
:meth:`stackwatch.storage.metrics.MetricStore.apply_retention`).

* **hot**: ``logs_hot``, fast codecs and every skip index; where new lines land.
* **warm**: ``logs_warm``, the same layout recompressed with ZSTD(12) (about a third smaller
  on log text, measured in docs/storage.md); still a MergeTree, so the same queries are as fast.
* **cold**: one Parquet file (ZSTD) per project, log type and day under ``<data>/cold/logs``.
  chDB cannot add storage volumes without a server configuration, but it reads Parquet with
  row-group pruning, so cold files stay searchable through the same SQL (a ``file()`` source
  unioned into the search) and can live on the cheapest disk (mount that directory anywhere).
* then the files are deleted.

Data moves a whole day at a time, which is what makes each move idempotent: a day's insert
into ``logs_warm`` carries the deduplication token ``warm-<project>-<type>-<day>``, and a day's
Parquet file is written under a temporary name and renamed, so a crash between copying and
deleting repeats the copy without duplicating anything. ClickHouse's own TTLs cannot be used for
the moves because they run on the server's clock; this manager takes ``now`` as an argument,
so tests can walk a row through the tiers.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stackwatch.storage.executor import Executor
from stackwatch.storage.schema import LOGS_HOT

__all__ = ["COLD_SCHEMA", "RetentionManager", "TierPolicy", "cold_files"]

log = logging.getLogger("stackwatch.retention")

DAY_NS = 86_400 * 10**9

#: The column list the cold Parquet files are read with (the logs table's columns).
COLD_SCHEMA = ", ".join(f"{c.name} {c.type}" for c in LOGS_HOT.columns)
_FILE_RE = re.compile(r"^(\d{8})_([a-z]+)_([0-9a-f]+)\.parquet$")


@dataclass(frozen=True)
class TierPolicy:
    """Ages (days) at which a line leaves hot, leaves warm, and is deleted."""

    hot_days: int
    warm_days: int
    cold_days: int


Policies = Mapping[str, Mapping[str, TierPolicy]]  # project -> log type -> policy


def _day(ns: int) -> int:
    return int(dt.datetime.fromtimestamp(ns // 10**9, tz=dt.UTC).strftime("%Y%m%d"))


def _day_start_ns(day: int) -> int:
    d = dt.datetime.strptime(str(day), "%Y%m%d").replace(tzinfo=dt.UTC)
    return int(d.timestamp()) * 10**9


def cold_files(cold_dir: Path, project: str, start_ns: int, end_ns: int) -> list[Path]:
    """The cold files of ``project`` that may hold lines in [start, end)."""
    folder = cold_dir / project
    if not folder.is_dir():
        return []
    first, last = _day(start_ns), _day(max(start_ns, end_ns - 1))
    out = []
    for path in folder.iterdir():
        m = _FILE_RE.match(path.name)
        if m and first <= int(m.group(1)) <= last:
            out.append(path)
    return sorted(out)


def _sql_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RetentionManager:
    def __init__(
        self,
        executor: Executor,
        cold_dir: Path,
        policies: Callable[[], Policies],
        *,
        clock: Callable[[], int] = time.time_ns,
        also: Sequence[Callable[[int], object]] = (),
    ) -> None:
        #: Other signals' retention (metrics), run after the log tiers with the same ``now``.
        self.also = also
        self.ex = executor
        self.db = executor.database
        self.cold_dir = cold_dir
        self.policies = policies
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._horizon: int | None = None

    def hot_horizon_ns(self) -> int:
        """Every line at or after this time is in the hot tier.

        It is the end of the newest day ever moved out of hot, raised *before* a day moves,
        so a search that reads only ``logs_hot`` for ranges starting at or after it never
        misses a line, whatever the policies were when the day moved.
        """
        if self._horizon is None:
            rows = self.ex.rows(
                f"SELECT toUnixTimestamp64Nano(max(timestamp)) AS t, count() AS n FROM `{self.db}`.logs_warm"
            )
            newest = int(rows[0]["t"]) if rows and int(rows[0]["n"]) else 0
            days = [int(m.group(1)) for p in self.cold_dir.glob("*/*.parquet") if (m := _FILE_RE.match(p.name))]
            if days:
                newest = max(newest, _day_start_ns(max(days)))
            self._horizon = _day_start_ns(_day(newest)) + DAY_NS if newest else 0
        return self._horizon

    def _raise_horizon(self, day: int) -> None:
        self._horizon = max(self.hot_horizon_ns(), _day_start_ns(day) + DAY_NS)

    def _days(self, table: str, project: str, log_type: str, before_day: int) -> list[int]:
        rows = self.ex.rows(
            f"SELECT DISTINCT toYYYYMMDD(timestamp) AS d FROM `{self.db}`.`{table}` "
            "WHERE project = {p:String} AND log_type = {t:String} AND toYYYYMMDD(timestamp) < {before:UInt32} "
            "ORDER BY d",
            {"p": project, "t": log_type, "before": before_day},
        )
        return [int(r["d"]) for r in rows]

    def _delete_day(self, table: str, project: str, log_type: str, day: int) -> None:
        self.ex.command(
            f"ALTER TABLE `{self.db}`.`{table}` DELETE WHERE project = {{p:String}} AND log_type = {{t:String}} "
            "AND toYYYYMMDD(timestamp) = {d:UInt32} SETTINGS mutations_sync = 2",
            {"p": project, "t": log_type, "d": day},
        )

    def run_once(self, now_ns: int | None = None) -> dict[str, int]:
        """Move every whole day that has aged out of its tier; returns counts of days moved."""
        now_ns = self.clock() if now_ns is None else now_ns
        moved = {"to_warm": 0, "to_cold": 0, "deleted": 0}
        for project, by_type in self.policies().items():
            for log_type, policy in by_type.items():
                # A day leaves a tier once all of it is older than the tier's age limit.
                warm_before = _day(now_ns - policy.hot_days * DAY_NS)
                cold_before = _day(now_ns - policy.warm_days * DAY_NS)
                gone_before = _day(now_ns - policy.cold_days * DAY_NS)
                for day in self._days("logs_hot", project, log_type, warm_before):
                    self._to_warm(project, log_type, day)
                    moved["to_warm"] += 1
                for day in self._days("logs_warm", project, log_type, cold_before):
                    self._to_cold(project, log_type, day)
                    moved["to_cold"] += 1
                folder = self.cold_dir / project
                if folder.is_dir():
                    for path in folder.iterdir():
                        m = _FILE_RE.match(path.name)
                        if m and m.group(2) == log_type and int(m.group(1)) < gone_before:
                            path.unlink()
                            moved["deleted"] += 1
        if any(moved.values()):
            log.info("retention: %s", moved)
        for job in self.also:
            try:
                job(now_ns)
            except Exception:  # one signal's failure must not stop the others' retention
                log.exception("retention job %r failed; will retry", job)
        return moved

    def _day_digest(self, table: str, project: str, log_type: str, day: int) -> str:
        """Names the rows of one day: equal for a retry of the same move, new for late lines."""
        stats = self.ex.rows(
            "SELECT count() AS n, toString(sum(cityHash64(observed_timestamp, timestamp, message))) AS h "
            f"FROM `{self.db}`.`{table}` WHERE project = {{p:String}} AND log_type = {{t:String}} "
            "AND toYYYYMMDD(timestamp) = {d:UInt32}",
            {"p": project, "t": log_type, "d": day},
        )[0]
        return f"{int(stats['n']):x}{int(stats['h']):016x}"

    def _to_warm(self, project: str, log_type: str, day: int) -> None:
        self._raise_horizon(day)
        cols = ", ".join(f"`{c.name}`" for c in LOGS_HOT.columns)
        digest = self._day_digest("logs_hot", project, log_type, day)
        token = f"warm-{re.sub(r'[^A-Za-z0-9]', '_', project)}-{log_type}-{day}-{digest}"
        self.ex.command(
            f"INSERT INTO `{self.db}`.logs_warm ({cols}) SETTINGS insert_deduplication_token='{token}' "
            f"SELECT {cols} FROM `{self.db}`.logs_hot WHERE project = {{p:String}} AND log_type = {{t:String}} "
            "AND toYYYYMMDD(timestamp) = {d:UInt32} ORDER BY timestamp",
            {"p": project, "t": log_type, "d": day},
        )
        self._delete_day("logs_hot", project, log_type, day)

    def _to_cold(self, project: str, log_type: str, day: int) -> None:
        folder = self.cold_dir / project
        folder.mkdir(parents=True, exist_ok=True)
        # The file is named after what it holds, so a retry after a crash finds its own file
        # and writes nothing twice, while late lines of a day already in cold get a file of
        # their own instead of replacing the first one.
        digest = self._day_digest("logs_warm", project, log_type, day)
        final = folder / f"{day}_{log_type}_{digest}.parquet"
        if final.exists():
            self._delete_day("logs_warm", project, log_type, day)
            return
        tmp = folder / f".{day}_{log_type}_{digest}.parquet.tmp"
        cols = ", ".join(f"`{c.name}`" for c in LOGS_HOT.columns)
        self.ex.command(
            f"INSERT INTO FUNCTION file({_sql_str(str(tmp))}, Parquet) "
            f"SELECT {cols} FROM `{self.db}`.logs_warm WHERE project = {{p:String}} AND log_type = {{t:String}} "
            "AND toYYYYMMDD(timestamp) = {d:UInt32} ORDER BY timestamp "
            "SETTINGS engine_file_truncate_on_insert = 1, output_format_parquet_compression_method = 'zstd'",
            {"p": project, "t": log_type, "d": day},
        )
        os.replace(tmp, final)
        self._delete_day("logs_warm", project, log_type, day)

    def start(self, interval_s: float) -> None:
        def loop() -> None:
            # First run a minute after start (not a whole interval: a server restarted more
            # often than the interval would otherwise never move anything).
            delay = min(interval_s, 60.0)
            while not self._stop.wait(delay):
                delay = interval_s
                try:
                    self.run_once()
                except Exception:
                    log.exception("retention run failed; will retry")

        self._thread = threading.Thread(target=loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
