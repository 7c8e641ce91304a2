"""One trace as the waterfall shows it: spans in tree order, with depth, offsets and self time.

The store returns a trace's spans as rows; this module turns them into what a reader needs:

* tree order (each span followed by its children, children by start time), with ``depth``;
  a span whose parent never arrived (lost, or sampled out upstream) is shown as a root with
  ``orphan: true`` rather than dropped;
* ``offset_ms`` from the trace start and ``duration_ms``, which place the span's bar;
* ``self_time_ms``: the span's time not covered by any of its children (the children's
  intervals are merged and clipped to the span first, so parallel and asynchronous children
  are not counted twice). Self time is what tells which span *dominates* a slow request: a
  parent waiting on a slow HTTP call has little self time, the call has all of it;
* ``breakdown``: self time summed per (service, operation), largest first, as a share of the
  trace: the "slow dependency" answer (``Apollo API: search_people`` = 55% of the request).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

__all__ = ["assemble_trace", "ns_to_rfc3339"]


def ns_to_rfc3339(ns: int) -> str:
    seconds, rem = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{rem:09d}Z"


def _covered(intervals: list[tuple[int, int]], lo: int, hi: int) -> int:
    """Nanoseconds of ``[lo, hi]`` covered by the union of ``intervals``."""
    total = 0
    cur_start = cur_end = None
    for start, end in sorted(intervals):
        start, end = max(start, lo), min(end, hi)
        if end <= start:
            continue
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def assemble_trace(trace_id: str, rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(spans in waterfall order, trace summary) for the span records of one trace."""
    if not rows:
        return [], {}
    by_id = {r["span_id"]: r for r in rows}
    children: dict[str, list[dict[str, Any]]] = {}
    roots: list[dict[str, Any]] = []
    for r in rows:
        parent = r["parent_span_id"]
        if parent and parent in by_id and parent != r["span_id"]:
            children.setdefault(parent, []).append(r)
        else:
            roots.append(r)
    for kids in children.values():
        kids.sort(key=lambda r: (r["start_ns"], r["span_id"]))
    roots.sort(key=lambda r: (r["parent_span_id"] != "", r["start_ns"], r["span_id"]))
    t0 = min(r["start_ns"] for r in rows)
    t1 = max(r["end_ns"] for r in rows)
    total_ns = max(t1 - t0, 1)

    ordered: list[dict[str, Any]] = []
    seen: set[str] = set()
    # Iterative depth-first walk: a deep trace (a recursive function traced at every level)
    # must not exhaust Python's stack, and a parent cycle sent by a buggy client must end.
    stack: list[tuple[dict[str, Any], int]] = [(r, 0) for r in reversed(roots)]
    while stack:
        r, depth = stack.pop()
        if r["span_id"] in seen:
            continue
        seen.add(r["span_id"])
        kids = children.get(r["span_id"], [])
        ordered.append(_span_view(r, depth, t0, kids))
        stack.extend((k, depth + 1) for k in reversed(kids))
    for r in rows:  # spans only reachable through a cycle
        if r["span_id"] not in seen:
            seen.add(r["span_id"])
            ordered.append(_span_view(r, 0, t0, children.get(r["span_id"], [])))

    breakdown: dict[tuple[str, str], dict[str, Any]] = {}
    for s in ordered:
        item = breakdown.setdefault(
            (s["service"], s["name"]),
            {"service": s["service"], "name": s["name"], "count": 0, "self_time_ms": 0.0, "duration_ms": 0.0},
        )
        item["count"] += 1
        item["self_time_ms"] += s["self_time_ms"]
        item["duration_ms"] += s["duration_ms"]
    self_total = sum(item["self_time_ms"] for item in breakdown.values()) or 1.0
    items = sorted(breakdown.values(), key=lambda i: -i["self_time_ms"])
    for item in items:
        item["share"] = round(item["self_time_ms"] / self_total, 4)
    root = next((s for s in ordered if not s["parent_span_id"]), ordered[0])
    services = sorted({s["service"] for s in ordered})
    summary = {
        "trace_id": trace_id,
        "start": ns_to_rfc3339(t0),
        "start_ns": t0,
        "duration_ms": total_ns / 1e6,
        "span_count": len(ordered),
        "error_count": sum(1 for s in ordered if s["status"] == "error"),
        "services": services,
        "root_service": root["service"],
        "root_name": root["name"],
        "breakdown": items,
    }
    return ordered, summary


def _span_view(r: dict[str, Any], depth: int, t0: int, kids: list[dict[str, Any]]) -> dict[str, Any]:
    start, end = r["start_ns"], r["end_ns"]
    covered = _covered([(k["start_ns"], k["end_ns"]) for k in kids], start, end)
    return {
        "span_id": r["span_id"],
        "parent_span_id": r["parent_span_id"],
        "trace_id": r["trace_id"],
        "name": r["name"],
        "service": r["service"],
        "kind": r["kind"],
        "start": ns_to_rfc3339(start),
        "start_ns": start,
        "end_ns": end,
        "offset_ms": (start - t0) / 1e6,
        "duration_ms": (end - start) / 1e6,
        "self_time_ms": (end - start - covered) / 1e6,
        "status": r["status_code"],
        "status_message": r["status_message"],
        "depth": depth,
        "child_count": len(kids),
        "orphan": bool(r["parent_span_id"]) and depth == 0,
        "attributes": r["attributes"],
        "resource": r["resource"],
        "events": [
            {**e, "time": ns_to_rfc3339(int(e["time_ns"])), "offset_ms": (int(e["time_ns"]) - t0) / 1e6}
            for e in r["events"]
        ],
        "links": r["links"],
        "scope_name": r["scope_name"],
        "scope_version": r["scope_version"],
    }
