"""Metric series and samples: the metrics side of the telemetry store.

Three tables, declared here as data (see :mod:`stackwatch.storage.schema`):

* ``metric_series``: one row per series (project, metric name, labels, fingerprint, first and
  last sample time). Every ingest block upserts the series it touched; merges collapse them.
  PromQL selectors (``{job="api", route=~"/api/.*"}``) are answered here, never by scanning
  samples.
* ``metric_samples``: (project, fingerprint, timestamp, value), sorted by exactly that, so one
  series' samples are contiguous and in time order on disk, which is what makes the time-series
  codecs work: timestamps become tiny, nearly constant gaps; consecutive values of one series
  differ in few bits. See :data:`METRIC_SAMPLES` for the measured bytes per sample.
* ``metric_metadata``: TYPE/HELP/UNIT per metric name, for ``/api/v1/metadata``.

Every decoder (remote write, text exposition, OTLP) produces a :class:`MetricBatch`; the
batch travels through the WAL as compact events (:meth:`MetricBatch.events`) and the batcher's
sink (:meth:`MetricStore.store_entries`) turns a block of them into Arrow blocks, inserted with
the block's deduplication token so a WAL replay stores nothing twice.

Duplicate samples (same series and timestamp) are not rejected: the last write wins, within a
block (:func:`_last_write_wins`) and across blocks (``ReplacingMergeTree`` read with ``FINAL``).
Out-of-order samples are accepted too, which is what backfill needs (Prometheus itself accepts
them only within ``out_of_order_time_window``; VictoriaMetrics accepts them all).

Rollups: ``metric_rollup_5m`` and ``metric_rollup_1h`` keep the last sample of every series
per 5 min / 1 h bucket, filled by materialized views as samples are inserted; a range query
whose step (and every range in it) is long enough reads them instead of the samples (see
:meth:`MetricStore.fetch_samples` and the engine's choice in ``query.promql.engine``).
Retention is per project, whole days (:meth:`MetricStore.apply_retention`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa

from stackwatch.errors import BadRequest
from stackwatch.ingest.batcher import Entry
from stackwatch.storage.executor import Executor
from stackwatch.storage.schema import REPLAY_SAFE, Column, Table, render_ddl

__all__ = [
    "METRIC_METADATA",
    "METRIC_SAMPLES",
    "METRIC_SERIES",
    "METRIC_TABLES",
    "METRIC_TYPES",
    "ROLLUPS",
    "ROLLUP_TABLES",
    "LabelMatch",
    "MetricBatch",
    "MetricStore",
    "SeriesLimitExceeded",
    "fingerprint",
    "query_arrow",
]


METRIC_SERIES = Table(
    name="metric_series",
    columns=(
        Column("project", "LowCardinality(String)"),
        Column("metric", "LowCardinality(String)"),
        Column("fingerprint", "UInt64"),
        # Labels without __name__ (that is ``metric``). A missing key reads as "", which is
        # exactly PromQL's rule for matching an absent label.
        Column("labels", "SimpleAggregateFunction(any, Map(String, String))", "ZSTD(1)"),
        Column("first_seen", "SimpleAggregateFunction(min, Int64)"),
        Column("last_seen", "SimpleAggregateFunction(max, Int64)"),
    ),
    # AggregatingMergeTree rather than ReplacingMergeTree: merging the upserts of many blocks
    # must keep the earliest first_seen *and* the latest last_seen, which a replacing merge
    # (one whole row wins) cannot do. Readers still GROUP BY fingerprint, as parts merge late.
    engine="AggregatingMergeTree",
    # Selectors almost always name the metric: (project, metric) is a prefix of the key.
    order_by="(project, metric, fingerprint)",
    settings=REPLAY_SAFE,
    comment="One row per metric series (collapsed by merges); answers PromQL selectors and the series/label APIs.",
)

METRIC_SAMPLES = Table(
    name="metric_samples",
    columns=(
        Column("project", "LowCardinality(String)"),
        Column("fingerprint", "UInt64", "ZSTD(1)"),
        # Scrapes land every N seconds give or take a few milliseconds of jitter. Delta turns a
        # series' timestamps into a run of nearly equal gaps (15000, 15002, 14998...) that ZSTD
        # entropy-codes in about half a byte; DoubleDelta alone took 1.06 bytes and
        # DoubleDelta+ZSTD 0.88 on the same jittered data (1,000 series x 24 h at 15 s), so
        # Delta is used although DoubleDelta is the textbook choice (it wins only on perfectly
        # regular timestamps, where both are ~0.01 bytes).
        Column("timestamp", "Int64", "Delta(8), ZSTD(1)"),
        # Gorilla XORs each value with the previous one of the same series (the sort key makes
        # them adjacent): counters and slowly moving gauges leave few significant bits. ZSTD on
        # top packs what is left; FPC and ZSTD alone were each a few percent larger.
        Column("value", "Float64", "Gorilla, ZSTD(1)"),
    ),
    # Measured (bench/metrics_bench.py, 1,000 series x 24 h at 15 s, a web app's mix with 10%
    # float-noise gauges and +-3 ms jitter): 2.68 bytes/sample; Prometheus's TSDB took 4.02 on
    # the same data (promtool backfill).
    # ReplacingMergeTree: a sample written twice (same series and timestamp) is one sample, the
    # last written; queries read with FINAL so the answer does not depend on merge timing.
    engine="ReplacingMergeTree",
    # Sort key serves "samples of these series between t1 and t2": fingerprints are found in
    # metric_series first, then each one is a contiguous, time-ordered run here.
    order_by="(project, fingerprint, timestamp)",
    # Days: retention and rollups work on whole parts, and a time range skips other days.
    partition_by="intDiv(timestamp, 86400000)",
    settings=REPLAY_SAFE,
    comment="Metric samples (ms timestamps, float values), sorted by series then time.",
)

METRIC_METADATA = Table(
    name="metric_metadata",
    columns=(
        Column("project", "LowCardinality(String)"),
        Column("metric", "String"),
        Column("type", "LowCardinality(String)"),
        Column("help", "String", "ZSTD(1)"),
        Column("unit", "LowCardinality(String)"),
    ),
    engine="ReplacingMergeTree",
    order_by="(project, metric, type)",
    settings=REPLAY_SAFE,
    comment="TYPE/HELP/UNIT per metric family, the last written kept; serves /api/v1/metadata.",
)

METRIC_TABLES: tuple[Table, ...] = (METRIC_SERIES, METRIC_SAMPLES, METRIC_METADATA)

#: Rollup resolutions (ms) and their tables: the last sample of every series in each 5 min and
#: 1 h bucket, for range queries whose times fall on bucket ends (see ``choose_resolution`` in
#: ``query.promql.engine``).
ROLLUPS: dict[int, str] = {300_000: "metric_rollup_5m", 3_600_000: "metric_rollup_1h"}


def _rollup_table(resolution_ms: int, name: str) -> Table:
    return Table(
        name=name,
        columns=(
            Column("project", "LowCardinality(String)"),
            Column("fingerprint", "UInt64", "ZSTD(1)"),
            # Start of the bucket (resolution_ms wide, left-open as PromQL windows are): a
            # sample at exactly a bucket's end belongs to it, so a query at that end finds it.
            Column("bucket", "Int64", "Delta(8), ZSTD(1)"),
            Column("timestamp", "Int64", "Delta(8), ZSTD(1)"),
            Column("value", "Float64", "Gorilla, ZSTD(1)"),
        ),
        # The row with the latest timestamp of a bucket survives merges: the bucket's last
        # sample, which is what a selector at the bucket's end would see in the raw data. The
        # same sample rewritten (equal versions) keeps the last insert, as the samples do.
        engine="ReplacingMergeTree",
        engine_args="timestamp",
        order_by="(project, fingerprint, bucket)",
        partition_by="intDiv(bucket, 86400000)",
        settings=REPLAY_SAFE,
        comment=f"Last sample of each series per {resolution_ms // 60_000} min, filled from metric_samples by a view.",
    )


ROLLUP_TABLES: dict[int, Table] = {res: _rollup_table(res, name) for res, name in ROLLUPS.items()}


def _rollup_select(resolution_ms: int, source: str) -> str:
    return (
        "SELECT project, fingerprint, bucket, max(t) AS timestamp, argMax(v, t) AS value FROM ("
        f"SELECT project, fingerprint, intDiv(timestamp - 1, {resolution_ms}) * {resolution_ms} AS bucket, "
        f"timestamp AS t, value AS v FROM {source}) GROUP BY project, fingerprint, bucket"
    )

#: Metric types as Prometheus's metadata API names them.
METRIC_TYPES = ("counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown")

_HOUR_MS = 3_600_000

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class SeriesLimitExceeded(BadRequest):
    """New series were refused because the project is at its series limit.

    A 4xx, not a 429: retrying cannot succeed until an operator raises the limit or old
    series expire, and remote-write senders retry 5xx/429 forever but drop a 4xx batch.
    """


def fingerprint(name: str, labels: Iterable[tuple[str, str]]) -> int:
    """A stable 64-bit hash of a series' identity: its name and its sorted labels.

    ``\\xff`` never occurs in UTF-8, so it separates fields unambiguously. BLAKE2b rather
    than Python's ``hash``: the value is stored and must not change between processes.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(name.encode())
    for k, v in labels:
        h.update(b"\xff" + k.encode() + b"\xff" + v.encode())
    return int.from_bytes(h.digest(), "little")


