"""Telemetry tables, declared once as data and rendered to DDL for each deployment.

Embedded (chDB) and single-server ClickHouse get plain MergeTree tables; with a cluster name the
same declaration renders ``Replicated*MergeTree`` local tables ``ON CLUSTER`` plus a
``Distributed`` table under the public name, so every query in the code base reads the same
table names whatever the deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["LOGS_MINUTES", "SPANS", "TABLES", "TRACE_INDEX", "TRACE_TABLES", "Column", "Table", "render_ddl"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    codec: str = ""
    default: str = ""
    comment: str = ""

    def ddl(self) -> str:
        parts = [f"`{self.name}`", self.type]
        if self.default:
            parts.append(f"DEFAULT {self.default}")
        if self.codec:
            parts.append(f"CODEC({self.codec})")
        if self.comment:
            parts.append("COMMENT '" + self.comment.replace("'", "''") + "'")
        return " ".join(parts)


@dataclass(frozen=True)
class Index:
    name: str
    expr: str
    type: str
    granularity: int = 1


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    order_by: str
    partition_by: str = ""
    indexes: tuple[Index, ...] = ()
    engine: str = "MergeTree"
    #: Parameters of the engine, e.g. the version column of a ReplacingMergeTree.
    engine_args: str = ""
    settings: dict[str, object] = field(default_factory=dict)
    comment: str = ""
    #: A table of kind "merge" is a read-only union over other tables (regexp on their names).
    merge_regexp: str = ""
    #: ``TTL`` expression (rows expire when it is in the past); empty: kept until deleted.
    ttl: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


#: Settings of every table the batcher inserts into. Insert deduplication by token makes a WAL
#: replay idempotent (see ingest.batcher); the WAL forgets a block once its insert returns, so
#: the inserted part must itself be on disk: fsync it, or a power cut could lose acknowledged data.
REPLAY_SAFE: dict[str, object] = {
    "non_replicated_deduplication_window": 10000,
    "fsync_after_insert": 1,
    "fsync_part_directory": 1,
}

#: Settings of every table in the embedded engine (``ChdbExecutor.table_settings``): parts merged
#: away are deleted within a second or two instead of at the cleanup thread's default pace
#: (every 30-40 s, backing off to 300 s while idle). The embedded engine keeps no grace period
#: for them (``old_parts_lifetime`` is 0), so until that thread runs, a store that has just
#: merged holds its data twice on disk (measured: 78 instead of 34 bytes a log line, 20 s after
#: a million-line load). Not used on a ClickHouse server: it keeps merged parts for its own
#: ``old_parts_lifetime`` (480 s) anyway, replicated tables' cleanup also prunes Keeper, and
#: ``max_cleanup_delay_period`` is unknown to servers older than 23.x.
PROMPT_CLEANUP: dict[str, object] = {
    "cleanup_delay_period": 1,
    "cleanup_delay_period_random_add": 1,
    "max_cleanup_delay_period": 5,
}


def render_ddl(table: Table, database: str, cluster: str = "",
               extra_settings: Mapping[str, object] | None = None) -> list[str]:
    """DDL statements creating ``table`` (idempotently) in ``database``; ``extra_settings`` are
    the executor's own (see :data:`PROMPT_CLEANUP`), the table's settings win over them. They
    are also applied to a table that already exists (``MODIFY SETTING``), so a store created
    before a setting was added gets it at its next start; a no-op when it has it already."""
    on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
    cols = ",\n  ".join(c.ddl() for c in table.columns)
    if table.merge_regexp:
        return [
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{table.name}`{on_cluster} (\n  {cols}\n) "
            f"ENGINE = Merge('{database}', '{table.merge_regexp}')"
        ]
    idx = "".join(
        f",\n  INDEX `{i.name}` {i.expr} TYPE {i.type} GRANULARITY {i.granularity}" for i in table.indexes
    )
    local_name = f"{table.name}_local" if cluster else table.name
    engine = table.engine
    args = f", {table.engine_args}" if table.engine_args else ""
    if cluster:
        engine = f"Replicated{engine}('/clickhouse/tables/{{shard}}/{database}/{local_name}', '{{replica}}'{args})"
    else:
        engine = f"{engine}({table.engine_args})"
    table_settings = {**(extra_settings or {}), **table.settings}
    settings = ""
    if table_settings:
        settings = "\nSETTINGS " + ", ".join(f"{k} = {v!r}" for k, v in table_settings.items())
    partition = f"\nPARTITION BY {table.partition_by}" if table.partition_by else ""
    ttl = f"\nTTL {table.ttl}" if table.ttl else ""
    comment = ""
    if table.comment:
        comment = "\nCOMMENT '" + table.comment.replace("'", "''") + "'"
    stmts = [
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{local_name}`{on_cluster} (\n  {cols}{idx}\n)"
        f"\nENGINE = {engine}{partition}\nORDER BY {table.order_by}{ttl}{settings}{comment}"
    ]
    if extra_settings:
        own = {k: v for k, v in extra_settings.items() if k not in table.settings}
        if own:
            stmts.append(f"ALTER TABLE `{database}`.`{local_name}`{on_cluster} MODIFY SETTING "
                         + ", ".join(f"{k} = {v!r}" for k, v in own.items()))
    if cluster:
        stmts.append(
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{table.name}`{on_cluster} AS `{database}`.`{local_name}` "
            f"ENGINE = Distributed(`{cluster}`, `{database}`, `{local_name}`, rand())"
        )
    return stmts


def _log_columns(message_codec: str) -> tuple[Column, ...]:
    return (
        Column("project", "LowCardinality(String)"),
        # Delta on sorted ns timestamps turns them into small gaps that ZSTD packs tightly.
        Column("timestamp", "DateTime64(9, 'UTC')", "Delta(8), ZSTD(1)"),
        Column("observed_timestamp", "DateTime64(9, 'UTC')", "Delta(8), ZSTD(1)"),
        Column("service", "LowCardinality(String)"),
        Column("severity_text", "LowCardinality(String)"),
        Column("severity_number", "UInt8"),
        Column("message", "String", message_codec),
        Column("trace_id", "String", "ZSTD(1)"),
        Column("span_id", "String", "ZSTD(1)"),
        Column("source", "LowCardinality(String)"),
        Column("logger", "LowCardinality(String)"),
        Column("function", "LowCardinality(String)"),
        Column("host", "LowCardinality(String)"),
        Column("log_type", "LowCardinality(String)"),
        # Attributes are typed by value so numeric comparisons (context.duration:>500) run on
        # Float64 without parsing strings at query time. Keys are plain String, not
        # LowCardinality: a dictionary per map column made the engine's insert twice as slow
        # (20,000-line blocks of benchmark lines, skip indexes aside: 7.0-8.1 us of engine CPU
        # a line with LowCardinality keys, 4.0-4.1 with String), and ZSTD packs the repeated keys
        # nearly as well (1M lines merged: 32.7 MB against 30.9) with the same search times.
        Column("attributes_string", "Map(String, String)", "ZSTD(1)"),
        Column("attributes_number", "Map(String, Float64)", "ZSTD(1)"),
        Column("resource", "Map(String, String)", "ZSTD(1)"),
    )


_LOG_INDEXES = (
    # One trace's lines are few among millions: a bloom filter skips nearly every granule.
    Index("idx_trace_id", "trace_id", "bloom_filter(0.01)"),
    # Token bloom filter on the lowercased body serves bare words and phrase searches
    # (hasTokenCaseInsensitive / LIKE on lower(message)).
    Index("idx_message", "lower(message)", "tokenbf_v1(8192, 2, 0)"),
    # Attribute key presence (context.error_code:*) and exact values (context.ip:"1.2.3.4").
    Index("idx_attr_keys", "mapKeys(attributes_string)", "bloom_filter(0.01)"),
    Index("idx_attr_values", "mapValues(attributes_string)", "bloom_filter(0.01)"),
    Index("idx_num_keys", "mapKeys(attributes_number)", "bloom_filter(0.01)"),
)

# Sort key: a search is always within one project and a time range, and the searches on-call
# engineers run are narrowed by service and level (service:payment AND level:ERROR ...).
# Service and severity first let the primary index skip everything else; the hour bucket
# then prunes the time range within each (service, level) run; rows of one service and level
# sit together, which is what makes their messages compress well. Measured on 1M guide-format
# lines: the guide searches read 3x fewer granules than with the hour bucket first, and the
# table is 4% smaller. Partitions are per day and log type, so the retention manager moves or
# drops whole parts and a time range skips other days entirely.
_LOG_ORDER = "(project, service, severity_number, toStartOfHour(timestamp), timestamp)"
_LOG_PARTITION = "(toYYYYMMDD(timestamp), log_type)"

LOGS_HOT = Table(
    name="logs_hot",
    columns=_log_columns("ZSTD(3)"),
    order_by=_LOG_ORDER,
    partition_by=_LOG_PARTITION,
    indexes=_LOG_INDEXES,
    settings={**REPLAY_SAFE, "index_granularity": 8192},
    comment="Logs within their hot tier: fast codecs, all skip indexes.",
)

LOGS_WARM = Table(
    name="logs_warm",
    columns=_log_columns("ZSTD(12)"),
    order_by=_LOG_ORDER,
    partition_by=_LOG_PARTITION,
    indexes=_LOG_INDEXES,
    settings=REPLAY_SAFE,
    comment="Logs past their hot tier: recompressed harder; same layout, so the same queries.",
)

LOGS = Table(
    name="logs",
    columns=_log_columns(""),
    order_by="",
    merge_regexp="^logs_(hot|warm)$",
    comment="Every searchable log line not yet in cold files: a Merge over the hot and warm tables.",
)

TABLES: tuple[Table, ...] = (LOGS_HOT, LOGS_WARM, LOGS)

# Lines per minute of the hot tier, by everything a histogram filters or splits on without
# reading a line: project, service, level, log type. A materialized view adds each block's
# counts as the block is inserted into logs_hot, so a 24 h per-minute histogram of
# ``level:ERROR`` sums a few thousand small rows instead of scanning the matching lines (about
# 4 ms instead of 10-15 ms on the embedded engine for 1M lines; an aggregate projection on
# logs_hot was measured too, and saved only 1-2 ms of the scan, its per-part analysis costing
# most of what it read less). Sorted by time first: every histogram has a range.
# The deduplication window matters: a WAL replay re-inserts a block with the same token, and
# the view's insert carries a token derived from it, so a replayed block is not counted twice
# (without the window on this table it was: checked in tests/storage/test_logstore.py).
# Rows older than the TTL are dropped; histograms reaching that far back read the lines.
LOGS_MINUTES_TTL_DAYS = 100
LOGS_MINUTES = Table(
    name="logs_minutes",
    columns=(
        Column("project", "LowCardinality(String)"),
        Column("minute", "DateTime('UTC')", "Delta(4), ZSTD(1)"),
        Column("service", "LowCardinality(String)"),
        Column("severity_number", "UInt8"),
        Column("severity_text", "LowCardinality(String)"),
        Column("log_type", "LowCardinality(String)"),
        Column("lines", "UInt64", "T64, ZSTD(1)"),
    ),
    engine="SummingMergeTree",
    order_by="(project, minute, service, severity_number, severity_text, log_type)",
    partition_by="toYYYYMMDD(minute)",
    ttl=f"minute + toIntervalDay({LOGS_MINUTES_TTL_DAYS})",
    settings={
        **REPLAY_SAFE,
        # Every insert into logs_hot adds a small part here, and a query pays for each part
        # (measured: 5.6 ms over 1 part, 13 ms over 10, 29 ms over 40). The merge selector
        # leaves small recent parts alone; forcing merges of parts older than a second keeps
        # a day at one or two parts (a day's counts are ~35k rows: such a merge is cheap).
        "min_age_to_force_merge_seconds": 1,
        "ttl_only_drop_parts": 1,
    },
    comment="Lines per minute of logs_hot by project, service, level and log type: histograms without a scan.",
)
#: The columns of logs_hot a query may use and still be answered from :data:`LOGS_MINUTES`.
LOGS_MINUTES_FILTERS: frozenset[str] = frozenset(
    {"project", "service", "severity_number", "severity_text", "log_type"}
)
_MINUTES_SELECT = (
    "SELECT project, toStartOfMinute(timestamp) AS minute, service, severity_number, severity_text, "
    "log_type, count() AS lines FROM {source} GROUP BY project, minute, service, severity_number, "
    "severity_text, log_type"
)


def minutes_backfill_sql(database: str) -> str:
    """Fills :data:`LOGS_MINUTES` from the lines already in ``logs_hot`` (a store made before it)."""
    return f"INSERT INTO `{database}`.`logs_minutes` " + _MINUTES_SELECT.format(source=f"`{database}`.`logs_hot`")


def minutes_view_ddl(database: str) -> str:
    """The materialized view that keeps :data:`LOGS_MINUTES` up to date as lines are inserted."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`logs_minutes_mv` TO `{database}`.`logs_minutes` AS "
        + _MINUTES_SELECT.format(source=f"`{database}`.`logs_hot`")
    )


