"""The Sentry ingest protocol: envelopes, the legacy store endpoint, and how SDKs authenticate.

An *envelope* (what every current Sentry SDK sends to ``/api/<project>/envelope/``) is::

    {"event_id": "...", "dsn": "...", "sent_at": "..."}\\n     <- envelope header (JSON)
    {"type": "event", "length": 1234}\\n                       <- item header (JSON)
    <1234 bytes of payload>\\n                                <- payload
    {"type": "attachment", "filename": "a.txt"}\\n             <- no length: payload ends at \\n
    hello\\n

Items are ``event`` and ``transaction`` (JSON events), ``attachment`` (bytes), ``session`` /
``sessions`` (release health), ``client_report`` (what the SDK itself dropped and why) and
types this server does not use (``profile``, ``replay_event``, ``check_in``, ...), which are
accepted and ignored as Sentry's own server ignores types it does not know.

Decoding is strict about structure (a header that is not a JSON object, a ``length`` past the
end, an event that is not an object: :class:`~stackwatch.errors.BadRequest` naming the item)
and lenient about content, which the errors sink normalises later.

:class:`Outcomes` counts what was accepted and what was dropped, in Sentry's vocabulary
(category + reason), including what clients report they dropped themselves.
"""

from __future__ import annotations

import base64
import binascii
import threading
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from stackwatch.errors import BadRequest, PayloadTooLarge

__all__ = [
    "Envelope",
    "Item",
    "Outcomes",
    "SentryPayload",
    "auth_key",
    "decode_brotli",
    "decode_envelope",
    "decode_store",
    "dsn_key",
    "parse_envelope",
    "transaction_to_spans",
]

#: Most items one envelope may hold (sentry_sdk sends at most a handful).
MAX_ITEMS: Final = 1000
#: Item types this server stores or counts; any other type is skipped.
EVENT_TYPES: Final = frozenset({"event", "transaction"})


@dataclass
class Item:
    type: str
    headers: dict[str, Any]
    payload: bytes


@dataclass
class Envelope:
    headers: dict[str, Any]
    items: list[Item]


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_envelope(data: bytes) -> Envelope:
    """Split an envelope into its header and items (see the module docstring).

    Raises :class:`BadRequest` for a malformed envelope, saying which item is wrong.
    """
    if not data.strip():
        raise BadRequest("empty envelope")
    end = data.find(b"\n")
    header_line = data if end < 0 else data[:end]
    headers = _json_object(header_line, "envelope header")
    pos = len(data) if end < 0 else end + 1
    items: list[Item] = []
    size = len(data)
    while pos < size:
        # Blank lines between items are tolerated (some hand-written clients add them).
        if data[pos] in (0x0A, 0x0D):
            pos += 1
            continue
        number = len(items) + 1
        if number > MAX_ITEMS:
            raise BadRequest(f"envelope holds more than {MAX_ITEMS} items")
        end = data.find(b"\n", pos)
        line_end = size if end < 0 else end
        item_headers = _json_object(data[pos:line_end], f"item {number} header")
        kind = item_headers.get("type")
        if not isinstance(kind, str) or not kind:
            raise BadRequest(f"item {number} header has no 'type'")
        pos = line_end + 1
        length = item_headers.get("length")
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                raise BadRequest(f"item {number} ({kind}): 'length' must be a non-negative integer")
            if pos + length > size:
                raise BadRequest(
                    f"item {number} ({kind}): 'length' is {length} but only {max(0, size - pos)} bytes follow"
                )
            payload = data[pos : pos + length]
            pos += length
            if pos < size and data[pos] == 0x0A:
                pos += 1
        elif pos >= size:
            payload = b""
        else:
            end = data.find(b"\n", pos)
            payload_end = size if end < 0 else end
            payload = data[pos:payload_end]
            pos = payload_end + 1
        items.append(Item(kind, item_headers, payload))
    return Envelope(headers, items)


def dsn_key(dsn: Any) -> tuple[str | None, str | None]:
    """``(public_key, project_id)`` of a DSN (``https://KEY@host/PROJECT``); Nones if malformed."""
    if not isinstance(dsn, str) or not dsn:
        return None, None
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return None, None
    key = parts.username or None
    project = parts.path.rstrip("/").rsplit("/", 1)[-1] or None
    return key, project