class SeriesRef(NamedTuple):
    """A validated series identity, computed once and reused by decoders' caches."""

    name: str
    labels: tuple[tuple[str, str], ...]  # sorted, without __name__, no empty values
    flat: list[str]  # labels as [k1, v1, k2, v2, ...], the WAL's form
    fingerprint: int
    #: ``name`` and ``flat`` as JSON, written once: every remote-write request carries every
    #: series, and serialising their labels again took 0.33 ms of a 1,900-series request.
    name_json: str
    flat_json: str


def series_ref(pairs: Iterable[tuple[str, str]]) -> SeriesRef:
    """Validate and canonicalise a label set (with ``__name__``); raises ``ValueError``."""
    name, labels = canonical_labels(pairs)
    flat = [x for pair in labels for x in pair]
    return SeriesRef(name, labels, flat, fingerprint(name, labels),
                     orjson.dumps(name).decode(), orjson.dumps(flat).decode())


class LabelsJSON(str):
    """The labels of a metrics event: JSON text, parsed only when a series row is written.

    In the WAL record it is embedded as JSON (not as a string holding JSON, which orjson would
    have to escape on every write): :func:`wal_default` turns it into an ``orjson.Fragment``.
    A replayed event therefore holds the parsed lists, an event still in memory this text.
    """

    __slots__ = ()


def _labels_json(refs: Sequence[SeriesRef]) -> LabelsJSON:
    return LabelsJSON("[[" + ",".join([r.name_json for r in refs]) + "],["
                      + ",".join([r.flat_json for r in refs]) + "]]")