# --------------------------------------------------------------------------- traces
#
# Two reads matter: one whole trace by id (the trace view, every log line's "open trace"), and
# searches for traces by service/operation/duration/status/attribute over a time range.
#
# ``spans`` is sorted by (project, hour, trace id, start): within each hour of data, the spans
# of one trace are contiguous, so fetching a trace reads one or two granules. The hour bucket
# first keeps searches cheap too: a time range is a primary-key range, and within it the
# narrow columns searched on (service, name, duration, status: LowCardinality or small
# numbers) are read first (PREWHERE) and the wide ones only for the matches.
# ``trace_index`` (trace id -> the time range of its spans, one small row per trace and batch,
# sorted by trace id) gives the fetch its hours: one key lookup, done in a scalar subquery of
# the same statement, then a primary-key read of ``spans``.
#
# Measured (chDB, 2 shared CPUs under load; bench/traces_bench.py and docs/benchmarks.md):
# * sorted by (service, name, hour, start) with a bloom filter on trace_id, a fetch read the
#   ~10 granules its spans were scattered over: 90-150 ms median for 700k spans, whether or not
#   the index table bounded it;
# * sorted as now, 1M spans over 24 h: 16.2 ms bounded by trace_index; 10.0 ms by trace id
#   alone, because at 40k spans an hour each granule holds one hour and the key prunes well;
# * sorted as now, 300k spans over 7 days (under 2,048 spans an hour, so a granule spans
#   several hours and the trace id alone prunes nothing): by trace id alone 142 of 143
#   granules read, 47-60 ms; bounded by trace_index 19 granules, 34-37 ms. The index table is
#   what keeps the fetch independent of how dense the data is.
# The cost of this order: spans of one service are no longer adjacent, so a search by service
# scans its time range (the narrow columns first) instead of skipping to the service's run.
_SPAN_TTL_DAYS = 7  # the default of the traces_retention_days setting; see TraceStore

