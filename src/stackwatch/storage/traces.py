"""Writing span blocks and reading traces back: the traces side of the telemetry store.

The tables (``spans``, ``trace_index``) are declared in :mod:`stackwatch.storage.schema`, which
explains their layout. This module turns span records (:mod:`stackwatch.model.spans`) into
Arrow blocks, and answers the three reads the API needs: one trace by id, a search for traces
by span filters, and the service map. Every user value reaches SQL as a parameter.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute

from stackwatch.errors import BadRequest
from stackwatch.model.spans import SPAN_KINDS, STATUS_CODES, Span
from stackwatch.storage.executor import Executor
from stackwatch.storage.schema import SPANS, TRACE_INDEX, Table, render_ddl

__all__ = ["SpanFilter", "TraceStore", "parse_span_query", "spans_to_arrow"]

_TS = pa.timestamp("ns", tz="UTC")
_MAX_EXACT = 2**53
_NS_PER_DAY = 86_400 * 10**9

_SPAN_COLUMNS = """
    trace_id, span_id, parent_span_id, service, name, kind,
    toUnixTimestamp64Nano(start) AS start_ns, duration_ns, status_code, status_message,
    attributes_string, attributes_number, attributes_bool, resource, events, links, scope_name, scope_version
"""


def _map(offsets: list[int], keys: list[str], values: pa.Array) -> pa.Array:
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.string()), values)


_STRING_COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "service", "name", "kind", "status_code", "status_message",
    "scope_name", "scope_version",
)


def spans_to_arrow(batches: Iterable[tuple[str, Sequence[Span]]]) -> tuple[pa.Table, pa.Table]:
    """(spans block, trace_index block) for spans grouped by project.

    Scalar columns are built one column at a time (a comprehension per column runs several
    times faster than appending to fifteen lists per span); only the maps need a loop.
    Attributes are split by value type into three maps; an integer too large for a Float64 to
    hold exactly is kept as text, so no id-like number is silently rounded. ``None`` values
    (a NaN that went through the WAL's JSON) are left out.
    """
    spans: list[Span] = []
    projects: list[str] = []
    for project, group in batches:
        spans.extend(group)
        projects.extend([project] * len(group))
    starts = [s["start_ns"] for s in spans]
    ends = [e if e > b else b for e, b in zip([s["end_ns"] for s in spans], starts, strict=True)]
    table: dict[str, pa.Array] = {"project": pa.array(projects, pa.string())}
    for name in _STRING_COLUMNS:
        table[name] = pa.array([s[name] for s in spans], pa.string())
    start_arr = pa.array(starts, pa.int64())
    table["start"] = start_arr.cast(_TS)
    table["duration_ns"] = pa.compute.subtract(pa.array(ends, pa.int64()), start_arr)
    dumps = orjson.dumps
    table["events"] = pa.array([dumps(e).decode() if (e := s["events"]) else "" for s in spans], pa.string())
    table["links"] = pa.array([dumps(x).decode() if (x := s["links"]) else "" for s in spans], pa.string())
    s_off, s_keys, s_vals = [0], [], []
    n_off, n_keys, n_vals = [0], [], []
    b_off, b_keys, b_vals = [0], [], []
    r_off, r_keys, r_vals = [0], [], []
    for span in spans:
        for key, value in span["attributes"].items():
            kind = type(value)
            if kind is str:
                s_keys.append(key)
                s_vals.append(value)
            elif kind is bool:
                b_keys.append(key)
                b_vals.append(value)
            elif kind is float or (kind is int and -_MAX_EXACT <= value <= _MAX_EXACT):
                n_keys.append(key)
                n_vals.append(float(value))
            elif value is not None:
                s_keys.append(key)
                s_vals.append(str(value))
        s_off.append(len(s_keys))
        n_off.append(len(n_keys))
        b_off.append(len(b_keys))
        resource = span["resource"]
        r_keys.extend(resource.keys())
        r_vals.extend(resource.values())
        r_off.append(len(r_keys))
    table["attributes_string"] = _map(s_off, s_keys, pa.array(s_vals, pa.string()))
    table["attributes_number"] = _map(n_off, n_keys, pa.array(n_vals, pa.float64()))
    table["attributes_bool"] = _map(b_off, b_keys, pa.array(b_vals, pa.bool_()))
    table["resource"] = _map(r_off, r_keys, pa.array(r_vals, pa.string()))
    traces: dict[tuple[str, str, int], list[int]] = {}
    for project, span, start, end in zip(projects, spans, starts, ends, strict=True):
        key = (project, span["trace_id"], start // _NS_PER_DAY)
        entry = traces.get(key)
        if entry is None:
            traces[key] = [start, end, 1]
        else:
            if start < entry[0]:
                entry[0] = start
            if end > entry[1]:
                entry[1] = end
            entry[2] += 1
    keys = list(traces)
    index = pa.table(
        {
            "project": pa.array([k[0] for k in keys], pa.string()),
            "trace_id": pa.array([k[1] for k in keys], pa.string()),
            "day": pa.array([k[2] for k in keys], pa.int32()).cast(pa.date32()),
            "start_ns": pa.array([traces[k][0] for k in keys], pa.int64()),
            "end_ns": pa.array([traces[k][1] for k in keys], pa.int64()),
            "span_count": pa.array([traces[k][2] for k in keys], pa.uint64()),
        }
    )
    return pa.table(table), index


# --------------------------------------------------------------------------- span filters


@dataclass(frozen=True)
class SpanFilter:
    """What a trace search asks of at least one span of each trace it returns."""

    service: str = ""
    operation: str = ""
    min_duration_ns: int = 0
    max_duration_ns: int = 0
    status: str = ""
    kind: str = ""
    q: str = ""


_NUMERIC_OPS = (">=", "<=", "!=", ">", "<", "=")


def parse_span_query(q: str, params: dict[str, Any]) -> list[str]:
    """``q`` of the trace search -> SQL conditions on ``spans``, values as parameters.

    Whitespace-separated terms, all of which must hold (quote values with spaces):

    * ``key=value``, ``key!=value``: an attribute (string, number or boolean) equals the value;
      ``resource.key=value`` looks at the resource (``resource.deployment.environment=prod``);
    * ``key>n``, ``key>=n``, ``key<n``, ``key<=n``: a numeric attribute (``http.status_code>=500``);
    * ``key=*``: the attribute is present;
    * a bare word: the span name or status message contains it (case-insensitive).
    """
    try:
        terms = shlex.split(q)
    except ValueError as exc:
        raise BadRequest(f"invalid q: {exc}") from None
    conds: list[str] = []
    for i, term in enumerate(terms):
        p = f"q{i}"
        op = next((o for o in _NUMERIC_OPS if o in term), "")
        if not op:
            params[p] = term.lower()
            conds.append(f"(positionCaseInsensitiveUTF8(name, {{{p}:String}}) > 0 "
                         f"OR positionCaseInsensitiveUTF8(status_message, {{{p}:String}}) > 0)")
            continue
        key, _, value = term.partition(op)
        if not key:
            raise BadRequest(f"invalid q term {term!r}: expected key{op}value")
        params[f"{p}k"] = key
        k = f"{{{p}k:String}}"
        if key.startswith("resource.") and op in ("=", "!="):
            params[f"{p}k"] = key.removeprefix("resource.")
            params[f"{p}v"] = value
            cond = f"resource[{k}] = {{{p}v:String}}"
            conds.append(cond if op == "=" else f"NOT ({cond})")
            continue
        if op in (">", ">=", "<", "<="):
            try:
                number = float(value)
            except ValueError:
                raise BadRequest(f"invalid q term {term!r}: {op} needs a number") from None
            if not math.isfinite(number):
                raise BadRequest(f"invalid q term {term!r}: {op} needs a finite number")
            params[f"{p}v"] = number
            conds.append(f"(mapContains(attributes_number, {k}) AND attributes_number[{k}] {op} {{{p}v:Float64}})")
            continue
        if value == "*" and op == "=":
            conds.append(f"(mapContains(attributes_string, {k}) OR mapContains(attributes_number, {k}) "
                         f"OR mapContains(attributes_bool, {k}))")
            continue
        params[f"{p}v"] = value
        alts = [f"(mapContains(attributes_string, {k}) AND attributes_string[{k}] = {{{p}v:String}})"]
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            params[f"{p}n"] = number
            alts.append(f"(mapContains(attributes_number, {k}) AND attributes_number[{k}] = {{{p}n:Float64}})")
        if value.lower() in ("true", "false"):
            params[f"{p}b"] = value.lower() == "true"
            alts.append(f"(mapContains(attributes_bool, {k}) AND attributes_bool[{k}] = {{{p}b:Bool}})")
        cond = "(" + " OR ".join(alts) + ")"
        conds.append(cond if op == "=" else f"NOT {cond}")
    return conds


def _filter_sql(flt: SpanFilter, params: dict[str, Any]) -> str:
    conds: list[str] = []
    if flt.service:
        params["f_service"] = flt.service
        conds.append("service = {f_service:String}")
    if flt.operation:
        params["f_operation"] = flt.operation
        conds.append("name = {f_operation:String}")
    if flt.min_duration_ns:
        params["f_min"] = flt.min_duration_ns
        conds.append("duration_ns >= {f_min:Int64}")
    if flt.max_duration_ns:
        params["f_max"] = flt.max_duration_ns
        conds.append("duration_ns <= {f_max:Int64}")
    if flt.status:
        if flt.status not in STATUS_CODES:
            raise BadRequest(f"status must be one of {', '.join(STATUS_CODES)}; got {flt.status!r}")
        params["f_status"] = flt.status
        conds.append("status_code = {f_status:String}")
    if flt.kind:
        if flt.kind not in SPAN_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(SPAN_KINDS)}; got {flt.kind!r}")
        params["f_kind"] = flt.kind
        conds.append("kind = {f_kind:String}")
    if flt.q:
        conds.extend(parse_span_query(flt.q, params))
    return " AND ".join(conds) if conds else "1"


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) < _MAX_EXACT else value


def _span_row(row: dict[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = dict(row["attributes_string"])
    for key, value in row["attributes_number"].items():
        attributes[key] = _number(float(value))
    for key, value in row["attributes_bool"].items():
        attributes[key] = bool(value)
    start = int(row["start_ns"])
    return {
        "trace_id": row["trace_id"],
        "span_id": row["span_id"],
        "parent_span_id": row["parent_span_id"],
        "name": row["name"],
        "kind": row["kind"],
        "service": row["service"],
        "start_ns": start,
        "end_ns": start + int(row["duration_ns"]),
        "status_code": row["status_code"],
        "status_message": row["status_message"],
        "attributes": attributes,
        "resource": dict(row["resource"]),
        "events": orjson.loads(row["events"]) if row["events"] else [],
        "links": orjson.loads(row["links"]) if row["links"] else [],
        "scope_name": row["scope_name"],
        "scope_version": row["scope_version"],
    }


class TraceStore:
    """Reads and writes the span tables through an executor (embedded or server)."""

    def __init__(self, executor: Executor, *, retention_days: int = 7) -> None:
        if retention_days < 1:
            raise ValueError("traces retention must be at least one day")
        self.ex = executor
        self.db = executor.database
        self.retention_days = retention_days

    def tables(self) -> tuple[Table, Table]:
        """The declared tables with the configured retention as their TTL."""
        days = self.retention_days
        return (
            dataclasses.replace(SPANS, ttl=f"toDateTime(start) + toIntervalDay({days})"),
            dataclasses.replace(TRACE_INDEX, ttl=f"day + toIntervalDay({days})"),
        )

    def ensure_schema(self) -> None:
        """Create the tables; if they exist with another retention, change their TTL to it."""
        for table in self.tables():
            for stmt in render_ddl(table, self.db, self.ex.cluster, self.ex.table_settings):
                self.ex.command(stmt)
            local = f"{table.name}_local" if self.ex.cluster else table.name
            rows = self.ex.rows(
                "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                {"db": self.db, "t": local},
            )
            wanted = f"toIntervalDay({self.retention_days})"
            if rows and wanted not in rows[0]["engine_full"]:
                on_cluster = f" ON CLUSTER `{self.ex.cluster}`" if self.ex.cluster else ""
                self.ex.command(f"ALTER TABLE `{self.db}`.`{local}`{on_cluster} MODIFY TTL {table.ttl}")

    # -- writing ------------------------------------------------------------------------------

    def insert(self, batches: Sequence[tuple[str, Sequence[Span]]], *, dedup_token: str | None = None) -> int:
        """Store spans of ``(project, spans)`` pairs; the index rows go in after the spans, so a
        trace found in the index always has its spans readable."""
        spans, index = spans_to_arrow(batches)
        if not spans.num_rows:
            return 0
        self.ex.insert_arrow("spans", spans, dedup_token=dedup_token)
        self.ex.insert_arrow("trace_index", index, dedup_token=dedup_token)
        return int(spans.num_rows)

    # -- reading ------------------------------------------------------------------------------

    def trace_bounds(self, project: str, trace_id: str) -> tuple[int, int, int] | None:
        """(first start, last end, span count) of a trace, from the index; None if unknown."""
        rows = self.ex.rows(
            f"SELECT min(start_ns) AS lo, max(end_ns) AS hi, sum(span_count) AS n FROM `{self.db}`.trace_index "
            "WHERE project = {p:String} AND trace_id = {t:String}",
            {"p": project, "t": trace_id},
        )
        if not rows or not int(rows[0]["n"]):
            return None
        return int(rows[0]["lo"]), int(rows[0]["hi"]), int(rows[0]["n"])

    def get_trace(self, project: str, trace_id: str) -> list[dict[str, Any]]:
        """Every span of one trace (a span stored twice, by a client retrying, once), by start.

        One statement: the trace's time range comes from ``trace_index`` in one scalar
        subquery (a tuple: one lookup, where two subqueries took two and cost a third more),
        which ClickHouse evaluates first, so the read of ``spans`` becomes a primary-key range
        on (hour, trace id): the granule or two holding the trace.
        """
        rows = self.ex.rows(
            f"WITH (SELECT (min(start_ns), max(end_ns)) FROM `{self.db}`.trace_index "
            "WHERE project = {p:String} AND trace_id = {t:String}) AS bounds "
            f"SELECT {_SPAN_COLUMNS} FROM `{self.db}`.spans "
            "WHERE project = {p:String} AND trace_id = {t:String} "
            "AND start >= fromUnixTimestamp64Nano(bounds.1) AND start <= fromUnixTimestamp64Nano(bounds.2) "
            "ORDER BY start, span_id LIMIT 1 BY span_id",
            {"p": project, "t": trace_id},
        )
        return [_span_row(r) for r in rows]

    def search(
        self, project: str, flt: SpanFilter, start_ns: int, end_ns: int, *, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Traces with a span matching ``flt`` that started in ``[start_ns, end_ns)``, newest
        first, each summarised by its root span (or its earliest, if the root is missing)."""
        params: dict[str, Any] = {"p": project, "s": start_ns, "e": end_ns, "lim": limit}
        where = _filter_sql(flt, params)
        scope = (
            "project = {p:String} AND start >= fromUnixTimestamp64Nano({s:Int64}) "
            "AND start < fromUnixTimestamp64Nano({e:Int64})"
        )
        ids = self.ex.rows(
            f"SELECT trace_id, min(start) AS first FROM `{self.db}`.spans WHERE {scope} AND ({where}) "
            "GROUP BY trace_id ORDER BY first DESC LIMIT {lim:UInt32}",
            params,
        )
        if not ids:
            return []
        # The whole traces, wherever their spans lie: bounds from the index, then one read.
        id_list = [r["trace_id"] for r in ids]
        bounds = self.ex.rows(
            f"SELECT min(start_ns) AS lo, max(end_ns) AS hi FROM `{self.db}`.trace_index "
            "WHERE project = {p:String} AND trace_id IN {ids:Array(String)}",
            {"p": project, "ids": id_list},
        )
        lo = int(bounds[0]["lo"]) if bounds else start_ns
        hi = int(bounds[0]["hi"]) if bounds else end_ns
        rows = self.ex.rows(
            "SELECT trace_id, "
            "argMin(name, (parent_span_id != '', start)) AS root_name, "
            "argMin(service, (parent_span_id != '', start)) AS root_service, "
            "toUnixTimestamp64Nano(min(start)) AS start_ns, "
            "max(toUnixTimestamp64Nano(start) + duration_ns) AS end_ns, "
            "count() AS span_count, countIf(status_code = 'error') AS error_count, "
            "groupUniqArray(service) AS services "
            f"FROM (SELECT * FROM `{self.db}`.spans WHERE project = {{p:String}} "
            "AND trace_id IN {ids:Array(String)} "
            "AND start >= fromUnixTimestamp64Nano({lo:Int64}) AND start <= fromUnixTimestamp64Nano({hi:Int64}) "
            "LIMIT 1 BY trace_id, span_id) GROUP BY trace_id",
            {"p": project, "ids": id_list, "lo": lo, "hi": hi},
        )
        by_id = {r["trace_id"]: r for r in rows}
        out = []
        for trace_id in id_list:
            r = by_id.get(trace_id)
            if r is None:
                continue
            out.append(
                {
                    "trace_id": trace_id,
                    "root_name": r["root_name"],
                    "root_service": r["root_service"],
                    "start_ns": int(r["start_ns"]),
                    "duration_ms": (int(r["end_ns"]) - int(r["start_ns"])) / 1e6,
                    "span_count": int(r["span_count"]),
                    "error_count": int(r["error_count"]),
                    "services": sorted(r["services"]),
                }
            )
        return out

    def service_map(self, project: str, start_ns: int, end_ns: int) -> dict[str, Any]:
        """Services and the calls between them in ``[start_ns, end_ns)``.

        An edge ``A -> B`` counts spans of service B whose parent span belongs to service A
        (a call crossing a service boundary); its errors and latency are those of B's spans.
        A node counts the requests its service served: its server and consumer spans, and its
        root spans (a job or script that no one called).

        The join is on one 64-bit hash of (trace id, span id) per side instead of the two
        strings: the hash table of the parent side is several times smaller and faster to
        build (a collision between two spans of a 24 h window is ~1e-9 likely, and would
        only miscount one call).
        """
        params = {"p": project, "s": start_ns, "e": end_ns}
        scope = (
            "project = {p:String} AND start >= fromUnixTimestamp64Nano({s:Int64}) "
            "AND start < fromUnixTimestamp64Nano({e:Int64})"
        )
        stats = (
            "count() AS calls, countIf(status_code = 'error') AS errors, "
            "quantileExact(0.5)(duration_ns) AS p50, quantileExact(0.95)(duration_ns) AS p95"
        )
        edges = self.ex.rows(
            f"SELECT p.service AS source, c.service AS target, {stats} FROM "
            f"(SELECT cityHash64(trace_id, parent_span_id) AS k, service, duration_ns, status_code "
            f" FROM `{self.db}`.spans WHERE {scope} AND parent_span_id != '') AS c "
            f"INNER JOIN (SELECT cityHash64(trace_id, span_id) AS k, service FROM `{self.db}`.spans "
            f" WHERE {scope}) AS p ON c.k = p.k "
            "WHERE p.service != c.service GROUP BY source, target ORDER BY source, target",
            params,
        )
        nodes = self.ex.rows(
            f"SELECT service, {stats} FROM `{self.db}`.spans WHERE {scope} "
            "AND (kind IN ('server', 'consumer') OR parent_span_id = '') GROUP BY service ORDER BY service",
            params,
        )

        def stat(r: dict[str, Any]) -> dict[str, Any]:
            return {
                "calls": int(r["calls"]),
                "errors": int(r["errors"]),
                "error_rate": int(r["errors"]) / int(r["calls"]) if int(r["calls"]) else 0.0,
                "p50_ms": float(r["p50"]) / 1e6,
                "p95_ms": float(r["p95"]) / 1e6,
            }

        return {
            "nodes": [{"id": r["service"], "service": r["service"], **stat(r)} for r in nodes],
            "edges": [{"source": r["source"], "target": r["target"], **stat(r)} for r in edges],
        }
