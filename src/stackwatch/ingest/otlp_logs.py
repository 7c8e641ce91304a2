"""OTLP/HTTP logs (``POST /v1/logs``): ``ExportLogsServiceRequest`` as protobuf or OTLP/JSON.

Unlike NDJSON, an OTLP log record already has a schema, so the decoder emits events in the
model's canonical names (:data:`stackwatch.model.logs.LOG_FIELDS`) and the pipeline's alias
mapping has nothing left to guess:

==========================  ===================================================================
``timestamp``               ``time_unix_nano``, else ``observed_time_unix_nano``, else ``None``
                            (the pipeline then uses the time Stackwatch received it)
``severity_number``/``_text``  as sent (the pipeline maps them onto the model's names)
``message``                 a string body as is; any other body as its JSON rendering, and a
                            map body's fields also as attributes ``body.<key>``
``trace_id``/``span_id``    lowercase hex, ``""`` when absent or all zero
``attributes``              flat: nested maps joined with dots, arrays as JSON text, bytes as
                            base64; scope attributes underneath, ``otel.scope.name`` and
                            ``otel.scope.version``, ``event.name`` for OTel events
``resource``                resource attributes, flat ``str -> str``
``service``/``host``        resource ``service.name`` / ``host.name``
``source``/``function``     ``code.file.path:code.line.number`` / ``code.function.name`` (and the
                            older ``code.filepath``, ``code.lineno``, ``code.function``); these
                            code attributes are then dropped from ``attributes``
``logger``                  the scope name when the SDK is Python's, whose ``LoggingHandler``
                            names the scope after the ``logging`` logger
==========================  ===================================================================

OTLP/JSON is not the generic protobuf JSON mapping: trace and span ids are hex, not base64
(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding). We also accept snake_case
keys, enum names or numbers, and 64-bit integers as strings or numbers, as the spec asks
receivers to.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

from stackwatch.errors import BadRequest, UnsupportedMediaType
from stackwatch.ingest._body import gc_paused, parse_content_type

__all__ = ["PROTOBUF_CONTENT_TYPES", "decode_otlp_logs", "encode_export_response"]

#: Content types that carry a binary protobuf ``ExportLogsServiceRequest``.
PROTOBUF_CONTENT_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_CONTENT_TYPE = "application/json"

# Old and new OpenTelemetry semantic-convention names for the code location of a log call.
_CODE_FILE = ("code.file.path", "code.filepath")
_CODE_LINE = ("code.line.number", "code.lineno")
_CODE_FUNCTION = ("code.function.name", "code.function")
_CODE_KEYS = frozenset(_CODE_FILE + _CODE_LINE + _CODE_FUNCTION)

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_SEVERITY_NAMES = {v.name: v.number for v in SeverityNumber.DESCRIPTOR.values}

Native = str | bool | int | float | bytes | list["Native"] | dict[str, "Native"] | None


def decode_otlp_logs(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """Decode an OTLP/HTTP logs request body into canonical raw events.

    ``content_type`` selects the encoding: ``application/x-protobuf`` (or
    ``application/protobuf``) or ``application/json``; anything else raises
    :class:`UnsupportedMediaType`. A body that does not parse, or OTLP/JSON with a field of
    the wrong type, raises :class:`BadRequest` saying what is wrong.
    """
    media_type, _ = parse_content_type(content_type)
    if media_type in PROTOBUF_CONTENT_TYPES:
        decode: Callable[[bytes], list[dict[str, Any]]] = _decode_protobuf
    elif media_type == _JSON_CONTENT_TYPE:
        decode = _decode_json
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media_type!r} for OTLP logs; "
            "use application/x-protobuf or application/json"
        )
    try:
        with gc_paused():
            return decode(body)
    except RecursionError:
        raise BadRequest("invalid OTLP logs request: values are nested too deeply") from None


def encode_export_response(
    partial_rejected: int = 0,
    content_type: str = "application/x-protobuf",
    error_message: str = "",
) -> bytes:
    """Encode the ``ExportLogsServiceResponse`` for a successful export.

    The response uses the request's encoding, as OTLP/HTTP requires. ``partial_rejected``
    records that were dropped (with ``error_message`` saying why) are reported in
    ``partial_success``; with none rejected the response is the empty message.
    """
    media_type, _ = parse_content_type(content_type)
    if media_type == _JSON_CONTENT_TYPE:
        if not partial_rejected and not error_message:
            return b"{}"
        partial: dict[str, Any] = {"rejectedLogRecords": str(partial_rejected)}
        if error_message:
            partial["errorMessage"] = error_message
        return orjson.dumps({"partialSuccess": partial})
    response = ExportLogsServiceResponse()
    if partial_rejected or error_message:
        response.partial_success.CopyFrom(
            ExportLogsPartialSuccess(rejected_log_records=partial_rejected, error_message=error_message)
        )
    return response.SerializeToString()


# --------------------------------------------------------------------------- shared assembly


class _Scope:
    """What every record of one (resource, scope) pair shares, computed once per pair."""

    __slots__ = ("attributes", "host", "logger", "resource", "service")

    def __init__(
        self,
        resource_attrs: dict[str, Any],
        scope_name: str,
        scope_version: str,
        scope_attrs: dict[str, Any],
    ) -> None:
        self.resource = {key: _to_text(value) for key, value in resource_attrs.items()}
        self.service = self.resource.get("service.name", "")
        self.host = self.resource.get("host.name", "")
        is_python = self.resource.get("telemetry.sdk.language") == "python"
        self.logger = scope_name if is_python else ""
        self.attributes = scope_attrs
        if scope_name:
            self.attributes["otel.scope.name"] = scope_name
        if scope_version:
            self.attributes["otel.scope.version"] = scope_version


def _event(
    scope: _Scope,
    time_ns: int,
    observed_ns: int,
    severity_number: int,
    severity_text: str,
    body: Native,
    record_attrs: dict[str, Any],
    trace_id: str,
    span_id: str,
    event_name: str,
) -> dict[str, Any]:
    attributes = {**scope.attributes, **record_attrs} if scope.attributes else record_attrs
    if event_name:
        attributes["event.name"] = event_name
    if type(body) is str:
        message = body
    elif body is None:
        message = ""
    else:
        message = _render(body)
        if type(body) is dict:
            _flatten_into(attributes, "body", body)
    event: dict[str, Any] = {
        "timestamp": time_ns or observed_ns or None,
        "severity_number": severity_number,
        "severity_text": severity_text,
        "message": message,
        "trace_id": trace_id,
        "span_id": span_id,
        "attributes": attributes,
        "resource": dict(scope.resource),
    }
    if scope.service:
        event["service"] = scope.service
    if scope.host:
        event["host"] = scope.host
    if scope.logger:
        event["logger"] = scope.logger
    if not _CODE_KEYS.isdisjoint(attributes):
        _map_code_attributes(event, attributes)
    return event


def _pop_first(attributes: dict[str, Any], keys: tuple[str, str]) -> Any:
    """Pop both spellings of a code attribute; the newer one wins when a record has both."""
    newer = attributes.pop(keys[0], None)
    older = attributes.pop(keys[1], None)
    return older if newer is None else newer


def _map_code_attributes(event: dict[str, Any], attributes: dict[str, Any]) -> None:
    path = _pop_first(attributes, _CODE_FILE)
    line = _pop_first(attributes, _CODE_LINE)
    function = _pop_first(attributes, _CODE_FUNCTION)
    if path is not None:
        event["source"] = f"{path}:{line}" if line is not None else str(path)
    if function is not None:
        event["function"] = str(function)


def _flatten_into(out: dict[str, Any], key: str, value: Native) -> None:
    """Store an AnyValue as attribute scalars: maps become dotted keys, arrays JSON text."""
    kind = type(value)
    if kind is dict:
        for sub_key, sub_value in value.items():  # type: ignore[union-attr]
            _flatten_into(out, f"{key}.{sub_key}", sub_value)
    elif kind is list:
        out[key] = _render(value)
    elif kind is bytes:
        out[key] = base64.b64encode(value).decode("ascii")  # type: ignore[arg-type]
    elif value is not None:
        out[key] = value


def _flatten(pairs: list[tuple[str, Native]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        kind = type(value)
        if kind is str or kind is int or kind is float or kind is bool:
            out[key] = value
        else:
            _flatten_into(out, key, value)
    return out


def _json_default(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot render {type(value).__name__}")  # pragma: no cover - natives only


def _render(value: Native) -> str:
    """JSON text of an AnyValue (bytes as base64, NaN/Infinity as null as JSON has neither)."""
    try:
        return orjson.dumps(value, default=_json_default).decode("utf-8")
    except orjson.JSONEncodeError as exc:  # orjson stops at 255 levels of nesting
        raise BadRequest(f"invalid OTLP logs request: cannot render a value as JSON: {exc}") from None


def _to_text(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    return _render(value)


def _hex_id(raw: bytes) -> str:
    return "" if not raw or not any(raw) else raw.hex()


# --------------------------------------------------------------------------- protobuf


def _decode_protobuf(body: bytes) -> list[dict[str, Any]]:
    try:
        request = ExportLogsServiceRequest.FromString(body)
    except DecodeError as exc:
        raise BadRequest(f"invalid OTLP protobuf: {exc}") from None
    events: list[dict[str, Any]] = []
    append = events.append
    for resource_logs in request.resource_logs:
        resource_attrs = _pb_attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            pb_scope = scope_logs.scope
            scope = _Scope(
                resource_attrs, pb_scope.name, pb_scope.version, _pb_attributes(pb_scope.attributes)
            )
            for record in scope_logs.log_records:
                append(
                    _event(
                        scope,
                        record.time_unix_nano,
                        record.observed_time_unix_nano,
                        record.severity_number,
                        record.severity_text,
                        _pb_value(record.body) if record.HasField("body") else None,
                        _pb_attributes(record.attributes),
                        _hex_id(record.trace_id),
                        _hex_id(record.span_id),
                        record.event_name,
                    )
                )
    return events


def _pb_attributes(key_values: Any) -> dict[str, Any]:
    """Flatten protobuf KeyValues; scalars (nearly all attributes) take the short way."""
    out: dict[str, Any] = {}
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind == "int_value":
            out[kv.key] = value.int_value
        elif kind == "double_value":
            out[kv.key] = value.double_value
        elif kind == "bool_value":
            out[kv.key] = value.bool_value
        else:
            _flatten_into(out, kv.key, _pb_value(value))
    return out


def _pb_value(value: AnyValue) -> Native:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [_pb_value(item) for item in value.array_value.values]
    if kind == "bytes_value":
        return value.bytes_value
    return None  # unset, or string_value_strindex which only profiles use


# --------------------------------------------------------------------------- OTLP/JSON


def _decode_json(body: bytes) -> list[dict[str, Any]]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid OTLP/JSON: {exc}") from None
    request = _obj(request, "request")
    events: list[dict[str, Any]] = []
    append = events.append
    for resource_attrs, name, version, scope_attrs, records, where in json_scopes(
        request, "Logs", ("logRecords", "log_records")
    ):
        scope = _Scope(resource_attrs, name, version, scope_attrs)
        for k, record in enumerate(records):
            append(_json_record(scope, record, f"{where}[{k}]"))
    return events


def json_scopes(
    request: dict[str, Any], signal: str, items: tuple[str, str]
) -> Iterator[tuple[dict[str, Any], str, str, dict[str, Any], list[Any], str]]:
    """Walk an OTLP/JSON export request of one signal (``"Logs"``, ``"Spans"``...).

    Yields, per scope: the resource's flattened attributes, the scope's name, version and
    flattened attributes, its items (``items`` names their list, camel and snake case) and
    where they are in the request, for error messages. Accepts both JSON spellings of every
    key and OTLP < 0.19's "instrumentation library" in place of the scope.
    """
    lower = signal.lower()
    resources = _arr(_get(request, f"resource{signal}", f"resource_{lower}"), f"resource{signal}")
    for i, resource_entry in enumerate(resources):
        where = f"resource{signal}[{i}]"
        resource_entry = _obj(resource_entry, where)
        resource = _obj(resource_entry.get("resource"), f"{where}.resource")
        resource_attrs = _flatten(_json_pairs(resource.get("attributes"), f"{where}.resource.attributes"))
        scope_list = _get(resource_entry, f"scope{signal}", f"scope_{lower}")
        scope_key = "scope"
        if scope_list is None:  # OTLP < 0.19 called scopes "instrumentation libraries"
            scope_list = _get(resource_entry, f"instrumentationLibrary{signal}", f"instrumentation_library_{lower}")
            scope_key = "instrumentationLibrary"
        for j, scope_entry in enumerate(_arr(scope_list, f"{where}.scope{signal}")):
            swhere = f"{where}.scope{signal}[{j}]"
            scope_entry = _obj(scope_entry, swhere)
            raw_scope = scope_entry.get(scope_key)
            if raw_scope is None and scope_key != "scope":
                raw_scope = scope_entry.get("instrumentation_library")
            json_scope = _obj(raw_scope, f"{swhere}.scope")
            yield (
                resource_attrs,
                _str(json_scope.get("name"), f"{swhere}.scope.name"),
                _str(json_scope.get("version"), f"{swhere}.scope.version"),
                _flatten(_json_pairs(json_scope.get("attributes"), f"{swhere}.scope.attributes")),
                _arr(_get(scope_entry, *items), f"{swhere}.{items[0]}"),
                f"{swhere}.{items[0]}",
            )


def _json_record(scope: _Scope, record: Any, where: str) -> dict[str, Any]:
    record = _obj(record, where)
    body = record.get("body")
    return _event(
        scope,
        _int(_get(record, "timeUnixNano", "time_unix_nano"), f"{where}.timeUnixNano"),
        _int(
            _get(record, "observedTimeUnixNano", "observed_time_unix_nano"), f"{where}.observedTimeUnixNano"
        ),
        _severity(_get(record, "severityNumber", "severity_number"), f"{where}.severityNumber"),
        _str(_get(record, "severityText", "severity_text"), f"{where}.severityText"),
        None if body is None else _json_value(body, f"{where}.body"),
        _flatten(_json_pairs(record.get("attributes"), f"{where}.attributes")),
        _json_id(_get(record, "traceId", "trace_id"), 16, f"{where}.traceId"),
        _json_id(_get(record, "spanId", "span_id"), 8, f"{where}.spanId"),
        _str(_get(record, "eventName", "event_name"), f"{where}.eventName"),
    )


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise BadRequest(f"invalid OTLP/JSON: {where} must be an object")
    return value


def _arr(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if type(value) is not list:
        raise BadRequest(f"invalid OTLP/JSON: {where} must be an array")
    return value


def _str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        raise BadRequest(f"invalid OTLP/JSON: {where} must be a string")
    return value


def _int(value: Any, where: str) -> int:
    """An int64/uint64 field: proto3 JSON sends them as strings, some encoders as numbers."""
    if value is None:
        return 0
    kind = type(value)
    number: int | None = None
    if kind is int:
        number = value
    elif kind is str:
        try:
            number = int(value)
        except ValueError:
            pass
    elif kind is float and value.is_integer():
        number = int(value)
    if number is not None and _INT64_MIN <= number <= _UINT64_MAX:
        return number
    raise BadRequest(f"invalid OTLP/JSON: {where} must be a 64-bit integer, got {_short(value)}")


def _severity(value: Any, where: str) -> int:
    if type(value) is str and value in _SEVERITY_NAMES:
        return _SEVERITY_NAMES[value]
    try:
        return _int(value, where)
    except BadRequest:
        raise BadRequest(
            f"invalid OTLP/JSON: {where} must be a number or a SeverityNumber name, got {_short(value)}"
        ) from None


def _json_id(value: Any, size: int, where: str) -> str:
    """A trace/span id: hex in OTLP/JSON; base64 (the generic protobuf mapping) is tolerated."""
    text = _str(value, where)
    if not text:
        return ""
    if len(text) == 2 * size:
        try:
            return _hex_id(bytes.fromhex(text))
        except ValueError:
            pass
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == size:
            return _hex_id(raw)
    raise BadRequest(f"invalid OTLP/JSON: {where} must be {2 * size} hex digits, got {_short(text)}")


def _json_pairs(value: Any, where: str) -> list[tuple[str, Native]]:
    pairs = []
    for i, item in enumerate(_arr(value, where)):
        item = _obj(item, f"{where}[{i}]")
        key = _str(item.get("key"), f"{where}[{i}].key")
        raw = item.get("value")
        pairs.append((key, None if raw is None else _json_value(raw, f"{where}[{i}].value")))
    return pairs


def _json_value(value: Any, where: str) -> Native:
    value = _obj(value, where)
    for key, item in value.items():
        if item is None:
            continue
        if key in ("stringValue", "string_value"):
            return _str(item, where)
        if key in ("intValue", "int_value"):
            return _int(item, where)
        if key in ("boolValue", "bool_value"):
            if type(item) is not bool:
                raise BadRequest(f"invalid OTLP/JSON: {where}.boolValue must be true or false")
            return item
        if key in ("doubleValue", "double_value"):
            return _double(item, where)
        if key in ("kvlistValue", "kvlist_value"):
            pairs = _json_pairs(_obj(item, where).get("values"), f"{where}.kvlistValue.values")
            return dict(pairs)
        if key in ("arrayValue", "array_value"):
            values = _arr(_obj(item, where).get("values"), f"{where}.arrayValue.values")
            return [_json_value(v, f"{where}.arrayValue.values[{i}]") for i, v in enumerate(values)]
        if key in ("bytesValue", "bytes_value"):
            try:
                return base64.b64decode(_str(item, where), validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"invalid OTLP/JSON: {where}.bytesValue must be base64") from None
    return None


def _double(value: Any, where: str) -> float:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    if kind is str:  # proto3 JSON writes NaN and the infinities as strings
        try:
            return float(value)
        except ValueError:
            pass
    raise BadRequest(f"invalid OTLP/JSON: {where}.doubleValue must be a number, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
