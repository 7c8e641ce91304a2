"""The Elasticsearch ``_bulk`` API, and the handshake shippers perform before they use it.

Filebeat, Vector, rsyslog, Fluent Bit and Logstash can all write to Elasticsearch, so pointing
them at Stackwatch's ES-compatible endpoint is the least-effort way to ship logs here. This
module is pure: it decodes request bodies and builds the JSON answers; the HTTP layer routes.

Bulk
----
:func:`decode_bulk` reads the NDJSON body (an action line, then a source line except for
``delete``) into :class:`BulkItem` objects. A bad item (invalid JSON, a source that is not an
object, a missing source line, an unknown action, no index) carries an ``error`` and the
good items around it are kept, exactly as ES reports per-item failures.
:func:`build_bulk_response` renders the answer in the shape ES returns, which shippers parse
to decide what to retry. Stackwatch stores logs, not documents addressable by id, so:

* ``index`` and ``create`` items become events (:attr:`BulkRequest.events`): the source object,
  with the target index added under the key ``"es.index"`` so the pipeline keeps it as an
  attribute (data stream names such as ``logs-nginx.access-default`` say what the logs are);
* ``update`` items with an upsert (``doc_as_upsert`` or ``upsert``, as Fluent Bit's
  ``Write_Operation upsert`` sends) become events the same way, since the target document
  never exists here; other updates fail as ES fails them for a missing document (404);
* ``delete`` items answer ``not_found`` (404, not an error), as ES does for a missing document.

Handshake: what the shippers request before sending (read from their sources)
------------------------------------------------------------------------------
* **Filebeat** (``libbeat/esleg/eslegclient/connection.go``, ``libbeat/licenser``,
  ``libbeat/template``, ``libbeat/idxmgmt/lifecycle``): ``GET /`` (``Ping``, reads
  ``version.number``; refuses to connect on non-2xx), ``GET /_license?human=false`` (reads
  ``license.uid/type/status``), template setup: ``GET /_cat/templates/<name>`` (exists iff the
  200 body contains the name; 7.x/8.x), ``HEAD /_template/<name>`` (6.x),
  ``PUT /_index_template/<name>`` / ``PUT /_template/<name>``,
  ``GET /_component_template/<name>``; ILM: ``GET /_xpack`` (7.x, is ILM available/enabled),
  ``GET``/``PUT /_ilm/policy/<name>``; then ``POST /_bulk`` with
  ``{"create":{"_index":"filebeat-8.11.0"}}`` action lines (a data stream).
* **Vector** (``src/sinks/elasticsearch/common.rs``): ``GET /`` to auto-detect the API version
  from ``version.number`` (major only), ``GET /_cluster/health`` as the healthcheck (200 = ok),
  then ``POST /_bulk?timeout=60s``.
* **rsyslog omelasticsearch** (``plugins/omelasticsearch/omelasticsearch.c``): a health check
  before sending, ``HEAD /_cat/health`` in current versions (``GET`` without body on ``/`` in
  old ones), then ``POST /_bulk`` (``bulkmode="on"``, action lines
  ``{"index":{"_index": "<searchIndex>","_type":"<searchType>"}}``) or, by default, one
  ``POST /<searchIndex>/<searchType>`` per message (:func:`decode_document`).

Every response must carry the header ``X-Elastic-Product: Elasticsearch``
(:data:`PRODUCT_HEADERS`): the official ES clients since 7.14 refuse servers without it.
:func:`handshake` maps a method and path to the canned answer for all of the above.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from stackwatch.errors import BadRequest
from stackwatch.ingest._body import gc_paused

__all__ = [
    "ES_VERSION",
    "PRODUCT_HEADERS",
    "BulkItem",
    "BulkRequest",
    "HandshakeResponse",
    "build_bulk_response",
    "build_document_response",
    "cat_health",
    "cat_templates",
    "cluster_health",
    "decode_bulk",
    "decode_document",
    "error_response",
    "handshake",
    "license_info",
    "root_info",
    "xpack_info",
]

#: The Elasticsearch version Stackwatch claims to be. 8.x makes Vector drop ``_type`` and
#: makes Filebeat 8 use data streams; every shipper in the module docstring accepts it.
ES_VERSION: Final = "8.11.0"
_LUCENE_VERSION: Final = "9.8.0"
#: Headers every ES-compatible response must carry.
PRODUCT_HEADERS: Final[dict[str, str]] = {"X-Elastic-Product": "Elasticsearch"}

_ACTIONS: Final = frozenset({"index", "create", "update", "delete"})
_SHARDS: Final = {"total": 1, "successful": 1, "failed": 0}
_DEFAULT_CLUSTER: Final = "stackwatch"
_DEFAULT_UUID: Final = "c3RhY2t3YXRjaC1lcy1hcGk"  # 22 characters, like a real cluster UUID


@dataclass(slots=True)
class BulkItem:
    """One action of a bulk request, good or bad.

    ``source`` is the parsed source object (``None`` for ``delete`` and for bad items); for
    items that produce an event it already carries ``"es.index"``. ``error`` is ``None`` for a
    good item, else the reason ES-style, with ``error_type`` the ES exception name and
    ``status`` the HTTP status reported for the item. ``line`` is the 1-based line number of
    the action line in the request body.
    """

    action: str
    index: str | None
    id: str | None
    source: dict[str, Any] | None
    error: str | None = None
    error_type: str | None = None
    status: int = 201
    line: int = 0

    @property
    def is_event(self) -> bool:
        """Whether this item contributes a log event."""
        return self.error is None and self.source is not None


@dataclass(slots=True)
class BulkRequest:
    """A decoded bulk body: every item in request order."""

    items: list[BulkItem]

    @property
    def events(self) -> list[dict[str, Any]]:
        """The raw events to ingest: the sources of the good index/create/upsert items."""
        return [item.source for item in self.items if item.error is None and item.source is not None]

    @property
    def errors(self) -> bool:
        """Whether any item failed (the ``errors`` flag of the response)."""
        return any(item.error is not None for item in self.items)


# --------------------------------------------------------------------------- decoding


_ActionInfo = tuple[str, str | None, str | None, tuple[str, str] | None]


def _is_action_line(line: bytes) -> bool:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    if type(value) is not dict or len(value) != 1:
        return False
    action, params = next(iter(value.items()))
    return action in _ACTIONS and type(params) is dict


def decode_bulk(body: bytes, default_index: str | None = None) -> BulkRequest:
    """Decode an ES ``_bulk`` body into per-item results.

    ``default_index`` is the ``<index>`` of ``POST /<index>/_bulk``; an action without
    ``_index`` uses it. Blank lines are skipped and a missing final newline is accepted.
    Per-item problems are reported on the item (see :class:`BulkItem`); only a body without a
    single action raises :class:`BadRequest`, as ES answers that with a request-level 400.
    """
    lines = body.split(b"\n")
    while lines and (not lines[-1] or lines[-1].isspace()):
        lines.pop()  # the final newline(s); rsyslog ends its bodies with a blank line
    if not lines:
        raise BadRequest("Validation Failed: 1: no requests added;")
    with gc_paused():
        # A blank line anywhere else fails the fast path (as an action or a source), so only
        # the item-by-item path needs to filter them and map kept lines to line numbers.
        items = _decode_uniform(lines, default_index)
        if items is None:
            numbered = [(number, line) for number, line in enumerate(lines, 1) if line and not line.isspace()]
            kept = [line for _, line in numbered]
            items = _decode_items(kept, [number for number, _ in numbered], default_index)
        return BulkRequest(items)


def _decode_uniform(kept: list[bytes], default_index: str | None) -> list[BulkItem] | None:
    """The fast path for what shippers send: only index/create actions, each with an object.

    Decided with C-level passes (slicing, a set of the action lines, one comprehension of
    ``orjson.loads``); returns ``None`` as soon as the body needs the item-by-item path.
    """
    if len(kept) % 2:
        return None
    metas = kept[0::2]
    infos = {meta: _read_action(meta, default_index) for meta in set(metas)}
    for action, _index, _id, problem in infos.values():
        if problem is not None or action not in ("index", "create"):
            return None
    loads = orjson.loads
    try:
        sources = [loads(line) for line in kept[1::2]]
    except orjson.JSONDecodeError:
        return None
    if set(map(type, sources)) != {dict}:
        return None
    lines = range(1, len(kept), 2)
    if len(infos) == 1:
        [(action, index, doc_id, _)] = infos.values()
        for source in sources:
            source["es.index"] = index
        return [
            BulkItem(action, index, doc_id, source, None, None, 201, line)
            for source, line in zip(sources, lines, strict=True)
        ]
    items: list[BulkItem] = []
    append = items.append
    for meta, source, line in zip(metas, sources, lines, strict=True):
        action, index, doc_id, _ = infos[meta]
        source["es.index"] = index
        append(BulkItem(action, index, doc_id, source, None, None, 201, line))
    return items


def _decode_items(kept: list[bytes], numbers: Sequence[int], default_index: str | None) -> list[BulkItem]:
    """The general path: item by item, with deletes, updates and every kind of bad item."""
    items: list[BulkItem] = []
    append = items.append
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    # Shippers repeat the same action line ({"create":{"_index":"filebeat-8.11.0"}}) for
    # every document: parse each distinct one once.
    actions: dict[bytes, _ActionInfo] = {}
    count = len(kept)
    position = 0
    while position < count:
        meta = kept[position]
        line = numbers[position]
        position += 1
        info = actions.get(meta)
        if info is None:
            info = actions[meta] = _read_action(meta, default_index)
        action, index, doc_id, problem = info
        if problem is not None:
            # We cannot know whether a broken action line had a source; take the next
            # line as its source unless that line is itself a well-formed action line.
            if action != "delete" and position < count and not _is_action_line(kept[position]):
                position += 1
            error_type, reason = problem
            append(
                BulkItem(
                    action or "index",
                    index,
                    doc_id,
                    None,
                    f"line {line}: {reason}",
                    error_type,
                    400,
                    line,
                )
            )
            continue
        if action == "delete":
            append(BulkItem(action, index, doc_id, None, None, None, 404, line))
            continue
        if position >= count:
            append(_missing_source(action, index, doc_id, line))
            continue
        raw = kept[position]
        position += 1
        try:
            source = loads(raw)
        except decode_error as exc:
            append(_bad_source(action, index, doc_id, line, numbers[position - 1], f"failed to parse: {exc}"))
            continue
        if type(source) is not dict:
            reason = "failed to parse, document must be a JSON object"
            append(_bad_source(action, index, doc_id, line, numbers[position - 1], reason))
        elif action == "update":
            append(_update_item(index, doc_id, source, line))
        else:
            source["es.index"] = index
            append(BulkItem(action, index, doc_id, source, None, None, 201, line))
    return items


def _read_action(line: bytes, default_index: str | None) -> _ActionInfo:
    """Validate an action line: (action, index, id, (error type, reason) or None)."""
    try:
        meta = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return "", default_index, None, ("illegal_argument_exception", f"invalid action line: {exc}")
    if type(meta) is not dict or len(meta) != 1:
        return (
            "",
            default_index,
            None,
            ("illegal_argument_exception", "Malformed action/metadata line, expected one action object"),
        )
    action, params = next(iter(meta.items()))
    if action not in _ACTIONS:
        return (
            action[:100],
            default_index,
            None,
            ("illegal_argument_exception", f"Unknown action [{action[:100]}]"),
        )
    if type(params) is not dict:
        return (
            action,
            default_index,
            None,
            ("illegal_argument_exception", f"Malformed action/metadata line, [{action}] must be an object"),
        )
    index = params.get("_index")
    if index is None:
        index = default_index
    raw_id = params.get("_id")
    doc_id: str | None
    if raw_id is None or type(raw_id) is str:
        doc_id = raw_id
    elif type(raw_id) is int:  # ES coerces numeric ids
        doc_id = str(raw_id)
    else:
        return action, None, None, ("illegal_argument_exception", "[_id] must be a string")
    if not index:
        return (
            action,
            None,
            doc_id,
            ("action_request_validation_exception", "Validation Failed: 1: index is missing;"),
        )
    if type(index) is not str:
        return action, None, doc_id, ("illegal_argument_exception", "[_index] must be a string")
    return action, index, doc_id, None


def _missing_source(action: str, index: str | None, doc_id: str | None, line: int) -> BulkItem:
    return BulkItem(
        action,
        index,
        doc_id,
        None,
        f"line {line}: Validation Failed: 1: source is missing;",
        "action_request_validation_exception",
        400,
        line,
    )


def _bad_source(
    action: str, index: str | None, doc_id: str | None, line: int, source_line: int, reason: str
) -> BulkItem:
    return BulkItem(
        action, index, doc_id, None, f"line {source_line}: {reason}", "mapper_parsing_exception", 400, line
    )


def _update_item(index: str | None, doc_id: str | None, source: dict[str, Any], line: int) -> BulkItem:
    doc = source.get("doc")
    upsert = source.get("upsert")
    if source.get("doc_as_upsert") is True and type(doc) is dict:
        event = doc
    elif type(upsert) is dict:
        event = upsert
    else:
        return BulkItem(
            "update",
            index,
            doc_id,
            None,
            f"[{doc_id}]: document missing",
            "document_missing_exception",
            404,
            line,
        )
    event["es.index"] = index
    return BulkItem("update", index, doc_id, event, line=line)


def decode_document(body: bytes, index: str, doc_id: str | None = None) -> BulkItem:
    """Decode a single-document request (``POST /<index>/_doc``, ``PUT /<index>/_doc/<id>``,
    rsyslog's default ``POST /<index>/<type>``) into an ``index`` item.

    Unlike a bulk item, a bad single document fails the request: :class:`BadRequest`.
    """
    try:
        source = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"failed to parse: {exc}") from None
    if type(source) is not dict:
        raise BadRequest("failed to parse, document must be a JSON object")
    source["es.index"] = index
    return BulkItem("index", index, doc_id, source, line=1)


# --------------------------------------------------------------------------- responses


def _id_prefix() -> str:
    """12 random URL-safe characters; with an 8-hex-digit counter, an id shaped like ES's 20."""
    return base64.urlsafe_b64encode(os.urandom(9)).decode("ascii")


def build_bulk_response(items: Sequence[BulkItem] | BulkRequest, took_ms: int) -> dict[str, Any]:
    """The ``_bulk`` response body, item by item in request order, shaped as ES 8 returns it.

    Shippers read ``errors`` and each item's ``status`` to decide what to retry: 4xx items are
    dropped (or dead-lettered) by the shipper, so only input errors may be reported here.
    Items without an ``_id`` get a generated one, as ES generates them. The ``_shards``
    object is shared between items: the body is meant to be serialised, not edited.
    """
    if isinstance(items, BulkRequest):
        items = items.items
    with gc_paused():
        return _render_bulk_items(items, took_ms)


def _render_bulk_items(items: Sequence[BulkItem], took_ms: int) -> dict[str, Any]:
    prefix = _id_prefix()
    shards = dict(_SHARDS)
    rendered: list[dict[str, Any]] = []
    append = rendered.append
    errors = False
    for seq_no, item in enumerate(items):
        if item.error is not None:
            errors = True
            append(
                {
                    item.action: {
                        "_index": item.index,
                        "_id": item.id,
                        "status": item.status,
                        "error": {
                            "type": item.error_type or "mapper_parsing_exception",
                            "reason": item.error,
                        },
                    }
                }
            )
            continue
        append(
            {
                item.action: {
                    "_index": item.index,
                    "_id": item.id if item.id is not None else f"{prefix}{seq_no:08x}",
                    "_version": 1,
                    "result": "not_found" if item.status == 404 else "created",
                    "_shards": shards,
                    "_seq_no": seq_no,
                    "_primary_term": 1,
                    "status": item.status,
                }
            }
        )
    return {"took": int(took_ms), "errors": errors, "items": rendered}


def build_document_response(item: BulkItem) -> dict[str, Any]:
    """The response to a single-document index request (HTTP 201)."""
    return {
        "_index": item.index,
        "_id": item.id if item.id is not None else f"{_id_prefix()}{0:08x}",
        "_version": 1,
        "result": "created",
        "_shards": dict(_SHARDS),
        "_seq_no": 0,
        "_primary_term": 1,
    }


def error_response(status: int, error_type: str, reason: str) -> dict[str, Any]:
    """A request-level ES error body (``{"error": {...}, "status": N}``), e.g. for a 400 or 401."""
    cause = {"type": error_type, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


# --------------------------------------------------------------------------- handshake


def root_info(cluster_name: str = _DEFAULT_CLUSTER, cluster_uuid: str = _DEFAULT_UUID) -> dict[str, Any]:
    """``GET /``: the node and version banner Filebeat and Vector read ``version.number`` from."""
    return {
        "name": cluster_name,
        "cluster_name": cluster_name,
        "cluster_uuid": cluster_uuid,
        "version": {
            "number": ES_VERSION,
            "build_flavor": "default",
            "build_type": "docker",
            "build_hash": "0000000000000000000000000000000000000000",
            "build_date": "2023-11-04T10:04:57.184859352Z",
            "build_snapshot": False,
            "lucene_version": _LUCENE_VERSION,
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }


def license_info(cluster_name: str = _DEFAULT_CLUSTER) -> dict[str, Any]:
    """``GET /_license``: an active basic license, which is all Filebeat requires."""
    return {
        "license": {
            "status": "active",
            "uid": "00000000-0000-4000-8000-000000000000",
            "type": "basic",
            "issue_date": "2024-01-01T00:00:00.000Z",
            "issue_date_in_millis": 1704067200000,
            "max_nodes": 1000,
            "max_resource_units": None,
            "issued_to": cluster_name,
            "issuer": "elasticsearch",
            "start_date_in_millis": -1,
        }
    }


def xpack_info() -> dict[str, Any]:
    """``GET /_xpack``: basic license; ILM reported available so Filebeat 7 sets up its policy."""
    feature = {"available": True, "enabled": True}
    return {
        "build": {
            "hash": "0000000000000000000000000000000000000000",
            "date": "2023-11-04T10:04:57.184859352Z",
        },
        "license": {
            "uid": "00000000-0000-4000-8000-000000000000",
            "type": "basic",
            "mode": "basic",
            "status": "active",
        },
        "features": {
            "ilm": dict(feature),
            "data_streams": dict(feature),
            "monitoring": dict(feature),
            "security": {"available": True, "enabled": False},
        },
        "tagline": "You know, for X",
    }


def cluster_health(cluster_name: str = _DEFAULT_CLUSTER) -> dict[str, Any]:
    """``GET /_cluster/health``: green, one node (Vector's healthcheck only wants the 200)."""
    return {
        "cluster_name": cluster_name,
        "status": "green",
        "timed_out": False,
        "number_of_nodes": 1,
        "number_of_data_nodes": 1,
        "active_primary_shards": 1,
        "active_shards": 1,
        "relocating_shards": 0,
        "initializing_shards": 0,
        "unassigned_shards": 0,
        "delayed_unassigned_shards": 0,
        "number_of_pending_tasks": 0,
        "number_of_in_flight_fetch": 0,
        "task_max_waiting_in_queue_millis": 0,
        "active_shards_percent_as_number": 100.0,
    }


def cat_health(cluster_name: str = _DEFAULT_CLUSTER, now_s: int = 0) -> str:
    """``GET``/``HEAD /_cat/health`` as text (rsyslog only wants the 200)."""
    clock = f"{now_s // 3600 % 24:02d}:{now_s // 60 % 60:02d}:{now_s % 60:02d}"
    return f"{now_s} {clock} {cluster_name} green 1 1 1 1 0 0 0 0 - 100.0%\n"


def cat_templates(name: str) -> str:
    """``GET /_cat/templates/<name>`` as text: Filebeat treats the template as present iff the
    body contains its name, so answering with it stops Filebeat from uploading mappings we ignore.
    """
    return f"{name} [{name}-*] 150 \n" if name else ""


def _acknowledged() -> dict[str, Any]:
    return {"acknowledged": True}


@dataclass(slots=True, frozen=True)
class HandshakeResponse:
    """A canned answer: HTTP status and a JSON body (a ``dict``), a text body or none (HEAD)."""

    status: int
    body: dict[str, Any] | str | None


_SETUP_PREFIXES: Final = (
    "_template",
    "_index_template",
    "_component_template",
    "_ilm",
    "_data_stream",
    "_ingest",
)


def handshake(method: str, path: str, cluster_name: str = _DEFAULT_CLUSTER) -> HandshakeResponse | None:
    """Answer the setup requests shippers send before ``_bulk``; ``None`` if ``path`` is not one.

    ``path`` is the URL path without the query string. Setup writes (templates, ILM policies,
    ingest pipelines, data streams) are acknowledged and ignored: Stackwatch has its own
    schema and retention. Reads of those resources answer "present", so shippers do not
    re-upload them on every start.
    """
    method = method.upper()
    parts = [part for part in path.split("/") if part]
    head = method == "HEAD"
    if not parts:
        return HandshakeResponse(200, None if head else root_info(cluster_name))
    first = parts[0]
    if method in ("GET", "HEAD"):
        if parts == ["_license"] or parts == ["_xpack", "license"]:
            return HandshakeResponse(200, None if head else license_info(cluster_name))
        if parts == ["_xpack"]:
            return HandshakeResponse(200, None if head else xpack_info())
        if parts[:2] == ["_cluster", "health"]:
            return HandshakeResponse(200, None if head else cluster_health(cluster_name))
        if parts == ["_cat", "health"]:
            return HandshakeResponse(200, None if head else cat_health(cluster_name))
        if parts[:2] == ["_cat", "templates"]:
            return HandshakeResponse(200, None if head else cat_templates("/".join(parts[2:])))
        if first in _SETUP_PREFIXES:
            return HandshakeResponse(200, None if head else _describe_setup(parts))
        return None
    if method in ("PUT", "POST") and first in _SETUP_PREFIXES:
        return HandshakeResponse(200, _acknowledged())
    return None


def _describe_setup(parts: list[str]) -> dict[str, Any]:
    """A plausible GET answer for a setup resource, naming it so clients see it exists."""
    kind = parts[0]
    name = parts[-1] if len(parts) > 1 else ""
    if kind == "_index_template":
        return {
            "index_templates": [
                {
                    "name": name,
                    "index_template": {
                        "index_patterns": [f"{name}*"],
                        "composed_of": [],
                        "data_stream": {"hidden": False, "allow_custom_routing": False},
                    },
                }
            ]
        }
    if kind == "_component_template":
        return {"component_templates": [{"name": name, "component_template": {"template": {}}}]}
    if kind == "_template":
        return {
            name: {"order": 0, "index_patterns": [f"{name}-*"], "settings": {}, "mappings": {}, "aliases": {}}
        }
    if kind == "_ilm":
        return {name: {"version": 1, "modified_date": "2024-01-01T00:00:00.000Z", "policy": {"phases": {}}}}
    if kind == "_data_stream":
        return {
            "data_streams": [
                {
                    "name": name,
                    "timestamp_field": {"name": "@timestamp"},
                    "indices": [],
                    "generation": 1,
                    "status": "GREEN",
                    "template": name,
                    "hidden": False,
                    "system": False,
                    "replicated": False,
                }
            ]
        }
    return {name: {}} if name else {}