@dataclass
class MetricBatch:
    """The samples of one ingest request: what every metrics decoder produces.

    Series are :class:`SeriesRef` s (validated, canonical: sorted, without ``__name__``, empty
    values dropped, as Prometheus treats an empty label as absent), so equal series have equal
    keys whatever the sender's label order. Samples are three flat columns (series index,
    timestamp, value) that decoders append to; grouping by series happens once, in numpy, in
    :meth:`events`. ``errors`` collects per-series rejections: the handler stores the rest and
    reports them, as Prometheus's remote-write receiver does.
    """

    refs: list[SeriesRef] = field(default_factory=list)
    series: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    metadata: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    rejected_samples: int = 0
    _index: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def sample_count(self) -> int:
        return len(self.timestamps)

    def index(self, ref: SeriesRef) -> int:
        """Index of the series in this batch (created on first use)."""
        i = self._index.get(ref.fingerprint)
        if i is None:
            i = len(self.refs)
            self._index[ref.fingerprint] = i
            self.refs.append(ref)
        return i

    def add(self, pairs: Iterable[tuple[str, str]], timestamp_ms: int, value: float) -> bool:
        """Add one sample of the series ``pairs`` (with ``__name__``); False if it was rejected."""
        try:
            ref = series_ref(pairs)
        except ValueError as exc:
            self.reject(str(exc))
            return False
        self.series.append(self.index(ref))
        self.timestamps.append(timestamp_ms)
        self.values.append(value)
        return True

    def set_columns(self, series: np.ndarray, timestamps: np.ndarray, values: np.ndarray) -> None:
        """Replace the sample columns with arrays (a vectorised decoder's output), kept as numpy."""
        self.series, self.timestamps, self.values = series, timestamps, values  # type: ignore[assignment]

    def reject(self, reason: str, samples: int = 1) -> None:
        self.rejected_samples += samples
        if len(self.errors) < 20:  # enough to say what is wrong without echoing a whole payload
            self.errors.append(reason)

    def add_metadata(self, name: str, type_: str, help_: str = "", unit: str = "") -> None:
        self.metadata[name] = (type_ if type_ in METRIC_TYPES else "unknown", help_, unit)

    def drop(self, indexes: Iterable[int]) -> int:
        """Remove the given series and their samples; returns how many samples went."""
        gone = set(indexes)
        if not gone:
            return 0
        keep_series = [i for i in range(len(self.refs)) if i not in gone]
        new_index = np.full(len(self.refs), -1, dtype=np.int64)
        new_index[keep_series] = np.arange(len(keep_series), dtype=np.int64)
        series = np.asarray(self.series, dtype=np.int64)
        keep = new_index[series] >= 0 if series.size else np.ones(0, dtype=bool)
        dropped = int(keep.size - keep.sum())
        self.series = new_index[series[keep]]  # type: ignore[assignment]
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64)[keep]  # type: ignore[assignment]
        self.values = np.asarray(self.values, dtype=np.float64)[keep]  # type: ignore[assignment]
        self.refs = [self.refs[i] for i in keep_series]
        self._index = {r.fingerprint: j for j, r in enumerate(self.refs)}
        return dropped

    def grouped(self) -> tuple[list[SeriesRef], np.ndarray, np.ndarray, np.ndarray]:
        """(series, sample counts per series, timestamps, values), samples grouped by series.

        Within a series, samples keep their order in the request (a later duplicate wins).
        """
        n = len(self.timestamps)
        series = np.asarray(self.series, dtype=np.int64)
        ts = np.asarray(self.timestamps, dtype=np.int64)
        vals = np.asarray(self.values, dtype=np.float64)
        if n and (series[1:] < series[:-1]).any():
            order = np.argsort(series, kind="stable")
            series, ts, vals = series[order], ts[order], vals[order]
        counts = np.bincount(series, minlength=len(self.refs)) if n else np.zeros(len(self.refs), np.int64)
        return self.refs, counts, ts, vals

    def events(self) -> list[Any]:
        """The batch as WAL events (compact, exact; see :func:`wal_default` for the arrays).

        All samples in one columnar event,
        ``["F", fingerprints, counts, ts, values, labels]``: the first four are numpy arrays,
        written to the WAL as base64 of their little-endian bytes (uint64 fingerprints and int64 sample counts, one per series;
        int64 timestamps and float64 values, the samples grouped by series), ``labels`` the JSON
        text of ``[[name...], [[k1, v1, ...]...]]``, one entry per series. Binary because it is
        exact (the staleness marker is a NaN payload, and JSON has no NaN at all) and because a
        JSON number per sample cost more to write and read back than anything else the batcher
        did. The labels are a string inside the event so that reading the event back does not
        build them: remote write sends every series in every request, and the store needs a
        series' labels only when it writes the series row (about once an hour per series);
        parsing them for every request took 40% of the storing thread in a py-spy profile.
        Metadata: ``["m", name, type, help, unit]``. (Older logs hold
        ``["S", [fingerprint...], [name...], [[k1, v1, ...]...], [count...], ts, values]`` or
        one ``["s", fingerprint, name, flat, [t...], [bits...]]`` per series; all are read.)
        """
        out: list[Any] = []
        if len(self.timestamps):
            refs, counts, ts, vals = self.grouped()
            present = np.flatnonzero(counts)
            if present.size != len(refs):
                refs = [refs[i] for i in present.tolist()]
                counts = counts[present]
            out.append([
                "F",
                np.array([r.fingerprint for r in refs], dtype="<u8"),
                np.asarray(counts, dtype="<i8"),
                ts.astype("<i8", copy=False),
                vals.astype("<f8", copy=False),
                _labels_json(refs),
            ])
        for name, (type_, help_, unit) in self.metadata.items():
            out.append(["m", name, type_, help_, unit])
        return out


def wal_entry(project: str, events: list[Any]) -> Entry:
    """The WAL entry of a batch's :meth:`MetricBatch.events`, its arrays kept for the store.

    The record holds the arrays as base64 and the labels as embedded JSON (:func:`wal_default`);
    the entry also keeps the events themselves (``live``), counted against the ingest buffer, so
    the store does not decode its own record again.
    """
    live = sum(a.nbytes for ev in events for a in ev if isinstance(a, np.ndarray))
    return Entry.create("metrics", project, events, time.time_ns(), None, default=wal_default,
                        option=orjson.OPT_PASSTHROUGH_SUBCLASS, live_bytes=live)


def wal_default(obj: Any) -> Any:
    """``orjson``'s ``default`` for WAL events: a numpy array as base64 of its bytes, labels'
    JSON text embedded as it is.

    The arrays of :meth:`MetricBatch.events` are little-endian by construction; the reader
    (:func:`_event_array`) knows each one's dtype from its place in the event.
    """
    if isinstance(obj, np.ndarray):
        return base64.b64encode(obj.tobytes()).decode("ascii")
    if isinstance(obj, LabelsJSON):
        return orjson.Fragment(str(obj))  # exact str only, as orjson.loads
    raise TypeError(f"{type(obj).__name__} is not serializable in a WAL event")


def _event_array(field: str | np.ndarray, dtype: str) -> np.ndarray:
    """An event's array: decoded from the WAL's base64, or the array itself when the batcher
    kept the events it was given (no round trip through text for a live entry)."""
    if isinstance(field, np.ndarray):
        return field
    return np.frombuffer(base64.b64decode(field), dtype=dtype)


