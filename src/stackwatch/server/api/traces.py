"""Traces: OTLP/HTTP ingest, one trace with its logs and errors, trace search, the service map.

``POST /v1/traces`` takes a project ingest token like ``/v1/logs``; the reads take a viewer
(API token or browser session) like the log search, and ``?project=slug`` picks the project.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from stackwatch.errors import BadRequest, NotFound, StackwatchError
from stackwatch.ingest.otlp_traces import decode_otlp_traces, encode_export_response
from stackwatch.model.spans import normalize_trace_id
from stackwatch.query.timerange import parse_duration, time_range
from stackwatch.query.traces import assemble_trace
from stackwatch.server.api.logs import project_slug
from stackwatch.server.deps import body, ingest_project, runtime, viewer
from stackwatch.server.responses import JSONResponse
from stackwatch.server.runtime import Runtime
from stackwatch.storage.logs import ns_to_rfc3339
from stackwatch.storage.traces import SpanFilter, TraceStore

__all__ = ["router", "trace_detail"]

router = APIRouter()
log = logging.getLogger("stackwatch.server")

MAX_LIMIT = 1000
#: How far around a trace's own time range its log lines are looked for: services' clocks
#: differ, and a line logged while a span was open may carry a timestamp taken before it.
LOG_SLACK_NS = 5 * 60 * 10**9
MAX_TRACE_LOGS = 1000


def _store(rt: Runtime) -> TraceStore:
    if rt.traces is None:  # pragma: no cover - every runtime built by Runtime.open has one
        raise StackwatchError("trace storage is not available")
    return rt.traces


@router.post("/v1/traces", tags=["ingest"])
async def otlp_traces(request: Request, project: Any = Depends(ingest_project)) -> Response:
    """OTLP/HTTP traces, protobuf or JSON (gzip, deflate or zstd bodies)."""
    content_type = request.headers.get("content-type", "")
    data = await body(request)
    batch = decode_otlp_traces(data, content_type)
    rt = runtime(request)
    await rt.batcher.submit("spans", project.slug, batch.spans)
    media = "application/json" if "json" in content_type else "application/x-protobuf"
    return Response(encode_export_response(batch, content_type), media_type=media)


def _duration_ms(text: str, name: str) -> int:
    """``500ms``, ``1.5s``, ``2m``; a bare number is milliseconds (the unit spans are shown in)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return parse_duration(text)
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return int(value * 1_000_000)


def trace_detail(rt: Runtime, project: str, trace_id: str) -> dict[str, Any]:
    """``{"trace", "spans", "logs", "errors"}`` of one trace; raises NotFound if no span has it."""
    rows = _store(rt).get_trace(project, trace_id)
    if not rows:
        raise NotFound(f"trace {trace_id} not found in project {project!r}")
    spans, summary = assemble_trace(trace_id, rows)
    t0 = summary["start_ns"]
    t1 = t0 + int(summary["duration_ms"] * 1e6)
    page = rt.logs.search(
        project,
        "trace_id = {_trace_id:String}",
        {"_trace_id": trace_id},
        t0 - LOG_SLACK_NS,
        t1 + LOG_SLACK_NS,
        limit=MAX_TRACE_LOGS,
    )
    # Past the limit the newest lines are kept (where a request fails) and ``logs_total`` says
    # how many there are, so the page can say what it leaves out and link to all of them.
    logs = sorted(page.hits, key=lambda h: h["timestamp_ns"])
    for hit in logs:
        hit["offset_ms"] = (hit["timestamp_ns"] - t0) / 1e6
    errors: list[dict[str, Any]] = []
    error_store = getattr(rt, "errors", None)
    if error_store is not None:
        try:
            errors = list(error_store.events_for_trace(project, trace_id, limit=100))
        except StackwatchError as exc:  # the trace is still worth showing without its errors
            log.warning("errors of trace %s unavailable: %s", trace_id, exc.message)
    logs_window = {"start": ns_to_rfc3339(t0 - LOG_SLACK_NS), "end": ns_to_rfc3339(t1 + LOG_SLACK_NS)}
    return {"trace": summary, "spans": spans, "logs": logs, "logs_total": page.total, "logs_window": logs_window,
            "errors": errors}


@router.get("/api/v1/traces/{trace_id}", tags=["traces"])
def get_trace(request: Request, trace_id: str, who: Any = Depends(viewer)) -> JSONResponse:
    """Every span of a trace in waterfall order, with the log lines and errors of the trace."""
    try:
        tid = normalize_trace_id(trace_id)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return JSONResponse(trace_detail(runtime(request), project_slug(request, who), tid))


@router.get("/api/v1/traces", tags=["traces"])
def search_traces(
    request: Request,
    service: str = "",
    operation: str = "",
    min_duration: str = "",
    max_duration: str = "",
    status: str = "",
    kind: str = "",
    q: str = "",
    start: str | None = None,
    end: str | None = None,
    limit: int = 20,
    who: Any = Depends(viewer),
) -> JSONResponse:
    """Traces with at least one span matching every filter, newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    start_ns, end_ns = time_range(start, end)
    flt = SpanFilter(
        service=service,
        operation=operation,
        min_duration_ns=_duration_ms(min_duration, "min_duration") if min_duration else 0,
        max_duration_ns=_duration_ms(max_duration, "max_duration") if max_duration else 0,
        status=status.lower(),
        kind=kind.lower(),
        q=q,
    )
    traces = _store(runtime(request)).search(project_slug(request, who), flt, start_ns, end_ns, limit=limit)
    return JSONResponse({"traces": traces})


@router.get("/api/v1/services/map", tags=["traces"])
def service_map(
    request: Request, start: str | None = None, end: str | None = None, who: Any = Depends(viewer)
) -> JSONResponse:
    """Services (nodes) and the calls between them (edges) with counts, errors and latency."""
    start_ns, end_ns = time_range(start, end)
    return JSONResponse(_store(runtime(request)).service_map(project_slug(request, who), start_ns, end_ns))
