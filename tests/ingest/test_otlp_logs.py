"""OTLP/HTTP logs decoding: the spec's examples, the real OpenTelemetry Python SDK, fuzzing."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from stackwatch.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from stackwatch.ingest.otlp_logs import decode_otlp_logs, encode_export_response

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "otlp"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def read_testdata(name: str) -> bytes:
    path = TESTDATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared/ must sit beside the checkout)")
    return path.read_bytes()


# --------------------------------------------------------------------------- spec examples


def test_spec_logs_example() -> None:
    [event] = decode_otlp_logs(read_testdata("logs.json"), JSON)
    assert event == {
        "timestamp": 1544712660300000000,
        "severity_number": 10,
        "severity_text": "Information",
        "message": "Example log record",
        # OTLP/JSON ids are hex (here uppercase), not base64; we emit lowercase hex.
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "attributes": {
            "my.scope.attribute": "some scope attribute",
            "otel.scope.name": "my.library",
            "otel.scope.version": "1.0.0",
            "string.attribute": "some string",
            "boolean.attribute": True,
            "int.attribute": 10,
            "double.attribute": 637.704,
            "array.attribute": '["many","values"]',
            "map.attribute.some.map.key": "some value",
        },
        "resource": {"service.name": "my.service"},
        "service": "my.service",
    }


def test_spec_event_example_with_a_map_body() -> None:
    [event] = decode_otlp_logs(read_testdata("events.json"), JSON)
    assert orjson.loads(event["message"]) == {
        "type": 0,
        "url": "https://www.guidgenerator.com/online-guid-generator.aspx",
        "referrer": "https://wwww.google.com",
        "title": "Free Online GUID Generator",
    }
    attributes = event["attributes"]
    assert attributes["event.name"] == "browser.page_view"
    assert attributes["event.attribute"] == "some event attribute"
    assert attributes["body.type"] == 0
    assert attributes["body.url"] == "https://www.guidgenerator.com/online-guid-generator.aspx"
    assert attributes["body.title"] == "Free Online GUID Generator"
    assert event["trace_id"] == "" and event["span_id"] == ""


# --------------------------------------------------------------------------- real SDK


@pytest.fixture
def otel_logging() -> Iterator[tuple[logging.Logger, InMemoryLogRecordExporter, TracerProvider]]:
    """A stdlib logger wired to the real OTel SDK, capturing what its exporter would send."""
    resource = Resource.create(
        {"service.name": "checkout", "host.name": "web-1", "deployment.environment": "prod"}
    )
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    logger = logging.getLogger("checkout.payments")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, exporter, TracerProvider(resource=resource)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def sdk_request(exporter: InMemoryLogRecordExporter) -> bytes:
    """Encode the captured batch exactly as the OTLP/HTTP exporter puts it on the wire."""
    return encode_logs(exporter.get_finished_logs()).SerializeToString()


def test_real_sdk_records_inside_a_span(otel_logging: Any) -> None:
    logger, exporter, tracer_provider = otel_logging
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("charge") as span:
        logger.warning(
            "card declined for order %s", 1234, extra={"order_id": 1234, "customer": "bob", "amount": 9.5}
        )
        context = span.get_span_context()
    logger.debug("outside any span")

    first, second = decode_otlp_logs(sdk_request(exporter), PROTOBUF)

    assert first["message"] == "card declined for order 1234"
    assert first["severity_number"] == 13
    assert first["severity_text"] == "WARN"
    assert first["trace_id"] == format(context.trace_id, "032x")
    assert first["span_id"] == format(context.span_id, "016x")
    assert first["attributes"]["order_id"] == 1234
    assert first["attributes"]["customer"] == "bob"
    assert first["attributes"]["amount"] == 9.5
    assert first["service"] == "checkout"
    assert first["host"] == "web-1"
    assert first["resource"]["deployment.environment"] == "prod"
    assert first["resource"]["telemetry.sdk.language"] == "python"
    # The handler names the scope after the stdlib logger.
    assert first["logger"] == "checkout.payments"
    assert first["attributes"]["otel.scope.name"] == "checkout.payments"
    # code.* attributes become source and function, and leave the attributes.
    assert first["source"] == f"{__file__}:{first['source'].rsplit(':', 1)[1]}"
    assert int(first["source"].rsplit(":", 1)[1]) > 0
    assert first["function"] == "test_real_sdk_records_inside_a_span"
    assert not any(key.startswith("code.") for key in first["attributes"])
    assert isinstance(first["timestamp"], int) and first["timestamp"] > 1_600_000_000 * 10**9

    assert second["message"] == "outside any span"
    assert second["severity_text"] == "DEBUG" and second["severity_number"] == 5
    assert second["trace_id"] == "" and second["span_id"] == ""


def test_real_sdk_exception_and_structured_body(otel_logging: Any) -> None:
    logger, exporter, _ = otel_logging
    try:
        raise ValueError("bad amount")
    except ValueError:
        logger.exception("payment failed")
    logger.info({"event": "refund", "amount": 3, "tags": ["a", "b"]})

    failure, structured = decode_otlp_logs(sdk_request(exporter), "application/x-protobuf")
    assert failure["severity_text"] == "ERROR" and failure["severity_number"] == 17
    assert failure["attributes"]["exception.type"] == "ValueError"
    assert failure["attributes"]["exception.message"] == "bad amount"
    assert "Traceback" in failure["attributes"]["exception.stacktrace"]

    assert orjson.loads(structured["message"]) == {"event": "refund", "amount": 3, "tags": ["a", "b"]}
    assert structured["attributes"]["body.event"] == "refund"
    assert structured["attributes"]["body.amount"] == 3
    assert structured["attributes"]["body.tags"] == '["a","b"]'


# --------------------------------------------------------------------------- protobuf details


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def one_record_request(record: LogRecord, resource_attrs: list[KeyValue] | None = None) -> bytes:
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource={"attributes": resource_attrs or []},
                scope_logs=[ScopeLogs(log_records=[record])],
            )
        ]
    )
    return request.SerializeToString()


def test_protobuf_value_kinds_and_old_code_attribute_names() -> None:
    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[kv("inner", AnyValue(kvlist_value=KeyValueList(values=[kv("x", AnyValue(int_value=1))])))]
        )
    )
    record = LogRecord(
        observed_time_unix_nano=1_700_000_000_000_000_000,
        severity_number=21,
        body=AnyValue(bytes_value=b"\x00\x01binary"),
        trace_id=bytes(16),
        span_id=bytes(8),
        attributes=[
            kv("nested", nested),
            kv("blob", AnyValue(bytes_value=b"\xff\x00")),
            kv("empty", AnyValue()),
            kv("code.filepath", AnyValue(string_value="app/views.py")),
            kv("code.lineno", AnyValue(int_value=42)),
            kv("code.function", AnyValue(string_value="checkout")),
            kv("code.namespace", AnyValue(string_value="app.views")),
        ],
    )
    resource = [
        kv("service.name", AnyValue(string_value="api")),
        kv("process.pid", AnyValue(int_value=1234)),
        kv("debug", AnyValue(bool_value=True)),
        kv("k8s", AnyValue(kvlist_value=KeyValueList(values=[kv("pod", AnyValue(string_value="api-7"))]))),
    ]
    [event] = decode_otlp_logs(one_record_request(record, resource), "application/protobuf")
    # No event time: the observed time stands in.
    assert event["timestamp"] == 1_700_000_000_000_000_000
    assert event["severity_number"] == 21 and event["severity_text"] == ""
    assert event["message"] == '"' + base64.b64encode(b"\x00\x01binary").decode() + '"'
    assert event["trace_id"] == "" and event["span_id"] == ""  # all-zero ids mean "none"
    assert event["attributes"] == {
        "nested.inner.x": 1,
        "blob": base64.b64encode(b"\xff\x00").decode(),
        "code.namespace": "app.views",
    }
    assert event["source"] == "app/views.py:42"
    assert event["function"] == "checkout"
    assert event["resource"] == {
        "service.name": "api",
        "process.pid": "1234",
        "debug": "true",
        "k8s.pod": "api-7",
    }
    assert "logger" not in event, "only the Python SDK names scopes after loggers"


def test_no_time_at_all_leaves_the_timestamp_to_the_pipeline() -> None:
    [event] = decode_otlp_logs(one_record_request(LogRecord(body=AnyValue(string_value="x"))), PROTOBUF)
    assert event["timestamp"] is None
    assert event["message"] == "x"


def test_empty_request_gives_no_events() -> None:
    assert decode_otlp_logs(b"", PROTOBUF) == []
    assert decode_otlp_logs(b"{}", JSON) == []


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05\x0a\x03", b"not a protobuf at all"])
def test_broken_protobuf_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest, match=r"^invalid OTLP protobuf: "):
        decode_otlp_logs(body, PROTOBUF)


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/grpc", "application/x-ndjson"])
def test_unsupported_content_type(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported Content-Type"):
        decode_otlp_logs(b"{}", content_type)


# --------------------------------------------------------------------------- OTLP/JSON details


def json_request(
    record: dict[str, Any], resource: dict[str, Any] | None = None, snake: bool = False
) -> bytes:
    if snake:
        return orjson.dumps(
            {"resource_logs": [{"resource": resource or {}, "scope_logs": [{"log_records": [record]}]}]}
        )
    return orjson.dumps(
        {"resourceLogs": [{"resource": resource or {}, "scopeLogs": [{"logRecords": [record]}]}]}
    )


def test_json_snake_case_enum_names_numbers_and_new_code_attributes() -> None:
    record = {
        "time_unix_nano": 1_700_000_000_123_456_789,  # a number, not a string
        "severity_number": "SEVERITY_NUMBER_ERROR",
        "severity_text": "error",
        "trace_id": "0AF7651916CD43DD8448EB211C80319C",
        "span_id": "B7AD6B7169203331",
        "body": {"string_value": "db timeout"},
        "attributes": [
            {"key": "code.file.path", "value": {"stringValue": "/srv/app/db.py"}},
            {"key": "code.line.number", "value": {"intValue": "88"}},
            {"key": "code.function.name", "value": {"stringValue": "query"}},
            {"key": "db.rows", "value": {"int_value": 3}},
            {"key": "ratio", "value": {"doubleValue": "NaN"}},
            {"key": "limit", "value": {"doubleValue": "Infinity"}},
            {"key": "raw", "value": {"bytesValue": base64.b64encode(b"hi").decode()}},
            {"key": "list", "value": {"arrayValue": {"values": [{"intValue": 1}, {"boolValue": False}]}}},
        ],
    }
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "orders"}}]}
    [event] = decode_otlp_logs(json_request(record, resource, snake=True), JSON)
    assert event["timestamp"] == 1_700_000_000_123_456_789
    assert event["severity_number"] == 17
    assert event["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert event["span_id"] == "b7ad6b7169203331"
    assert event["source"] == "/srv/app/db.py:88"
    assert event["function"] == "query"
    assert event["service"] == "orders"
    attributes = event["attributes"]
    assert attributes["db.rows"] == 3
    assert attributes["ratio"] != attributes["ratio"]  # NaN
    assert attributes["limit"] == float("inf")
    assert attributes["raw"] == base64.b64encode(b"hi").decode()
    assert attributes["list"] == "[1,false]"


def test_json_tolerates_base64_ids_from_generic_protobuf_json_encoders() -> None:
    trace = bytes(range(1, 17))
    span = bytes(range(1, 9))
    record = {"traceId": base64.b64encode(trace).decode(), "spanId": base64.b64encode(span).decode()}
    [event] = decode_otlp_logs(json_request(record), JSON)
    assert event["trace_id"] == trace.hex() and event["span_id"] == span.hex()


def test_json_old_instrumentation_library_logs() -> None:
    body = orjson.dumps(
        {
            "resourceLogs": [
                {
                    "instrumentationLibraryLogs": [
                        {
                            "instrumentationLibrary": {"name": "legacy"},
                            "logRecords": [{"body": {"stringValue": "old"}}],
                        }
                    ]
                }
            ]
        }
    )
    [event] = decode_otlp_logs(body, JSON)
    assert event["message"] == "old"
    assert event["attributes"]["otel.scope.name"] == "legacy"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"traceId": "xyz"},
            r"resourceLogs\[0\].scopeLogs\[0\].logRecords\[0\].traceId must be 32 hex digits",
        ),
        ({"spanId": "0011"}, "spanId must be 16 hex digits"),
        ({"timeUnixNano": "yesterday"}, "timeUnixNano must be a 64-bit integer"),
        ({"timeUnixNano": str(2**64)}, "timeUnixNano must be a 64-bit integer"),
        ({"severityNumber": "LOUD"}, "severityNumber must be a number or a SeverityNumber name"),
        ({"severityText": 3}, "severityText must be a string"),
        ({"attributes": {"a": 1}}, "attributes must be an array"),
        ({"attributes": [{"key": "a", "value": {"boolValue": "yes"}}]}, "boolValue must be true or false"),
        ({"attributes": [{"key": "a", "value": {"doubleValue": "lots"}}]}, "doubleValue must be a number"),
        ({"attributes": [{"key": "a", "value": {"bytesValue": "!!"}}]}, "bytesValue must be base64"),
        ({"body": "plain string"}, "body must be an object"),
    ],
)
def test_json_wrong_types_are_named(record: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_otlp_logs(json_request(record), JSON)


def test_json_syntax_error() -> None:
    with pytest.raises(BadRequest, match=r"^invalid OTLP/JSON: "):
        decode_otlp_logs(b'{"resourceLogs": [', JSON)
    with pytest.raises(BadRequest, match="request must be an object"):
        decode_otlp_logs(b"[]", JSON)


def deep_body(levels: int) -> bytes:
    """A record whose body nests ``levels`` kvlists (orjson cannot even write this deep)."""
    opening = b'{"kvlistValue":{"values":[{"key":"k","value":' * levels
    closing = b"}]}}" * levels
    record = b'{"body":' + opening + b'{"stringValue":"leaf"}' + closing + b"}"
    return b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + record + b"]}]}]}"


@pytest.mark.parametrize("levels", [60, 200, 300])
def test_json_deep_nesting_is_refused_not_crashing(levels: int) -> None:
    try:
        [event] = decode_otlp_logs(deep_body(levels), JSON)
    except BadRequest as exc:
        assert levels > 60
        assert any(word in exc.message for word in ("nested too deeply", "depth limit", "cannot render"))
    else:
        assert event["attributes"]["body" + ".k" * levels] == "leaf"


def test_json_and_protobuf_agree() -> None:
    record = LogRecord(
        time_unix_nano=1_700_000_000_000_000_001,
        severity_number=9,
        severity_text="INFO",
        body=AnyValue(string_value="same"),
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        attributes=[kv("n", AnyValue(int_value=-5)), kv("f", AnyValue(double_value=1.5))],
    )
    from_pb = decode_otlp_logs(one_record_request(record), PROTOBUF)
    from_json = decode_otlp_logs(
        json_request(
            {
                "timeUnixNano": "1700000000000000001",
                "severityNumber": 9,
                "severityText": "INFO",
                "body": {"stringValue": "same"},
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "attributes": [
                    {"key": "n", "value": {"intValue": "-5"}},
                    {"key": "f", "value": {"doubleValue": 1.5}},
                ],
            }
        ),
        JSON,
    )
    assert from_pb == from_json


# --------------------------------------------------------------------------- responses


def test_export_response_protobuf() -> None:
    assert ExportLogsServiceResponse.FromString(encode_export_response()) == ExportLogsServiceResponse()
    response = ExportLogsServiceResponse.FromString(encode_export_response(3, PROTOBUF, "3 records too old"))
    assert response.partial_success.rejected_log_records == 3
    assert response.partial_success.error_message == "3 records too old"


def test_export_response_json() -> None:
    assert encode_export_response(0, "application/json; charset=utf-8") == b"{}"
    assert orjson.loads(encode_export_response(2, JSON, "bad")) == {
        "partialSuccess": {"rejectedLogRecords": "2", "errorMessage": "bad"}
    }


# --------------------------------------------------------------------------- fuzzing

ALLOWED = (BadRequest, UnsupportedMediaType, PayloadTooLarge)


@given(body=st.binary(max_size=1024), content_type=st.sampled_from([PROTOBUF, JSON]))
@settings(max_examples=200, deadline=None)
def test_fuzz_arbitrary_bytes(body: bytes, content_type: str) -> None:
    try:
        events = decode_otlp_logs(body, content_type)
    except ALLOWED as exc:
        assert exc.message
    else:
        assert all(isinstance(event["message"], str) for event in events)


_VALID = ExportLogsServiceRequest.FromString(
    one_record_request(
        LogRecord(
            time_unix_nano=1,
            body=AnyValue(kvlist_value=KeyValueList(values=[kv("a", AnyValue(string_value="b"))])),
            attributes=[kv("x", AnyValue(double_value=2.0))],
            trace_id=b"\x01" * 16,
        ),
        [kv("service.name", AnyValue(string_value="svc"))],
    )
).SerializeToString()


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_fuzz_mutated_valid_protobuf(data: st.DataObject) -> None:
    body = bytearray(_VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    try:
        decode_otlp_logs(bytes(body), PROTOBUF)
    except BadRequest as exc:
        assert exc.message.startswith("invalid OTLP protobuf")


json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
any_value = st.recursive(
    st.sampled_from(
        ["stringValue", "intValue", "boolValue", "doubleValue", "bytesValue", "string_value", "x"]
    ).flatmap(lambda key: st.fixed_dictionaries({key: json_any})),
    lambda inner: (
        st.fixed_dictionaries(
            {
                "kvlistValue": st.fixed_dictionaries(
                    {"values": st.lists(st.fixed_dictionaries({"key": json_any, "value": inner}), max_size=3)}
                )
            }
        )
        | st.fixed_dictionaries(
            {"arrayValue": st.fixed_dictionaries({"values": st.lists(inner, max_size=3) | json_any})}
        )
    ),
    max_leaves=6,
)
record_fields = st.dictionaries(
    st.sampled_from(
        [
            "timeUnixNano",
            "observedTimeUnixNano",
            "severityNumber",
            "severityText",
            "traceId",
            "spanId",
            "eventName",
            "body",
            "attributes",
            "flags",
        ]
    ),
    json_any
    | any_value
    | st.lists(st.fixed_dictionaries({"key": st.text(max_size=5), "value": any_value}), max_size=3),
    max_size=6,
)


@given(record=record_fields, scope=json_any, resource=json_any)
@settings(max_examples=200, deadline=None)
def test_fuzz_structured_otlp_json(record: dict[str, Any], scope: Any, resource: Any) -> None:
    body = orjson.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": resource},
                    "scopeLogs": [{"scope": scope, "logRecords": [record]}],
                }
            ]
        }
    )
    try:
        events = decode_otlp_logs(body, JSON)
    except BadRequest as exc:
        assert exc.message.startswith("invalid OTLP")
    else:
        [event] = events
        assert isinstance(event["message"], str)
        assert all(isinstance(v, str) for v in event["resource"].values())
        assert all(isinstance(v, (str, int, float, bool)) for v in event["attributes"].values())
