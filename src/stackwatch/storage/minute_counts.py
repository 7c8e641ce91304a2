"""Per-minute line counts of the hot tier, held in memory: histograms without a storage query.

``logs_minutes`` (a materialized view) already keeps the lines per minute by project, service,
level and log type, so a 24 h histogram of ``level:ERROR`` sums a few thousand rows instead of
scanning the lines. On the embedded engine even that costs 6-12 ms, almost all of it the
engine's fixed cost per query, while a raw ClickHouse server scans the 40k matching lines in
5-8 ms. The server that owns the embedded store sees every block it inserts, so it keeps the
same counts in memory too: a dense array of minutes per (key, day), where a key is one
(project, service, severity number, severity text, log type). A histogram then sums the rows
of the keys its query matches, in numpy: well under a millisecond for a day.

``logs_minutes`` stays the durable copy: the memory is filled from it on first use and kept
up to date by :meth:`MinuteCounts.add` after each insert. Only days from ``keep_days`` ago
onwards are held (a week of dashboards); older ranges, and any query the counts cannot
answer, go to the table as before. Past ``max_bytes`` of arrays (a very high number of
services) the counts switch themselves off rather than grow.

Which keys a query matches is decided by the query's own compiled SQL, run once by the
engine over the (few) distinct keys and cached: the in-memory path cannot disagree with the
table about what ``service:api* AND NOT level:DEBUG`` means.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["KEY_COLUMNS", "MinuteCounts"]

log = logging.getLogger(__name__)

#: The columns a histogram can filter on and still be answered from the counts.
KEY_COLUMNS: tuple[str, ...] = ("project", "service", "severity_number", "severity_text", "log_type")
_MINUTES_PER_DAY = 1440
_ROW_CHUNK = 64  # key rows are allocated in chunks so a new key rarely copies the arrays
_MATCH_CACHE = 256  # compiled queries whose matching keys are remembered
#: How many block tokens are remembered: the engine's own deduplication window
#: (``non_replicated_deduplication_window`` of logs_hot), so a block it would drop as a
#: repeat is not counted twice here either.
_TOKEN_WINDOW = 10_000

#: ``evaluate(keys)`` returns the indices (column ``i``) of the keys the query matches.
Evaluate = Callable[[pa.Table], Sequence[int]]


class MinuteCounts:
    """Lines per minute by key and day, for the days from ``keep_days`` ago onwards."""

    def __init__(self, *, keep_days: int = 8, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.keep_days = keep_days
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        #: True once filled from the table; False again if switched off.
        self.ready = False
        self.disabled = False
        self._floor_day = 0  # the first day held; ranges starting earlier go to the table
        self._index: dict[tuple[Any, ...], int] = {}
        self._keys: list[tuple[Any, ...]] = []
        self._rows = 0  # allocated key rows per day array
        self._days: dict[int, np.ndarray] = {}
        self._matches: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._tokens: OrderedDict[str, None] = OrderedDict()

    # ------------------------------------------------------------------ filling

    def load(self, counts: pa.Table, today: int) -> None:
        """Fill from ``logs_minutes`` rows: :data:`KEY_COLUMNS`, ``minute`` (epoch s), ``lines``.

        The caller holds :attr:`lock` and blocks inserts while it reads the table and calls
        this, so no block is counted both by the table and by :meth:`add`.
        """
        self._reset()
        self._floor_day = today - self.keep_days + 1
        self.ready = True
        if counts.num_rows:
            minutes = counts.column("minute").cast(pa.int64()).to_numpy() // 60
            self._add_grouped(counts, minutes, counts.column("lines").to_numpy().astype(np.uint32))
        if self.ready:
            log.info("minute counts: %d keys over %d days in memory", len(self._keys), len(self._days))

    def add(self, block: pa.Table, token: str | None = None) -> None:
        """Count the lines of a block just inserted into logs_hot (caller holds :attr:`lock`).

        Tokens are remembered from the start, counted or not: a block repeated after the
        counts were filled, but first inserted before, is in the table's counts already.
        """
        if token is not None:
            if token in self._tokens:
                return  # the engine dropped this block as a repeat
            self._tokens[token] = None
            if len(self._tokens) > _TOKEN_WINDOW:
                self._tokens.popitem(last=False)
        if not self.ready or not block.num_rows:
            return
        ts = block.column("timestamp").cast(pa.int64()).to_numpy()
        self._add_grouped(block, ts // 60_000_000_000, None)

    def _add_grouped(self, table: pa.Table, minutes: np.ndarray, weights: np.ndarray | None) -> None:
        if not len(minutes):
            return
        keep = minutes >= self._floor_day * _MINUTES_PER_DAY
        if not keep.all():
            table, minutes = table.filter(pa.array(keep)), minutes[keep]
            weights = weights[keep] if weights is not None else None
            if not len(minutes):
                return
        rows = self._key_rows(table)
        if not self.ready:
            return
        days = minutes // _MINUTES_PER_DAY
        offsets = minutes - days * _MINUTES_PER_DAY
        for day in np.unique(days).tolist():
            array = self._day(day)
            if array is None:
                return
            sel = days == day
            np.add.at(array, (rows[sel], offsets[sel]), 1 if weights is None else weights[sel])

    def _key_rows(self, table: pa.Table) -> np.ndarray:
        """The key row of each line, creating rows for keys not seen before."""
        code = np.zeros(table.num_rows, dtype=np.int64)
        dictionaries = []
        stride = 1
        for name in KEY_COLUMNS:
            column = table.column(name)
            if pa.types.is_dictionary(column.type):  # chunks may each have their own dictionary
                column = column.cast(column.type.value_type)
            encoded = pc.dictionary_encode(column.combine_chunks())
            dictionary = encoded.dictionary.to_pylist()
            code += encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64) * stride
            dictionaries.append((dictionary, stride))
            stride *= max(len(dictionary), 1)
        distinct, inverse = np.unique(code, return_inverse=True)
        lookup = np.empty(len(distinct), dtype=np.int64)
        for n, value in enumerate(distinct.tolist()):
            key = tuple(d[(value // s) % max(len(d), 1)] for d, s in dictionaries)
            row = self._index.get(key)
            if row is None:
                row = self._new_key(key)
            lookup[n] = row
        return lookup[inverse.reshape(-1)]

    def _new_key(self, key: tuple[Any, ...]) -> int:
        row = len(self._keys)
        self._index[key] = row
        self._keys.append(key)
        if row >= self._rows:
            self._rows += _ROW_CHUNK
            for day, array in self._days.items():
                grown = np.zeros((self._rows, _MINUTES_PER_DAY), dtype=np.uint32)
                grown[: array.shape[0]] = array
                self._days[day] = grown
            self._check_size()
        return row

    def _day(self, day: int) -> np.ndarray | None:
        array = self._days.get(day)
        if array is None:
            array = self._days[day] = np.zeros((self._rows, _MINUTES_PER_DAY), dtype=np.uint32)
            self._check_size()
        return array if self.ready else None

    def _check_size(self) -> None:
        size = self._rows * _MINUTES_PER_DAY * 4 * len(self._days)
        if size > self.max_bytes:
            log.warning(
                "minute counts: %d keys over %d days would take %d MB of memory (limit %d MB); "
                "histograms read logs_minutes instead",
                len(self._keys), len(self._days), size >> 20, self.max_bytes >> 20,
            )
            self._reset()
            self.disabled = True

    def _reset(self) -> None:
        self.ready = False
        self._index, self._keys, self._rows, self._days = {}, [], 0, {}
        self._matches.clear()

    def advance(self, today: int) -> None:
        """Drop the days that fell out of the window (caller holds :attr:`lock`)."""
        floor = today - self.keep_days + 1
        if floor > self._floor_day:
            self._floor_day = floor
            for day in [d for d in self._days if d < floor]:
                del self._days[day]

    # ------------------------------------------------------------------ reading

    def covers(self, first_min: int, end_min: int) -> bool:
        """Whether the whole minutes [first_min, end_min) (epoch minutes) are all held."""
        return self.ready and first_min >= self._floor_day * _MINUTES_PER_DAY and end_min > first_min

    def cached_matching(self, project: str, query_key: tuple[Any, ...]) -> np.ndarray | None:
        """The key rows :meth:`matching` found last time for this query, or None (caller holds :attr:`lock`)."""
        cache_key = (project, len(self._keys), *query_key)
        rows = self._matches.get(cache_key)
        if rows is not None:
            self._matches.move_to_end(cache_key)
        return rows

    def matching(self, project: str, query_key: tuple[Any, ...], evaluate: Evaluate) -> np.ndarray:
        """The key rows of ``project`` that the query matches (caller holds :attr:`lock`).

        ``query_key`` identifies the compiled query (its SQL and parameter values); the answer
        is kept until a new key appears.
        """
        rows = self.cached_matching(project, query_key)
        if rows is not None:
            return rows
        cache_key = (project, len(self._keys), *query_key)
        columns: dict[str, Any] = {"i": pa.array(range(len(self._keys)), pa.uint32())}
        for n, name in enumerate(KEY_COLUMNS):
            values = [k[n] for k in self._keys]
            columns[name] = pa.array(values, pa.uint8()) if name == "severity_number" else pa.array(values, pa.string())
        rows = np.asarray(sorted(int(i) for i in evaluate(pa.table(columns))), dtype=np.int64)
        self._matches[cache_key] = rows
        if len(self._matches) > _MATCH_CACHE:
            self._matches.popitem(last=False)
        return rows

    def sum_minutes(self, rows: np.ndarray, first_min: int, end_min: int) -> np.ndarray:
        """Lines per minute over [first_min, end_min) summed over key ``rows`` (int64)."""
        out = np.zeros(end_min - first_min, dtype=np.int64)
        if not len(rows):
            return out
        first_day, last_day = first_min // _MINUTES_PER_DAY, (end_min - 1) // _MINUTES_PER_DAY
        for day in range(first_day, last_day + 1):
            array = self._days.get(day)
            if array is None:
                continue
            lo = max(first_min, day * _MINUTES_PER_DAY)
            hi = min(end_min, (day + 1) * _MINUTES_PER_DAY)
            part = array[rows, lo - day * _MINUTES_PER_DAY : hi - day * _MINUTES_PER_DAY]
            out[lo - first_min : hi - first_min] += part.sum(axis=0, dtype=np.int64)
        return out

    def level_of(self, row: int) -> str:
        return str(self._keys[row][KEY_COLUMNS.index("severity_text")])