def auth_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The public key a request authenticates with, in the forms Sentry SDKs use.

    ``X-Sentry-Auth: Sentry sentry_key=KEY, sentry_version=7, ...`` (server SDKs),
    ``?sentry_key=KEY`` (the browser SDK, which avoids custom headers to skip CORS
    preflights), and ``Authorization: Sentry sentry_key=KEY`` (some older SDKs). ``None`` when
    none is present; the envelope header's ``dsn`` is the caller's last resort.
    """
    for name in ("x-sentry-auth", "authorization"):
        value = headers.get(name)
        if not value:
            continue
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "sentry":
            continue
        for part in rest.split(","):
            key, _, val = part.strip().partition("=")
            if key.strip() == "sentry_key" and val.strip():
                return val.strip()
    key = query.get("sentry_key")
    return key or None


def decode_brotli(data: bytes, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding: br`` (sentry_sdk uses it when the brotli module is installed),
    producing at most ``max_bytes``: a brotli bomb is refused before it is materialised."""
    import cramjam

    out = bytearray(max_bytes + 1)
    try:
        n = cramjam.brotli.decompress_into(data, out)
    except cramjam.DecompressionError as exc:
        if "whole buffer" in str(exc):
            raise PayloadTooLarge(f"decompressed request body exceeds the limit of {max_bytes} bytes") from None
        raise BadRequest(f"invalid brotli body: {exc}") from None
    if n > max_bytes:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {max_bytes} bytes")
    return bytes(out[:n])


def decode_store(data: bytes, max_bytes: int) -> dict[str, Any]:
    """The event of a legacy ``/store/`` request: JSON, or (very old SDKs) base64 of zlib JSON."""
    stripped = data.strip()
    if not stripped:
        raise BadRequest("empty event")
    if stripped[:1] != b"{":
        try:
            raw = base64.b64decode(stripped, validate=True)
            inflater = zlib.decompressobj()
            stripped = inflater.decompress(raw, max_bytes + 1)
        except (binascii.Error, ValueError, zlib.error):
            raise BadRequest("event is neither JSON nor base64-encoded zlib JSON") from None
        if len(stripped) > max_bytes:
            raise PayloadTooLarge(f"decompressed event exceeds the limit of {max_bytes} bytes")
    return _json_object(stripped, "event")


@dataclass
class SentryPayload:
    """What one request carried, ready for the WAL.

    ``records`` are the events (``{"kind": "event"|"transaction", "event": {...},
    "attachments": [...]}``); ``event_id`` is what the endpoint answers with.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    event_id: str | None = None
    dsn: str | None = None
    sessions: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    client_reports: list[dict[str, Any]] = field(default_factory=list)


def _attachment(item: Item, max_attachment_bytes: int, payload: SentryPayload) -> dict[str, Any] | None:
    if len(item.payload) > max_attachment_bytes:
        payload.outcomes[("attachment", "too_large")] += 1
        return None
    return {
        "filename": str(item.headers.get("filename") or "attachment"),
        "content_type": str(item.headers.get("content_type") or "application/octet-stream"),
        "attachment_type": str(item.headers.get("attachment_type") or "event.attachment"),
        "size": len(item.payload),
        "data": base64.b64encode(item.payload).decode("ascii"),
    }


def decode_envelope(data: bytes, *, max_event_bytes: int, max_attachment_bytes: int) -> SentryPayload:
    """Decode an envelope into records for the errors (and spans) sinks.

    An event or transaction larger than ``max_event_bytes`` makes the request a 413 (the SDK
    then drops it and records the loss itself); an attachment larger than
    ``max_attachment_bytes`` is dropped and counted as ``attachment/too_large``, and the event
    it came with is kept.
    """
    envelope = parse_envelope(data)
    out = SentryPayload()
    header_id = envelope.headers.get("event_id")
    out.event_id = header_id if isinstance(header_id, str) else None
    dsn = envelope.headers.get("dsn")
    out.dsn = dsn if isinstance(dsn, str) else None
    attachments: list[dict[str, Any]] = []
    for number, item in enumerate(envelope.items, 1):
        kind = item.type
        if kind in EVENT_TYPES:
            if len(item.payload) > max_event_bytes:
                raise PayloadTooLarge(
                    f"item {number} ({kind}) is {len(item.payload)} bytes, the limit is {max_event_bytes}"
                )
            event = _json_object(item.payload, f"item {number} ({kind})")
            out.records.append({"kind": kind, "event": event, "attachments": []})
            if out.event_id is None and isinstance(event.get("event_id"), str):
                out.event_id = event["event_id"]
        elif kind == "attachment":
            found = _attachment(item, max_attachment_bytes, out)
            if found is not None:
                attachments.append(found)
        elif kind == "session":
            _json_object(item.payload, f"item {number} (session)")
            out.sessions += 1
        elif kind == "sessions":
            aggregate = _json_object(item.payload, f"item {number} (sessions)")
            for bucket in aggregate.get("aggregates") or []:
                if isinstance(bucket, dict):
                    out.sessions += sum(
                        v for k, v in bucket.items() if k != "started" and isinstance(v, int) and v > 0
                    )
        elif kind == "client_report":
            report = _json_object(item.payload, f"item {number} (client_report)")
            out.client_reports.append(report)
            for entry in report.get("discarded_events") or []:
                if isinstance(entry, dict):
                    quantity = entry.get("quantity")
                    if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity > 0:
                        key = (str(entry.get("category") or "unknown"), "client:" + str(entry.get("reason") or "unknown"))
                        out.outcomes[key] += quantity
        # Other types (profile, replay, check_in, statsd, ...) are accepted and not used.
    events = [r for r in out.records if r["kind"] == "event"]
    if attachments:
        if events:
            events[0]["attachments"] = attachments
        else:
            out.outcomes[("attachment", "no_event")] += len(attachments)
    return out


class Outcomes:
    """Counts of accepted and dropped items by ``(category, reason)``, as Sentry reports them.

    Kept in memory since the server started: they are for an operator asking "are my errors
    arriving, and if not why", not an audit trail.
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, category: str, reason: str, quantity: int = 1) -> None:
        with self._lock:
            self._counts[(category, reason)] += quantity

    def update(self, counts: Mapping[tuple[str, str], int]) -> None:
        with self._lock:
            self._counts.update(counts)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            items = sorted(self._counts.items())
        return [{"category": c, "reason": r, "quantity": q} for (c, r), q in items]


