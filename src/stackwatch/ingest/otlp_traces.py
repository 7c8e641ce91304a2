"""OTLP/HTTP traces (``POST /v1/traces``): ``ExportTraceServiceRequest`` as protobuf or OTLP/JSON.

Every span becomes a span record (:mod:`stackwatch.model.spans`):

=======================  ==============================================================
``trace_id``/``span_id`` lowercase hex (protobuf carries raw bytes, OTLP/JSON hex strings)
``parent_span_id``       lowercase hex, ``""`` for a root (absent or all-zero bytes)
``service``              the resource's ``service.name``
``kind``/``status_code`` the enum's short name (``SPAN_KIND_SERVER`` -> ``"server"``);
                         OTLP/JSON may send names or numbers
``attributes``           flat: nested maps joined with dots, arrays as JSON text, bytes as
                         base64 (the same flattening as OTLP logs, so a key means the same
                         thing in a log line and in a span)
``resource``             resource attributes, flat ``str -> str``
``events``/``links``     with their own flat attributes
=======================  ==============================================================

A span the store cannot hold (a trace or span id of the wrong length or all zero, no start
time) is not stored and is reported in the response's ``partial_success`` with the reason, as
the OTLP specification asks; the rest of the request is stored. A request that is not valid
protobuf or OTLP/JSON at all is refused with 400.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from stackwatch.errors import BadRequest, UnsupportedMediaType
from stackwatch.ingest._body import gc_paused, parse_content_type
from stackwatch.ingest.otlp_logs import (
    _arr,
    _flatten,
    _get,
    _int,
    _json_id,
    _json_pairs,
    _obj,
    _pb_attributes,
    _str,
    _to_text,
    json_scopes,
)
from stackwatch.model.spans import SPAN_KINDS, STATUS_CODES, Span

__all__ = ["PROTOBUF_CONTENT_TYPES", "TraceBatch", "decode_otlp_traces", "encode_export_response"]

PROTOBUF_CONTENT_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_CONTENT_TYPE = "application/json"

_KIND_NAMES = {f"SPAN_KIND_{name.upper()}": i for i, name in enumerate(SPAN_KINDS)}
_STATUS_NAMES = {f"STATUS_CODE_{name.upper()}": i for i, name in enumerate(STATUS_CODES)}
_MAX_REASONS = 5
#: Nanosecond timestamps a DateTime64(9) holds: up to 2262-04-11.
_MAX_NS = 2**63 - 1


@dataclass
class TraceBatch:
    """The spans of one request, and those that were refused (with why, for the response)."""

    spans: list[Span] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = f" (and {self.rejected - len(self.reasons)} more)" if self.rejected > len(self.reasons) else ""
        return f"{self.rejected} spans rejected: " + "; ".join(self.reasons) + more


def decode_otlp_traces(body: bytes, content_type: str) -> TraceBatch:
    """Decode an OTLP/HTTP traces request body into span records.

    ``content_type`` selects the encoding: ``application/x-protobuf`` (or
    ``application/protobuf``) or ``application/json``; anything else raises
    :class:`UnsupportedMediaType`. A body that does not parse, or OTLP/JSON with a field of
    the wrong type, raises :class:`BadRequest` saying what is wrong.
    """
    media_type, _ = parse_content_type(content_type)
    if media_type in PROTOBUF_CONTENT_TYPES:
        decode: Callable[[bytes], TraceBatch] = _decode_protobuf
    elif media_type == _JSON_CONTENT_TYPE:
        decode = _decode_json
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media_type!r} for OTLP traces; "
            "use application/x-protobuf or application/json"
        )
    try:
        with gc_paused():
            return decode(body)
    except RecursionError:
        raise BadRequest("invalid OTLP traces request: values are nested too deeply") from None


def encode_export_response(batch: TraceBatch | None, content_type: str = "application/x-protobuf") -> bytes:
    """The ``ExportTraceServiceResponse``, in the request's encoding as OTLP/HTTP requires."""
    rejected = batch.rejected if batch else 0
    message = batch.error_message if batch else ""
    media_type, _ = parse_content_type(content_type)
    if media_type == _JSON_CONTENT_TYPE:
        if not rejected:
            return b"{}"
        return orjson.dumps({"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}})
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(ExportTracePartialSuccess(rejected_spans=rejected, error_message=message))
    return response.SerializeToString()


# --------------------------------------------------------------------------- shared assembly


class _Scope:
    """What every span of one (resource, scope) pair shares, computed once per pair."""

    __slots__ = ("attributes", "name", "resource", "service", "version")

    def __init__(self, resource: dict[str, str], name: str, version: str, attributes: dict[str, Any]) -> None:
        self.resource = resource
        self.service = resource.get("service.name", "")
        self.name = name
        self.version = version
        self.attributes = attributes


def _resource(attrs: dict[str, Any]) -> dict[str, str]:
    return {key: _to_text(value) for key, value in attrs.items() if value is not None}


def _span(
    batch: TraceBatch,
    scope: _Scope,
    trace_id: str,
    span_id: str,
    parent_span_id: str,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any],
    status_code: int,
    status_message: str,
    events: list[dict[str, Any]],
    links: list[dict[str, Any]],
    where: str,
) -> None:
    if len(trace_id) != 32:
        batch.reject(f"{where}: traceId must be 16 non-zero bytes")
        return
    if len(span_id) != 16:
        batch.reject(f"{where}: spanId must be 8 non-zero bytes")
        return
    if parent_span_id and len(parent_span_id) != 16:
        batch.reject(f"{where}: parentSpanId must be empty or 8 bytes")
        return
    if start_ns <= 0:
        batch.reject(f"{where}: startTimeUnixNano is missing")
        return
    if start_ns > _MAX_NS or end_ns > _MAX_NS:
        batch.reject(f"{where}: start or end time is past the year 2262")
        return
    if scope.attributes:
        # Span attributes win over scope attributes of the same name.
        attributes = {**scope.attributes, **attributes}
    batch.spans.append(
        {
            "trace_id": trace_id,
            "span_id": span_id,
            "parent_span_id": parent_span_id,
            "name": name,
            "kind": SPAN_KINDS[kind] if 0 <= kind < len(SPAN_KINDS) else "unspecified",
            "service": scope.service,
            "start_ns": start_ns,
            # Clock skew between threads can make end precede start by a hair; a negative
            # duration would break every percentile, so such a span lasts zero time.
            "end_ns": max(end_ns, start_ns),
            "status_code": STATUS_CODES[status_code] if 0 <= status_code < len(STATUS_CODES) else "unset",
            "status_message": status_message,
            "attributes": attributes,
            "resource": scope.resource,
            "events": events,
            "links": links,
            "scope_name": scope.name,
            "scope_version": scope.version,
        }
    )


def _hex(raw: bytes) -> str:
    return "" if not raw or not any(raw) else raw.hex()


# --------------------------------------------------------------------------- protobuf


def _decode_protobuf(body: bytes) -> TraceBatch:
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise BadRequest(f"invalid OTLP protobuf: {exc}") from None
    batch = TraceBatch()
    for i, resource_spans in enumerate(request.resource_spans):
        resource = _resource(_pb_attributes(resource_spans.resource.attributes))
        for j, scope_spans in enumerate(resource_spans.scope_spans):
            pb_scope = scope_spans.scope
            scope = _Scope(resource, pb_scope.name, pb_scope.version, _pb_attributes(pb_scope.attributes))
            for k, span in enumerate(scope_spans.spans):
                _span(
                    batch,
                    scope,
                    _hex(span.trace_id),
                    _hex(span.span_id),
                    _hex(span.parent_span_id),
                    span.name,
                    span.kind,
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    _pb_attributes(span.attributes),
                    span.status.code,
                    span.status.message,
                    [
                        {"time_ns": ev.time_unix_nano, "name": ev.name, "attributes": _pb_attributes(ev.attributes)}
                        for ev in span.events
                    ],
                    [
                        {
                            "trace_id": _hex(link.trace_id),
                            "span_id": _hex(link.span_id),
                            "attributes": _pb_attributes(link.attributes),
                        }
                        for link in span.links
                    ],
                    f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]",
                )
    return batch