SPANS = Table(
    name="spans",
    columns=(
        Column("project", "LowCardinality(String)"),
        # Ids are random hex: nothing compresses them, ZSTD(1) only packs the hex alphabet.
        Column("trace_id", "FixedString(32)", "ZSTD(1)"),
        Column("span_id", "FixedString(16)", "ZSTD(1)"),
        Column("parent_span_id", "String", "ZSTD(1)"),
        Column("service", "LowCardinality(String)"),
        Column("name", "LowCardinality(String)"),
        Column("kind", "LowCardinality(String)"),
        # Within an hour, a trace's spans start close together: Delta keeps the gaps small.
        Column("start", "DateTime64(9, 'UTC')", "Delta(8), ZSTD(1)"),
        # Durations fit in far fewer than 64 bits: T64 drops the unused high bits.
        Column("duration_ns", "Int64", "T64, ZSTD(1)"),
        Column("status_code", "LowCardinality(String)"),
        Column("status_message", "String", "ZSTD(1)"),
        # Attributes typed by value, as for logs: numeric filters (http.status_code>=500)
        # compare Float64 without parsing strings at query time; String keys, as for logs (where
        # a LowCardinality dictionary per map column doubled the engine's insert cost).
        Column("attributes_string", "Map(String, String)", "ZSTD(1)"),
        Column("attributes_number", "Map(String, Float64)", "ZSTD(1)"),
        Column("attributes_bool", "Map(String, Bool)", "ZSTD(1)"),
        Column("resource", "Map(String, String)", "ZSTD(1)"),
        # Events and links are read with their span, never searched: JSON text, packed hard.
        Column("events", "String", "ZSTD(3)"),
        Column("links", "String", "ZSTD(3)"),
        Column("scope_name", "LowCardinality(String)"),
        Column("scope_version", "LowCardinality(String)"),
    ),
    order_by="(project, toStartOfHour(start), trace_id, start)",
    partition_by="toYYYYMMDD(start)",
    indexes=(
        # Rare values are what skip indexes can skip on: a slow outlier, a user id, an error code.
        Index("idx_duration", "duration_ns", "minmax"),
        Index("idx_attr_keys", "mapKeys(attributes_string)", "bloom_filter(0.01)"),
        Index("idx_attr_values", "mapValues(attributes_string)", "bloom_filter(0.01)"),
        Index("idx_num_keys", "mapKeys(attributes_number)", "bloom_filter(0.01)"),
    ),
    ttl=f"toDateTime(start) + toIntervalDay({_SPAN_TTL_DAYS})",
    settings={
        **REPLAY_SAFE,
        "index_granularity": 2048,
        # Partitions are days and the TTL is whole days: expire whole parts, never rewrite.
        "ttl_only_drop_parts": 1,
    },
    comment="Spans, sorted by hour then trace id: a trace is contiguous, a time range is a key range.",
)

