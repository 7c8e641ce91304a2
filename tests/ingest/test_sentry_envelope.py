"""The Sentry envelope and store decoders, the auth forms SDKs use, and transactions -> spans.

Envelopes are built with sentry_sdk's own ``Envelope`` serializer where possible, so the
decoder is checked against what the real SDK writes; hypothesis fuzzes the framing.
"""

from __future__ import annotations

import base64
import copy
import json
import zlib
from typing import Any

import cramjam
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentry_sdk.envelope import Envelope as SdkEnvelope
from sentry_sdk.envelope import Item as SdkItem
from sentry_sdk.envelope import PayloadRef

from stackwatch.errors import BadRequest, PayloadTooLarge
from stackwatch.ingest.sentry import (
    Outcomes,
    auth_key,
    decode_brotli,
    decode_envelope,
    decode_store,
    dsn_key,
    parse_envelope,
    transaction_to_spans,
)
from stackwatch.model.spans import validate_span

LIMITS = {"max_event_bytes": 1 << 20, "max_attachment_bytes": 64}
EVENT = {"event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "message": "hello", "level": "info"}


def sdk_envelope(*items: SdkItem, headers: dict[str, Any] | None = None) -> bytes:
    return SdkEnvelope(headers=headers or {"event_id": EVENT["event_id"]}, items=list(items)).serialize()


def test_event_attachment_session_and_client_report_from_the_sdk_serializer() -> None:
    data = sdk_envelope(
        SdkItem(payload=PayloadRef(json=EVENT), type="event"),
        SdkItem(payload=b"small log\n", type="attachment", filename="log.txt", content_type="text/plain"),
        SdkItem(payload=b"x" * 65, type="attachment", filename="big.bin"),
        SdkItem(payload=PayloadRef(json={"sid": "a", "status": "ok", "errors": 0}), type="session"),
        SdkItem(payload=PayloadRef(json={"timestamp": 1, "discarded_events": [
            {"reason": "sample_rate", "category": "error", "quantity": 3}]}), type="client_report"),
        SdkItem(payload=PayloadRef(json={"x": 1}), type="profile"),
    )
    out = decode_envelope(data, **LIMITS)
    assert out.event_id == EVENT["event_id"]
    assert [r["event"] for r in out.records] == [EVENT]
    (kept,) = out.records[0]["attachments"]
    assert (kept["filename"], kept["content_type"], kept["size"]) == ("log.txt", "text/plain", 10)
    assert base64.b64decode(kept["data"]) == b"small log\n"
    assert out.sessions == 1
    assert out.outcomes == {("attachment", "too_large"): 1, ("error", "client:sample_rate"): 3}


def test_items_without_length_end_at_newline_and_blank_lines_are_tolerated() -> None:
    data = b'{"dsn":"https://k@h/1"}\n{"type":"event"}\n{"message":"a"}\n\n{"type":"attachment"}\nraw bytes'
    env = parse_envelope(data)
    assert env.headers == {"dsn": "https://k@h/1"}
    assert [(i.type, i.payload) for i in env.items] == [("event", b'{"message":"a"}'), ("attachment", b"raw bytes")]


def test_length_counts_bytes_including_newlines_in_the_payload() -> None:
    payload = b'{"message":"line1\\nline2"}\n'
    data = b"{}\n" + orjson.dumps({"type": "event", "length": len(payload)}) + b"\n" + payload
    (item,) = parse_envelope(data).items
    assert item.payload == payload


def test_header_only_envelope_is_valid() -> None:
    assert parse_envelope(b'{"event_id":"x"}').items == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty envelope"),
        (b"not json\n", "envelope header is not valid JSON"),
        (b"[1]\n", "envelope header must be a JSON object"),
        (b"{}\n{}\n", "item 1 header has no 'type'"),
        (b'{}\n{"type":"event","length":100}\n{}', "'length' is 100 but only 2 bytes follow"),
        (b'{}\n{"type":"event","length":-1}\n', "'length' must be a non-negative integer"),
        (b'{}\n{"type":"event"}\n[1,2]', "item 1 (event) must be a JSON object"),
        (b'{}\n{"type":"event"}\n{bad', "item 1 (event) is not valid JSON"),
    ],
)
def test_malformed_envelopes_are_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        decode_envelope(data, **LIMITS)


def test_oversized_event_is_413() -> None:
    data = sdk_envelope(SdkItem(payload=PayloadRef(json={"message": "x" * 200}), type="event"))
    with pytest.raises(PayloadTooLarge):
        decode_envelope(data, max_event_bytes=100, max_attachment_bytes=100)


