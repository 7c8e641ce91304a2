"""Normalize stage: aliases, timestamps, severities, flattening, fallbacks, limits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.model.logs import LOG_FIELDS, LOG_TYPES
from stackwatch.pipeline.normalize import (
    MAX_ATTRIBUTE_CHARS,
    MAX_MESSAGE_CHARS,
    Normalizer,
    normalize,
    parse_timestamp,
)
from stackwatch.pipeline.stage import ERROR_ATTRIBUTE, BatchContext

OBSERVED = 1_760_000_000_000_000_000  # 2025-10-09T08:53:20Z


def norm(raw: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return normalize(raw, project="proj", observed_ns=OBSERVED, defaults=defaults)


def ns(text: str) -> int:
    moment = datetime.fromisoformat(text)
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-10-06T12:00:00Z", ns("2025-10-06T12:00:00+00:00")),
        ("2025-10-06T12:00:00.123Z", ns("2025-10-06T12:00:00.123+00:00")),
        ("2025-10-06T12:00:00.123456789Z", ns("2025-10-06T12:00:00+00:00") + 123_456_789),
        ("2025-10-06T14:00:00.5+02:00", ns("2025-10-06T12:00:00.5+00:00")),
        ("2025-10-06T07:00:00-0500", ns("2025-10-06T12:00:00+00:00")),
        ("2025-10-06T12:00:00+00", ns("2025-10-06T12:00:00+00:00")),
        ("2025-10-06 12:00:00,250", ns("2025-10-06T12:00:00.25+00:00")),  # Python logging asctime
        ("2025-10-06T12:00:00.000001", ns("2025-10-06T12:00:00.000001+00:00")),  # naive = UTC
        ("2025-10-06 12:00:00 UTC", ns("2025-10-06T12:00:00+00:00")),
        ("2025-10-06", ns("2025-10-06T00:00:00+00:00")),
        (1759752000, ns("2025-10-06T12:00:00+00:00")),
        (1759752000.25, ns("2025-10-06T12:00:00.25+00:00")),
        (1759752000123, ns("2025-10-06T12:00:00.123+00:00")),
        (1759752000123456, ns("2025-10-06T12:00:00.123456+00:00")),
        (1759752000123456789, 1759752000123456789),
        ("1759752000", ns("2025-10-06T12:00:00+00:00")),
        ("1759752000.123456789", 1759752000123456789),
        ("1759752000123", ns("2025-10-06T12:00:00.123+00:00")),
        ("06/Oct/2025:14:00:00 +0200", ns("2025-10-06T12:00:00+00:00")),
        ("Mon, 06 Oct 2025 12:00:00 GMT", ns("2025-10-06T12:00:00+00:00")),
        ("Oct  6 12:00:00", ns("2025-10-06T12:00:00+00:00")),
    ],
)
def test_timestamp_formats(value: object, expected: int) -> None:
    assert parse_timestamp(value, OBSERVED) == expected


def test_yearless_syslog_timestamp_from_december_read_in_january_is_last_year() -> None:
    january = ns("2026-01-01T00:10:00+00:00")
    assert parse_timestamp("Dec 31 23:59:00", january) == ns("2025-12-31T23:59:00+00:00")


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2025-13-45T99:00:00Z", "", "2025-10-06T12:00:00.12x", True, None, float("nan"), [1],
     # times storage cannot hold (before 1900, after 2262-04-11), which once stopped ingestion
     "9999-12-31T23:59:59Z", "2263-01-01T00:00:00Z", "1600-01-01T00:00:00Z", "1899-12-31T23:59:59Z",
     "1900-01-01T00:30:00+01:00", 1e30, 2**70, -(10**20), "99999999999999999999"],
)
def test_unparseable_timestamps(value: object) -> None:
    assert parse_timestamp(value, OBSERVED) is None


def test_unparseable_timestamp_falls_back_to_observed_and_keeps_the_original() -> None:
    record = norm({"message": "x", "time": "teatime"})
    assert record["timestamp"] == OBSERVED
    assert record["attributes"] == {"timestamp_raw": "teatime"}


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59Z", "1899-12-31T23:59:59Z", 2**70])
def test_a_time_storage_cannot_hold_is_the_arrival_time_on_both_paths(value: object) -> None:
    """The columnar path (blocks of 40 like events) and the per-event path agree, and the
    storage block builds: it once raised OverflowError, for ever, at every retry."""
    from stackwatch.model.logs_arrow import records_to_arrow
    from stackwatch.pipeline import Pipeline

    pipe = Pipeline()
    events = [{"message": f"line {i}", "timestamp": value} for i in range(40)]
    table = pipe.process_to_arrow([dict(e) for e in events], project="p", observed_ns=OBSERVED)
    slow = records_to_arrow(pipe.process([dict(e) for e in events], project="p", observed_ns=OBSERVED))
    for built in (table, slow):
        assert built.column("timestamp").cast("int64").to_pylist() == [OBSERVED] * 40
        assert dict(built.column("attributes_string")[0].as_py())["timestamp_raw"] == str(value)
    # OTLP's uint64 nanoseconds beyond int64: the same.
    otlp = {"timestamp": 2**64 - 1, "message": "m", "attributes": {}, "severity_number": 9, "severity_text": "INFO"}
    assert pipe.process_to_arrow([otlp], project="p", observed_ns=OBSERVED).column("timestamp").cast(
        "int64").to_pylist() == [OBSERVED]


def test_record_has_exactly_the_canonical_fields_and_types() -> None:
    record = norm({"msg": "hello"})
    assert set(record) == set(LOG_FIELDS)
    for name, kind in LOG_FIELDS.items():
        assert isinstance(record[name], kind), name
    assert record["observed_timestamp"] == OBSERVED and record["timestamp"] == OBSERVED
    assert (
        record["project"] == "proj" and record["service"] == "unknown" and record["log_type"] == "application"
    )


def test_guide_two_production_json() -> None:
    raw = {
        "timestamp": "2025-10-06T12:00:00.000Z",
        "level": "INFO",
        "logger": "app.routes.leads",
        "message": "Lead created successfully",
        "module": "leads",
        "function": "create_lead",
        "line": 45,
        "request": {
            "method": "POST",
            "path": "/api/leads",
            "remote_addr": "192.168.1.1",
            "user_agent": "Mozilla/5.0...",
        },
    }
    record = norm(raw, service="crm-api")
    assert record["timestamp"] == ns("2025-10-06T12:00:00+00:00")
    assert (record["severity_text"], record["severity_number"]) == ("INFO", 9)
    assert record["logger"] == "app.routes.leads"
    assert record["function"] == "create_lead"
    assert record["source"] == "leads:45"
    assert record["service"] == "crm-api"
    assert record["attributes"] == {
        "request.method": "POST",
        "request.path": "/api/leads",
        "request.remote_addr": "192.168.1.1",
        "request.user_agent": "Mozilla/5.0...",
    }


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"@timestamp": "2025-10-06T12:00:00Z"}, "timestamp", ns("2025-10-06T12:00:00+00:00")),
        ({"ts": 1759752000.5}, "timestamp", ns("2025-10-06T12:00:00.5+00:00")),
        ({"lvl": "warning"}, "severity_text", "WARN"),
        ({"levelname": "CRITICAL"}, "severity_text", "FATAL"),
        ({"log.level": "err"}, "severity_text", "ERROR"),
        ({"log": {"level": "debug"}}, "severity_text", "DEBUG"),
        ({"severity": "Warning"}, "severity_text", "WARN"),
        ({"severity_number": 18}, "severity_number", 18),
        ({"level": 50}, "severity_text", "ERROR"),  # pino / bunyan
        ({"levelno": 30}, "severity_text", "WARN"),  # Python logging
        ({"level": "weird"}, "severity_text", "INFO"),
        ({"body": "b"}, "message", "b"),
        ({"@message": "m"}, "message", "m"),
        ({"event": "application_created"}, "message", "application_created"),
        ({"line": "raw text line"}, "message", "raw text line"),
        ({"message": {"structured": True}}, "message", '{"structured":true}'),
        ({"service": {"name": "api", "version": "1.2"}}, "service", "api"),
        ({"app": "deal-scout"}, "service", "deal-scout"),
        ({"traceId": "4BF92F3577B34DA6A3CE929D0E0E4736"}, "trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ({"trace.id": "abc123def456"}, "trace_id", "abc123def456"),
        ({"requestId": "req_123ABC"}, "trace_id", "req_123ABC"),
        ({"trace_id": "unknown"}, "trace_id", ""),
        ({"trace_id": "00000000000000000000000000000000"}, "trace_id", ""),
        ({"spanId": "00F067AA0BA902B7"}, "span_id", "00f067aa0ba902b7"),
        ({"pathname": "/app/x.py", "lineno": 12}, "source", "/app/x.py:12"),
        ({"filename": "x.py"}, "source", "x.py"),
        ({"logger_name": "celery.worker"}, "logger", "celery.worker"),
        ({"name": "django.request"}, "logger", "django.request"),
        ({"funcName": "charge"}, "function", "charge"),
        ({"hostname": "web-1"}, "host", "web-1"),
        ({"host": {"name": "web-2", "ip": "10.0.0.2"}}, "host", "web-2"),
        ({"type": "database"}, "log_type", "database"),
        ({"log_type": "security"}, "log_type", "security"),
    ],
)
def test_aliases(raw: dict[str, Any], field: str, expected: object) -> None:
    assert norm(raw)[field] == expected


def test_trace_id_wins_over_request_id_which_stays_an_attribute() -> None:
    for raw in ({"request_id": "req_1", "trace_id": "abc"}, {"trace_id": "abc", "request_id": "req_1"}):
        record = norm(raw)
        assert record["trace_id"] == "abc"
        assert record["attributes"] == {"request_id": "req_1"}
    record = norm({"trace_id": "unknown", "request_id": "req_1"})
    assert record["trace_id"] == "req_1" and record["attributes"] == {}


def test_losing_aliases_and_odd_values_stay_attributes() -> None:
    record = norm(
        {
            "message": "m",
            "msg": "other",
            "timestamp": 1759752000,
            "date": "2025-01-01",
            "type": "click",
            "name": 42,
            "line": 3,
            "source": "a.py:1",
        }
    )
    assert record["message"] == "m"
    assert record["source"] == "a.py:1"
    assert record["attributes"] == {
        "msg": "other",
        "date": "2025-01-01",
        "type": "click",
        "name": 42,
        "line": 3,
    }


def test_attribute_flattening_and_types() -> None:
    record = norm(
        {
            "context": {"ip": "1.2.3.4", "deep": {"er": {"est": 1}}, "empty": {}, "none": None},
            "tags": ["a", 1, None],
            "ok": True,
            "ratio": 0.5,
            "big": 2**70,
            "blob": b"\x00\x01",
            "missing": None,
        }
    )
    assert record["attributes"] == {
        "context.ip": "1.2.3.4",
        "context.deep.er.est": 1,
        "tags": '["a",1,null]',
        "ok": True,
        "ratio": 0.5,
        "big": str(2**70),
        "blob": "AAE=",
    }


def test_resource_and_fallbacks_for_service_and_host() -> None:
    record = norm(
        {"message": "x", "resource": {"service.name": "billing", "host": {"name": "h1"}, "k8s.pod.uid": 7}}
    )
    assert record["resource"] == {"service.name": "billing", "host.name": "h1", "k8s.pod.uid": "7"}
    assert record["service"] == "billing" and record["host"] == "h1"
    assert norm({"message": "x"}, service="from-defaults", host="agent-1")["service"] == "from-defaults"
    assert norm({"message": "x", "service": "own"}, service="from-defaults")["service"] == "own"


@pytest.mark.parametrize(
    ("raw", "defaults", "expected"),
    [
        ({"http.method": "GET", "http.status_code": 200}, {}, "web"),
        ({"logger": "app.auth.login"}, {}, "security"),
        ({"service": "security-audit"}, {}, "security"),
        ({"logger": "app.author.views"}, {}, "application"),
        ({"logger": "app.auth"}, {"log_type": "database"}, "database"),
        ({"log_type": "system"}, {"log_type": "database"}, "system"),
        ({"log_type": "bogus"}, {}, "application"),
    ],
)
def test_log_type(raw: dict[str, Any], defaults: dict[str, Any], expected: str) -> None:
    assert norm(raw, **defaults)["log_type"] == expected


def test_limits() -> None:
    record = norm({"message": "m" * (MAX_MESSAGE_CHARS + 10), "note": "n" * (MAX_ATTRIBUTE_CHARS + 1)})
    assert len(record["message"]) == MAX_MESSAGE_CHARS
    assert len(record["attributes"]["note"]) == MAX_ATTRIBUTE_CHARS
    assert record["attributes"]["pipeline.truncated"] is True
    many = norm({f"k{i}": i for i in range(2000)})
    assert len(many["attributes"]) <= 513 and many["attributes"]["pipeline.truncated"] is True
    deep: dict[str, Any] = {"v": 1}
    for _ in range(40):
        deep = {"d": deep}
    flat = norm({"deep": deep})["attributes"]
    assert len(flat) == 1 and next(iter(flat.values())).startswith("{")


def test_canonical_records_pass_through() -> None:
    canonical = {
        "timestamp": 1759752000123456789,
        "severity_number": 13,
        "severity_text": "warning",
        "message": "otlp",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "attributes": {"http.route": "/x", "n": 1, "list": [1, 2], "nested": {"a": 1}},
        "resource": {"service.name": "checkout", "host.name": "node-1"},
    }
    record = norm(canonical)
    assert record["timestamp"] == 1759752000123456789
    assert (record["severity_text"], record["severity_number"]) == ("WARN", 13)
    assert record["service"] == "checkout" and record["host"] == "node-1"
    assert record["attributes"] == {"http.route": "/x", "n": 1, "list": "[1,2]", "nested.a": 1}
    assert record["attributes"] is not canonical["attributes"]
    assert norm({"message": "m", "attributes": {}})["timestamp"] == OBSERVED


def test_stage_keeps_every_event_and_marks_failures() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    ctx = BatchContext("proj", OBSERVED, {"service": "svc"})
    out = Normalizer()([{"msg": "ok"}, {"message": "bad", "weird": Unprintable()}, {"msg": "ok2"}], ctx)
    assert [r["message"] for r in out] == ["ok", "bad", "ok2"]
    assert "RuntimeError: no str" in out[1]["attributes"][ERROR_ATTRIBUTE]
    assert out[1]["service"] == "svc" and set(out[1]) == set(LOG_FIELDS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
alias_keys = st.sampled_from(
    ["timestamp", "@timestamp", "ts", "level", "lvl", "severity_number", "levelno", "msg", "message", "log", "service",
     "trace_id", "requestId", "span_id", "source", "pathname", "lineno", "line", "logger", "name", "funcName", "host",
     "type", "log_type", "resource", "attributes", "context"]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(alias_keys | st.text(max_size=12), json_values, max_size=10))
def test_any_json_object_normalizes_to_a_valid_record(raw: dict[str, Any]) -> None:
    record = norm(raw)
    assert set(record) == set(LOG_FIELDS)
    for name, kind in LOG_FIELDS.items():
        assert isinstance(record[name], kind), (name, record[name])
    assert record["log_type"] in LOG_TYPES
    assert 1 <= record["severity_number"] <= 24
    for value in record["attributes"].values():
        assert isinstance(value, str | int | float | bool)
    for key, value in record["resource"].items():
        assert isinstance(key, str) and isinstance(value, str)


# ---------------------------------------------------------------- batch (columnar) path

KEY_NAMES = st.sampled_from(
    ["timestamp", "time", "level", "lvl", "levelno", "severity_number", "message", "msg", "service", "app",
     "trace_id", "request_id", "span_id", "source", "module", "line", "logger", "name", "function", "host",
     "type", "log_type", "context", "request", "user_id", "duration_ms", "ok", "note", "http.method", "http.status_code"]
)  # fmt: skip
KINDS = ["str", "int", "float", "bool", "none", "dict", "ts", "level", "id", "mixed", "logtype"]


def values_of(kind: str, inner: list[str]) -> st.SearchStrategy[Any]:
    return {
        "str": st.text(max_size=12),
        "int": st.integers(-(2**65), 2**65),
        "float": st.floats(allow_nan=False, allow_infinity=False),
        "bool": st.booleans(),
        "none": st.none(),
        "dict": st.fixed_dictionaries({k: st.text(max_size=5) | st.integers(0, 9) for k in inner}),
        "ts": st.sampled_from(["2025-10-06T12:00:00Z", "2025-10-06T12:00:00.5+02:00", "nope", "1759752000"]),
        "level": st.sampled_from(["INFO", "warn", "ERROR", "odd"]),
        "id": st.sampled_from(["abc123", "ABC-123", "unknown", "req_1", "  x "]),
        "mixed": st.none() | st.integers(0, 3) | st.text(max_size=4),
        "logtype": st.sampled_from(["web", "system", "click"]),
    }[kind]


@st.composite
def uniform_batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    keys = draw(st.lists(KEY_NAMES, min_size=1, max_size=7, unique=True))
    kinds = {key: draw(st.sampled_from(KINDS)) for key in keys}
    inner = {
        key: draw(st.lists(st.sampled_from(["method", "ip", "level", "n"]), unique=True, max_size=3))
        for key in keys
    }
    size = draw(st.integers(8, 12))
    return [{key: draw(values_of(kinds[key], inner[key])) for key in keys} for _ in range(size)]


@settings(max_examples=200, deadline=None)
@given(uniform_batches())
def test_batch_path_agrees_with_event_path(batch: list[dict[str, Any]]) -> None:
    ctx = BatchContext("proj", OBSERVED, {"host": "h"})
    expected = [normalize(raw, project="proj", observed_ns=OBSERVED, defaults={"host": "h"}) for raw in batch]
    assert Normalizer()(batch, ctx) == expected


def test_uniform_guide_batch_takes_the_columnar_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from stackwatch.pipeline import normalize as module

    batch = [
        {
            "timestamp": f"2025-10-06T12:00:{i:02d}.000Z",
            "level": "INFO",
            "logger": "app.routes.leads",
            "message": f"Lead {i} created",
            "module": "leads",
            "function": "create_lead",
            "line": 45,
            "request": {"method": "POST", "path": "/api/leads"},
        }
        for i in range(10)
    ]
    expected = [normalize(raw, project="proj", observed_ns=OBSERVED, defaults={}) for raw in batch]

    def no_per_event(*args: Any) -> None:
        raise AssertionError("per-event path used")

    monkeypatch.setattr(module, "_normalize", no_per_event)
    assert Normalizer()(batch, BatchContext("proj", OBSERVED, {})) == expected
