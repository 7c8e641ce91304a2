"""Sentry ingest endpoints: ``POST /api/<project_id>/envelope/`` and ``/store/``.

A ``sentry_sdk`` (or the browser SDK) whose DSN is ``http://<ingest token>@<host>/<project id>``
sends here. Each request is authenticated by its public key (``X-Sentry-Auth``, the
``sentry_key`` query parameter, or the envelope's ``dsn``), decoded (4xx for anything
malformed), made durable in the WAL, then answered like Sentry: ``{"id": "<event id>"}``.
Events go to the ``errors`` sink; transactions become spans for the ``spans`` sink.

The browser SDK posts from the page's origin, so these routes answer CORS requests; they
carry no cookie-based authority, only the public key in the request itself.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from stackwatch.errors import Forbidden, PayloadTooLarge, Unauthorized
from stackwatch.ingest._body import read_body
from stackwatch.ingest.sentry import (
    SentryPayload,
    auth_key,
    decode_brotli,
    decode_envelope,
    decode_store,
    dsn_key,
    transaction_to_spans,
)
from stackwatch.model.errors import event_id as normalize_event_id
from stackwatch.server.deps import credential, runtime
from stackwatch.server.responses import JSONResponse

router = APIRouter(tags=["sentry"])

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, X-Sentry-Auth, Authorization",
    "Access-Control-Expose-Headers": "X-Sentry-Error, Retry-After, X-Sentry-Rate-Limits",
    "Access-Control-Max-Age": "3600",
}


async def _read(request: Request) -> bytes:
    """The body with its Content-Encoding undone (gzip, deflate, zstd and brotli)."""
    limit = runtime(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    encoding = (request.headers.get("content-encoding") or "").strip().lower()
    if encoding == "br":
        return decode_brotli(raw, limit)
    return read_body(raw, encoding, limit)


def _project(request: Request, project_id: str, dsn: str | None) -> Any:
    """The project the request's key writes to; 401 without a valid key, 403 for another project's."""
    key = auth_key(request.headers, request.query_params)
    if key is None and dsn:
        key, _ = dsn_key(dsn)
    if key is None:
        key = credential(request)
    if not key:
        raise Unauthorized(
            "missing Sentry key: send 'X-Sentry-Auth: Sentry sentry_key=<public key>' or ?sentry_key=<public key>"
        )
    project = runtime(request).auth.verify_ingest_token(key)
    if project_id not in (str(project.id), project.slug):
        raise Forbidden(f"this key belongs to project {project.id}, not {project_id!r}: check the DSN")
    return project


def _first_line_dsn(data: bytes) -> str | None:
    import orjson

    end = data.find(b"\n")
    try:
        header = orjson.loads(data if end < 0 else data[:end])
    except orjson.JSONDecodeError:
        return None
    dsn = header.get("dsn") if isinstance(header, dict) else None
    return dsn if isinstance(dsn, str) else None


async def _submit(request: Request, project: Any, payload: SentryPayload) -> None:
    rt = runtime(request)
    received = time.time()
    client_ip = request.client.host if request.client else ""
    outcomes = rt.errors.outcomes if rt.errors is not None else None
    events: list[dict[str, Any]] = []
    spans: list[dict[str, Any]] = []
    for record in payload.records:
        event = record["event"]
        if record["kind"] == "transaction" or event.get("type") == "transaction":
            spans.extend(transaction_to_spans(event))
            continue
        # The id the SDK was answered with is the id stored: fill it in now if the event lacks one.
        event["event_id"] = normalize_event_id(event.get("event_id") or payload.event_id)
        if payload.event_id is None:
            payload.event_id = event["event_id"]
        user = event.get("user")
        if isinstance(user, dict) and user.get("ip_address") == "{{auto}}":
            user["ip_address"] = client_ip  # the SDK asks the server to fill in the sender's address
        events.append({"event": event, "received": received, "attachments": record.get("attachments") or []})
    if events:
        await rt.batcher.submit("errors", project.slug, events)
    if spans:
        if "spans" in rt.batcher.sinks:
            if rt.errors is not None and rt.errors.redactor.enabled:
                for span in spans:
                    span["attributes"] = rt.errors.redactor.redact_mapping(span["attributes"])
            await rt.batcher.submit("spans", project.slug, spans)
        elif outcomes is not None:
            outcomes.add("transaction", "no_trace_storage", sum(1 for r in payload.records if r["kind"] == "transaction"))
    if outcomes is not None:
        outcomes.update(payload.outcomes)
        if payload.sessions:
            outcomes.add("session", "accepted", payload.sessions)
        transactions = sum(1 for r in payload.records if r["kind"] == "transaction")
        if transactions and "spans" in rt.batcher.sinks:
            outcomes.add("transaction", "accepted", transactions)


def _answer(event_id: str | None) -> Response:
    body = {"id": normalize_event_id(event_id)} if event_id else {}
    return JSONResponse(body, headers=_CORS)


@router.options("/api/{project_id}/envelope/", include_in_schema=False)
@router.options("/api/{project_id}/store/", include_in_schema=False)
async def preflight(project_id: str) -> Response:
    return Response(status_code=200, headers=_CORS)


@router.post("/api/{project_id}/envelope/")
async def envelope(request: Request, project_id: str) -> Response:
    """A Sentry envelope: events, transactions, attachments, sessions, client reports."""
    data = await _read(request)
    project = _project(request, project_id, _first_line_dsn(data))
    settings = runtime(request).settings
    payload = decode_envelope(
        data,
        max_event_bytes=settings.errors_max_event_bytes,
        max_attachment_bytes=settings.errors_max_attachment_bytes,
    )
    await _submit(request, project, payload)
    return _answer(payload.event_id)


@router.post("/api/{project_id}/store/")
async def store(request: Request, project_id: str) -> Response:
    """The legacy store endpoint: one event (or transaction) as JSON."""
    data = await _read(request)
    project = _project(request, project_id, None)
    settings = runtime(request).settings
    if len(data) > settings.errors_max_event_bytes:
        raise PayloadTooLarge(f"event is {len(data)} bytes, the limit is {settings.errors_max_event_bytes}")
    event = decode_store(data, settings.errors_max_event_bytes)
    kind = "transaction" if event.get("type") == "transaction" else "event"
    event["event_id"] = normalize_event_id(event.get("event_id"))
    await _submit(request, project, SentryPayload(records=[{"kind": kind, "event": event, "attachments": []}]))
    return _answer(event["event_id"])