# --------------------------------------------------------------------------- OTLP/JSON


def _decode_json(body: bytes) -> TraceBatch:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid OTLP/JSON: {exc}") from None
    request = _obj(request, "request")
    batch = TraceBatch()
    for resource_attrs, name, version, scope_attrs, spans, where in json_scopes(request, "Spans", ("spans", "spans")):
        scope = _Scope(_resource(resource_attrs), name, version, scope_attrs)
        for k, span in enumerate(spans):
            _json_span(batch, scope, span, f"{where}[{k}]")
    return batch


def _json_span(batch: TraceBatch, scope: _Scope, span: Any, where: str) -> None:
    span = _obj(span, where)
    try:
        trace_id = _json_id(_get(span, "traceId", "trace_id"), 16, f"{where}.traceId")
        span_id = _json_id(_get(span, "spanId", "span_id"), 8, f"{where}.spanId")
        parent = _json_id(_get(span, "parentSpanId", "parent_span_id"), 8, f"{where}.parentSpanId")
    except BadRequest as exc:
        batch.reject(exc.message.removeprefix("invalid OTLP/JSON: "))
        return
    status = _obj(span.get("status"), f"{where}.status")
    events = []
    for n, event in enumerate(_arr(span.get("events"), f"{where}.events")):
        ewhere = f"{where}.events[{n}]"
        event = _obj(event, ewhere)
        events.append(
            {
                "time_ns": _int(_get(event, "timeUnixNano", "time_unix_nano"), f"{ewhere}.timeUnixNano"),
                "name": _str(event.get("name"), f"{ewhere}.name"),
                "attributes": _flatten(_json_pairs(event.get("attributes"), f"{ewhere}.attributes")),
            }
        )
    links = []
    for n, link in enumerate(_arr(span.get("links"), f"{where}.links")):
        lwhere = f"{where}.links[{n}]"
        link = _obj(link, lwhere)
        try:
            link_trace = _json_id(_get(link, "traceId", "trace_id"), 16, f"{lwhere}.traceId")
            link_span = _json_id(_get(link, "spanId", "span_id"), 8, f"{lwhere}.spanId")
        except BadRequest:
            continue  # a link is a hint; a bad one is dropped, not the span
        links.append(
            {
                "trace_id": link_trace,
                "span_id": link_span,
                "attributes": _flatten(_json_pairs(link.get("attributes"), f"{lwhere}.attributes")),
            }
        )
    _span(
        batch,
        scope,
        trace_id,
        span_id,
        parent,
        _str(span.get("name"), f"{where}.name"),
        _enum(span.get("kind"), _KIND_NAMES, f"{where}.kind"),
        _int(_get(span, "startTimeUnixNano", "start_time_unix_nano"), f"{where}.startTimeUnixNano"),
        _int(_get(span, "endTimeUnixNano", "end_time_unix_nano"), f"{where}.endTimeUnixNano"),
        _flatten(_json_pairs(span.get("attributes"), f"{where}.attributes")),
        _enum(status.get("code"), _STATUS_NAMES, f"{where}.status.code"),
        _str(status.get("message"), f"{where}.status.message"),
        events,
        links,
        where,
    )


def _enum(value: Any, names: dict[str, int], where: str) -> int:
    """An OTLP/JSON enum: its number, or its name as the proto3 JSON mapping also allows."""
    if value is None:
        return 0
    if type(value) is str and value in names:
        return names[value]
    if type(value) is int:
        return value
    raise BadRequest(f"invalid OTLP/JSON: {where} must be a number or one of {', '.join(names)}")
