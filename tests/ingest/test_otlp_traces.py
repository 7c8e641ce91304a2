"""OTLP/HTTP traces decoding: the spec's example, the real OpenTelemetry Python SDK, fuzzing."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from stackwatch.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from stackwatch.ingest.otlp_traces import decode_otlp_traces, encode_export_response
from stackwatch.model.spans import validate_span

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "otlp"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def read_testdata(name: str) -> bytes:
    path = TESTDATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared/ must sit beside the checkout)")
    return path.read_bytes()


# --------------------------------------------------------------------------- spec example


def test_spec_trace_example() -> None:
    batch = decode_otlp_traces(read_testdata("trace.json"), JSON)
    assert batch.rejected == 0
    [span] = batch.spans
    assert span == {
        # OTLP/JSON ids are hex (here uppercase), not base64; we keep lowercase hex.
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "parent_span_id": "eee19b7ec3c1b173",
        "name": "I'm a server span",
        "kind": "server",
        "service": "my.service",
        "start_ns": 1544712660000000000,
        "end_ns": 1544712661000000000,
        "status_code": "unset",
        "status_message": "",
        "attributes": {"my.scope.attribute": "some scope attribute", "my.span.attr": "some value"},
        "resource": {"service.name": "my.service"},
        "events": [],
        "links": [],
        "scope_name": "my.library",
        "scope_version": "1.0.0",
    }
    assert validate_span(span) == []


# --------------------------------------------------------------------------- real SDK


def test_real_sdk_spans_as_the_exporter_encodes_them() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout", "service.version": "2.1"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("checkout.web", "0.9")
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.status_code", 500)
        root.set_attribute("http.retry_delays", [0.1, 0.2])
        root.set_attribute("feature.flags", ["a", "b"])
        with tracer.start_as_current_span(
            "SELECT orders", kind=SpanKind.CLIENT, links=[Link(root.get_span_context(), {"why": "batch"})]
        ) as child:
            child.add_event("rows", {"count": 3})
            child.set_status(StatusCode.ERROR, "timeout")
    provider.shutdown()
    body = encode_spans(exporter.get_finished_spans()).SerializeToString()

    batch = decode_otlp_traces(body, PROTOBUF)
    assert batch.rejected == 0
    child_span, root_span = batch.spans  # the child ends first
    for span in batch.spans:
        assert validate_span(span) == []
    tid = format(root.get_span_context().trace_id, "032x")
    assert root_span["trace_id"] == tid and child_span["trace_id"] == tid
    assert root_span["span_id"] == format(root.get_span_context().span_id, "016x")
    assert root_span["parent_span_id"] == "" and child_span["parent_span_id"] == root_span["span_id"]
    assert root_span["kind"] == "server" and child_span["kind"] == "client"
    assert root_span["service"] == "checkout"
    assert root_span["resource"]["service.version"] == "2.1"
    assert root_span["resource"]["telemetry.sdk.language"] == "python"
    assert root_span["scope_name"] == "checkout.web" and root_span["scope_version"] == "0.9"
    assert root_span["attributes"] == {
        "http.status_code": 500,
        "http.retry_delays": "[0.1,0.2]",
        "feature.flags": '["a","b"]',
    }
    assert child_span["status_code"] == "error" and child_span["status_message"] == "timeout"
    [event] = child_span["events"]
    assert event["name"] == "rows" and event["attributes"] == {"count": 3} and event["time_ns"] > 0
    assert child_span["links"] == [{"trace_id": tid, "span_id": root_span["span_id"], "attributes": {"why": "batch"}}]
    assert root_span["end_ns"] >= child_span["end_ns"] >= child_span["start_ns"] >= root_span["start_ns"]


# --------------------------------------------------------------------------- protobuf details


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def request_of(*spans: Span, resource: list[KeyValue] | None = None) -> bytes:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=PbResource(attributes=resource or [kv("service.name", AnyValue(string_value="api"))]),
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    ).SerializeToString()


def pb_span(**kw: Any) -> Span:
    fields: dict[str, Any] = {
        "trace_id": b"\x01" * 16,
        "span_id": b"\x02" * 8,
        "name": "op",
        "start_time_unix_nano": 1_700_000_000_000_000_000,
        "end_time_unix_nano": 1_700_000_000_500_000_000,
    }
    fields.update(kw)
    return Span(**fields)


def test_protobuf_nested_attribute_values_are_flattened() -> None:
    nested = AnyValue(kvlist_value=KeyValueList(values=[
        kv("a", AnyValue(int_value=1)),
        kv("b", AnyValue(kvlist_value=KeyValueList(values=[kv("c", AnyValue(bool_value=False))]))),
        kv("list", AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="x"), AnyValue(int_value=2)]))),
    ]))
    body = request_of(pb_span(attributes=[
        kv("m", nested), kv("raw", AnyValue(bytes_value=b"\x00\xff")), kv("d", AnyValue(double_value=0.5)),
        kv("empty", AnyValue()),
    ]))
    [span] = decode_otlp_traces(body, PROTOBUF).spans
    assert span["attributes"] == {
        "m.a": 1, "m.b.c": False, "m.list": '["x",2]', "raw": base64.b64encode(b"\x00\xff").decode(), "d": 0.5,
    }


def test_protobuf_kind_and_status_numbers() -> None:
    body = request_of(
        pb_span(kind=Span.SPAN_KIND_PRODUCER, status=Status(code=Status.STATUS_CODE_OK)),
        pb_span(span_id=b"\x03" * 8, kind=99, status=Status(code=7, message="?")),
    )
    first, second = decode_otlp_traces(body, PROTOBUF).spans
    assert (first["kind"], first["status_code"]) == ("producer", "ok")
    # Values from a newer OTLP we do not know fall back to the neutral ones.
    assert (second["kind"], second["status_code"], second["status_message"]) == ("unspecified", "unset", "?")


def test_unusable_spans_are_rejected_and_the_rest_kept() -> None:
    body = request_of(
        pb_span(),
        pb_span(trace_id=b"\x00" * 16),
        pb_span(span_id=b"\x01" * 4),
        pb_span(start_time_unix_nano=0),
        pb_span(parent_span_id=b"\x01" * 3),
        pb_span(end_time_unix_nano=2**64 - 1),
        # A span that ends before it starts (clock skew) is kept, lasting zero time.
        pb_span(span_id=b"\x09" * 8, end_time_unix_nano=1_600_000_000_000_000_000),
    )
    batch = decode_otlp_traces(body, PROTOBUF)
    assert [s["span_id"] for s in batch.spans] == ["02" * 8, "09" * 8]
    assert batch.spans[1]["end_ns"] == batch.spans[1]["start_ns"]
    assert batch.rejected == 5
    assert "traceId" in batch.reasons[0] and "spanId" in batch.reasons[1] and "startTime" in batch.reasons[2]
    assert batch.error_message.startswith("5 spans rejected: resourceSpans[0].scopeSpans[0].spans[1]: traceId")

    response = ExportTraceServiceResponse.FromString(encode_export_response(batch, PROTOBUF))
    assert response.partial_success.rejected_spans == 5
    assert "traceId" in response.partial_success.error_message
    assert encode_export_response(decode_otlp_traces(request_of(pb_span()), PROTOBUF), PROTOBUF) == b""
    assert encode_export_response(None, JSON) == b"{}"
    assert orjson.loads(encode_export_response(batch, JSON))["partialSuccess"]["rejectedSpans"] == "5"


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05\x0a\x03", b"not a protobuf at all"])
def test_invalid_protobuf_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest, match=r"^invalid OTLP protobuf: "):
        decode_otlp_traces(body, PROTOBUF)


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/grpc", "application/x-ndjson"])
def test_unsupported_content_types(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported Content-Type"):
        decode_otlp_traces(b"{}", content_type)


# --------------------------------------------------------------------------- OTLP/JSON details


def json_request(span: dict[str, Any], **resource_spans: Any) -> bytes:
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}], **resource_spans}]})


BASE = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "startTimeUnixNano": "5"}


def test_json_enum_names_numbers_as_strings_and_snake_case() -> None:
    span = {
        "trace_id": "0AF7651916CD43DD8448EB211C80319C",
        "span_id": "B7AD6B7169203331",
        "parent_span_id": "",
        "name": "publish",
        "kind": "SPAN_KIND_PRODUCER",
        "start_time_unix_nano": 1000,
        "end_time_unix_nano": "3000",
        "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
        "attributes": [{"key": "n", "value": {"intValue": "7"}}, {"key": "f", "value": {"doubleValue": "NaN"}}],
        "events": [{"timeUnixNano": "2000", "name": "e", "attributes": [{"key": "k", "value": {"boolValue": True}}]}],
        "links": [
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "00f067aa0ba902b7"},
            {"traceId": "bad", "spanId": "00f067aa0ba902b7"},  # a bad link is dropped, not the span
        ],
    }
    [out] = decode_otlp_traces(
        json_request(span, resource={"attributes": [{"key": "service.name", "value": {"stringValue": "q"}}]}), JSON
    ).spans
    assert out["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and out["span_id"] == "b7ad6b7169203331"
    assert (out["kind"], out["status_code"], out["status_message"]) == ("producer", "error", "boom")
    assert (out["start_ns"], out["end_ns"]) == (1000, 3000)
    assert out["attributes"]["n"] == 7 and out["attributes"]["f"] != out["attributes"]["f"]  # NaN
    assert out["events"] == [{"time_ns": 2000, "name": "e", "attributes": {"k": True}}]
    assert out["links"] == [
        {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "00f067aa0ba902b7", "attributes": {}}
    ]
    assert out["service"] == "q"


def test_json_base64_ids_of_the_generic_protobuf_mapping_are_tolerated() -> None:
    span = {**BASE, "traceId": base64.b64encode(b"\x0a" * 16).decode(), "spanId": base64.b64encode(b"\x0b" * 8).decode()}
    [out] = decode_otlp_traces(json_request(span), JSON).spans
    assert out["trace_id"] == "0a" * 16 and out["span_id"] == "0b" * 8


def test_json_instrumentation_library_spans_of_old_otlp() -> None:
    body = orjson.dumps({"resourceSpans": [{"instrumentationLibrarySpans": [
        {"instrumentationLibrary": {"name": "old.lib", "version": "0.1"}, "spans": [BASE]}
    ]}]})
    [out] = decode_otlp_traces(body, JSON).spans
    assert (out["scope_name"], out["scope_version"]) == ("old.lib", "0.1")


@pytest.mark.parametrize(
    ("span", "message"),
    [
        ({**BASE, "kind": "SERVER"}, r"kind must be a number or one of SPAN_KIND_"),
        ({**BASE, "startTimeUnixNano": "soon"}, r"startTimeUnixNano must be a 64-bit integer"),
        ({**BASE, "name": 5}, r"name must be a string"),
        ({**BASE, "status": []}, r"status must be an object"),
        ({**BASE, "events": {}}, r"events must be an array"),
        ({**BASE, "attributes": [{"key": "a", "value": {"boolValue": "yes"}}]}, r"boolValue must be true or false"),
    ],
)
def test_json_type_errors_say_where(span: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_otlp_traces(json_request(span), JSON)


def test_json_bad_ids_reject_the_span_only() -> None:
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [BASE, {**BASE, "traceId": "xyz"}]}]}]})
    batch = decode_otlp_traces(body, JSON)
    assert len(batch.spans) == 1 and batch.rejected == 1
    assert batch.reasons == ["resourceSpans[0].scopeSpans[0].spans[1].traceId must be 32 hex digits, got 'xyz'"]


def test_deep_nesting_is_refused_not_crashed() -> None:
    depth = 300  # deeper than a JSON rendering of the array can go
    value = '{"arrayValue": {"values": [' * depth + '{"stringValue": "x"}' + "]}}" * depth
    span = orjson.dumps({**BASE, "attributes": []}).decode().replace('"attributes":[]', f'"attributes":[{{"key":"deep","value":{value}}}]')
    body = ('{"resourceSpans":[{"scopeSpans":[{"spans":[' + span + "]}]}]}").encode()
    with pytest.raises(BadRequest, match="cannot render a value as JSON"):
        decode_otlp_traces(body, JSON)


# --------------------------------------------------------------------------- fuzzing

ALLOWED = (BadRequest, UnsupportedMediaType, PayloadTooLarge)


def check(batch: Any) -> None:
    for span in batch.spans:
        assert validate_span(span) == [], span


@given(body=st.binary(max_size=1024), content_type=st.sampled_from([PROTOBUF, JSON]))
@settings(max_examples=200, deadline=None)
def test_fuzz_arbitrary_bytes(body: bytes, content_type: str) -> None:
    try:
        batch = decode_otlp_traces(body, content_type)
    except ALLOWED as exc:
        assert exc.message
    else:
        check(batch)


_VALID = request_of(
    pb_span(
        parent_span_id=b"\x05" * 8,
        attributes=[kv("x", AnyValue(double_value=2.0)), kv("y", AnyValue(string_value="z"))],
        events=[Span.Event(time_unix_nano=3, name="e")],
        links=[Span.Link(trace_id=b"\x07" * 16, span_id=b"\x08" * 8)],
        status=Status(code=2, message="bad"),
    )
)


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_fuzz_mutated_valid_protobuf(data: st.DataObject) -> None:
    body = bytearray(_VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    try:
        batch = decode_otlp_traces(bytes(body), PROTOBUF)
    except BadRequest as exc:
        assert exc.message.startswith("invalid OTLP protobuf")
    else:
        check(batch)


json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
any_value = st.recursive(
    st.sampled_from(["stringValue", "intValue", "boolValue", "doubleValue", "bytesValue", "x"]).flatmap(
        lambda key: st.fixed_dictionaries({key: json_any})
    ),
    lambda inner: (
        st.fixed_dictionaries({"kvlistValue": st.fixed_dictionaries(
            {"values": st.lists(st.fixed_dictionaries({"key": json_any, "value": inner}), max_size=3)}
        )})
        | st.fixed_dictionaries({"arrayValue": st.fixed_dictionaries({"values": st.lists(inner, max_size=3)})})
    ),
    max_leaves=6,
)
attributes = st.lists(st.fixed_dictionaries({"key": st.text(max_size=5), "value": any_value}), max_size=3)
hex_ids = st.sampled_from(["", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "00" * 16, "zz"]) | json_any
span_fields = st.fixed_dictionaries(
    {},
    optional={
        "traceId": hex_ids,
        "spanId": hex_ids,
        "parentSpanId": hex_ids,
        "name": json_any,
        "kind": st.integers(-2, 8) | st.sampled_from(["SPAN_KIND_CLIENT", "bogus"]) | json_any,
        "startTimeUnixNano": json_any,
        "endTimeUnixNano": json_any,
        "attributes": attributes | json_any,
        "status": st.fixed_dictionaries({}, optional={"code": json_any, "message": json_any}) | json_any,
        "events": st.lists(st.fixed_dictionaries({}, optional={
            "timeUnixNano": json_any, "name": json_any, "attributes": attributes}), max_size=2) | json_any,
        "links": st.lists(st.fixed_dictionaries({}, optional={
            "traceId": hex_ids, "spanId": hex_ids, "attributes": attributes}), max_size=2) | json_any,
    },
)


@given(span=span_fields, scope=json_any, resource=attributes | json_any)
@settings(max_examples=300, deadline=None)
def test_fuzz_structured_otlp_json(span: dict[str, Any], scope: Any, resource: Any) -> None:
    body = orjson.dumps(
        {"resourceSpans": [{"resource": {"attributes": resource}, "scopeSpans": [{"scope": scope, "spans": [span]}]}]}
    )
    try:
        batch = decode_otlp_traces(body, JSON)
    except BadRequest as exc:
        assert exc.message.startswith("invalid OTLP")
    else:
        check(batch)
        assert len(batch.spans) + batch.rejected == 1


def test_trace_context_ids_match_what_propagation_carries() -> None:
    """The hex ids we store are the ones a ``traceparent`` header shows (what logs carry)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("x"):
        ctx = trace.get_current_span().get_span_context()
        traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    [span] = decode_otlp_traces(encode_spans(exporter.get_finished_spans()).SerializeToString(), PROTOBUF).spans
    assert traceparent.split("-")[1:3] == [span["trace_id"], span["span_id"]]
