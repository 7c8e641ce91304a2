"""Elasticsearch-compatible endpoints, so Filebeat, Vector, Logstash and rsyslog ship here.

Requests carry the project ingest token as the password of basic auth (or as an API key).
Errors answer in Elasticsearch's error shape, because that is what these clients parse.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from stackwatch.errors import StackwatchError
from stackwatch.ingest.esbulk import (
    PRODUCT_HEADERS,
    build_bulk_response,
    build_document_response,
    decode_bulk,
    decode_document,
    error_response,
    handshake,
)
from stackwatch.server.deps import body, ingest_project, runtime
from stackwatch.server.responses import JSONResponse

__all__ = ["root_response", "router"]

router = APIRouter(tags=["elasticsearch"])

_ERROR_TYPES = {
    400: "parse_exception",
    401: "security_exception",
    403: "security_exception",
    404: "index_not_found_exception",
    413: "content_too_long_exception",
    415: "media_type_header_exception",
    429: "es_rejected_execution_exception",
}


def es_json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={**PRODUCT_HEADERS, **(headers or {})})


def es_error(exc: StackwatchError) -> JSONResponse:
    status = exc.status_code
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="stackwatch" charset="UTF-8"'
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return es_json(error_response(status, _ERROR_TYPES.get(status, "exception"), exc.message), status, headers)


async def _bulk(request: Request, index: str | None) -> Response:
    try:
        project = ingest_project(request)
        data = await body(request)
        started = time.perf_counter()
        bulk = decode_bulk(data, index)
        events = bulk.events
        if events:
            await runtime(request).batcher.submit("logs", project.slug, events)
        took = int((time.perf_counter() - started) * 1000)
        return es_json(build_bulk_response(bulk, took))
    except StackwatchError as exc:
        return es_error(exc)


@router.post("/_bulk", include_in_schema=False)
@router.put("/_bulk", include_in_schema=False)
async def bulk(request: Request) -> Response:
    return await _bulk(request, None)


@router.post("/{index}/_bulk", include_in_schema=False)
@router.put("/{index}/_bulk", include_in_schema=False)
async def index_bulk(request: Request, index: str) -> Response:
    return await _bulk(request, index)


async def _document(request: Request, index: str, doc_id: str | None) -> Response:
    try:
        project = ingest_project(request)
        item = decode_document(await body(request), index, doc_id)
        assert item.source is not None
        await runtime(request).batcher.submit("logs", project.slug, [item.source])
        return es_json(build_document_response(item), 201)
    except StackwatchError as exc:
        return es_error(exc)


async def root_response(request: Request) -> Response:
    """``GET /`` for a non-browser client: the Elasticsearch banner shippers check first."""
    return await _handshake_or_404(request, "")


async def _handshake_or_404(request: Request, path: str) -> Response:
    try:
        ingest_project(request)
    except StackwatchError as exc:
        return es_error(exc)
    answer = handshake(request.method, "/" + path)
    if answer is None:
        return es_json(
            error_response(404, "index_not_found_exception", f"no such index or endpoint [{path}]"), 404
        )
    if answer.body is None:
        return Response(status_code=answer.status, headers=PRODUCT_HEADERS)
    if isinstance(answer.body, str):
        return Response(answer.body, status_code=answer.status, media_type="text/plain", headers=PRODUCT_HEADERS)
    return es_json(answer.body, answer.status)


@router.api_route("/{path:path}", methods=["GET", "HEAD", "PUT", "POST"], include_in_schema=False)
async def catch_all(request: Request, path: str) -> Response:
    """Handshake calls, single-document writes, and a clear 404 for anything else."""
    if path.startswith(("api/", "ui/", "v1/")):
        return JSONResponse({"status": "error", "error": f"not found: /{path}"}, status_code=404)
    parts = [p for p in path.split("/") if p]
    if request.method in ("POST", "PUT") and parts and not parts[0].startswith("_") and len(parts) in (2, 3):
        # POST /<index>/_doc, PUT /<index>/_doc/<id>, POST /<index>/_create/<id>, rsyslog's POST /<index>/<type>
        doc_id = parts[2] if len(parts) == 3 else None
        return await _document(request, parts[0], doc_id)
    return await _handshake_or_404(request, path)