def canonical_labels(pairs: Iterable[tuple[str, str]]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(metric name, sorted labels without ``__name__`` and without empty values).

    Raises ``ValueError`` naming the problem: no metric name, an invalid metric or label name,
    a label given twice.
    """
    name = ""
    seen: set[str] = set()
    labels: list[tuple[str, str]] = []
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate label name {k!r}")
        seen.add(k)
        if k == "__name__":
            name = v
            continue
        if not _LABEL_RE.match(k):
            raise ValueError(f"invalid label name {k!r}")
        if v != "":
            labels.append((k, v))
    if not name:
        raise ValueError("series without a metric name (__name__)")
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    labels.sort()
    return name, tuple(labels)


@dataclass(frozen=True)
class LabelMatch:
    """One label matcher, as the storage layer needs it (PromQL's ``Matcher`` fits)."""

    name: str
    op: str
    value: str


def matchers_sql(matchers: Sequence[Any], params: dict[str, Any], prefix: str = "m") -> str:
    """SQL conditions on ``metric_series`` for PromQL matchers, values passed as parameters.

    ``__name__`` matches the ``metric`` column (in the sort key), any other label the map, where
    an absent label reads as "" just as PromQL defines. Regexes are anchored as in Prometheus,
    and ``(?s:...)`` lets ``.`` match a newline as Prometheus's matchers do; ClickHouse's
    ``match`` is RE2, the same syntax as Go's ``regexp``.
    """
    conds: list[str] = []
    for i, m in enumerate(matchers):
        if m.op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"unknown match operator {m.op!r}")
        col = "metric" if m.name == "__name__" else f"labels[{{{prefix}k{i}:String}}]"
        if m.name != "__name__":
            params[f"{prefix}k{i}"] = m.name
        key = f"{prefix}v{i}"
        if m.op in ("=", "!="):
            params[key] = m.value
            conds.append(f"{col} {m.op} {{{key}:String}}")
        else:
            params[key] = f"^(?s:{m.value})$"
            neg = "NOT " if m.op == "!~" else ""
            conds.append(f"{neg}match({col}, {{{key}:String}})")
    return " AND ".join(conds) if conds else "1"


def query_arrow(ex: Executor, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run a query and get the result as one Arrow table: millions of samples as columns."""
    return ex.query_arrow(sql, params)


def _sample_columns(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fingerprint, timestamp, value) arrays of a samples or rollup read (views, not copies)."""
    if not table.num_rows:
        return np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.float64)
    return (
        table.column("fingerprint").to_numpy().astype(np.uint64, copy=False),
        table.column("timestamp").to_numpy().astype(np.int64, copy=False),
        table.column("value").to_numpy().astype(np.float64, copy=False),
    )


def _last_write_wins(fp: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort by (fingerprint, timestamp) and keep the last written of equal keys.

    The table would also collapse them on merge, but which of two rows in one inserted block
    survives is not specified; deciding here keeps "last write wins" true within a block.
    """
    order = np.lexsort((ts, fp))  # stable: equal keys keep their write order
    fp, ts, vals = fp[order], ts[order], vals[order]
    if fp.size > 1:
        keep = np.ones(fp.size, dtype=bool)
        keep[:-1] = (fp[1:] != fp[:-1]) | (ts[1:] != ts[:-1])
        if not keep.all():
            fp, ts, vals = fp[keep], ts[keep], vals[keep]
    return fp, ts, vals


def _may_repeat(
    fps: np.ndarray, pcode: np.ndarray, counts: np.ndarray, offsets: np.ndarray, ts: np.ndarray
) -> bool:
    """Whether a block may hold one (project, series, timestamp) twice; False only when it cannot.

    The block is runs of samples, one run per series per event (``fps``, ``pcode``, ``counts``
    per run; ``offsets`` where each starts in ``ts``). When every run's timestamps strictly rise
    and the runs of one series do not overlap in time, no key repeats. Both checks are linear
    in the samples (the runs are sorted, not the samples), against a sort of every sample.
    """
    if ts.size < 2:
        return False
    if not counts.all():
        live = counts > 0
        fps, pcode, counts, offsets = fps[live], pcode[live], counts[live], offsets[live]
    rising = ts[1:] > ts[:-1]
    rising[offsets[1:] - 1] = True  # a run's first sample need not follow the previous run's last
    if not rising.all():
        return True
    first = ts[offsets]
    last = ts[offsets + counts - 1]
    order = np.lexsort((first, fps, pcode))
    same = (fps[order][1:] == fps[order][:-1]) & (pcode[order][1:] == pcode[order][:-1])
    return bool((same & (first[order][1:] <= last[order][:-1])).any())


class MetricStore:
    """Reads and writes the metric tables through an executor (embedded or server)."""

    def __init__(
        self, executor: Executor, *, max_series_per_project: int = 1_000_000, query_pushdown: bool = False
    ) -> None:
        self.ex = executor
        self.db = executor.database
        self.max_series = max_series_per_project
        self._known: dict[str, set[int]] = {}
        self._known_lock = threading.Lock()
        #: (project, fingerprint) -> (first_seen, last_seen) as stored, see _series_to_write.
        self._bounds: dict[tuple[str, int], tuple[int, int]] = {}
        #: Let PromQL evaluate dashboard shapes in SQL (query.promql.pushdown): the
        #: ``query_pushdown`` setting. Off by default: on 1,900 series x 24 h it measured 1.2-3x
        #: slower than the numpy engine reading Arrow columns (docs/benchmarks.md), with the same
        #: answers.
        self.query_pushdown = query_pushdown
        #: Rollup resolutions available to queries (set by ensure_schema; none on a cluster).
        self.rollups: tuple[int, ...] = ()

    def ensure_schema(self) -> None:
        """Create the tables, and the rollups with the views that keep them (embedded store).

        A store made before the rollups existed gets them filled from its samples once, before
        the view is created (so a start that dies half-way repeats the fill from an emptied
        table); the batcher inserts nothing until this returns. On a cluster there are no
        rollups (queries read the samples).
        """
        for table in METRIC_TABLES:
            for stmt in render_ddl(table, self.db, self.ex.cluster, self.ex.table_settings):
                self.ex.command(stmt)
        if self.ex.cluster:
            return
        for res, table in ROLLUP_TABLES.items():
            view = f"{table.name}_mv"
            has_view = self.ex.rows(
                "SELECT count() AS n FROM system.tables WHERE database = {db:String} AND name = {v:String}",
                {"db": self.db, "v": view},
            )[0]["n"]
            for stmt in render_ddl(table, self.db, extra_settings=self.ex.table_settings):
                self.ex.command(stmt)
            if not int(has_view):
                select = _rollup_select(res, f"`{self.db}`.metric_samples")
                self.ex.command(f"TRUNCATE TABLE `{self.db}`.`{table.name}`")
                self.ex.command(f"INSERT INTO `{self.db}`.`{table.name}` {select}")
                self.ex.command(
                    f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{self.db}`.`{view}` TO `{self.db}`.`{table.name}` AS {select}"
                )
        self.rollups = tuple(sorted(ROLLUPS))

    # -- the series limit -----------------------------------------------------------------------

    def _known_series(self, project: str) -> set[int]:
        known = self._known.get(project)
        if known is None:
            rows = query_arrow(
                self.ex,
                f"SELECT DISTINCT fingerprint FROM `{self.db}`.metric_series WHERE project = {{p:String}}",
                {"p": project},
            )
            fps = rows.column("fingerprint").to_numpy() if rows.num_rows else np.empty(0, np.uint64)
            known = self._known.setdefault(project, set(fps.tolist()))
        return known

    def admit(self, project: str, batch: MetricBatch) -> None:
        """Enforce the per-project series limit before the batch is acknowledged.

        Samples of known series always pass; new series are admitted until the project holds
        ``max_series_per_project``, the rest are dropped from the batch and recorded in its
        ``errors`` (the handler answers 4xx for them and stores the others, as Mimir does).
        """
        with self._known_lock:
            known = self._known_series(project)
            room = self.max_series - len(known)
            refused = []
            for i, ref in enumerate(batch.refs):
                fp = ref.fingerprint
                if fp in known:
                    continue
                if room > 0:
                    known.add(fp)
                    room -= 1
                else:
                    refused.append(i)
        if refused:
            ref = batch.refs[refused[0]]
            example = ref.name + _format_labels(ref.labels)
            samples = batch.drop(refused)
            batch.rejected_samples += samples
            batch.errors.insert(
                0,
                f"series limit of {self.max_series} per project reached: {len(refused)} new series "
                f"({samples} samples) refused, for example {example}",
            )

    # -- writing ----------------------------------------------------------------------------------

    def store_events(self, batches: Sequence[tuple[str, list[Any]]], token: str) -> int:
        """Store WAL events of ``(project, events)`` pairs as one block per table; returns samples stored.

        Series rows are inserted before samples so a sample is never visible without its
        series; both carry ``token``, so a replayed block is stored once.
        """
        fp_parts: list[np.ndarray] = []
        count_parts: list[np.ndarray] = []
        ts_parts: list[np.ndarray] = []
        v_parts: list[np.ndarray] = []
        projects: list[str] = []  # per event
        sizes: list[int] = []  # series per event
        #: Per event: its series' names and flat labels, or the JSON text that holds them
        #: (parsed only when one of its series rows is written).
        labels: list[Any] = []
        meta: dict[tuple[str, str], tuple[str, str, str]] = {}
        for project, events in batches:
            for ev in events:
                kind = ev[0]
                if kind == "F":
                    _, fps, ev_counts, ts, bits, ev_labels = ev
                    fp_parts.append(_event_array(fps, "<u8"))
                    count_parts.append(_event_array(ev_counts, "<i8"))
                    ts_parts.append(_event_array(ts, "<i8"))
                    v_parts.append(_event_array(bits, "<f8"))
                    labels.append(ev_labels)
                elif kind == "S":  # the form of older logs, labels as JSON lists
                    _, fps, ev_names, ev_flats, ev_counts, ts, bits = ev
                    fp_parts.append(np.array(fps, dtype=np.uint64))
                    count_parts.append(np.array(ev_counts, dtype=np.int64))
                    ts_parts.append(_event_array(ts, "<i8"))
                    v_parts.append(_event_array(bits, "<f8"))
                    labels.append([ev_names, ev_flats])
                elif kind == "s":  # the per-series form of older logs
                    _, fp, name, flat, ts, bits = ev
                    if not ts:
                        continue
                    fp_parts.append(np.array([fp], dtype=np.uint64))
                    count_parts.append(np.array([len(ts)], dtype=np.int64))
                    ts_parts.append(np.array(ts, dtype=np.int64))
                    v_parts.append(np.array(bits, dtype=np.uint64).view(np.float64))
                    labels.append([[name], [flat]])
                elif kind == "m":
                    _, name, type_, help_, unit = ev
                    meta[(project, name)] = (type_, help_, unit)
                    continue
                else:
                    continue
                projects.append(project)
                sizes.append(int(fp_parts[-1].size))
        # One row per (project, series) of the block: where its labels are (event, position)
        # and the time range of its samples.
        series: dict[tuple[str, int], list[Any]] = {}
        has_samples = sum(sizes) > 0
        if has_samples:
            counts = np.concatenate(count_parts)
            fp_all_series = np.concatenate(fp_parts)
            ts_arr = np.concatenate(ts_parts).astype(np.int64, copy=False)
            run_starts = np.r_[0, np.cumsum(counts)[:-1]]
            lows = np.minimum.reduceat(ts_arr, run_starts)
            highs = np.maximum.reduceat(ts_arr, run_starts)
            # A block holds every series once per request (remote write: 1,900 series x 20
            # requests); the same series of one project are merged in numpy, so the Python loop
            # below runs once per distinct series.
            project_names = sorted(set(projects))
            code_of = {p: i for i, p in enumerate(project_names)}
            size_arr = np.array(sizes, dtype=np.int64)
            event_of = np.repeat(np.arange(len(sizes), dtype=np.int64), size_arr)
            pos_of = np.arange(event_of.size, dtype=np.int64) - np.repeat(np.cumsum(size_arr) - size_arr, size_arr)
            pcode = np.repeat(np.array([code_of[p] for p in projects], dtype=np.int64), size_arr)
            order = np.lexsort((fp_all_series, pcode))
            fp_sorted, pc_sorted = fp_all_series[order], pcode[order]
            first = np.r_[True, (fp_sorted[1:] != fp_sorted[:-1]) | (pc_sorted[1:] != pc_sorted[:-1])]
            starts = np.flatnonzero(first)
            lo_u = np.minimum.reduceat(lows[order], starts).tolist()
            hi_u = np.maximum.reduceat(highs[order], starts).tolist()
            pick = order[starts]
            for fp, pc, event, pos, lo, hi in zip(
                fp_sorted[starts].tolist(), pc_sorted[starts].tolist(), event_of[pick].tolist(),
                pos_of[pick].tolist(), lo_u, hi_u, strict=True,
            ):
                series[(project_names[pc], fp)] = [event, pos, lo, hi]
        series = self._series_to_write(series)
        if series:
            keys = list(series)
            rows = []
            for k in keys:
                event, pos, lo, hi = series[k]
                if isinstance(labels[event], str):
                    labels[event] = orjson.loads(str(labels[event]))  # a LabelsJSON: orjson takes exact str only
                names, flats = labels[event]
                rows.append([names[pos], flats[pos], lo, hi])
            offsets = [0]
            mkeys: list[str] = []
            mvals: list[str] = []
            for r in rows:
                flat = r[1]
                mkeys.extend(flat[0::2])
                mvals.extend(flat[1::2])
                offsets.append(len(mkeys))
            block = pa.table(
                {
                    "project": pa.array([k[0] for k in keys], pa.string()),
                    "metric": pa.array([r[0] for r in rows], pa.string()),
                    "fingerprint": pa.array([k[1] for k in keys], pa.uint64()),
                    "labels": pa.MapArray.from_arrays(
                        pa.array(offsets, pa.int32()), pa.array(mkeys, pa.string()), pa.array(mvals, pa.string())
                    ),
                    "first_seen": pa.array([r[2] for r in rows], pa.int64()),
                    "last_seen": pa.array([r[3] for r in rows], pa.int64()),
                }
            )
            self.ex.insert_arrow("metric_series", block, dedup_token=token)
            with self._known_lock:
                for (project, fp), row in zip(keys, rows, strict=True):
                    known = self._known.get(project)
                    if known is not None:
                        known.add(fp)
                    self._bounds[(project, fp)] = (row[2], row[3])
        stored = 0
        if has_samples:
            fp_all = np.repeat(fp_all_series, counts)
            ts_all_arr = ts_arr
            v_all = np.concatenate(v_parts).astype(np.float64, copy=False)
            parts = []
            # With no (series, timestamp) twice in the block there is nothing for "last write
            # wins" to decide, and the engine sorts the block by its key anyway: the samples go
            # as they are (sorting them took a quarter of the storing thread's time).
            repeats = _may_repeat(fp_all_series, pcode, counts, run_starts, ts_arr)
            if len(project_names) > 1:
                # Several projects in one block: deduplicate each on its own.
                sample_code = np.repeat(pcode, counts)
                for code, name in enumerate(project_names):
                    sel = sample_code == code
                    cols = (fp_all[sel], ts_all_arr[sel], v_all[sel])
                    parts.append((name, *(_last_write_wins(*cols) if repeats else cols)))
            else:
                cols = (fp_all, ts_all_arr, v_all)
                parts.append((project_names[0], *(_last_write_wins(*cols) if repeats else cols)))
            tables = []
            for name, fp_p, ts_p, v_p in parts:
                tables.append(
                    pa.table(
                        {
                            "project": pa.DictionaryArray.from_arrays(
                                pa.array(np.zeros(fp_p.size, dtype=np.int32)), pa.array([name])
                            ),
                            "fingerprint": pa.array(fp_p, pa.uint64()),
                            "timestamp": pa.array(ts_p, pa.int64()),
                            "value": pa.array(v_p, pa.float64()),
                        }
                    )
                )
                stored += int(fp_p.size)
            block = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            self.ex.insert_arrow("metric_samples", block, dedup_token=token)
        if meta:
            keys_m = list(meta)
            block = pa.table(
                {
                    "project": pa.array([k[0] for k in keys_m], pa.string()),
                    "metric": pa.array([k[1] for k in keys_m], pa.string()),
                    "type": pa.array([meta[k][0] for k in keys_m], pa.string()),
                    "help": pa.array([meta[k][1] for k in keys_m], pa.string()),
                    "unit": pa.array([meta[k][2] for k in keys_m], pa.string()),
                }
            )
            self.ex.insert_arrow("metric_metadata", block, dedup_token=token)
        return stored

    def _series_to_write(self, series: dict[tuple[str, int], list[Any]]) -> dict[tuple[str, int], list[Any]]:
        """The series rows a block must upsert: those whose stored time bounds do not cover it.

        A steady stream (remote write, scrapes) brings every series in every block, each a few
        seconds further on; upserting them all cost more than storing the samples. So the
        bounds written are widened to whole hours (``first_seen`` down, ``last_seen`` up), and a
        series is written again only when its samples leave the hour range already stored:
        about once an hour per series. Selectors then see a series up to an hour past its last
        sample, the granularity Prometheus's own index has (its blocks span two hours); the
        samples query finds nothing there and the engine treats that as no data.
        """
        out: dict[tuple[str, int], list[Any]] = {}
        with self._known_lock:
            for key, row in series.items():
                lo, hi = row[2], row[3]
                stored = self._bounds.get(key)
                if stored is not None:
                    if stored[0] <= lo and hi <= stored[1]:
                        continue
                    lo, hi = min(lo, stored[0]), max(hi, stored[1])
                out[key] = [row[0], row[1], lo - lo % _HOUR_MS, hi - hi % _HOUR_MS + _HOUR_MS - 1]
        return out

    def store_entries(self, entries: Sequence[Any], token: str) -> int:
        """The batcher's sink for ``metrics`` WAL entries (see :class:`~stackwatch.ingest.batcher.Entry`)."""
        return self.store_events([(e.project, e.live if e.live is not None else e.body()["e"]) for e in entries], token)

    def insert(self, project: str, batch: MetricBatch, *, dedup_token: str | None = None) -> int:
        """Store a batch directly (tests, tools); the server goes through the WAL instead."""
        import uuid

        return self.store_events([(project, batch.events())], dedup_token or uuid.uuid4().hex)

    # -- reading ----------------------------------------------------------------------------------

    def find_series(
        self,
        project: str,
        matchers: Sequence[Any],
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 0,
    ) -> list[tuple[int, dict[str, str]]]:
        """Series matching all ``matchers`` with samples in ``[start_ms, end_ms]``.

        Returns ``(fingerprint, labels with __name__)`` pairs. The time test uses each series'
        first/last sample time, so a series with samples on both sides of a gap in the range
        is included (its sample query then returns nothing, which the engine handles).
        """
        params: dict[str, Any] = {"p": project}
        where = matchers_sql(matchers, params)
        having = []
        if start_ms is not None:
            having.append("max(last_seen) >= {s:Int64}")
            params["s"] = start_ms
        if end_ms is not None:
            having.append("min(first_seen) <= {e:Int64}")
            params["e"] = end_ms
        sql = (
            f"SELECT fingerprint, any(metric) AS s_metric, any(labels) AS s_labels FROM `{self.db}`.metric_series "
            f"WHERE project = {{p:String}} AND ({where}) GROUP BY fingerprint"
        )
        if having:
            sql += " HAVING " + " AND ".join(having)
        if limit:
            sql += f" LIMIT {int(limit)}"
        out = []
        for row in self.ex.rows(sql, params):
            labels = {"__name__": row["s_metric"], **row["s_labels"]}
            out.append((int(row["fingerprint"]), labels))
        return out

    def fetch_samples(
        self,
        project: str,
        fingerprints: Sequence[int],
        start_ms: int,
        end_ms: int,
        max_samples: int = 0,
        resolution_ms: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fingerprint, timestamp, value) arrays of the series' samples in ``[start_ms, end_ms]``.

        Sorted by fingerprint then time, duplicates resolved (FINAL: the last write wins).
        With ``max_samples``, reading stops after one more than that many rows: the caller
        raises its too-many-samples error without holding the whole result in memory.
        """
        empty = (np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.float64))
        if not fingerprints:
            return empty
        if resolution_ms:
            return self._read_rollup(project, fingerprints, start_ms, end_ms, max_samples, resolution_ms)
        fp, ts, vals = self._read_samples(project, fingerprints, start_ms, end_ms, max_samples, final=False)
        if fp.size > 1:
            dup = (fp[1:] == fp[:-1]) & (ts[1:] == ts[:-1])
            if dup.any():
                # A sample written twice: only those series are read again with FINAL, which
                # picks the last write as the table's merges will.
                again = np.unique(fp[1:][dup])
                keep = ~np.isin(fp, again)
                fp2, ts2, vals2 = self._read_samples(project, again.tolist(), start_ms, end_ms, max_samples, final=True)
                fp = np.concatenate([fp[keep], fp2])
                ts = np.concatenate([ts[keep], ts2])
                vals = np.concatenate([vals[keep], vals2])
                order = np.lexsort((ts, fp))
                fp, ts, vals = fp[order], ts[order], vals[order]
        return fp, ts, vals

    def _read_rollup(
        self, project: str, fingerprints: Sequence[int], start_ms: int, end_ms: int, max_samples: int, res: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last sample of each ``res`` bucket in ``[start_ms, end_ms]``, as the raw read returns samples."""
        if res not in ROLLUPS or res not in self.rollups:
            raise ValueError(f"no rollup at {res} ms")
        limit = f" LIMIT {int(max_samples) + 1}" if max_samples else ""
        sql = (
            f"SELECT fingerprint, timestamp, value FROM `{self.db}`.`{ROLLUPS[res]}` FINAL "
            "WHERE project = {p:String} AND fingerprint IN {f:Array(UInt64)} "
            "AND bucket >= {bs:Int64} AND bucket <= {e:Int64} AND timestamp >= {s:Int64} AND timestamp <= {e:Int64} "
            f"ORDER BY fingerprint, timestamp{limit} SETTINGS do_not_merge_across_partitions_select_final = 1"
        )
        return _sample_columns(query_arrow(
            self.ex,
            sql,
            {"p": project, "f": list(fingerprints), "s": int(start_ms), "e": int(end_ms), "bs": int(start_ms) - res},
        ))

    def _read_samples(
        self, project: str, fingerprints: Sequence[int], start_ms: int, end_ms: int, max_samples: int, *, final: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples sorted by (fingerprint, timestamp); ``final`` resolves duplicates in SQL.

        Without FINAL a read of unmerged parts is 3-4x cheaper (4 M samples of 720 series over
        8 parts: 1,155 ms with FINAL, 286 ms without), and duplicates are rare: the caller
        finds them and asks again for just their series.
        """
        limit = f" LIMIT {int(max_samples) + 1}" if max_samples else ""
        sql = (
            f"SELECT fingerprint, timestamp, value FROM `{self.db}`.metric_samples{' FINAL' if final else ''} "
            "WHERE project = {p:String} AND fingerprint IN {f:Array(UInt64)} "
            "AND timestamp >= {s:Int64} AND timestamp <= {e:Int64} "
            f"ORDER BY fingerprint, timestamp{limit}"
        )
        if final:
            # A series' duplicates are always in one day's partition, so FINAL need not merge
            # across partitions: each day is deduplicated on its own, in parallel.
            sql += " SETTINGS do_not_merge_across_partitions_select_final = 1"
        return _sample_columns(query_arrow(
            self.ex, sql, {"p": project, "f": list(fingerprints), "s": int(start_ms), "e": int(end_ms)}
        ))

    def label_names(
        self, project: str, matcher_sets: Sequence[Sequence[Any]], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        """Label names used by series matching any of ``matcher_sets`` (all series if none)."""
        params: dict[str, Any] = {"p": project}
        where, having = self._series_filter(matcher_sets, start_ms, end_ms, params)
        rows = self.ex.rows(
            f"SELECT DISTINCT arrayJoin(mapKeys(l)) AS name FROM (SELECT fingerprint, any(labels) AS l "
            f"FROM `{self.db}`.metric_series WHERE project = {{p:String}} AND ({where}) "
            f"GROUP BY fingerprint {having}) ORDER BY name",
            params,
        )
        names = [r["name"] for r in rows]
        has_any = self.ex.rows(
            f"SELECT count() AS n FROM (SELECT fingerprint FROM `{self.db}`.metric_series "
            f"WHERE project = {{p:String}} AND ({where}) GROUP BY fingerprint {having} LIMIT 1)",
            params,
        )
        if has_any and has_any[0]["n"]:
            names.append("__name__")
        return sorted(set(names))

    def label_values(
        self,
        project: str,
        label: str,
        matcher_sets: Sequence[Sequence[Any]],
        start_ms: int | None,
        end_ms: int | None,
        limit: int = 0,
    ) -> list[str]:
        """Distinct non-empty values of ``label`` over series matching any of ``matcher_sets``."""
        params: dict[str, Any] = {"p": project, "ln": label}
        where, having = self._series_filter(matcher_sets, start_ms, end_ms, params)
        col = "any(metric)" if label == "__name__" else "any(labels)[{ln:String}]"
        lim = f" LIMIT {int(limit)}" if limit else ""
        rows = self.ex.rows(
            f"SELECT DISTINCT v FROM (SELECT fingerprint, {col} AS v FROM `{self.db}`.metric_series "
            f"WHERE project = {{p:String}} AND ({where}) GROUP BY fingerprint {having}) "
            f"WHERE v != '' ORDER BY v{lim}",
            params,
        )
        return [r["v"] for r in rows]

    def _series_filter(
        self,
        matcher_sets: Sequence[Sequence[Any]],
        start_ms: int | None,
        end_ms: int | None,
        params: dict[str, Any],
    ) -> tuple[str, str]:
        where = " OR ".join(f"({matchers_sql(ms, params, f'm{i}_')})" for i, ms in enumerate(matcher_sets)) or "1"
        having = []
        if start_ms is not None:
            having.append("max(last_seen) >= {s:Int64}")
            params["s"] = start_ms
        if end_ms is not None:
            having.append("min(first_seen) <= {e:Int64}")
            params["e"] = end_ms
        return where, ("HAVING " + " AND ".join(having)) if having else ""

    def metadata(self, project: str, metric: str = "", limit: int = 0) -> dict[str, list[dict[str, str]]]:
        """``/api/v1/metadata``'s ``data``: metric name -> [{type, help, unit}]."""
        params: dict[str, Any] = {"p": project}
        cond = ""
        if metric:
            cond = " AND metric = {m:String}"
            params["m"] = metric
        rows = self.ex.rows(
            f"SELECT metric, type, help, unit FROM `{self.db}`.metric_metadata FINAL "
            f"WHERE project = {{p:String}}{cond} ORDER BY metric, type",
            params,
        )
        out: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            if limit and len(out) >= limit and r["metric"] not in out:
                break
            out.setdefault(r["metric"], []).append({"type": r["type"], "help": r["help"], "unit": r["unit"]})
        return out

    # -- retention --------------------------------------------------------------------------------

    def apply_retention(self, days_by_project: Mapping[str, int], now_ms: int) -> dict[str, int]:
        """Delete what is older than each project's retention; returns what was done.

        Samples live in day partitions shared by all projects. A day older than every
        project's retention is dropped whole (instant, no rewrite); within the retention of
        some project, the others' samples of that day go by a delete mutation, issued only when
        a count shows there is something to delete, so an hourly run costs a few small reads.
        Samples are kept for whole days: a day goes once all of it is older than the limit,
        which is how Prometheus's block-wise retention behaves too. Series rows whose last
        sample is older than the limit go with them, so selectors and the series limit forget
        them; projects not named keep everything.
        """
        done = {"partitions_dropped": 0, "sample_deletes": 0, "series_deletes": 0}
        if not days_by_project:
            return done
        day_ms = 86_400_000
        cutoff = {p: (now_ms - d * day_ms) // day_ms * day_ms for p, d in days_by_project.items() if d > 0}
        if not cutoff:
            return done
        known = [
            r["project"] for r in self.ex.rows(f"SELECT DISTINCT project FROM `{self.db}`.metric_series")
        ]
        if all(p in cutoff for p in known):
            oldest_kept = min(cutoff.values())
            for table in ("metric_samples", *(ROLLUPS[res] for res in self.rollups)):
                parts = self.ex.rows(
                    "SELECT DISTINCT partition FROM system.parts WHERE database = {db:String} "
                    "AND table = {t:String} AND active",
                    {"db": self.db, "t": table},
                )
                for row in parts:
                    day = int(row["partition"])
                    if (day + 1) * day_ms <= oldest_kept:
                        self.ex.command(f"ALTER TABLE `{self.db}`.`{table}` DROP PARTITION {day}")
                        if table == "metric_samples":
                            done["partitions_dropped"] += 1
        for project, limit in cutoff.items():
            params = {"p": project, "c": limit}
            old = self.ex.rows(
                f"SELECT count() AS n FROM `{self.db}`.metric_samples WHERE project = {{p:String}} "
                "AND timestamp < {c:Int64}",
                params,
            )
            if old and int(old[0]["n"]):
                for table in ("metric_samples", *(ROLLUPS[res] for res in self.rollups)):
                    self.ex.command(
                        f"ALTER TABLE `{self.db}`.`{table}` DELETE WHERE project = {{p:String}} "
                        "AND timestamp < {c:Int64} SETTINGS mutations_sync = 2",
                        params,
                    )
                done["sample_deletes"] += 1
            gone = self.ex.rows(
                f"SELECT fingerprint FROM `{self.db}`.metric_series WHERE project = {{p:String}} "
                "GROUP BY fingerprint HAVING max(last_seen) < {c:Int64}",
                params,
            )
            if gone:
                fps = [int(r["fingerprint"]) for r in gone]
                self.ex.command(
                    f"ALTER TABLE `{self.db}`.metric_series DELETE WHERE project = {{p:String}} "
                    "AND fingerprint IN {f:Array(UInt64)} SETTINGS mutations_sync = 2",
                    {"p": project, "f": fps},
                )
                done["series_deletes"] += 1
                with self._known_lock:
                    self._known.pop(project, None)  # re-read from the table when next needed
                    for fp in fps:
                        self._bounds.pop((project, fp), None)
        return done

    def storage_stats(self, project: str | None = None) -> dict[str, float]:
        """Rows and bytes on disk of the samples table, and bytes per sample (benchmarks, docs)."""
        rows = self.ex.rows(
            "SELECT sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts "
            "WHERE database = {db:String} AND table = 'metric_samples' AND active",
            {"db": self.db},
        )
        n = int(rows[0]["rows"] or 0) if rows else 0
        b = int(rows[0]["bytes"] or 0) if rows else 0
        return {"samples": n, "bytes": b, "bytes_per_sample": (b / n) if n else 0.0}


def _format_labels(labels: Sequence[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"