# -- transactions -> spans --------------------------------------------------------------------

_CLIENT_OPS: Final = ("http.client", "db", "cache", "redis", "rpc", "grpc.client", "queue.publish")
_SCALAR = (str, int, float, bool)


def _seconds(value: Any) -> float | None:
    """A Sentry timestamp (float seconds, or an RFC 3339 string) in seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        from datetime import UTC, datetime

        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def _flat(prefix: str, value: Any, out: dict[str, Any], depth: int = 0) -> None:
    if isinstance(value, _SCALAR):
        out[prefix] = value
    elif isinstance(value, Mapping) and depth < 4:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out, depth + 1)
    elif isinstance(value, list | tuple):
        out[prefix] = orjson.dumps(value, default=str).decode()[:2000]


#: Sentry span statuses that say the caller was refused, not that the server failed (HTTP
#: 4xx, and 499 for a client that went away).
_CALLER_STATUSES = frozenset({
    "cancelled", "invalid_argument", "not_found", "already_exists", "permission_denied",
    "resource_exhausted", "failed_precondition", "aborted", "out_of_range", "unauthenticated",
})  # fmt: skip


def _status(value: Any, kind: str) -> tuple[str, str]:
    """(status code, message) of a Sentry span status, by OpenTelemetry's HTTP rule.

    A 4xx is the caller's failure: an error on the client's span, but not on the server's
    (OpenTelemetry leaves it unset there). Otherwise a scanner's 404s and a typo'd password's
    401s would count in the service's error ratio and page someone. Sentry's own SDK marks a
    transaction ``not_found`` for every 404, so this is the common case.
    """
    if not isinstance(value, str) or not value:
        return "unset", ""
    if value == "ok":
        return "ok", ""
    if kind in ("server", "consumer") and value in _CALLER_STATUSES:
        return "unset", ""
    return "error", value


def _kind(op: str, root: bool) -> str:
    if root:
        if op.startswith(("http.server", "websocket.server", "rpc.server", "grpc.server")):
            return "server"
        if op.startswith(("queue.task", "queue.process", "celery.task", "queue.consume")):
            return "consumer"
        return "server" if op.startswith("http") else "internal"
    if op.startswith(_CLIENT_OPS):
        return "client"
    if op.startswith(("queue.submit", "queue.publish", "celery.submit")):
        return "producer"
    return "internal"


def _service(event: Mapping[str, Any], trace: Mapping[str, Any]) -> str:
    data = trace.get("data") if isinstance(trace.get("data"), Mapping) else {}
    tags = event.get("tags") if isinstance(event.get("tags"), Mapping) else {}
    for candidate in (data.get("service.name") if data else None, tags.get("service") if tags else None):
        if isinstance(candidate, str) and candidate:
            return candidate
    release = event.get("release")
    if isinstance(release, str) and "@" in release:
        return release.split("@", 1)[0]  # "checkout@1.4.2": Sentry's package@version convention
    return "unknown_service"


def transaction_to_spans(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn a Sentry transaction into span records (see :mod:`stackwatch.model.spans`).

    The transaction itself is the root span (``contexts.trace`` holds its ids, op and status;
    ``transaction`` its name); each entry of ``spans`` is a child. A span whose ids or times are
    unusable is skipped rather than failing the whole transaction. Tags and ``data`` become
    attributes (``sentry.op`` keeps the Sentry operation); release, environment and host
    become resource attributes, as OpenTelemetry SDKs report them.
    """
    from stackwatch.model.spans import is_span_id, is_trace_id, make_span

    contexts = event.get("contexts") if isinstance(event.get("contexts"), Mapping) else {}
    trace = contexts.get("trace") if isinstance(contexts, Mapping) and isinstance(contexts.get("trace"), Mapping) else {}
    assert isinstance(trace, Mapping)
    trace_id = str(trace.get("trace_id") or "").replace("-", "").lower()
    if not is_trace_id(trace_id):
        return []
    service = _service(event, trace)
    resource = {"service.name": service, "telemetry.sdk.language": str(event.get("platform") or "")}
    for key, attr in (("release", "service.version"), ("environment", "deployment.environment"),
                      ("server_name", "host.name")):
        if isinstance(event.get(key), str) and event[key]:
            resource[attr] = event[key]
    sdk = event.get("sdk") if isinstance(event.get("sdk"), Mapping) else {}
    assert isinstance(sdk, Mapping)
    scope_name, scope_version = str(sdk.get("name") or "sentry"), str(sdk.get("version") or "")
    tags: dict[str, Any] = {}
    _flat("", event.get("tags") if isinstance(event.get("tags"), Mapping) else {}, tags)

    def span(raw: Mapping[str, Any], root: bool) -> dict[str, Any] | None:
        span_id = str(raw.get("span_id") or "").lower()
        parent = str(raw.get("parent_span_id") or "").lower()
        start = _seconds(raw.get("start_timestamp") if not root else event.get("start_timestamp"))
        end = _seconds(raw.get("timestamp") if not root else event.get("timestamp"))
        if not is_span_id(span_id) or start is None:
            return None
        if parent and not is_span_id(parent):
            parent = ""
        end = start if end is None or end < start else end
        op = str(raw.get("op") or "")
        attributes: dict[str, Any] = dict(tags) if root else {}
        if not root:
            _flat("", raw.get("tags") if isinstance(raw.get("tags"), Mapping) else {}, attributes)
        _flat("", raw.get("data") if isinstance(raw.get("data"), Mapping) else {}, attributes)
        if op:
            attributes["sentry.op"] = op
        if root:
            name = str(event.get("transaction") or op or "transaction")
        else:
            name = str(raw.get("description") or op or "span")
            if raw.get("origin"):
                attributes["sentry.origin"] = str(raw["origin"])
        kind = _kind(op, root)
        code, message = _status(raw.get("status"), kind)
        if code == "unset" and isinstance(raw.get("status"), str) and raw["status"]:
            attributes["sentry.status"] = raw["status"]  # still searchable: sentry.status:not_found
        # Sentry times are float seconds with microsecond precision; scaling to ns in floats
        # would invent digits (…0.25 s -> 249999872 ns), so round to µs first.
        return make_span(
            trace_id, span_id, name[:1000], round(start * 1e6) * 1000, round(end * 1e6) * 1000,
            parent_span_id=parent, kind=kind, service=service, status_code=code,
            status_message=message, attributes=attributes, resource=dict(resource),
            scope_name=scope_name, scope_version=scope_version,
        )

    spans: list[dict[str, Any]] = []
    root = span(trace, True)
    if root is None:
        return []
    spans.append(root)
    for raw in event.get("spans") or []:
        if isinstance(raw, Mapping):
            trace_of = str(raw.get("trace_id") or trace_id).replace("-", "").lower()
            if trace_of != trace_id:
                continue
            child = span(raw, False)
            if child is not None:
                spans.append(child)
    return spans
