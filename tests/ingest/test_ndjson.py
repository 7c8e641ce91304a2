"""NDJSON / JSON / plain-text log push decoding."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from stackwatch.ingest.ndjson import decode_json, decode_ndjson, decode_text_lines

STRUCTLOG_LINE = (
    b'{"event": "user logged in", "level": "info", "timestamp": "2024-05-01T12:00:00.123Z", '
    b'"logger": "auth.views", "context": {"user_id": 42, "ip_address": "10.0.0.7"}}'
)


def test_one_object_per_line_is_returned_as_sent() -> None:
    body = STRUCTLOG_LINE + b"\n" + b'{"msg":"second","lvl":"warn","@timestamp":1714564800}\n'
    events = decode_ndjson(body)
    assert events == [
        {
            "event": "user logged in",
            "level": "info",
            "timestamp": "2024-05-01T12:00:00.123Z",
            "logger": "auth.views",
            "context": {"user_id": 42, "ip_address": "10.0.0.7"},
        },
        {"msg": "second", "lvl": "warn", "@timestamp": 1714564800},
    ]


def test_crlf_blank_lines_and_missing_final_newline() -> None:
    body = b'{"a":1}\r\n\r\n   \n{"b":2}\r\n\t\n{"c":3}'
    assert decode_ndjson(body) == [{"a": 1}, {"b": 2}, {"c": 3}]


@pytest.mark.parametrize("body", [b"", b"\n\n", b" \r\n"])
def test_empty_bodies_give_no_events(body: bytes) -> None:
    assert decode_ndjson(body) == []
    assert decode_ndjson(body, "application/json") == []
    assert decode_ndjson(body, "text/plain") == []


def test_a_bad_line_is_named_by_its_line_number() -> None:
    body = b'{"a":1}\n\n{"b":2}\n{"c": oops}\n{"d":4}\n'
    with pytest.raises(BadRequest, match=r"^line 4: invalid JSON: ") as info:
        decode_ndjson(body)
    assert info.value.status_code == 400


def test_invalid_utf8_is_a_bad_line() -> None:
    with pytest.raises(BadRequest, match="line 2: invalid JSON"):
        decode_ndjson(b'{"a":1}\n{"b":"\xff\xfe"}\n')


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"42", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_valid_json_that_is_not_an_object_is_refused_with_its_line(line: bytes, kind: str) -> None:
    body = b'{"ok":1}\n' + line + b"\n"
    with pytest.raises(BadRequest, match=f"^line 2: expected a JSON object, got {kind}$"):
        decode_ndjson(body)


def test_two_objects_on_one_line_are_invalid() -> None:
    with pytest.raises(BadRequest, match="line 1: invalid JSON"):
        decode_ndjson(b'{"a":1} {"b":2}\n')


def test_a_pretty_printed_object_is_not_ndjson() -> None:
    with pytest.raises(BadRequest, match="line 1: invalid JSON"):
        decode_ndjson(b'{\n  "a": 1\n}\n')


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-ndjson", "application/x-ndjson; charset=utf-8", "application/jsonlines"],
)
def test_ndjson_content_types(content_type: str | None) -> None:
    assert decode_ndjson(b'{"a":1}\n{"b":2}\n', content_type) == [{"a": 1}, {"b": 2}]


def test_application_json_accepts_an_array_or_one_object() -> None:
    assert decode_ndjson(b'[{"a":1},{"b":{"c":2}}]', "application/json") == [{"a": 1}, {"b": {"c": 2}}]
    assert decode_ndjson(b'{"a":1}', "application/json; charset=utf-8") == [{"a": 1}]
    assert decode_json(b"[]") == []


def test_application_json_that_is_really_ndjson_is_read_as_lines() -> None:
    assert decode_ndjson(b'{"a":1}\n{"b":2}\n', "application/json") == [{"a": 1}, {"b": 2}]
    with pytest.raises(BadRequest, match="line 2: invalid JSON"):
        decode_ndjson(b'{"a":1}\n{"b":\n', "application/json")


def test_application_json_array_with_a_non_object_names_the_element() -> None:
    with pytest.raises(BadRequest, match=r"^array element 1: expected a JSON object, got a number$"):
        decode_json(b'[{"a":1}, 5]')
    with pytest.raises(BadRequest, match="expected a JSON object or an array of objects, got a string"):
        decode_json(b'"just text"')


def test_text_plain_lines_become_messages() -> None:
    body = b'127.0.0.1 - - [01/May/2024:12:00:00 +0000] "GET / HTTP/1.1" 200 512\r\n\r\nsecond line \n'
    assert decode_ndjson(body, "text/plain") == [
        {"message": '127.0.0.1 - - [01/May/2024:12:00:00 +0000] "GET / HTTP/1.1" 200 512'},
        {"message": "second line "},
    ]


def test_text_plain_charset_and_bad_bytes() -> None:
    assert decode_ndjson("café\n".encode("latin-1"), "text/plain; charset=iso-8859-1") == [
        {"message": "café"}
    ]
    # A stray byte must not cost the whole line.
    assert decode_text_lines(b"bad \xff byte\n") == [{"message": "bad \ufffd byte"}]


@pytest.mark.parametrize("charset", ["klingon", "base64", "rot13", "idna"])
def test_unknown_or_non_text_charset_is_unsupported(charset: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported charset"):
        decode_ndjson(b"\xffline\n", f"text/plain; charset={charset}")


@pytest.mark.parametrize("content_type", ["application/xml", "application/x-protobuf", "multipart/form-data"])
def test_unknown_content_type_is_unsupported(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported Content-Type") as info:
        decode_ndjson(b"{}", content_type)
    assert info.value.status_code == 415


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@given(events=st.lists(json_objects, max_size=20), crlf=st.booleans(), blank=st.booleans())
@settings(max_examples=200, deadline=None)
def test_fuzz_round_trip(events: list[dict[str, Any]], crlf: bool, blank: bool) -> None:
    end = b"\r\n" if crlf else b"\n"
    lines = [orjson.dumps(event) for event in events]
    if blank:
        lines = [line + end for line in lines]
    body = end.join(lines)
    assert decode_ndjson(body) == events
    assert decode_ndjson(orjson.dumps(events), "application/json") == events


@given(
    body=st.binary(max_size=512)
    | st.lists(st.sampled_from([b"{}", b'{"a":1}', b"[", b"1", b"\n", b"\r", b" "])).map(b"".join),
    content_type=st.sampled_from(
        [
            None,
            "application/x-ndjson",
            "application/json",
            "text/plain",
            "text/plain; charset=utf-16",
            "image/png",
        ]
    ),
)
@settings(max_examples=200, deadline=None)
def test_fuzz_arbitrary_bytes_decode_or_fail_cleanly(body: bytes, content_type: str | None) -> None:
    try:
        events = decode_ndjson(body, content_type)
    except (BadRequest, UnsupportedMediaType, PayloadTooLarge) as exc:
        assert exc.message
    else:
        assert all(type(event) is dict for event in events)


@pytest.mark.parametrize("content_type", [None, "application/x-ndjson", "application/json", "text/plain"])
def test_a_utf8_byte_order_mark_is_not_content(content_type: str | None) -> None:
    """Windows editors and PowerShell start files with a BOM: the first line is still an event
    (it was refused as invalid JSON, or stored as text starting with U+FEFF)."""
    body = "\ufeff" + '{"level": "INFO", "service": "edge", "message": "started"}\n'
    events = decode_ndjson(body.encode(), content_type)
    if content_type == "text/plain":
        assert events == [{"message": '{"level": "INFO", "service": "edge", "message": "started"}'}]
    else:
        assert events == [{"level": "INFO", "service": "edge", "message": "started"}]