TRACE_INDEX = Table(
    name="trace_index",
    columns=(
        Column("project", "LowCardinality(String)"),
        Column("trace_id", "FixedString(32)", "ZSTD(1)"),
        Column("day", "Date"),
        Column("start_ns", "SimpleAggregateFunction(min, Int64)"),
        Column("end_ns", "SimpleAggregateFunction(max, Int64)"),
        Column("span_count", "SimpleAggregateFunction(sum, UInt64)"),
    ),
    # Rows of a trace from several blocks collapse on merge (min start, max end, summed count);
    # readers still aggregate, as parts merge late.
    engine="AggregatingMergeTree",
    order_by="(project, trace_id)",
    partition_by="day",
    ttl=f"day + toIntervalDay({_SPAN_TTL_DAYS})",
    settings={**REPLAY_SAFE, "ttl_only_drop_parts": 1},
    comment="Trace id -> the time range of its spans: makes fetching one trace a key lookup.",
)

TRACE_TABLES: tuple[Table, ...] = (SPANS, TRACE_INDEX)


# -- errors ----------------------------------------------------------------------------------

# One row per error event (Sentry protocol). Sort key: an issue's events are read together
# (latest event, events list, hourly counts for the sparkline), always within one project, so
# (project, issue_id, timestamp) makes each of those a range scan. Events of one trace are
# found by the bloom filter on trace_id; an event by id (duplicate check) by the one on event_id.
ERROR_EVENTS = Table(
    name="error_events",
    columns=(
        Column("project", "LowCardinality(String)"),
        Column("issue_id", "UInt64"),
        Column("timestamp", "DateTime64(3, 'UTC')", "Delta(8), ZSTD(1)"),
        Column("received", "DateTime64(3, 'UTC')", "Delta(8), ZSTD(1)"),
        Column("event_id", "FixedString(32)"),
        Column("fingerprint", "LowCardinality(String)"),
        Column("level", "LowCardinality(String)"),
        Column("title", "String", "ZSTD(1)"),
        Column("culprit", "String", "ZSTD(1)"),
        Column("message", "String", "ZSTD(3)"),
        Column("exception_type", "LowCardinality(String)"),
        Column("exception_value", "String", "ZSTD(3)"),
        Column("release", "LowCardinality(String)"),
        Column("environment", "LowCardinality(String)"),
        Column("platform", "LowCardinality(String)"),
        Column("transaction", "String", "ZSTD(1)"),
        Column("user_id", "String", "ZSTD(1)"),
        Column("user_ip", "String", "ZSTD(1)"),
        # A hash, not the address: enough to count and match users, nothing to leak.
        Column("user_email_hash", "String", "ZSTD(1)"),
        Column("user_key", "String", "ZSTD(1)", comment="hash identifying the user for user counts"),
        Column("trace_id", "String", "ZSTD(1)"),
        Column("span_id", "String", "ZSTD(1)"),
        Column("tags", "Map(LowCardinality(String), String)", "ZSTD(1)"),
        Column("payload", "String", "ZSTD(6)", comment="the whole scrubbed event as JSON"),
        Column("attachments", "String", "ZSTD(3)", comment="JSON list of attachments kept under the size limit"),
        # The WAL block that wrote the row: a replayed block recognises its own rows (they are
        # not duplicates of earlier events) when it checks which event ids are already stored.
        Column("batch", "String", "ZSTD(1)"),
    ),
    order_by="(project, issue_id, timestamp)",
    partition_by="toYYYYMM(timestamp)",
    indexes=(
        Index("idx_event_id", "event_id", "bloom_filter(0.01)"),
        Index("idx_trace_id", "trace_id", "bloom_filter(0.01)"),
        Index("idx_release", "release", "set(100)"),
        Index("idx_environment", "environment", "set(100)"),
    ),
    # The TTL (errors_retention_days) is set by the store; whole parts expire, as partitions are months.
    settings={**REPLAY_SAFE, "ttl_only_drop_parts": 1},
    comment="Error events (Sentry protocol), scrubbed, grouped into issues kept in the meta store.",
)

ERROR_TABLES: tuple[Table, ...] = (ERROR_EVENTS,)