def test_attachments_without_an_event_are_counted_as_dropped() -> None:
    out = decode_envelope(sdk_envelope(SdkItem(payload=b"a", type="attachment", filename="a")), **LIMITS)
    assert out.records == [] and out.outcomes == {("attachment", "no_event"): 1}


def test_sessions_aggregates_are_counted() -> None:
    agg = {"aggregates": [{"started": "2024-01-01T00:00:00Z", "exited": 5, "errored": 2}], "attrs": {"release": "1"}}
    out = decode_envelope(sdk_envelope(SdkItem(payload=PayloadRef(json=agg), type="sessions")), **LIMITS)
    assert out.sessions == 7


@pytest.mark.parametrize(
    ("headers", "query", "key"),
    [
        ({"x-sentry-auth": "Sentry sentry_key=abc, sentry_version=7, sentry_client=sentry.python/2.0"}, {}, "abc"),
        ({"x-sentry-auth": "Sentry sentry_version=7,sentry_key=def"}, {}, "def"),
        ({"authorization": "Sentry sentry_key=ghi"}, {}, "ghi"),
        ({}, {"sentry_key": "jkl", "sentry_version": "7"}, "jkl"),
        ({"authorization": "Bearer xyz"}, {}, None),
        ({}, {}, None),
    ],
)
def test_auth_key_forms(headers: dict[str, str], query: dict[str, str], key: str | None) -> None:
    assert auth_key(headers, query) == key


def test_dsn_key() -> None:
    assert dsn_key("https://pub@o1.example.com/prefix/42") == ("pub", "42")
    assert dsn_key("garbage") == (None, "garbage")
    assert dsn_key(None) == (None, None)


def test_store_endpoint_bodies() -> None:
    assert decode_store(orjson.dumps(EVENT), 1000) == EVENT
    legacy = base64.b64encode(zlib.compress(orjson.dumps(EVENT)))
    assert decode_store(legacy, 1000) == EVENT
    with pytest.raises(BadRequest, match="neither JSON nor base64"):
        decode_store(b"%%%", 1000)
    bomb = base64.b64encode(zlib.compress(b'{"a":"' + b"x" * 100_000 + b'"}'))
    with pytest.raises(PayloadTooLarge):
        decode_store(bomb, 1000)


def test_brotli_bodies_are_bounded() -> None:
    data = b"y" * 10_000
    assert decode_brotli(bytes(cramjam.brotli.compress(data)), 10_000) == data
    with pytest.raises(PayloadTooLarge):
        decode_brotli(bytes(cramjam.brotli.compress(data)), 9_999)
    with pytest.raises(BadRequest, match="invalid brotli"):
        decode_brotli(b"not brotli at all", 100)


def test_outcomes_snapshot() -> None:
    outcomes = Outcomes()
    outcomes.add("error", "accepted", 2)
    outcomes.update({("attachment", "too_large"): 1})
    assert outcomes.snapshot() == [
        {"category": "attachment", "reason": "too_large", "quantity": 1},
        {"category": "error", "reason": "accepted", "quantity": 2},
    ]


# -- fuzzing -------------------------------------------------------------------------------------

item_strategy = st.tuples(
    st.sampled_from(["event", "transaction", "attachment", "session", "client_report", "weird"]),
    st.binary(max_size=200),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(item_strategy, max_size=6), st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3))
def test_framing_round_trips(items: list[tuple[str, bytes, bool]], header: dict[str, int]) -> None:
    """Any payload bytes survive framing when a length is given; without one, newline-free ones do."""
    parts = [orjson.dumps(header)]
    expected = []
    for kind, payload, with_length in items:
        if not with_length:
            payload = payload.replace(b"\n", b"")
        item_header: dict[str, Any] = {"type": kind}
        if with_length:
            item_header["length"] = len(payload)
        parts.append(orjson.dumps(item_header))
        parts.append(payload)
        expected.append((kind, payload))
    data = b"\n".join(parts)
    env = parse_envelope(data)
    assert env.headers == header
    assert [(i.type, i.payload) for i in env.items] == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        decode_envelope(data, **LIMITS)
    except (BadRequest, PayloadTooLarge):
        pass


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
))
def test_arbitrary_json_items_never_crash(value: Any) -> None:
    body = json.dumps(value).encode()  # big ints and Infinity too: the decoder must refuse them cleanly
    for kind in ("event", "transaction", "session", "sessions", "client_report"):
        data = b"{}\n" + orjson.dumps({"type": kind, "length": len(body)}) + b"\n" + body
        try:
            out = decode_envelope(data, **LIMITS)
        except BadRequest:
            continue
        for record in out.records:
            spans = transaction_to_spans(record["event"])
            assert all(validate_span(s) == [] for s in spans)


