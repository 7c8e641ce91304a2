"""Log ingest endpoints: NDJSON push and OTLP/HTTP logs.

Each handler decodes (rejecting bad input with a 4xx before anything is stored), then waits for
the WAL to hold the events, then answers. Nothing is acknowledged that is not durable.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from stackwatch.errors import BadRequest
from stackwatch.ingest.ndjson import decode_ndjson
from stackwatch.ingest.otlp_logs import decode_otlp_logs, encode_export_response
from stackwatch.model.logs import LOG_TYPES
from stackwatch.server.deps import body, ingest_project, runtime
from stackwatch.server.responses import JSONResponse

router = APIRouter()

_DEFAULT_KEYS = ("service", "host", "log_type")


def defaults_from_query(request: Request) -> dict[str, Any]:
    """``?service=api&log_type=web&host=web-1``: defaults for events that do not say."""
    defaults = {k: request.query_params[k] for k in _DEFAULT_KEYS if request.query_params.get(k)}
    if "log_type" in defaults and defaults["log_type"] not in LOG_TYPES:
        raise BadRequest(f"log_type must be one of {', '.join(LOG_TYPES)}; got {defaults['log_type']!r}")
    return defaults


@router.post("/api/v1/logs", tags=["ingest"])
async def push_logs(request: Request, project: Any = Depends(ingest_project)) -> Response:
    """NDJSON (one JSON object per line), a JSON array, or plain text lines."""
    data = await body(request)
    events = decode_ndjson(data, request.headers.get("content-type"))
    rt = runtime(request)
    accepted = await rt.batcher.submit("logs", project.slug, events, defaults=defaults_from_query(request))
    return JSONResponse({"accepted": accepted})


@router.post("/v1/logs", tags=["ingest"])
async def otlp_logs(request: Request, project: Any = Depends(ingest_project)) -> Response:
    """OTLP/HTTP logs, protobuf or JSON."""
    content_type = request.headers.get("content-type", "")
    data = await body(request)
    events = decode_otlp_logs(data, content_type)
    rt = runtime(request)
    await rt.batcher.submit("logs", project.slug, events)
    out = encode_export_response(0, content_type)
    media = "application/json" if "json" in content_type else "application/x-protobuf"
    return Response(out, media_type=media)
