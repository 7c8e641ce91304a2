"""The span record: what every trace decoder produces and what the span store consumes.

A span is a plain dict (it travels through the WAL as JSON, so a dataclass would only be
converted back and forth). Its keys are fixed here, once, for the OTLP decoder, the Sentry
transaction converter and the store alike:

=================  ===================================================================
``trace_id``       32 lowercase hex digits
``span_id``        16 lowercase hex digits
``parent_span_id`` 16 lowercase hex digits, or ``""`` for a root span
``name``           the operation (``GET /api/orders/{id}``, ``SELECT orders``)
``kind``           one of :data:`SPAN_KINDS`
``service``        the resource's ``service.name`` (``""`` when the sender did not say)
``start_ns``       int, ns since the epoch (UTC)
``end_ns``         int, ns since the epoch, ``>= start_ns``
``status_code``    one of :data:`STATUS_CODES`
``status_message`` str
``attributes``     flat dict, dotted keys, ``str``/``int``/``float``/``bool`` values
``resource``       flat dict ``str -> str``
``events``         list of ``{"time_ns", "name", "attributes"}``
``links``          list of ``{"trace_id", "span_id", "attributes"}``
``scope_name``     instrumentation scope (``opentelemetry.instrumentation.flask``)
``scope_version``  its version
=================  ===================================================================
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "SPAN_FIELDS",
    "SPAN_KINDS",
    "STATUS_CODES",
    "Span",
    "is_span_id",
    "is_trace_id",
    "make_span",
    "normalize_trace_id",
    "validate_span",
]

#: A span record (see the module docstring for its keys).
Span = dict[str, Any]

#: Span kinds, by their OTLP enum number (``SPAN_KIND_SERVER`` = 2 -> ``"server"``).
SPAN_KINDS: tuple[str, ...] = ("unspecified", "internal", "server", "client", "producer", "consumer")

#: Status codes, by their OTLP enum number (``STATUS_CODE_ERROR`` = 2 -> ``"error"``).
STATUS_CODES: tuple[str, ...] = ("unset", "ok", "error")

SPAN_FIELDS: tuple[str, ...] = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "service",
    "start_ns",
    "end_ns",
    "status_code",
    "status_message",
    "attributes",
    "resource",
    "events",
    "links",
    "scope_name",
    "scope_version",
)

_TRACE_ID = re.compile(r"[0-9a-f]{32}\Z")
_SPAN_ID = re.compile(r"[0-9a-f]{16}\Z")
_SCALARS = (str, int, float, bool)


def is_trace_id(value: object) -> bool:
    """32 lowercase hex digits, not all zero (the W3C and OTLP rule for a valid trace id)."""
    return isinstance(value, str) and bool(_TRACE_ID.match(value)) and value != "0" * 32


def is_span_id(value: object) -> bool:
    """16 lowercase hex digits, not all zero."""
    return isinstance(value, str) and bool(_SPAN_ID.match(value)) and value != "0" * 16


def normalize_trace_id(text: str) -> str:
    """A trace id as users paste it (upper case, with dashes as some tools print UUIDs) -> canonical.

    Raises ``ValueError`` when it is not 32 hex digits once dashes are removed.
    """
    cleaned = text.strip().replace("-", "").lower()
    if not is_trace_id(cleaned):
        raise ValueError(f"invalid trace id {text[:80]!r}: expected 32 hex digits")
    return cleaned


def make_span(
    trace_id: str,
    span_id: str,
    name: str,
    start_ns: int,
    end_ns: int,
    *,
    parent_span_id: str = "",
    kind: str = "internal",
    service: str = "",
    status_code: str = "unset",
    status_message: str = "",
    attributes: dict[str, Any] | None = None,
    resource: dict[str, str] | None = None,
    events: list[dict[str, Any]] | None = None,
    links: list[dict[str, Any]] | None = None,
    scope_name: str = "",
    scope_version: str = "",
) -> Span:
    """Build a span record with every key present (tests, converters from other protocols)."""
    resource = dict(resource or {})
    if service and "service.name" not in resource:
        resource["service.name"] = service
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
        "name": name,
        "kind": kind,
        "service": service,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "status_code": status_code,
        "status_message": status_message,
        "attributes": dict(attributes or {}),
        "resource": resource,
        "events": list(events or []),
        "links": list(links or []),
        "scope_name": scope_name,
        "scope_version": scope_version,
    }


def validate_span(span: Any) -> list[str]:
    """Problems with a span record, as messages; an empty list means it is valid.

    Producers call this in tests (the OTLP decoder guarantees it by construction); the store
    relies on it being true.
    """
    if not isinstance(span, dict):
        return ["a span must be a dict"]
    problems = [f"missing key {key!r}" for key in SPAN_FIELDS if key not in span]
    if problems:
        return problems
    extra = sorted(set(span) - set(SPAN_FIELDS))
    if extra:
        problems.append(f"unknown keys {extra}")
    if not is_trace_id(span["trace_id"]):
        problems.append(f"trace_id {span['trace_id']!r} is not 32 lowercase hex digits")
    if not is_span_id(span["span_id"]):
        problems.append(f"span_id {span['span_id']!r} is not 16 lowercase hex digits")
    if span["parent_span_id"] != "" and not is_span_id(span["parent_span_id"]):
        problems.append(f"parent_span_id {span['parent_span_id']!r} is neither empty nor 16 hex digits")
    if span["kind"] not in SPAN_KINDS:
        problems.append(f"kind {span['kind']!r} is not one of {SPAN_KINDS}")
    if span["status_code"] not in STATUS_CODES:
        problems.append(f"status_code {span['status_code']!r} is not one of {STATUS_CODES}")
    for key in ("start_ns", "end_ns"):
        if type(span[key]) is not int or span[key] < 0:
            problems.append(f"{key} must be a non-negative int")
    if not problems and span["end_ns"] < span["start_ns"]:
        problems.append("end_ns is before start_ns")
    for key in ("name", "service", "status_message", "scope_name", "scope_version"):
        if not isinstance(span[key], str):
            problems.append(f"{key} must be a string")
    problems.extend(_check_attributes(span["attributes"], "attributes"))
    resource = span["resource"]
    if not isinstance(resource, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in resource.items()
    ):
        problems.append("resource must be a flat dict of str -> str")
    for i, event in enumerate(span["events"] if isinstance(span["events"], list) else [None]):
        if not isinstance(event, dict) or set(event) != {"time_ns", "name", "attributes"}:
            problems.append(f"events[{i}] must be a dict with time_ns, name, attributes")
        else:
            problems.extend(_check_attributes(event["attributes"], f"events[{i}].attributes"))
    for i, link in enumerate(span["links"] if isinstance(span["links"], list) else [None]):
        if not isinstance(link, dict) or set(link) != {"trace_id", "span_id", "attributes"}:
            problems.append(f"links[{i}] must be a dict with trace_id, span_id, attributes")
        else:
            problems.extend(_check_attributes(link["attributes"], f"links[{i}].attributes"))
    return problems


def _check_attributes(attributes: Any, where: str) -> list[str]:
    if not isinstance(attributes, dict):
        return [f"{where} must be a dict"]
    bad = [k for k, v in attributes.items() if not isinstance(k, str) or not isinstance(v, _SCALARS)]
    return [f"{where}: key {bad[0]!r} must map to a str/int/float/bool"] if bad else []