# -- transactions -> spans -------------------------------------------------------------------------

TRANSACTION = {
    "type": "transaction",
    "transaction": "GET /orders/{id}",
    "start_timestamp": 1_700_000_000.0,
    "timestamp": 1_700_000_000.25,
    "release": "shop@1.4.2",
    "environment": "production",
    "server_name": "web-1",
    "platform": "python",
    "sdk": {"name": "sentry.python", "version": "2.0.0"},
    "tags": {"region": "eu"},
    "contexts": {"trace": {"trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736", "span_id": "00f067aa0ba902b7",
                           "op": "http.server", "status": "internal_error", "data": {"http.method": "GET"}}},
    "spans": [
        {"span_id": "b9c7c989f97918e1", "parent_span_id": "00f067aa0ba902b7", "op": "db",
         "description": "SELECT * FROM orders", "start_timestamp": 1_700_000_000.05,
         "timestamp": "2023-11-14T22:13:20.150000Z", "status": "ok", "data": {"db.system": "postgresql"}},
        {"span_id": "not-a-span-id", "start_timestamp": 1_700_000_000.1},
        {"span_id": "c9c7c989f97918e1", "parent_span_id": "b9c7c989f97918e1", "op": "http.client",
         "description": "POST https://pay", "start_timestamp": 1_700_000_000.2, "timestamp": 1_700_000_000.1},
    ],
}


def test_transaction_becomes_root_and_child_spans() -> None:
    root, db, http = transaction_to_spans(TRANSACTION)
    for span in (root, db, http):
        assert validate_span(span) == []
        assert span["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert span["service"] == "shop"
    assert (root["name"], root["kind"], root["parent_span_id"]) == ("GET /orders/{id}", "server", "")
    assert (root["status_code"], root["status_message"]) == ("error", "internal_error")
    assert root["end_ns"] - root["start_ns"] == 250_000_000
    assert root["attributes"] == {"region": "eu", "http.method": "GET", "sentry.op": "http.server"}
    assert root["resource"] == {"service.name": "shop", "telemetry.sdk.language": "python",
                                "service.version": "shop@1.4.2", "deployment.environment": "production",
                                "host.name": "web-1"}
    assert (db["name"], db["kind"], db["parent_span_id"], db["status_code"]) == (
        "SELECT * FROM orders", "client", "00f067aa0ba902b7", "ok")
    assert db["end_ns"] == 1_700_000_000_150_000_000
    assert http["end_ns"] == http["start_ns"]  # an end before the start is clamped, not refused
    assert (root["scope_name"], root["scope_version"]) == ("sentry.python", "2.0.0")


@pytest.mark.parametrize(
    ("status", "op", "code"),
    [
        ("not_found", "http.server", "unset"),  # a 404 is the caller's failure on the server...
        ("unauthenticated", "http.server", "unset"),
        ("resource_exhausted", "http.server", "unset"),
        ("internal_error", "http.server", "error"),  # ...a 5xx is the server's
        ("unavailable", "http.server", "error"),
        ("deadline_exceeded", "http.server", "error"),
        ("not_found", "http.client", "error"),  # and a 404 the client got is the client's error
        ("ok", "http.server", "ok"),
    ],
)
def test_span_status_follows_opentelemetrys_http_rule(status: str, op: str, code: str) -> None:
    event = copy.deepcopy(TRANSACTION)
    if op == "http.server":  # the transaction itself
        event["contexts"]["trace"]["status"] = status
        span = transaction_to_spans(event)[0]
    else:  # its outgoing call
        event["spans"][2]["status"] = status
        span = transaction_to_spans(event)[-1]
    assert (span["kind"], span["status_code"]) == (op.split(".")[1], code)
    if code == "unset":
        assert span["attributes"]["sentry.status"] == status and span["status_message"] == ""


def test_transaction_without_a_valid_trace_gives_no_spans() -> None:
    assert transaction_to_spans({"contexts": {"trace": {"trace_id": "zz"}}}) == []
    assert transaction_to_spans({}) == []
